// The strata model: parameters in one contiguous buffer with named views, activations in one arena
// sized per (B, T), and an explicit forward/backward that calls the ops in order and in reverse.
//
// Two independent axes shape a block: the residual rule and the attention kind (causal GQA or MoDA).
// The residual rule says how each sublayer's input is formed from what came before and what becomes
// of its output: the standard stream under each norm placement, ReZero, LayerNorm-Scaling, AttnRes
// or DenseFormer, one file each in src/model/residual/ behind one interface, which the model's one
// sublayer loop calls (layers_forward/backward). A sublayer is "f" (attention or MLP); the attention
// kind lives in attn_forward/backward.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/plan.h"
#include "model/residual/rule.h"
#include "model/spec.h"
#include "ops/ops.h"

namespace strata {

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
};

// Per-layer key/value cache for generation: (B, max_T, Hk, d) per layer for K and V, on the model's
// backend.
template <typename T>
struct KVCache {
    long B = 0, max_T = 0, len = 0;
    Buffer k, v;  // (L, B, max_T, Hk, d), stored in the activation type of the model's precision
    // MoDA with chunk visibility: the depth slots of the current chunk's earlier tokens, which the next
    // tokens still see: (B, depth_cap, slots, Hk·d) each, rows 0.. the tokens from the chunk's start.
    Buffer depth_k, depth_v;
    long depth_cap = 0;
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

    // Diagnostics, forward only: the output of every sublayer listed in skip_sublayers is replaced by
    // zero. Under AttnRes a source that this leaves empty is dropped from every mix (it is neither a key
    // nor counted in the softmax); under DenseFormer the block's state still enters the averages.
    // backward() refuses to run while any is listed.
    std::vector<int> skip_sublayers;
    // Diagnostics, forward only, fp32 (or fp64) precision: when set, called for every sublayer j right
    // after f_j ran and before the residual rule takes its output: state_in is what the sublayer
    // normalises and reads (ResidualRule::input_state), in its input after the norm, f its output
    // (N, D each), which the hook may overwrite (a linear replacement, say). backward() refuses to run
    // while it is set.
    std::function<void(int j, const T* state_in, const T* in, T* f, long N)> sublayer_hook;
    // Diagnostics: when set, every sublayer's output f(·) keeps its own buffer after the forward, as
    // accumulate_depth_stats needs. Off, they share one where the rule's backward reads none (it has
    // taken each into its state), which saves (2·L − 1)·N·D activations.
    bool keep_sublayer_outputs = false;
    // Adds the last forward's statistics to `s` (src/model/diagnostics.cpp).
    void accumulate_depth_stats(DepthStats& s) const;
    // After a forward in fp32 (or fp64) precision: what sublayer j normalised and read (the stream
    // before it; AttnRes: its depth mix; DenseFormer: the averaged state), and the final norm's input,
    // (N, D) each; valid until the next forward. j = 2l is block l's input.
    const T* sublayer_input_state(int j) const;
    const T* final_input_state() const;

    // The activation plan of the last forward, the arena's size, and every byte this model holds on
    // its backend (parameters, gradients, RoPE tables, arena; not the optimizer's moments or caches).
    const TensorPlan& activation_plan() const { return plan_; }
    size_t arena_bytes() const { return arena_.bytes(); }
    size_t memory_bytes() const {
        return params_.bytes() + grads_.bytes() + params_lp_.bytes() + rope_.bytes() + arena_.bytes();
    }

