#include "model/model.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace strata {

std::vector<ParamSpec> param_specs(const ModelConfig& c) {
    c.validate("model config");
    const long V = c.vocab_size, D = c.d_model, H = c.n_heads, Hk = c.n_kv_heads, d = c.head_dim, F = c.ffn_hidden;
    // GPT-2's depth-scaled init for the projections that write into the residual stream (a rule may
    // drop it).
    const double resid_std = residual_scaled_init(c) ? c.init_std / std::sqrt(2.0 * c.n_layers) : c.init_std;
    std::vector<ParamSpec> specs;
    size_t off = 0;
    using Init = ParamSpec::Init;
    auto add = [&](const std::string& name, std::vector<long> shape, int sublayer, Init init, double std = 0) {
        ParamSpec s;
        s.name = name;
        s.shape = shape;
        s.numel = 1;
        for (long x : shape) s.numel *= size_t(x);
        s.offset = off;
        s.init = init;
        s.init_std = std;
        s.decay = shape.size() > 1;  // docs/model.md: every 1-D tensor is exempt
        s.sublayer = sublayer;
        off += s.numel;
        specs.push_back(s);
    };
    const double w = c.init_std;
    const ParamAdd rule_add = [&](const std::string& name, std::vector<long> shape, int sublayer, Init init) {
        add(name, std::move(shape), sublayer, init, init == Init::normal ? w : 0.0);
    };
    add("tok_emb", {V, D}, -1, Init::normal, w);
    for (int l = 0; l < c.n_layers; l++) {
        std::string p = "blocks." + std::to_string(l) + ".";
        const int ja = 2 * l, jm = 2 * l + 1;  // the attention and MLP sublayers
        add(p + "attn_norm", {D}, ja, Init::ones);
        add(p + "wq", {H * d, D}, ja, Init::normal, w);  // wq, wk, wv adjacent: the fused wqkv view relies on it
        add(p + "wk", {Hk * d, D}, ja, Init::normal, w);
        add(p + "wv", {Hk * d, D}, ja, Init::normal, w);
        if (c.qk_norm) {
            add(p + "q_norm", {d}, ja, Init::ones);
            add(p + "k_norm", {d}, ja, Init::ones);
        }
        add(p + "wo", {D, H * d}, ja, Init::normal, resid_std);
        add(p + "mlp_norm", {D}, jm, Init::ones);
        add(p + "w_gate", {F, D}, jm, Init::normal, w);  // w_gate, w_up adjacent: the fused wgu view relies on it
        add(p + "w_up", {F, D}, jm, Init::normal, w);
        add(p + "w_down", {D, F}, jm, Init::normal, resid_std);
        if (moda_ffn_kv(c) && l + 1 < c.n_layers) {
            add(p + "w_ffn_k", {Hk * d, D}, jm, Init::normal, w);  // adjacent: the fused wffn view relies on it
            add(p + "w_ffn_v", {Hk * d, D}, jm, Init::normal, w);
        }
        residual_layer_params(c, l, rule_add);
    }
    residual_model_params(c, rule_add);
    add("final_norm", {D}, -1, Init::ones);
    if (!c.tie_embeddings) add("lm_head", {V, D}, -1, Init::normal, w);
    return specs;
}

template <typename T>
Model<T>::Model(const ModelConfig& c, Device device) : cfg(c), specs(param_specs(c)), backend_(&backend_for(device)) {
    const long d = c.head_dim;
    const size_t n = specs.back().offset + specs.back().numel;
    params_ = Buffer(*backend_, dtype_of<param_t>(), n);
    grads_ = Buffer(*backend_, dtype_of<grad_t>(), n);

    T* base = params_.data<T>();
    auto param = [&](const std::string& name) { return base + spec(name).offset; };
    tok_emb_ = param("tok_emb");
    lm_head_ = c.tie_embeddings ? tok_emb_ : param("lm_head");
    for (int l = 0; l < c.n_layers; l++) {
        std::string p = "blocks." + std::to_string(l) + ".";
        LayerParams<T> lp{};
        lp.attn_norm = param(p + "attn_norm");
        lp.wqkv = param(p + "wq");
        lp.q_norm = c.qk_norm ? param(p + "q_norm") : nullptr;
        lp.k_norm = c.qk_norm ? param(p + "k_norm") : nullptr;
        lp.wo = param(p + "wo");
        lp.mlp_norm = param(p + "mlp_norm");
        lp.wgu = param(p + "w_gate");
        lp.wdown = param(p + "w_down");
        lp.wffn = moda_ffn_kv(c) && l + 1 < c.n_layers ? param(p + "w_ffn_k")
                                                                                             : nullptr;
        layers_.push_back(lp);
    }
    const ParamView<T> view{&specs, base, grads_.data<T>()};
    rule_ = make_residual_rule<T, T>(c);
    rule_->bind(view);
    if constexpr (std::is_same_v<T, float>) {
        rule_lp_ = make_residual_rule<T, bf16>(c);
        rule_lp_->bind(view);
    }
    const size_t half = size_t(c.max_seq_len) * d / 2;
    rope_ = Buffer(*backend_, dtype_of<T>(), 2 * half);  // the tables stay in T at every precision
    T* rc = rope_.data<T>();
    rope_table(rc, rc + half, c.max_seq_len, d, c.rope_theta);
    rope_cos_ = rc;
    rope_sin_ = rc + half;
    init_weights(c.seed);
}

