// The strata model: parameters in one contiguous buffer with named views, activations in one arena
// sized per (B, T), and an explicit forward/backward that calls the ops in order and in reverse.
//
// Two independent axes shape a block: the residual rule and the attention kind (here causal GQA).
// The residual rule is either the standard stream, shaped by the norm placement (pre, post,
// reordered) in sublayer_forward/backward, or AttnRes (Full or Block), where every sublayer's input
// is a softmax over depth (src/model/attn_res.cpp). A sublayer is "f" (attention or MLP); the
// attention kind lives in attn_forward/backward.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/plan.h"
#include "ops/ops.h"

namespace strata {

// Everything the engine needs to know about one parameter tensor, so that nothing (the init, the
// optimizer, diagnose) has to read meaning into its name.
struct ParamSpec {
    enum class Init { normal, ones, zeros };
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

template <typename T>
struct LayerParams {
    T* attn_norm;  // (D)
    T* wqkv;       // (H·d + 2·Hk·d, D): wq, wk, wv stacked, so one GEMM makes q, k and v
    T* q_norm;     // (d) or null
    T* k_norm;     // (d) or null
    T* wo;         // (D, H·d)
    T* mlp_norm;   // (D)
    T* wgu;        // (2F, D): w_gate then w_up, one GEMM
    T* wdown;      // (D, F)
    T* wffn;       // MoDA with FFN K/V, layers before the last: (2·Hk·d, D), w_ffn_k then w_ffn_v; else null
    // AttnRes only (null otherwise): each sublayer's pseudo-query and key-norm weight
    T *attn_res_query, *attn_res_norm, *mlp_res_query, *mlp_res_norm;  // (D) each
};

// Per-layer key/value cache for generation: (B, max_T, Hk, d) per layer for K and V, on the model's
// backend.
template <typename T>
struct KVCache {
    long B = 0, max_T = 0, len = 0;
    Buffer k, v;  // (L, B, max_T, Hk, d), stored in the activation type of the model's precision
};

// Depth statistics summed over the rows (tokens) of one or more forwards (strata diagnose, docs/
// diagnostics.md); divide by `rows` to report. Sublayers are j = 0..2L−1 (attention 2l, MLP 2l+1).
struct DepthStats {
    long rows = 0;
    std::vector<double> input_ms;   // (2L) mean square of each sublayer's input (AttnRes: its mix)
    std::vector<double> output_ms;  // (2L) of each sublayer's output f_j
    std::vector<double> state_ms;   // (2L) standard: the residual stream after j; AttnRes: j's block partial sum
    double final_ms = 0;            // of the final norm's input
    // AttnRes: (2L+1 ops) × (columns) summed softmax weights. Column 0 is the embedding, column 1+k
    // block k (for attnres_full, sublayer k's output), and for attnres_block the last column is the
    // op's own block partial sum.
    std::vector<std::vector<double>> alpha;
};

template <typename T>
class Model {
public:
    // The precision seam: the storage type of each role. Ops take the activation and parameter types
    // separately where both meet; only one type for all roles is instantiated (fp32, and fp64 for the
    // finite-difference tests).
    using param_t = T;   // weights (the fp32 master copy)
    using act_t = T;     // activations and GEMM inputs
    using grad_t = T;    // parameter gradients
    using optim_t = T;   // AdamW moments
    using accum_t = double;  // reductions: losses, norms, statistics

    explicit Model(const ModelConfig& cfg, Device device = Device::cpu);
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    const ModelConfig cfg;
    std::vector<ParamSpec> specs;  // buffer order

    // The precision of forward, backward and cached generation (core/precision.h). Changing it
    // re-plans the activations and drops nothing else: the parameters stay the fp32 master weights.
    void set_precision(Precision p);
    Precision precision() const { return precision_; }

    void init_weights(uint64_t seed);
    const ParamSpec& spec(const std::string& name) const;  // throws Error for an unknown name
    Backend& backend() const { return *backend_; }

