// Model configuration: the architecture hyper-parameters (docs/model.md), parsed from JSON with
// every key checked.
#pragma once
#include "core/precision.h"
#include "ops/attn_res_gate.h"
#include "ops/moda_modes.h"
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace strata {

enum class NormPlacement { pre, post, reordered };

// How each sublayer's input is formed from what came before (docs/residual.md; each rule is one file
// in src/model/residual/):
//   standard           the residual stream h + f(h), shaped by norm_placement;
//   attnres_full       a softmax over depth of the embedding and every earlier sublayer output;
//   attnres_block      the same over the embedding, completed block sums and the current partial sum,
//                      with attnres_block_size sublayers (attention and MLP each count) per block;
//   rezero             h + α_j·f_j(norm(h)), one learned scalar α_j per sublayer, starting at 0;
//   layernorm_scaling  pre-norm with each norm's output in layer ℓ scaled by 1/√ℓ;
//   denseformer        after each block, a learned weighted average of every block's output state.
enum class Residual { standard, attnres_full, attnres_block, rezero, layernorm_scaling, denseformer };

// AttnRes ablations (docs/attn_res.md), each valid with the AttnRes rules only: the key norm's weight
// is learned or absent (a parameter-free RMSNorm); the gate is AttnResGate (ops/attn_res_gate.h).
enum class AttnResKeyNorm { learned, none };
// The query of each sublayer's mix: a learned vector ("static", the paper's pseudo-query) or
// W_j·RMSNorm(p) of the block's current partial sum p ("input").
enum class AttnResQuery { fixed, input };

// The attention kind (docs/moda.md): "causal" is causal GQA over the sequence; "moda" adds, inside the
// same softmax, each token's own keys/values from earlier layers (Mixture-of-Depths Attention).
enum class AttentionKind { causal, moda };
// What MoDA's depth stream holds: each earlier layer's attention K/V, or also a K/V slot its FFN writes
// through its own projection (the paper's default).
enum class ModaDepthSource { attn_kv, attn_ffn_kv };

struct ModelConfig {
    int vocab_size = 4096;
    int d_model = 384;
    int n_layers = 8;
    int n_heads = 6;
    int n_kv_heads = 2;
    int head_dim = 64;
    int ffn_hidden = 1024;
    int max_seq_len = 256;
    double rope_theta = 10000.0;
    double norm_eps = 1e-5;
    NormPlacement norm_placement = NormPlacement::pre;
    bool qk_norm = false;
    Residual residual = Residual::standard;
    int attnres_block_size = 4;  // sublayers per block (attnres_block); 1 is the same as attnres_full
    AttnResKeyNorm attnres_key_norm = AttnResKeyNorm::learned;
    AttnResGate attnres_gate = AttnResGate::softmax;
    AttnResQuery attnres_query = AttnResQuery::fixed;
    AttentionKind attention = AttentionKind::causal;
    // MoDA (docs/moda.md); each key but the source is an error with causal attention.
    ModaDepthSource moda_depth_source = ModaDepthSource::attn_ffn_kv;
    SeqMask moda_sequence_mask = SeqMask::causal;  // noncausal and none (FDA) are refused by train
    DepthVisibility moda_depth_visibility = DepthVisibility::own;
    int moda_chunk_size = 0;    // tokens per chunk under chunk visibility (64/G when not given); 0 otherwise
    int moda_depth_window = 0;  // each layer reads only its W most recent depth slots (0: all)
    bool tie_embeddings = true;
    double init_std = 0.02;
    uint64_t seed = 1337;

    // Throws Error naming `origin` (a file or "--set") for unknown keys, wrong types, or dimensions
    // that disagree.
    static ModelConfig from_json(const nlohmann::json& j, const std::string& origin);
    nlohmann::json to_json() const;
    void validate(const std::string& origin) const;
    void moda_validate(const std::string& origin) const;  // the MoDA keys (part of validate)

    // Exact parameter count (as the Model lays them out).
    double num_params() const;
    // Bytes a Model of this config allocates: parameters, gradients and RoPE tables, plus the
    // activation arena for a batch of B×T tokens (none when B·T is 0; the backward's buffers too when
    // training) and, when training, the AdamW moments.
    double memory_bytes(long B, long T, bool training, Precision precision = Precision::fp32) const;
};

// The memory strata plans within: STRATA_MEMORY_LIMIT (bytes) when set, else the smaller of the
// physical RAM and the cgroup limit. Throws Error for a malformed STRATA_MEMORY_LIMIT.
double usable_memory_bytes();

// Throws Error naming `origin` and `what` when `bytes` exceed usable_memory_bytes(): allocating them
// would only end in std::bad_alloc or the kernel's OOM killer.
void check_memory(double bytes, const std::string& origin, const std::string& what);

// The names of each enum's values, one table per enum (config.cpp), read both ways: to_string for
// configs, checkpoints and reports, parse_name for configs and CLI flags. A value missing from its
// table is a build error at the table, not a wrong name in a checkpoint.
const char* to_string(NormPlacement p);
const char* to_string(Residual r);
const char* to_string(AttentionKind a);
const char* to_string(AttnResKeyNorm k);
const char* to_string(AttnResGate g);
const char* to_string(AttnResQuery q);
const char* to_string(ModaDepthSource s);
const char* to_string(SeqMask m);
const char* to_string(DepthVisibility v);
// The value named `name`; an unknown name throws Error "<what> must be "a", "b" or "c", not "x"".
template <typename E>
E parse_name(const std::string& name, const std::string& what);
// The allowed names of E, as "a", "b" or "c" (for help text and errors).
template <typename E>
std::string allowed_names();

// MoDA's depth slots per token: layer b reads the first moda_slots_read(c, b) of them; the whole
// buffer holds moda_slots(c) = moda_slots_read(c, n_layers − 1) (the last layer writes none).
long moda_slots_read(const ModelConfig& c, long layer);
inline long moda_slots(const ModelConfig& c) { return moda_slots_read(c, c.n_layers - 1); }
// Whether the model is MoDA with FFN K/V slots (each layer but the last has the w_ffn_k/v projection).
inline bool moda_ffn_kv(const ModelConfig& c) {
    return c.attention == AttentionKind::moda && c.moda_depth_source == ModaDepthSource::attn_ffn_kv;
}

// Whether the rule is AttnRes (Full or Block).
inline bool is_attnres(const ModelConfig& c) {
    return c.residual == Residual::attnres_full || c.residual == Residual::attnres_block;
}
// AttnRes's block size in sublayers: 1 for attnres_full, attnres_block_size for attnres_block, 0 for
// every other rule.
int attnres_sublayers_per_block(const ModelConfig& c);
// The most sources any AttnRes op of the model mixes (the output op's count), 0 without AttnRes.
int attnres_max_sources(const ModelConfig& c);

}  // namespace strata