template <typename T>
const ParamSpec& Model<T>::spec(const std::string& name) const {
    for (const auto& s : specs)
        if (s.name == name) return s;
    throw Error("no parameter named \"" + name + "\"");
}

// Each tensor as its spec says: a normal draw (in buffer order, from one stream), ones or zeros.
template <typename T>
void Model<T>::init_weights(uint64_t seed) {
    Rng rng(seed);
    std::vector<T> host;
    for (const auto& s : specs) {
        host.assign(s.numel, T(0));
        switch (s.init) {
            case ParamSpec::Init::ones: std::fill(host.begin(), host.end(), T(1)); break;
            case ParamSpec::Init::zeros: break;
            case ParamSpec::Init::unit_last: host.back() = T(1); break;
            case ParamSpec::Init::normal:
                for (size_t i = 0; i < s.numel; i++) host[i] = T(rng.normal() * s.init_std);
                break;
        }
        param_from_host(s, host.data());
    }
}

template <typename T>
void Model<T>::set_precision(Precision p) {
    if (p == precision_) return;
    if constexpr (!std::is_same_v<T, float>) {
        if (p == Precision::bf16) throw Error("bf16 precision needs a float model (its master weights are float)");
    } else {
        if (p == Precision::bf16 && params_lp_.numel() == 0) params_lp_ = Buffer(*backend_, DType::bf16, params_.numel());
    }
    precision_ = p;
    params_lp_stale_ = true;
    plan_N_ = -1;  // the activations are re-planned in the new types
    have_targets_ = false;
    B_ = T_ = 0;
}

template <typename T>
void Model<T>::refresh_low_precision_params() {
    if constexpr (std::is_same_v<T, float>) {
        convert_forward(params_lp_.data<bf16>(), params_.data<T>(), params_.numel());
        params_lp_stale_ = false;
    }
}

template <typename T>
void Model<T>::zero_grad() {
    fill_zero(grad_data(), grads_.numel());
}

template <typename T>
void Model<T>::logits_to_host(T* host, long first, long rows) const {
    STRATA_CHECK(first >= 0 && rows >= 0 && first + rows <= B_ * T_, "logits_to_host: rows outside the last forward");
    if (have_targets_)
        throw Error("logits_to_host: a forward with targets fuses the LM head with the loss and keeps no logits; "
                    "run forward without targets for them");
    const long V = cfg.vocab_size;
    if constexpr (std::is_same_v<T, float>) {
        if (precision_ == Precision::bf16) {
            std::vector<bf16> staged(size_t(rows * V));
            backend_->copy_to_host(staged.data(), ab_.logits + first * V, staged.size() * sizeof(bf16));
            for (size_t i = 0; i < staged.size(); i++) host[i] = float(staged[i]);
            return;
        }
    }
    backend_->copy_to_host(host, a_.logits + first * V, size_t(rows * V) * sizeof(T));
}