    // The parameter and gradient buffers (backend memory, one layout): for ops only.
    // Writable access to the parameters marks their bf16 copy stale (a bf16 forward refreshes it).
    T* param_data() {
        params_lp_stale_ = true;
        return params_.data<T>();
    }
    const T* param_data() const { return params_.data<T>(); }
    T* grad_data() { return grads_.data<T>(); }
    const T* grad_data() const { return grads_.data<T>(); }
    const Buffer& params() const { return params_; }
    Buffer& params() {
        params_lp_stale_ = true;
        return params_;
    }
    const Buffer& grads() const { return grads_; }
    Buffer& grads() { return grads_; }
    // One tensor to or from the host (s.numel elements).
    void param_to_host(const ParamSpec& s, T* host) const { params_.to_host(host, s.offset, s.numel); }
    void param_from_host(const ParamSpec& s, const T* host) {
        params_lp_stale_ = true;
        params_.from_host(host, s.offset, s.numel);
    }
    void grad_to_host(const ParamSpec& s, T* host) const { grads_.to_host(host, s.offset, s.numel); }

    // tokens, targets: (B, T) host arrays. targets may be null (no loss); entries < 0 are ignored.
    // Returns the mean loss over counted targets (0 if none).
    double forward(const int32_t* tokens, const int32_t* targets, long B, long seq);
    // Gradients of the last forward's loss, accumulated into the gradient buffer. Call zero_grad()
    // first. layer_done(l), when set, runs once per layer l = L−1 .. 0 as soon as every gradient of
    // layer l's parameters is complete.
    void backward(const std::function<void(int)>& layer_done = {});
    void zero_grad();
    // Rows [first, first + rows) of the last forward's logits (V each) to the host (widened from bf16
    // in a bf16 run).
    void logits_to_host(T* host, long first, long rows) const;
    long last_count() const { return n_counted_; }  // targets counted by the last forward
    long last_B() const { return B_; }
    long last_T() const { return T_; }

    // Generation: run `n` new tokens per batch row at positions cache.len.., appending their K/V to
    // the cache. Logits of the new tokens are the (B·n) rows of logits_to_host.
    void init_cache(KVCache<T>& cache, long B, long max_T) const;
    void forward_cached(const int32_t* tokens, long B, long n, KVCache<T>& cache);

    size_t num_params() const { return params_.numel(); }

    // Diagnostics, forward only: when ≥ 0, sublayer j = skip_sublayer's output is replaced by zero.
    // Under AttnRes a source that this leaves empty is dropped from every mix (it is neither a key nor
    // counted in the softmax). backward() refuses to run while it is set.
    int skip_sublayer = -1;
    // Diagnostics: when set, every sublayer's output f(·) keeps its own buffer after the forward, as
    // accumulate_depth_stats needs. Off, they share one (the rule has added each to the stream, and
    // no backward reads it), which saves (2·L − 1)·N·D activations.
    bool keep_sublayer_outputs = false;
    // Adds the last forward's statistics to `s` (src/model/diagnostics.cpp).
    void accumulate_depth_stats(DepthStats& s) const;

    // The activation plan of the last forward, the arena's size, and every byte this model holds on
    // its backend (parameters, gradients, RoPE tables, arena; not the optimizer's moments or caches).
    const TensorPlan& activation_plan() const { return plan_; }
    size_t arena_bytes() const { return arena_.bytes(); }
    size_t memory_bytes() const {
        return params_.bytes() + grads_.bytes() + params_lp_.bytes() + rope_.bytes() + arena_.bytes();
    }

