// The FLOP model of one training step (bench/README.md, "FLOPs per training step").
//
// Convention: a multiply-accumulate is 2 FLOPs and the backward costs twice the forward (input and
// weight gradients), so a term with M MACs in the forward costs 2·M forward and 6·M per step.
// With N = B·T tokens:
//   matmul       6·P_mm·N; P_mm = L·(D·(H+2·Hk)·d + H·d·D + 3·D·F) + V·D (the LM head, tied or not;
//                the embedding gather counts 0), plus MoDA's FFN K/V projections, 2·Hk·d·D in each
//                layer but the last
//   attention    Q·Kᵀ and P·V, each B·H·T²·d MACs, halved by the causal mask: 6·L·B·H·T²·d
//   moda_depth   layer l's query rows each see moda_slots_read(l) depth keys: Q·Kdᵀ and P·Vd,
//                2·2·N·H·slots·d forward per layer, 12·N·H·d·Σ_l slots(l) per step
//   attnres_mix  each AttnRes op with n sources: n·D MACs for the logits and n·D for the weighted
//                sum per row, 12·N·D·Σ_ops n per step (2L sublayer ops and the output op)
// Norms, RoPE, SwiGLU's pointwise part, softmax, cross-entropy and the optimizer are left out.
#pragma once
#include "model/config.h"
#include "ops/profile.h"

namespace strata::bench {

struct FlopCount {
    bool moda = false;         // the attention runs as moda_forward/backward (sequence and depth)
    double matmul_params = 0;  // P_mm
    double moda_slots = 0;     // Σ_l moda_slots_read(l): depth slots read over all layers
    double attnres_sources = 0;  // Σ over the AttnRes ops of their source counts
    double matmul = 0, attention = 0, moda_depth = 0, attnres_mix = 0, total = 0;  // FLOPs per step
};
FlopCount training_flops(const ModelConfig& c, long B, long T);

// The sources AttnRes op j mixes (j = 0..2L−1 the sublayers, 2L the output op), as the model's
// mix_sources counts them in training: the embedding, every block completed before j, and j's own
// partial sum unless j starts a block. 0 under the standard residual.
long attnres_op_sources(const ModelConfig& c, long j);

// FLOPs per step that the FLOP model assigns to one op family's calls (forward: a third of a term,
// backward: two thirds); 0 for families it does not count.
double family_flops(const FlopCount& f, OpFamily family);

}  // namespace strata::bench