// The activations for N = B·T rows, in arena order: the model's, with the residual rule's state and
// scratch where they belong. Buffers that only alias another (unnormed q/k, the shared ones) are set
// after carving, in layout().
template <typename T>
template <typename A>
void Model<T>::describe_activations(TensorPlan& P, const ModelConfig& c, long N, bool training, ActsOf<A>& a,
                                    ResidualRule<T, A>& rule, bool keep_outputs) {
    const long D = c.d_model, H = c.n_heads, Hk = c.n_kv_heads, d = c.head_dim, F = c.ffn_hidden, V = c.vocab_size,
               L = c.n_layers;
    const long QKV = (H + 2 * Hk) * d, kvd = Hk * d;
    const bool moda = c.attention == AttentionKind::moda;
    constexpr bool same = std::is_same_v<A, T>;  // fp32 (fp64): no conversions, no converted copies
    const long slots = moda ? moda_slots(c) : 0;
    // Forward-only intermediates have one buffer for every layer (layer 0's; layout() points the other
    // layers at it): the qkv projection (split into q, k, v at once), the SwiGLU output (the backward
    // recomputes it from gu), and each sublayer's own output f(·) once the rule has taken it into its
    // state — unless the rule's backward reads it (reordered norms, ReZero), or keep_outputs
    // (diagnostics read every sublayer's output after the forward).
    const bool share_f_out = !keep_outputs && !rule.backward_reads_outputs();
    P.clear();
    auto t = [&](auto** where, const char* name, long n, int layer = -1) { P.add(name, layer, size_t(n), where); };
    t(&a.tokens, "tokens", N);
    t(&a.pos, "pos", N);
    a.targets = nullptr;
    if (training) t(&a.targets, "targets", N);
    t(&a.x0, "x0", N * D);
    rule.describe(P, N, training);
    a.layers.resize(size_t(L));  // no-op after the first call
    a.f_out.assign(size_t(2 * L), nullptr);  // capacity kept: no allocation after the first call
    if (!share_f_out)
        for (long j = 0; j < 2 * L; j++) t(&a.f_out[size_t(j)], "f_out", N * D, int(j / 2));
    for (int l = 0; l < L; l++) {
        LayerActs<A>& la = a.layers[size_t(l)];
        la.qkv = la.act = nullptr;  // qkv: added with the forward-only buffers
        t(&la.q_raw, "q_raw", N * H * d, l);
        t(&la.k_raw, "k_raw", N * kvd, l);
        t(&la.v, "v", N * kvd, l);
        la.q = la.k = nullptr;
        la.q_rstd = la.k_rstd = nullptr;
        if (c.qk_norm) {
            t(&la.q, "q", N * H * d, l);
            t(&la.k, "k", N * kvd, l);
            t(&la.q_rstd, "q_rstd", N * H, l);
            t(&la.k_rstd, "k_rstd", N * Hk, l);
        }
        t(&la.att, "att", N * H * d, l);
        t(&la.lse, "lse", N * H, l);
        t(&la.gu, "gu", N * 2 * F, l);
        if (l == 0) t(&la.act, "act (every layer's)", N * F);
        la.ffn_kv = la.fk_raw = la.fk = nullptr;
        la.fk_rstd = nullptr;
        if (moda_ffn_kv(c) && l + 1 < L) {
            t(&la.ffn_kv, "ffn_kv", N * 2 * kvd, l);
            t(&la.fk_raw, "fk_raw", N * kvd, l);
            if (c.qk_norm) {
                t(&la.fk, "fk", N * kvd, l);
                t(&la.fk_rstd, "fk_rstd", N * Hk, l);
            }
        }
    }
    a.depth_k = a.depth_v = nullptr;
    a.ddepth_k = a.ddepth_v = nullptr;
    if (moda) {
        t(&a.depth_k, "depth_k", N * slots * kvd);
        t(&a.depth_v, "depth_v", N * slots * kvd);
    }
    t(&a.lnf, "lnf", N * D);
    t(&a.lnf_rstd, "lnf_rstd", N);
    t(&a.losses, "losses", N);
    t(&a.lse, "lse", N);
    // The forward-only buffers: the shared qkv and f(·), and the head's output. With targets the head is
    // fused with the loss (head_crossentropy_forward): no (N, V) logits, the (N, V) gradient instead,
    // and a one-chunk float scratch when the GEMM inputs are bf16.
    a.logits = a.dlogits = nullptr;
    a.head_scratch = nullptr;
    a.dy_a = a.dqkv_a = nullptr;
    auto forward_only = [&] {
        t(&a.layers[0].qkv, "qkv (every layer's)", N * QKV);
        if (share_f_out) t(&a.f_out[0], "f_out (every sublayer's)", N * D);
    };
    if (!training) {
        forward_only();
        t(&a.logits, "logits", N * V);
        return;
    }
    t(&a.dlnf, "dlnf", N * D);
    // The backward's scratch shares bytes with the forward-only buffers: backward() reads dlogits only
    // in the head's GEMM, which writes dlnf alone, before any of its scratch is touched; and a
    // backward consumes its forward (a second one needs a new forward).
    P.overlay_begin();
    forward_only();
    t(&a.dlogits, "dlogits", N * V);
    if (!same) t(&a.head_scratch, "head_scratch", std::min(N, kHeadChunkRows) * V);
    P.overlay_next();
    // The rule's scratch, then what every sublayer's backward shares; the MoDA FFN's depth slot
    // (mlp_backward) borrows dk, dk_raw, dqkv and dqkv_a.
    rule.describe_backward(P, N);
    if (!same) t(&a.dy_a, "dy_a", N * D);
    a.dq_raw = a.dk_raw = nullptr;
    auto attn_kv = [&] {
        t(&a.dqkv, "dqkv", N * QKV);
        t(&a.dk, "dk", N * kvd);
        t(&a.dv, "dv", N * kvd);
        if (c.qk_norm) t(&a.dk_raw, "dk_raw", N * kvd);
        if (!same) t(&a.dqkv_a, "dqkv_a", N * QKV);
    };
    if (moda) {
        attn_kv();
        t(&a.ddepth_k, "ddepth_k", N * slots * kvd);
        t(&a.ddepth_v, "ddepth_v", N * slots * kvd);
    }
    // Only one sublayer's backward runs at a time: the attention's scratch and the MLP's share bytes.
    P.overlay_begin();
    t(&a.datt, "datt", N * H * d);
    t(&a.dq, "dq", N * H * d);
    if (c.qk_norm) t(&a.dq_raw, "dq_raw", N * H * d);
    if (!moda) attn_kv();
    P.overlay_next();
    t(&a.dgu, "dgu", N * 2 * F);
    t(&a.dact, "dact", N * F);
    P.overlay_end();
    P.overlay_end();
}

// Plans and carves the arena for N = B·T rows. The arena only grows and the plan keeps its capacity,
// so after the first step of a given shape nothing is allocated.
template <typename T>
template <typename A>
void Model<T>::layout(long N, bool training) {
    if (N == plan_N_ && training == plan_training_ && keep_sublayer_outputs == plan_keep_) return;
    ActsOf<A>& a = acts<A>();
    ResidualRule<T, A>& r = rule<A>();
    describe_activations(plan_, cfg, N, training, a, r, keep_sublayer_outputs);
    if (arena_.bytes() < plan_.bytes()) {
        arena_ = Buffer();  // free the old arena before taking the larger one
        arena_ = Buffer(*backend_, DType::u8, plan_.bytes());
    }
    plan_.carve(arena_.raw());
    for (A*& f : a.f_out)  // the aliases
        if (!f) f = a.f_out[0];
    for (LayerActs<A>& la : a.layers) {
        if (!la.qkv) la.qkv = a.layers[0].qkv, la.act = a.layers[0].act;
        if (!la.q) la.q = la.q_raw, la.k = la.k_raw;  // no QK-norm: RoPE rotates the split q/k in place
        if (la.fk_raw && !la.fk) la.fk = la.fk_raw;
    }
    if (training && !a.dq_raw) a.dq_raw = a.dq, a.dk_raw = a.dk;
    r.io = RuleIO<T, A>{N, a.x0, a.lnf, a.lnf_rstd};
    r.carved();
    plan_N_ = N;
    plan_training_ = training;
    plan_keep_ = keep_sublayer_outputs;
}