    // ---- activations: pointers into the arena, set by describe_activations + TensorPlan::carve ----
    // A is the activations' storage type: T, or bf16 under mixed precision. Tensors typed T* stay in
    // T whatever A is: the residual stream, the AttnRes sources and mixes (the rule's state), the
    // saved statistics, and every gradient. Tensors typed A* are GEMM inputs and outputs and what
    // the attention saves.
    struct MixActs {  // one AttnRes op (src/model/attn_res.cpp)
        T* out;       // (N, D) the mix: the sublayer's input h
        T *logit, *rstd;  // (n_max, N)
        T* lse;       // (N)
    };
    template <typename A>
    struct SubActs {  // one sublayer (attention or MLP) under the residual rule
        A* f_out;     // (N, D) the sublayer's own output f(·); one buffer for all but under reordered norms
                      // and keep_sublayer_outputs
        A* x_in;      // (N, D) f's input: pre and AttnRes the norm's output (one buffer for every sublayer,
                      // recomputed by the backward); post and reordered h itself (aliased when A is T,
                      // else h converted to A)
        T* n_out;     // (N, D) post and reordered: the norm's output in T (post: the stream)
        T* rstd;      // (N)
        T* sum;       // (N, D) post only: h + f(h), the norm's input
        T* out;       // (N, D) the residual stream after this sublayer; AttnRes: the block's partial sum
        MixActs mix;  // AttnRes only: the sublayer's input
    };
    template <typename A>
    struct LayerActs {
        SubActs<A> attn, mlp;
        // attention: q_raw/k_raw are the split projection; q/k the normed (QK-norm) and rotated ones,
        // the same buffers as q_raw/k_raw without QK-norm
        A *qkv, *q_raw, *k_raw, *q, *k, *v, *att;  // qkv: one buffer for every layer (forward only)
        T *q_rstd, *k_rstd, *lse;
        A *gu, *act;                // MLP; act: one buffer for every layer, recomputed in the backward
        A *ffn_kv, *fk_raw, *fk;    // MoDA FFN K/V: projection (N, 2·Hk·d), K raw/final (N, Hk·d)
        T* fk_rstd;
    };
    template <typename A>
    struct ActsOf {
        int32_t *tokens, *targets, *pos;  // (N) each; targets only when training
        T* x0;  // (N, D) embeddings
        std::vector<LayerActs<A>> layers;
        A* lnf;  // the final norm's output, the head's input
        T* lnf_rstd;
        A* logits;             // (N, V), forwards without targets only (generation, logits_to_host)
        T *losses, *lse;
        A* dlogits;            // (N, V), forwards with targets: the head's gradient, from the fused loss
        T* head_scratch;       // (head_chunk_rows, V): a bf16 run's float logits of one row chunk
        MixActs out_mix;       // AttnRes: the output op, over every block, before the final norm
        A *depth_k, *depth_v;  // MoDA: (B·T, slots, Hk·d) each; layer b's K/V go to slot moda_slots_read(b)
        T *ddepth_k, *ddepth_v;  // MoDA backward: their gradients
        std::vector<T*> dsub;  // AttnRes backward: (N, D) gradient of each sublayer's partial sum
        T *demb, *dmix;        // AttnRes backward: (N, D) each
        // backward scratch (gradients in T)
        T *dres_a, *dres_b, *dn, *dy, *dqkv, *dq, *dk, *dv, *dq_raw, *dk_raw, *datt, *dact, *dlnf;
        A* dgu;            // written as A by its op: the GEMM backward's dout
        A *dy_a, *dqkv_a;  // a T gradient converted to A for a GEMM backward (aliases when A is T)
    };
    using Acts = ActsOf<T>;
    // Rows per chunk of the LM head fused with the loss: a chunk's float logits (64 × V) stay in cache
    // between the head's GEMM and the softmax over them.
    static constexpr long kHeadChunkRows = 64;
    // The one description of the activations for N rows (the backward's too when training): adds each
    // tensor to `plan`, bound to its pointer in `a`. ModelConfig::memory_bytes calls it on a scratch.
    // keep_outputs: as keep_sublayer_outputs.
    template <typename A>
    static void describe_activations(TensorPlan& plan, const ModelConfig& c, long N, bool training, ActsOf<A>& a,
                                     bool keep_outputs = false);

private:
    Backend* backend_;
    Precision precision_ = Precision::fp32;
    Buffer params_, grads_;  // one buffer each, same layout
    Buffer params_lp_;       // bf16 runs: the parameters rounded to bf16, same layout (the GEMMs' weights)
    bool params_lp_stale_ = true;  // set by every writable access to the parameters
    Buffer rope_;            // cos then sin, (max_seq_len, d/2) each
    Buffer arena_;           // the activations; grows only
    TensorPlan plan_;
    long plan_N_ = -1;
    bool plan_training_ = false;
    bool plan_keep_ = false;

    T* tok_emb_;
    T* final_norm_;
    T *out_res_query_ = nullptr, *out_res_norm_ = nullptr;  // AttnRes output op
    T* lm_head_;  // == tok_emb_ when tied
    std::vector<LayerParams<T>> layers_;
    const T *rope_cos_, *rope_sin_;

