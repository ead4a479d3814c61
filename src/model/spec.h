// The model's description apart from its compute: each parameter tensor's spec, and the depth
// statistics diagnose reads. Shared by the model and its residual rules (src/model/residual/).
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "model/config.h"

namespace strata {

// Everything the engine needs to know about one parameter tensor, so that nothing (the init, the
// optimizer, diagnose) has to read meaning into its name.
struct ParamSpec {
    // unit_last: zeros with a 1 in the last element (DenseFormer's weights, which start as the identity)
    enum class Init { normal, ones, zeros, unit_last };
    std::string name;
    std::vector<long> shape;
    size_t offset = 0;  // in elements, into the parameter buffer
    size_t numel = 0;
    Init init = Init::normal;
    double init_std = 0;  // Init::normal only
    bool decay = true;    // AdamW weight decay applies: the 2-D weights (docs/model.md); train.no_decay adds exemptions
    int sublayer = -1;    // 2l (attention of layer l), 2l+1 (its MLP), −1: none (embedding, final norm, output mix, head)
};

// The parameters a config implies, in buffer order, without allocating them (a checkpoint's tensors
// are checked against this before a model is built). Throws Error for an invalid config.
std::vector<ParamSpec> param_specs(const ModelConfig& cfg);

// Depth statistics summed over the rows (tokens) of one or more forwards (strata diagnose, docs/
// diagnostics.md); divide by `rows` to report. Sublayers are j = 0..2L−1 (attention 2l, MLP 2l+1).
// What a sublayer's input and state are depends on the residual rule (docs/residual.md).
struct DepthStats {
    long rows = 0;
    std::vector<double> input_ms;   // (2L) mean square of each sublayer's input before its norm (AttnRes: its mix)
    std::vector<double> output_ms;  // (2L) of each sublayer's output f_j
    std::vector<double> state_ms;   // (2L) the rule's state after j: the stream, or AttnRes's block partial sum
    double final_ms = 0;            // of the final norm's input
    // AttnRes: (2L+1 ops) × (columns) summed softmax weights. Column 0 is the embedding, column 1+k
    // block k (for attnres_full, sublayer k's output), and for attnres_block the last column is the
    // op's own block partial sum.
    std::vector<std::vector<double>> alpha;
    // MoDA: (L layers) × (H query heads) summed over rows: the softmax mass on depth slots, and on
    // sequence position 0 of each window (the attention sink).
    std::vector<std::vector<double>> depth_mass, sink_mass;
};

}  // namespace strata