// Copies a forward's host inputs into the arena: token ids, their positions (pos0 + i % seq) and the
// targets when there are any.
template <typename T>
void Model<T>::stage_inputs(const int32_t* tokens, const int32_t* targets, long N, long pos0, long seq) {
    int32_t *tok = a_.tokens, *tgt = a_.targets, *pos = a_.pos;
    if (precision_ == Precision::bf16) tok = ab_.tokens, tgt = ab_.targets, pos = ab_.pos;
    backend_->copy_from_host(tok, tokens, size_t(N) * sizeof(int32_t));
    if (targets) backend_->copy_from_host(tgt, targets, size_t(N) * sizeof(int32_t));
    pos_host_.resize(size_t(N));
    for (long i = 0; i < N; i++) pos_host_[size_t(i)] = int32_t(pos0 + i % seq);
    backend_->copy_from_host(pos, pos_host_.data(), size_t(N) * sizeof(int32_t));
}

namespace {
// A T gradient as the A operand of a GEMM backward: itself when A is T, else converted into scratch.
template <typename A, typename T>
const A* as_act(const T* grad, A* scratch, long n) {
    if constexpr (std::is_same_v<A, T>) {
        return grad;
    } else {
        convert_forward(scratch, grad, size_t(n));
        return scratch;
    }
}
}  // namespace

// ---- attention sublayer f(in) ------------------------------------------------------------------
template <typename T>
template <typename A>
void Model<T>::attn_forward(long l, const A* in, A* out, long N, const AttnDims& ad, A* kc, A* vc) {
    const LayerParams<T>& p = layers_[l];
    ActsOf<A>& a = acts<A>();
    LayerActs<A>& la = a.layers[l];
    const long D = cfg.d_model, H = cfg.n_heads, Hk = cfg.n_kv_heads, d = cfg.head_dim, QKV = (H + 2 * Hk) * d;
    matmul_forward(la.qkv, in, W<A>(p.wqkv), N, D, QKV);
    qkv_split_forward(la.q_raw, la.k_raw, la.v, la.qkv, N, H * d, Hk * d, Hk * d);
    if (cfg.qk_norm) {  // else q, k are q_raw, k_raw (layout)
        rmsnorm_forward(la.q, la.q_rstd, la.q_raw, p.q_norm, N * H, d, cfg.norm_eps);
        rmsnorm_forward(la.k, la.k_rstd, la.k_raw, p.k_norm, N * Hk, d, cfg.norm_eps);
    }
    rope_forward(la.q, a.pos, rope_cos_, rope_sin_, N, H, d);
    rope_forward(la.k, a.pos, rope_cos_, rope_sin_, N, Hk, d);
    const A* K = la.k;
    const A* Vv = la.v;
    if (kc) {  // decoding: append this step's keys/values to the cache and attend over all of it
        kv_append_forward(kc, vc, la.k, la.v, ad.B, ad.Tq, ad.q_pos0, ad.kv_bstride, Hk * d);
        K = kc;
        Vv = vc;
    }
    if (cfg.attention == AttentionKind::moda) {  // the softmax also covers the earlier layers' K/V
        ModaParams<A> mp = moda_params<A>(l, ad);
        mp.q = la.q, mp.k = K, mp.v = Vv, mp.out = la.att, mp.lse = la.lse;
        moda_forward(mp);
        if (l + 1 < cfg.n_layers)  // this layer's K/V become a depth slot for the layers after it
            depth_write(moda_slots_read(cfg, l), la.k, Hk * d, la.v, Hk * d, ad.B, ad.Tq);
    } else {
        attention_forward(la.att, la.lse, la.q, K, Vv, ad);
    }
    matmul_forward(out, la.att, W<A>(p.wo), N, H * d, D);
}

template <typename T>
template <typename A>
void Model<T>::attn_backward(long l, const A* in, T* din, const T* dout, long N, const AttnDims& ad, Into din_into) {
    const LayerParams<T>& p = layers_[l];
    ActsOf<A>& a = acts<A>();
    LayerActs<A>& la = a.layers[l];
    const long D = cfg.d_model, H = cfg.n_heads, Hk = cfg.n_kv_heads, d = cfg.head_dim, QKV = (H + 2 * Hk) * d;
    matmul_backward(a.datt, g(p.wo), as_act(dout, a.dy_a, N * D), la.att, W<A>(p.wo), N, H * d, D, Into::overwrite);
    fill_zero(a.dq, size_t(N * H * d));
    fill_zero(a.dk, size_t(N * Hk * d));
    fill_zero(a.dv, size_t(N * Hk * d));
    if (cfg.attention == AttentionKind::moda) {
        const long slots = moda_slots(cfg);
        ModaParams<A> mp = moda_params<A>(l, ad);
        mp.q = la.q, mp.k = la.k, mp.v = la.v, mp.out = la.att, mp.lse = la.lse;
        moda_backward(mp, ModaGrads<A>{a.dq, a.dk, a.dv, a.ddepth_k, a.ddepth_v, a.datt});
        if (l + 1 < cfg.n_layers) {  // what the later layers sent back through this layer's depth slot
            depth_slot_backward(a.dk, Hk * d, a.ddepth_k, slots, moda_slots_read(cfg, l), N, Hk * d);
            depth_slot_backward(a.dv, Hk * d, a.ddepth_v, slots, moda_slots_read(cfg, l), N, Hk * d);
        }
    } else {
        attention_backward(a.dq, a.dk, a.dv, a.datt, la.att, la.lse, la.q, la.k, la.v, ad);
    }
    rope_backward(a.dq, a.pos, rope_cos_, rope_sin_, N, H, d);
    rope_backward(a.dk, a.pos, rope_cos_, rope_sin_, N, Hk, d);
    if (cfg.qk_norm) {  // else dq_raw, dk_raw are dq, dk (layout)
        rmsnorm_backward(a.dq_raw, g(p.q_norm), a.dq, la.q_raw, p.q_norm, la.q_rstd, N * H, d, 1.0, Into::overwrite);
        rmsnorm_backward(a.dk_raw, g(p.k_norm), a.dk, la.k_raw, p.k_norm, la.k_rstd, N * Hk, d, 1.0, Into::overwrite);
    }
    qkv_split_backward(a.dqkv, a.dq_raw, a.dk_raw, a.dv, N, H * d, Hk * d, Hk * d);
    matmul_backward(din, g(p.wqkv), as_act(a.dqkv, a.dqkv_a, N * QKV), in, W<A>(p.wqkv), N, D, QKV, din_into);
}