    ActsOf<T> a_{};      // fp32 (and fp64) runs
    ActsOf<bf16> ab_{};  // bf16 runs
    long B_ = 0, T_ = 0;
    long n_counted_ = 0;
    bool have_targets_ = false;
    bool backward_pending_ = false;  // a forward with targets ran and no backward since
    std::vector<int32_t> pos_host_;  // staging for the positions

    template <typename A>
    ActsOf<A>& acts() {
        if constexpr (std::is_same_v<A, T>) return a_;
        else return ab_;
    }
    template <typename A>
    const ActsOf<A>& acts() const {
        if constexpr (std::is_same_v<A, T>) return a_;
        else return ab_;
    }
    // Calls f with a null pointer of the activation type of the current precision (A = T or bf16).
    template <typename F>
    decltype(auto) with_precision(F&& f) const;
    // The weight a GEMM reads: the parameter itself, or its bf16 copy.
    template <typename A>
    const A* W(const T* p) const {
        if constexpr (std::is_same_v<A, T>) return p;
        else return params_lp_.data<bf16>() + (p - params_.data<T>());
    }
    void refresh_low_precision_params();
    T* g(const T* p) { return grads_.data<T>() + (p - params_.data<T>()); }
    template <typename A>
    void layout(long N, bool training);
    void stage_inputs(const int32_t* tokens, const int32_t* targets, long N, long pos0, long seq);
    template <typename A>
    double forward_impl(const int32_t* targets, long B, long seq);
    template <typename A>
    void backward_impl(const std::function<void(int)>& layer_done);
    template <typename A>
    void forward_cached_impl(long B, long n, KVCache<T>& cache);
    // Pre-norm: the next norm, fused with this sublayer's residual add (its input is ready when the
    // next sublayer starts).
    template <typename A>
    struct NextNorm {
        A* out;
        T* rstd;
        const T* w;
    };
    template <typename A>
    void sublayer_forward(SubActs<A>& s, const T* h, const T* norm_w, long N, bool is_attn, long l, const AttnDims& ad,
                          A* kc, A* vc, bool input_normed, const NextNorm<A>* next);
    template <typename A>
    void sublayer_backward(SubActs<A>& s, const T* h, T* dh, const T* dout, long N, bool is_attn, long l,
                           const AttnDims& ad);
    template <typename A>
    void attn_forward(long l, const A* in, A* out, long N, const AttnDims& ad, A* kc, A* vc);
    template <typename A>
    // din_into: f's input gradient is added into din, or written over it (a buffer nothing else has written)
    void attn_backward(long l, const A* in, T* din, const T* dout, long N, const AttnDims& ad, Into din_into);
    template <typename A>
    void mlp_forward(long l, const A* in, A* out, long N);
    template <typename A>
    void mlp_backward(long l, const A* in, T* din, const T* dout, long N, Into din_into);
    template <typename A>
    void run_layers(long N, const AttnDims& ad, KVCache<T>* cache);
    template <typename A>
    void accumulate_depth_stats_impl(DepthStats& s) const;
    // AttnRes (src/model/attn_res.cpp): the layers' forward and backward under the depth-softmax rule.
    std::vector<const T*> mix_src_;  // source pointers of one op, sized once
    std::vector<T*> mix_dsrc_;
    struct Phase1Args {  // pointers for attnres_phase1 over one block's sublayers, sized once
        std::vector<T*> out, logit, rstd, lse;
        std::vector<const T*> w, gamma;
    } ph1_;
    template <typename A>
    int mix_sources(long j, bool grads);  // fills mix_src_ (and mix_dsrc_) for sublayer j (2L: output)
    bool mix_has_partial_ = false;        // whether the last mix_sources() ended with a partial sum
    bool skipped_empty(long e) const;     // sublayer e's partial sum is empty under skip_sublayer
    template <typename A>
    void phase1(long j0, int n, long N);
    template <typename A>
    void attnres_run_layers(long N, const AttnDims& ad, KVCache<T>* cache);
    template <typename A>
    void attnres_layers_backward(long N, const AttnDims& ad, const T* dfinal, const std::function<void(int)>& layer_done);
};

extern template class Model<float>;
extern template class Model<double>;

}  // namespace strata