    // ---- activations: pointers into the arena, set by describe_activations + TensorPlan::carve ----
    // A is the activations' storage type: T, or bf16 under mixed precision. Tensors typed T* stay in
    // T whatever A is: the saved statistics and every gradient, and in the rule's state the stream,
    // the AttnRes sources and mixes. Tensors typed A* are GEMM inputs and outputs and what the
    // attention saves.
    template <typename A>
    struct LayerActs {
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
        // (2L) each sublayer's own output f(·): one buffer for all, unless the rule's backward reads them
        // or keep_sublayer_outputs (the rule has taken each into its state, and no backward reads it)
        std::vector<A*> f_out;
        A* lnf;  // the final norm's output, the head's input
        T* lnf_rstd;
        A* logits;             // (N, V), forwards without targets only (generation, logits_to_host)
        T *losses, *lse;
        A* dlogits;            // (N, V), forwards with targets: the head's gradient, from the fused loss
        T* head_scratch;       // (head_chunk_rows, V): a bf16 run's float logits of one row chunk
        A *depth_k, *depth_v;  // MoDA: (B·T, slots, Hk·d) each; layer b's K/V go to slot moda_slots_read(b)
        // MoDA: the depth buffer this forward reads and writes, (B, rows, slots, Hk·d): depth_k/v above,
        // or under chunk visibility when decoding the cache's rows of the chunk. Row row0 holds this
        // call's first token; row 0 the token at position pos0.
        struct DepthIn {
            A *k = nullptr, *v = nullptr;
            long B = 0, rows = 0, row0 = 0, pos0 = 0;
        } depth;
        T *ddepth_k, *ddepth_v;  // MoDA backward: their gradients
        // backward scratch (gradients in T); the residual rule has its own
        T *dqkv, *dq, *dk, *dv, *dq_raw, *dk_raw, *datt, *dact, *dlnf;
        A* dgu;            // written as A by its op: the GEMM backward's dout
        A *dy_a, *dqkv_a;  // a T gradient converted to A for a GEMM backward (aliases when A is T)
    };
    using Acts = ActsOf<T>;
    // Rows per chunk of the LM head fused with the loss: a chunk's float logits (64 × V) stay in cache
    // between the head's GEMM and the softmax over them.
    static constexpr long kHeadChunkRows = 64;
    // The one description of the activations for N rows (the backward's too when training): adds each
    // tensor to `plan`, bound to its pointer in `a` or in the residual rule's state. ModelConfig::
    // memory_bytes calls it on a scratch. keep_outputs: as keep_sublayer_outputs.
    template <typename A>
    static void describe_activations(TensorPlan& plan, const ModelConfig& c, long N, bool training, ActsOf<A>& a,
                                     ResidualRule<T, A>& rule, bool keep_outputs = false);

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
    T* lm_head_;  // == tok_emb_ when tied
    std::vector<LayerParams<T>> layers_;
    const T *rope_cos_, *rope_sin_;

    ActsOf<T> a_{};      // fp32 (and fp64) runs
    ActsOf<bf16> ab_{};  // bf16 runs
    // The residual rule (src/model/residual/), one per activation type; it holds its own state.
    using LowA = std::conditional_t<std::is_same_v<T, float>, bf16, T>;
    std::unique_ptr<ResidualRule<T, T>> rule_;
    std::unique_ptr<ResidualRule<T, LowA>> rule_lp_;  // bf16 runs (float models only)
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
    template <typename A>
    ResidualRule<T, A>& rule() const {
        if constexpr (std::is_same_v<A, T>) return *rule_;
        else return *rule_lp_;
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
    template <typename A>
    void attn_forward(long l, const A* in, A* out, long N, const AttnDims& ad, A* kc, A* vc);
    template <typename A>
    // din_into: f's input gradient is added into din, or written over it (a buffer nothing else has written)
    void attn_backward(long l, const A* in, T* din, const T* dout, long N, const AttnDims& ad, Into din_into);
    template <typename A>
    void mlp_forward(long l, const A* in, A* out, long N);
    // MoDA: the op's arguments for layer l (its depth slots, the config's mask, visibility and window);
    // the depth buffer of a forward (acts().depth), set up before its layers and, when decoding under
    // chunk visibility, the chunk's rows kept after them; one depth slot of this call's tokens written.
    template <typename A>
    ModaParams<A> moda_params(long l, const AttnDims& ad) const;
    template <typename A>
    void depth_begin(long B, long n, long pos0, KVCache<T>* cache);
    template <typename A>
    void depth_end(long B, long n, long pos0, KVCache<T>& cache);
    template <typename A>
    void depth_write(long slot, const A* k, long k_stride, const A* v, long v_stride, long B, long n);
    template <typename A>
    void mlp_backward(long l, const A* in, T* din, const T* dout, long N, Into din_into);
    // The one sublayer loop: the residual rule around each f_j, from the embeddings to the head's input.
    template <typename A>
    void layers_forward(long N, const AttnDims& ad, KVCache<T>* cache);
    template <typename A>
    void layers_backward(long N, const AttnDims& ad, const std::function<void(int)>& layer_done);
    template <typename A>
    void accumulate_depth_stats_impl(DepthStats& s) const;
};

extern template class Model<float>;
extern template class Model<double>;

}  // namespace strata