// ---- MLP sublayer f(in) ----------------------------------------------------------------------
template <typename T>
template <typename A>
void Model<T>::mlp_forward(long l, const A* in, A* out, long N) {
    const LayerParams<T>& p = layers_[l];
    ActsOf<A>& a = acts<A>();
    LayerActs<A>& la = a.layers[l];
    const long D = cfg.d_model, F = cfg.ffn_hidden;
    matmul_forward(la.gu, in, W<A>(p.wgu), N, D, 2 * F);
    swiglu_forward(la.act, la.gu, N, F);
    matmul_forward(out, la.act, W<A>(p.wdown), N, F, D);
    if (p.wffn) {  // MoDA: the FFN's input, projected to one more depth K/V slot (K normed and rotated like K)
        const long Hk = cfg.n_kv_heads, d = cfg.head_dim, kvd = Hk * d;
        matmul_forward(la.ffn_kv, in, W<A>(p.wffn), N, D, 2 * kvd);
        depth_slot_forward(la.fk_raw, 1, 0, la.ffn_kv, 2 * kvd, N, kvd);  // the K half, contiguous
        if (cfg.qk_norm) rmsnorm_forward(la.fk, la.fk_rstd, la.fk_raw, layers_[l].k_norm, N * Hk, d, cfg.norm_eps);
        rope_forward(la.fk, a.pos, rope_cos_, rope_sin_, N, Hk, d);
        // the K half normed and rotated, the V half in place
        depth_write(moda_slots_read(cfg, l) + 1, la.fk, kvd, la.ffn_kv + kvd, 2 * kvd, a.depth.B, N / a.depth.B);
    }
}

template <typename T>
template <typename A>
void Model<T>::mlp_backward(long l, const A* in, T* din, const T* dout, long N, Into din_into) {
    const LayerParams<T>& p = layers_[l];
    ActsOf<A>& a = acts<A>();
    LayerActs<A>& la = a.layers[l];
    const long D = cfg.d_model, F = cfg.ffn_hidden;
    swiglu_forward(la.act, la.gu, N, F);  // the forward's act, recomputed: every layer shares its buffer
    matmul_backward(a.dact, g(p.wdown), as_act(dout, a.dy_a, N * D), la.act, W<A>(p.wdown), N, F, D, Into::overwrite);
    swiglu_backward(a.dgu, a.dact, la.gu, N, F, Into::overwrite);
    matmul_backward(din, g(p.wgu), a.dgu, in, W<A>(p.wgu), N, D, 2 * F, din_into);
    if (p.wffn) {  // MoDA: the gradient the later layers sent back through this FFN's depth slot
        const long Hk = cfg.n_kv_heads, d = cfg.head_dim, kvd = Hk * d, slots = moda_slots(cfg);
        const long slot = moda_slots_read(cfg, l) + 1;
        T* dfk = a.dk;  // free scratch here (N, Hk·d)
        fill_zero(dfk, size_t(N * kvd));
        depth_slot_backward(dfk, kvd, a.ddepth_k, slots, slot, N, kvd);
        rope_backward(dfk, a.pos, rope_cos_, rope_sin_, N, Hk, d);
        const T* dk_raw = dfk;
        if (cfg.qk_norm) {
            rmsnorm_backward(a.dk_raw, g(layers_[l].k_norm), dfk, la.fk_raw, layers_[l].k_norm, la.fk_rstd, N * Hk, d,
                             1.0, Into::overwrite);
            dk_raw = a.dk_raw;
        }
        T* dkv = a.dqkv;  // (N, 2·Hk·d) fits in the (N, QKV) scratch: [dK | dV]
        fill_zero(dkv, size_t(N * 2 * kvd));
        depth_slot_backward(dkv, 2 * kvd, dk_raw, 1, 0, N, kvd);
        depth_slot_backward(dkv + kvd, 2 * kvd, a.ddepth_v, slots, slot, N, kvd);
        matmul_backward(din, g(p.wffn), as_act(static_cast<const T*>(dkv), a.dqkv_a, N * 2 * kvd), in, W<A>(p.wffn), N,
                        D, 2 * kvd);
    }
}

// ---- MoDA's depth buffer --------------------------------------------------------------------------
template <typename T>
template <typename A>
ModaParams<A> Model<T>::moda_params(long l, const AttnDims& ad) const {
    const typename ActsOf<A>::DepthIn& dep = acts<A>().depth;
    ModaParams<A> mp;
    mp.dims = ad;
    mp.kd = dep.k, mp.vd = dep.v;
    mp.L = moda_slots_read(cfg, l);
    mp.L_max = moda_slots(cfg);
    mp.depth_rows = dep.rows, mp.depth_pos0 = dep.pos0;
    mp.mask = cfg.moda_sequence_mask;
    mp.visibility = cfg.moda_depth_visibility;
    mp.chunk = cfg.moda_chunk_size;
    mp.window = cfg.moda_depth_window;
    return mp;
}

// Training, prefill and decoding with own-token visibility read this call's rows of the activations.
// Decoding under chunk visibility also needs the slots of the chunk's earlier tokens, made by earlier
// calls: the cache keeps them in rows 0.. (positions from the chunk's start), and this call's tokens
// follow them. The rows grow (an allocation) only for a call longer than any before.
template <typename T>
template <typename A>
void Model<T>::depth_begin(long B, long n, long pos0, KVCache<T>* cache) {
    ActsOf<A>& a = acts<A>();
    a.depth = {a.depth_k, a.depth_v, B, n, 0, pos0};
    if (cfg.attention != AttentionKind::moda || cfg.moda_depth_visibility != DepthVisibility::chunk || !cache) return;
    const long C = cfg.moda_chunk_size, start = pos0 / C * C, rows = pos0 - start + n;
    const long row_n = moda_slots(cfg) * cfg.n_kv_heads * cfg.head_dim;
    if (cache->depth_cap < rows) {  // keep the rows held so far
        const DType dt = dtype_of<A>();
        Buffer k(*backend_, dt, size_t(B * rows * row_n)), v(*backend_, dt, size_t(B * rows * row_n));
        for (long b = 0; b < B && cache->depth_cap > 0; b++) {
            const size_t from = size_t(b * cache->depth_cap * row_n), to = size_t(b * rows * row_n);
            copy_forward(k.template data<A>() + to, cache->depth_k.template data<A>() + from, size_t((pos0 - start) * row_n));
            copy_forward(v.template data<A>() + to, cache->depth_v.template data<A>() + from, size_t((pos0 - start) * row_n));
        }
        cache->depth_k = std::move(k);
        cache->depth_v = std::move(v);
        cache->depth_cap = rows;
    }
    a.depth = {cache->depth_k.template data<A>(), cache->depth_v.template data<A>(), B, cache->depth_cap, pos0 - start,
               start};
}

// After a decoding call under chunk visibility: the rows of the chunk the next token falls in (its
// tokens so far, fewer than C) move to rows 0.. They never overlap their old place, which is at least
// one chunk further on.
template <typename T>
template <typename A>
void Model<T>::depth_end(long B, long n, long pos0, KVCache<T>& cache) {
    if (cfg.attention != AttentionKind::moda || cfg.moda_depth_visibility != DepthVisibility::chunk) return;
    const long C = cfg.moda_chunk_size, start = pos0 / C * C, end = pos0 + n, next = end / C * C;
    const long keep = end - next, row_n = moda_slots(cfg) * cfg.n_kv_heads * cfg.head_dim;
    if (next == start || keep == 0) return;  // still the same chunk, or a new one with nothing in it yet
    for (long b = 0; b < B; b++) {
        const size_t from = size_t((b * cache.depth_cap + next - start) * row_n), to = size_t(b * cache.depth_cap * row_n);
        copy_forward(cache.depth_k.template data<A>() + to, cache.depth_k.template data<A>() + from, size_t(keep * row_n));
        copy_forward(cache.depth_v.template data<A>() + to, cache.depth_v.template data<A>() + from, size_t(keep * row_n));
    }
}

// Slot `slot` of this call's n tokens per batch row: K and V rows from (B·n, ·) sources.
template <typename T>
template <typename A>
void Model<T>::depth_write(long slot, const A* k, long k_stride, const A* v, long v_stride, long B, long n) {
    const typename ActsOf<A>::DepthIn& dep = acts<A>().depth;
    const long slots = moda_slots(cfg), kvd = cfg.n_kv_heads * cfg.head_dim;
    if (dep.rows == n && dep.row0 == 0) {  // this call's rows are the buffer: one pass
        depth_slot_forward(dep.k, slots, slot, k, k_stride, B * n, kvd);
        depth_slot_forward(dep.v, slots, slot, v, v_stride, B * n, kvd);
        return;
    }
    for (long b = 0; b < B; b++) {
        const long at = (b * dep.rows + dep.row0) * slots * kvd;
        depth_slot_forward(dep.k + at, slots, slot, k + b * n * k_stride, k_stride, n, kvd);
        depth_slot_forward(dep.v + at, slots, slot, v + b * n * v_stride, v_stride, n, kvd);
    }
}

// ---- the sublayer loop: f_j inside the residual rule (src/model/residual/rule.h) ------------------
template <typename T>
template <typename A>
void Model<T>::layers_forward(long N, const AttnDims& ad, KVCache<T>* cache) {
    ActsOf<A>& a = acts<A>();
    ResidualRule<T, A>& r = rule<A>();
    const long per_layer = cache ? cache->B * cache->max_T * cfg.n_kv_heads * cfg.head_dim : 0;
    const int n_sub = 2 * cfg.n_layers;
    std::vector<char> skipped;  // empty: none
    for (int j : skip_sublayers) {
        if (j < 0 || j >= n_sub)
            throw Error("skip_sublayers: " + std::to_string(j) + " is not a sublayer (0 .. " + std::to_string(n_sub - 1) + ")");
        if (skipped.empty()) skipped.assign(size_t(n_sub), 0);
        skipped[size_t(j)] = 1;
    }
    if constexpr (!std::is_same_v<A, T>) {
        if (sublayer_hook) throw Error("sublayer_hook needs fp32 precision: its tensors are the model's own type");
    }
    r.begin(skipped);
    for (int j = 0; j < n_sub; j++) {
        const long l = j / 2;
        const A* in = r.input(j);
        A* f = a.f_out[size_t(j)];
        if (j % 2 == 0) {
            A* kc = cache ? cache->k.template data<A>() + l * per_layer : nullptr;
            A* vc = cache ? cache->v.template data<A>() + l * per_layer : nullptr;
            attn_forward(l, in, f, N, ad, kc, vc);
        } else {
            mlp_forward(l, in, f, N);
        }
        if (!skipped.empty() && skipped[size_t(j)]) fill_zero(f, size_t(N * cfg.d_model));
        if constexpr (std::is_same_v<A, T>) {
            if (sublayer_hook) sublayer_hook(j, r.input_state(j), in, f, N);
        }
        r.output(j, f);
    }
    r.finish();
}

// dlnf (the gradient w.r.t. the head's input) is in a.dlnf; leaves the embeddings' gradient with the
// rule (embedding_grad).
template <typename T>
template <typename A>
void Model<T>::layers_backward(long N, const AttnDims& ad, const std::function<void(int)>& layer_done) {
    ActsOf<A>& a = acts<A>();
    ResidualRule<T, A>& r = rule<A>();
    r.finish_backward(a.dlnf);
    // Layer l's gradients are final once both its sublayers' backwards and their rule's gathering
    // are done; the layers are reported in descending order, as soon as they are.
    auto done_at = [&](long l) { return std::min(r.grads_final_at(int(2 * l)), r.grads_final_at(int(2 * l + 1))); };
    long next_done = cfg.n_layers - 1;
    for (int j = 2 * cfg.n_layers - 1; j >= 0; j--) {
        const long l = j / 2;
        const A* f = a.f_out[size_t(j)];
        const T* dout = r.output_grad(j, f);
        const A* in = r.input_again(j);
        Into into = Into::add;
        T* din = r.input_grad(j, &into);
        if (j % 2 == 0) attn_backward(l, in, din, dout, N, ad, into);
        else mlp_backward(l, in, din, dout, N, into);
        r.input_backward(j);
        while (layer_done && next_done >= 0 && done_at(next_done) >= j) layer_done(int(next_done--));
    }
}

template <typename T>
double Model<T>::forward(const int32_t* tokens, const int32_t* targets, long B, long seq) {
    if (B <= 0 || seq <= 0) throw Error("forward: batch and sequence length must be positive");
    if (seq > cfg.max_seq_len)
        throw Error("sequence length " + std::to_string(seq) + " exceeds the model's max_seq_len " +
                    std::to_string(cfg.max_seq_len));
    const long N = B * seq;
    for (long i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= cfg.vocab_size)
            throw Error("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (size " +
                        std::to_string(cfg.vocab_size) + ")");
    if (targets)
        for (long i = 0; i < N; i++)
            if (targets[i] >= cfg.vocab_size)
                throw Error("target id " + std::to_string(targets[i]) + " is outside the vocabulary");
    B_ = B;
    T_ = seq;
    if constexpr (std::is_same_v<T, float>) {
        if (precision_ == Precision::bf16) {
            layout<bf16>(N, targets != nullptr);
            stage_inputs(tokens, targets, N, 0, seq);
            return forward_impl<bf16>(targets, B, seq);
        }
    }
    layout<T>(N, targets != nullptr);
    stage_inputs(tokens, targets, N, 0, seq);
    return forward_impl<T>(targets, B, seq);
}

template <typename T>
template <typename A>
double Model<T>::forward_impl(const int32_t* targets, long B, long seq) {
    ActsOf<A>& a = acts<A>();
    const long N = B * seq;
    if constexpr (!std::is_same_v<A, T>) {
        if (params_lp_stale_) refresh_low_precision_params();
    }
    embedding_forward(a.x0, a.tokens, tok_emb_, N, cfg.d_model);
    AttnDims ad{B, seq, seq, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, 0, seq * cfg.n_kv_heads * cfg.head_dim};
    depth_begin<A>(B, seq, 0, nullptr);
    layers_forward<A>(N, ad, nullptr);
    have_targets_ = targets != nullptr;
    backward_pending_ = have_targets_;
    if (!have_targets_) {
        matmul_forward(a.logits, a.lnf, W<A>(lm_head_), N, cfg.d_model, cfg.vocab_size);
        return 0.0;
    }
    n_counted_ = head_crossentropy_forward(a.losses, a.lse, a.dlogits, a.head_scratch, a.lnf, W<A>(lm_head_),
                                           a.targets, N, cfg.d_model, cfg.vocab_size, kHeadChunkRows);
    const double sum = sum_ordered(a.losses, N);
    return n_counted_ > 0 ? sum / double(n_counted_) : 0.0;
}

template <typename T>
void Model<T>::backward(const std::function<void(int)>& layer_done) {
    if (!have_targets_) throw Error("backward() needs a forward() with targets first");
    if (!backward_pending_)
        throw Error("backward() consumes its forward's activations: run forward() with targets again first");
    if (!skip_sublayers.empty()) throw Error("backward() is not defined with skip_sublayers set (a diagnostic)");
    if (sublayer_hook) throw Error("backward() is not defined with a sublayer_hook set (a diagnostic)");
    backward_pending_ = false;
    if constexpr (std::is_same_v<T, float>) {
        if (precision_ == Precision::bf16) return backward_impl<bf16>(layer_done);
    }
    backward_impl<T>(layer_done);
}

template <typename T>
template <typename A>
void Model<T>::backward_impl(const std::function<void(int)>& layer_done) {
    ActsOf<A>& a = acts<A>();
    const long N = B_ * T_, D = cfg.d_model, V = cfg.vocab_size;
    AttnDims ad{B_, T_, T_, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, 0, T_ * cfg.n_kv_heads * cfg.head_dim};
    // a.dlogits came with the loss (head_crossentropy_forward): the mean loss's gradient, zero when
    // no row was counted. It shares bytes with the scratch below (describe_activations): nothing else
    // is written until this GEMM is done.
    matmul_backward(a.dlnf, g(lm_head_), a.dlogits, a.lnf, W<A>(lm_head_), N, D, V, Into::overwrite);
    if (cfg.attention == AttentionKind::moda) {
        const size_t n = size_t(N) * moda_slots(cfg) * cfg.n_kv_heads * cfg.head_dim;
        fill_zero(a.ddepth_k, n);
        fill_zero(a.ddepth_v, n);
    }
    layers_backward<A>(N, ad, layer_done);
    embedding_backward(g(tok_emb_), rule<A>().embedding_grad(), a.tokens, N, D);
}

template <typename T>
void Model<T>::init_cache(KVCache<T>& cache, long B, long max_T) const {
    if (max_T > cfg.max_seq_len)
        throw Error("cache length " + std::to_string(max_T) + " exceeds the model's max_seq_len " +
                    std::to_string(cfg.max_seq_len));
    cache.B = B;
    cache.max_T = max_T;
    cache.len = 0;
    size_t n = size_t(cfg.n_layers) * B * max_T * cfg.n_kv_heads * cfg.head_dim;
    const DType dt = precision_ == Precision::bf16 ? DType::bf16 : dtype_of<T>();
    cache.k = Buffer(*backend_, dt, n);
    cache.v = Buffer(*backend_, dt, n);
    cache.depth_k = Buffer();
    cache.depth_v = Buffer();
    cache.depth_cap = 0;
}

template <typename T>
void Model<T>::forward_cached(const int32_t* tokens, long B, long n, KVCache<T>& cache) {
    if (B != cache.B) throw Error("forward_cached: batch size differs from the cache's");
    if (cache.len + n > cache.max_T)
        throw Error("sequence length " + std::to_string(cache.len + n) + " exceeds the cache/model maximum " +
                    std::to_string(cache.max_T));
    const DType want = precision_ == Precision::bf16 ? DType::bf16 : dtype_of<T>();
    if (cache.k.dtype() != want)
        throw Error(std::string("forward_cached: the cache holds ") + to_string(cache.k.dtype()) +
                    " but the model runs in " + to_string(precision_) + "; call init_cache again");
    const long N = B * n;
    for (long i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= cfg.vocab_size)
            throw Error("token id " + std::to_string(tokens[i]) + " is outside the vocabulary");
    B_ = B;
    T_ = n;
    have_targets_ = false;
    if constexpr (std::is_same_v<T, float>) {
        if (precision_ == Precision::bf16) {
            layout<bf16>(N, false);
            stage_inputs(tokens, nullptr, N, cache.len, n);
            forward_cached_impl<bf16>(B, n, cache);
            return;
        }
    }
    layout<T>(N, false);
    stage_inputs(tokens, nullptr, N, cache.len, n);
    forward_cached_impl<T>(B, n, cache);
}

template <typename T>
template <typename A>
void Model<T>::forward_cached_impl(long B, long n, KVCache<T>& cache) {
    ActsOf<A>& a = acts<A>();
    if constexpr (!std::is_same_v<A, T>) {
        if (params_lp_stale_) refresh_low_precision_params();
    }
    embedding_forward(a.x0, a.tokens, tok_emb_, B * n, cfg.d_model);
    AttnDims ad{B, n, cache.len + n, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cache.len,
                cache.max_T * cfg.n_kv_heads * cfg.head_dim};
    depth_begin<A>(B, n, cache.len, &cache);
    layers_forward<A>(B * n, ad, &cache);
    depth_end<A>(B, n, cache.len, cache);
    matmul_forward(a.logits, a.lnf, W<A>(lm_head_), B * n, cfg.d_model, cfg.vocab_size);
    cache.len += n;
}

template class Model<float>;
template class Model<double>;
template ModaParams<float> Model<float>::moda_params<float>(long, const AttnDims&) const;
template ModaParams<bf16> Model<float>::moda_params<bf16>(long, const AttnDims&) const;
template ModaParams<double> Model<double>::moda_params<double>(long, const AttnDims&) const;
template void Model<double>::describe_activations<double>(TensorPlan&, const ModelConfig&, long, bool,
                                                          ActsOf<double>&, ResidualRule<double, double>&, bool);
template void Model<float>::describe_activations<float>(TensorPlan&, const ModelConfig&, long, bool, ActsOf<float>&,
                                                        ResidualRule<float, float>&, bool);
template void Model<float>::describe_activations<bf16>(TensorPlan&, const ModelConfig&, long, bool, ActsOf<bf16>&,
                                                       ResidualRule<float, bf16>&, bool);

}  // namespace strata
