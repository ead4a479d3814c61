#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"

namespace strata {

std::vector<ParamSpec> param_specs(const ModelConfig& c) {
    c.validate("model config");
    const long V = c.vocab_size, D = c.d_model, H = c.n_heads, Hk = c.n_kv_heads, d = c.head_dim, F = c.ffn_hidden;
    std::vector<ParamSpec> specs;
    size_t off = 0;
    auto add = [&](const std::string& name, std::vector<long> shape) {
        ParamSpec s;
        s.name = name;
        s.shape = shape;
        s.numel = 1;
        for (long x : shape) s.numel *= size_t(x);
        s.offset = off;
        s.decay = shape.size() > 1;
        off += s.numel;
        specs.push_back(s);
    };
    add("tok_emb", {V, D});
    for (int l = 0; l < c.n_layers; l++) {
        std::string p = "blocks." + std::to_string(l) + ".";
        add(p + "attn_norm", {D});
        add(p + "wq", {H * d, D});  // wq, wk, wv adjacent: the fused wqkv view relies on it
        add(p + "wk", {Hk * d, D});
        add(p + "wv", {Hk * d, D});
        if (c.qk_norm) {
            add(p + "q_norm", {d});
            add(p + "k_norm", {d});
        }
        add(p + "wo", {D, H * d});
        add(p + "mlp_norm", {D});
        add(p + "w_gate", {F, D});  // w_gate, w_up adjacent: the fused wgu view relies on it
        add(p + "w_up", {F, D});
        add(p + "w_down", {D, F});
        if (c.attention == AttentionKind::moda && c.moda_ffn_kv && l + 1 < c.n_layers) {
            add(p + "w_ffn_k", {Hk * d, D});  // adjacent: the fused wffn view relies on it
            add(p + "w_ffn_v", {Hk * d, D});
        }
        if (c.residual != Residual::standard) {
            add(p + "attn_res_query", {D});
            add(p + "attn_res_norm", {D});
            add(p + "mlp_res_query", {D});
            add(p + "mlp_res_norm", {D});
        }
    }
    if (c.residual != Residual::standard) {
        add("out_res_query", {D});
        add("out_res_norm", {D});
    }
    add("final_norm", {D});
    if (!c.tie_embeddings) add("lm_head", {V, D});
    return specs;
}

template <typename T>
Model<T>::Model(const ModelConfig& c) : cfg(c), specs(param_specs(c)) {
    const long d = c.head_dim;
    const size_t off = specs.back().offset + specs.back().numel;
    params.assign(off, T(0));
    grads.assign(off, T(0));

    tok_emb_ = param("tok_emb");
    final_norm_ = param("final_norm");
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
        lp.wffn = c.attention == AttentionKind::moda && c.moda_ffn_kv && l + 1 < c.n_layers ? param(p + "w_ffn_k")
                                                                                             : nullptr;
        if (c.residual != Residual::standard) {
            lp.attn_res_query = param(p + "attn_res_query");
            lp.attn_res_norm = param(p + "attn_res_norm");
            lp.mlp_res_query = param(p + "mlp_res_query");
            lp.mlp_res_norm = param(p + "mlp_res_norm");
        }
        layers_.push_back(lp);
    }
    if (c.residual != Residual::standard) {
        out_res_query_ = param("out_res_query");
        out_res_norm_ = param("out_res_norm");
        const int n_max = attnres_max_sources(c);
        mix_src_.resize(size_t(n_max));
        mix_dsrc_.resize(size_t(n_max));
        const size_t S = size_t(std::min(attnres_sublayers_per_block(c), 2 * c.n_layers));
        for (auto* v : {&ph1_.out, &ph1_.logit, &ph1_.rstd, &ph1_.lse}) v->resize(S);
        ph1_.w.resize(S);
        ph1_.gamma.resize(S);
    }
    rope_cos_.resize(size_t(c.max_seq_len) * d / 2);
    rope_sin_.resize(size_t(c.max_seq_len) * d / 2);
    rope_table(rope_cos_.data(), rope_sin_.data(), c.max_seq_len, d, c.rope_theta);
    init_weights(c.seed);
}

template <typename T>
const ParamSpec& Model<T>::spec(const std::string& name) const {
    for (const auto& s : specs)
        if (s.name == name) return s;
    throw Error("no parameter named \"" + name + "\"");
}

template <typename T>
void Model<T>::init_weights(uint64_t seed) {
    Rng rng(seed);
    const double resid_std = cfg.init_std / std::sqrt(2.0 * cfg.n_layers);
    for (const auto& s : specs) {
        T* p = params.data() + s.offset;
        if (s.shape.size() == 1) {
            // Norm weights start at 1; AttnRes pseudo-queries at 0, so every mix starts as a plain mean.
            const T v = s.name.ends_with("_res_query") ? T(0) : T(1);
            for (size_t i = 0; i < s.numel; i++) p[i] = v;
            continue;
        }
        bool resid = s.name.ends_with(".wo") || s.name.ends_with(".w_down");
        double std = resid ? resid_std : cfg.init_std;
        for (size_t i = 0; i < s.numel; i++) p[i] = T(rng.normal() * std);
    }
}

template <typename T>
void Model<T>::zero_grad() {
    std::memset(grads.data(), 0, grads.size() * sizeof(T));
}

// Carves the activation arena for N = B·T rows. The arena only grows, so after the first step of a
// given shape nothing is allocated.
template <typename T>
void Model<T>::layout(long N, bool training) {
    const long D = cfg.d_model, H = cfg.n_heads, Hk = cfg.n_kv_heads, d = cfg.head_dim, F = cfg.ffn_hidden,
               V = cfg.vocab_size, L = cfg.n_layers;
    const long QKV = (H + 2 * Hk) * d;
    const bool post = cfg.norm_placement == NormPlacement::post;
    size_t need = 0;
    auto count = [&](long n) { need += size_t(n); };
    auto sub_size = [&] { count(N * D * (post ? 4 : 3) + N); };
    count(N * D);
    for (long l = 0; l < L; l++) {
        sub_size();
        sub_size();
        count(N * QKV + N * H * d * 3 + N * Hk * d * 4 + N * (H + Hk) + N * H);  // qkv q_raw q att k_raw k v rstd lse
        count(N * 3 * F);
    }
    count(N * D + N + N * V + 2 * N);
    if (training) count(2 * N * D + 2 * N * D + N * QKV + 2 * N * H * d + 4 * N * Hk * d + N * H * d + 3 * N * F + N * D + N * V);
    const bool moda = cfg.attention == AttentionKind::moda;
    const long slots = moda_slots(cfg), kvd = Hk * d;
    if (moda) {
        count(2 * N * slots * kvd);
        if (cfg.moda_ffn_kv) count((L - 1) * (N * 2 * kvd + 2 * N * kvd + N * Hk));
        if (training) count(2 * N * slots * kvd);
    }
    const bool attnres = cfg.residual != Residual::standard;
    const long n_max = attnres_max_sources(cfg);
    auto mix_size = [&] { count(N * D + 2 * n_max * N + N); };
    if (attnres) {
        for (long j = 0; j < 2 * L + 1; j++) mix_size();
        if (training) count((2 * L + 2) * N * D);
    }
    if (arena_.size() < need) arena_.assign(need, T(0));

    T* p = arena_.data();
    auto take = [&](long n) { T* r = p; p += n; return r; };
    auto mix = [&](MixActs& m) {
        m.out = take(N * D);
        m.logit = take(n_max * N);
        m.rstd = take(n_max * N);
        m.lse = take(N);
    };
    auto sub = [&](SubActs& s) {
        s.f_out = take(N * D);
        s.n_out = take(N * D);
        s.rstd = take(N);
        s.sum = post ? take(N * D) : nullptr;
        s.out = post ? s.n_out : take(N * D);
        s.mix = {};
        if (attnres) mix(s.mix);
    };
    a_.x0 = take(N * D);
    a_.layers.resize(L);  // no-op after the first call
    for (long l = 0; l < L; l++) {
        LayerActs& la = a_.layers[l];
        sub(la.attn);
        sub(la.mlp);
        la.qkv = take(N * QKV);
        la.q_raw = take(N * H * d);
        la.q = take(N * H * d);
        la.att = take(N * H * d);
        la.k_raw = take(N * Hk * d);
        la.k = take(N * Hk * d);
        la.v = take(N * Hk * d);
        take(N * Hk * d);  // spare, keeps the count above honest
        la.q_rstd = take(N * H);
        la.k_rstd = take(N * Hk);
        la.lse = take(N * H);
        la.gu = take(N * 2 * F);
        la.act = take(N * F);
        la.ffn_kv = la.fk_raw = la.fk = la.fk_rstd = nullptr;
        if (moda && cfg.moda_ffn_kv && l + 1 < L) {
            la.ffn_kv = take(N * 2 * kvd);
            la.fk_raw = take(N * kvd);
            la.fk = take(N * kvd);
            la.fk_rstd = take(N * Hk);
        }
    }
    a_.depth_k = moda ? take(N * slots * kvd) : nullptr;
    a_.depth_v = moda ? take(N * slots * kvd) : nullptr;
    a_.lnf = take(N * D);
    a_.lnf_rstd = take(N);
    a_.logits = take(N * V);
    a_.losses = take(N);
    a_.lse = take(N);
    a_.out_mix = {};
    if (attnres) mix(a_.out_mix);
    if (training) {
        a_.dres_a = take(N * D);
        a_.dres_b = take(N * D);
        a_.dn = take(N * D);
        a_.dy = take(N * D);
        a_.dqkv = take(N * QKV);
        a_.dq = take(N * H * d);
        a_.dq_raw = take(N * H * d);
        a_.dk = take(N * Hk * d);
        a_.dv = take(N * Hk * d);
        a_.dk_raw = take(N * Hk * d);
        take(N * Hk * d);
        a_.datt = take(N * H * d);
        a_.dgu = take(N * 2 * F);
        a_.dact = take(N * F);
        a_.dlnf = take(N * D);
        a_.dlogits = take(N * V);
        a_.ddepth_k = moda ? take(N * slots * kvd) : nullptr;
        a_.ddepth_v = moda ? take(N * slots * kvd) : nullptr;
        if (attnres) {
            a_.dsub.resize(size_t(2 * L));
            for (auto& ds : a_.dsub) ds = take(N * D);
            a_.demb = take(N * D);
            a_.dmix = take(N * D);
        }
    }
    STRATA_CHECK(size_t(p - arena_.data()) <= arena_.size(), "activation arena overflow");
}

// ---- MoDA's depth stream: slot `slot` of each row of the (N, slots, Hk·d) K and V buffers ----------
// put: the slot ← rows of (N, Hk·d); take: rows += the slot (the slot's gradient flows back).
template <typename T>
static void depth_put(T* depth, long slots, long slot, const T* rows, long N, long kvd) {
    for (long r = 0; r < N; r++) std::memcpy(depth + (r * slots + slot) * kvd, rows + r * kvd, kvd * sizeof(T));
}
template <typename T>
static void depth_take(T* rows, const T* depth, long slots, long slot, long N, long kvd) {
    for (long r = 0; r < N; r++)
        for (long i = 0; i < kvd; i++) rows[r * kvd + i] += depth[(r * slots + slot) * kvd + i];
}

// ---- attention sublayer f(in) ------------------------------------------------------------------
template <typename T>
void Model<T>::attn_forward(long l, const T* in, T* out, long N, const AttnDims& ad, T* kc, T* vc) {
    const LayerParams<T>& p = layers_[l];
    LayerActs& la = a_.layers[l];
    const long D = cfg.d_model, H = cfg.n_heads, Hk = cfg.n_kv_heads, d = cfg.head_dim, QKV = (H + 2 * Hk) * d;
    matmul_forward(la.qkv, in, p.wqkv, N, D, QKV);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {  // split the fused row into contiguous q, k, v
        const T* row = la.qkv + r * QKV;
        std::memcpy(la.q_raw + r * H * d, row, H * d * sizeof(T));
        std::memcpy(la.k_raw + r * Hk * d, row + H * d, Hk * d * sizeof(T));
        std::memcpy(la.v + r * Hk * d, row + (H + Hk) * d, Hk * d * sizeof(T));
    }
    if (cfg.qk_norm) {
        rmsnorm_forward(la.q, la.q_rstd, la.q_raw, p.q_norm, N * H, d, cfg.norm_eps);
        rmsnorm_forward(la.k, la.k_rstd, la.k_raw, p.k_norm, N * Hk, d, cfg.norm_eps);
    } else {
        std::memcpy(la.q, la.q_raw, N * H * d * sizeof(T));
        std::memcpy(la.k, la.k_raw, N * Hk * d * sizeof(T));
    }
    rope_forward(la.q, pos_.data(), rope_cos_.data(), rope_sin_.data(), N, H, d);
    rope_forward(la.k, pos_.data(), rope_cos_.data(), rope_sin_.data(), N, Hk, d);
    const T* K = la.k;
    const T* Vv = la.v;
    if (kc) {  // decoding: append this step's keys/values to the cache and attend over all of it
        const long n = ad.Tq;
        for (long b = 0; b < ad.B; b++)
            for (long t = 0; t < n; t++) {
                long dst = b * ad.kv_bstride + (ad.q_pos0 + t) * Hk * d;
                std::memcpy(kc + dst, la.k + (b * n + t) * Hk * d, Hk * d * sizeof(T));
                std::memcpy(vc + dst, la.v + (b * n + t) * Hk * d, Hk * d * sizeof(T));
            }
        K = kc;
        Vv = vc;
    }
    if (cfg.attention == AttentionKind::moda) {  // the softmax also covers each token's earlier-layer K/V
        const long slots = moda_slots(cfg);
        moda_forward(la.att, la.lse, la.q, K, Vv, a_.depth_k, a_.depth_v, moda_slots_read(cfg, l), slots, ad);
        if (l + 1 < cfg.n_layers) {  // this layer's K/V become a depth slot for the layers after it
            depth_put(a_.depth_k, slots, moda_slots_read(cfg, l), la.k, N, Hk * d);
            depth_put(a_.depth_v, slots, moda_slots_read(cfg, l), la.v, N, Hk * d);
        }
    } else {
        attention_forward(la.att, la.lse, la.q, K, Vv, ad);
    }
    matmul_forward(out, la.att, p.wo, N, H * d, D);
}

template <typename T>
void Model<T>::attn_backward(long l, const T* in, T* din, const T* dout, long N, const AttnDims& ad) {
    const LayerParams<T>& p = layers_[l];
    LayerActs& la = a_.layers[l];
    const long D = cfg.d_model, H = cfg.n_heads, Hk = cfg.n_kv_heads, d = cfg.head_dim, QKV = (H + 2 * Hk) * d;
    std::memset(a_.datt, 0, N * H * d * sizeof(T));
    matmul_backward(a_.datt, g(p.wo), dout, la.att, p.wo, N, H * d, D);
    std::memset(a_.dq, 0, N * H * d * sizeof(T));
    std::memset(a_.dk, 0, N * Hk * d * sizeof(T));
    std::memset(a_.dv, 0, N * Hk * d * sizeof(T));
    if (cfg.attention == AttentionKind::moda) {
        const long slots = moda_slots(cfg);
        moda_backward(a_.dq, a_.dk, a_.dv, a_.ddepth_k, a_.ddepth_v, a_.datt, la.att, la.lse, la.q, la.k, la.v,
                      a_.depth_k, a_.depth_v, moda_slots_read(cfg, l), slots, ad);
        if (l + 1 < cfg.n_layers) {  // what the later layers sent back through this layer's depth slot
            depth_take(a_.dk, a_.ddepth_k, slots, moda_slots_read(cfg, l), N, Hk * d);
            depth_take(a_.dv, a_.ddepth_v, slots, moda_slots_read(cfg, l), N, Hk * d);
        }
    } else {
        attention_backward(a_.dq, a_.dk, a_.dv, a_.datt, la.att, la.lse, la.q, la.k, la.v, ad);
    }
    rope_backward(a_.dq, pos_.data(), rope_cos_.data(), rope_sin_.data(), N, H, d);
    rope_backward(a_.dk, pos_.data(), rope_cos_.data(), rope_sin_.data(), N, Hk, d);
    const T* dq_raw = a_.dq;
    const T* dk_raw = a_.dk;
    if (cfg.qk_norm) {
        std::memset(a_.dq_raw, 0, N * H * d * sizeof(T));
        std::memset(a_.dk_raw, 0, N * Hk * d * sizeof(T));
        rmsnorm_backward(a_.dq_raw, g(p.q_norm), a_.dq, la.q_raw, p.q_norm, la.q_rstd, N * H, d);
        rmsnorm_backward(a_.dk_raw, g(p.k_norm), a_.dk, la.k_raw, p.k_norm, la.k_rstd, N * Hk, d);
        dq_raw = a_.dq_raw;
        dk_raw = a_.dk_raw;
    }
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        T* row = a_.dqkv + r * QKV;
        std::memcpy(row, dq_raw + r * H * d, H * d * sizeof(T));
        std::memcpy(row + H * d, dk_raw + r * Hk * d, Hk * d * sizeof(T));
        std::memcpy(row + (H + Hk) * d, a_.dv + r * Hk * d, Hk * d * sizeof(T));
    }
    matmul_backward(din, g(p.wqkv), a_.dqkv, in, p.wqkv, N, D, QKV);
}

// ---- MLP sublayer f(in) ----------------------------------------------------------------------
template <typename T>
void Model<T>::mlp_forward(long l, const T* in, T* out, long N) {
    const LayerParams<T>& p = layers_[l];
    LayerActs& la = a_.layers[l];
    const long D = cfg.d_model, F = cfg.ffn_hidden;
    matmul_forward(la.gu, in, p.wgu, N, D, 2 * F);
    swiglu_forward(la.act, la.gu, N, F);
    matmul_forward(out, la.act, p.wdown, N, F, D);
    if (p.wffn) {  // MoDA: the FFN's input, projected to one more depth K/V slot (K normed and rotated like K)
        const long Hk = cfg.n_kv_heads, d = cfg.head_dim, kvd = Hk * d, slots = moda_slots(cfg);
        matmul_forward(la.ffn_kv, in, p.wffn, N, D, 2 * kvd);
        for (long r = 0; r < N; r++) std::memcpy(la.fk_raw + r * kvd, la.ffn_kv + r * 2 * kvd, kvd * sizeof(T));
        if (cfg.qk_norm) rmsnorm_forward(la.fk, la.fk_rstd, la.fk_raw, layers_[l].k_norm, N * Hk, d, cfg.norm_eps);
        else std::memcpy(la.fk, la.fk_raw, size_t(N * kvd) * sizeof(T));
        rope_forward(la.fk, pos_.data(), rope_cos_.data(), rope_sin_.data(), N, Hk, d);
        const long slot = moda_slots_read(cfg, l) + 1;
        depth_put(a_.depth_k, slots, slot, la.fk, N, kvd);
        for (long r = 0; r < N; r++)
            std::memcpy(a_.depth_v + (r * slots + slot) * kvd, la.ffn_kv + r * 2 * kvd + kvd, kvd * sizeof(T));
    }
}

template <typename T>
void Model<T>::mlp_backward(long l, const T* in, T* din, const T* dout, long N) {
    const LayerParams<T>& p = layers_[l];
    LayerActs& la = a_.layers[l];
    const long D = cfg.d_model, F = cfg.ffn_hidden;
    std::memset(a_.dact, 0, N * F * sizeof(T));
    matmul_backward(a_.dact, g(p.wdown), dout, la.act, p.wdown, N, F, D);
    std::memset(a_.dgu, 0, N * 2 * F * sizeof(T));
    swiglu_backward(a_.dgu, a_.dact, la.gu, N, F);
    matmul_backward(din, g(p.wgu), a_.dgu, in, p.wgu, N, D, 2 * F);
    if (p.wffn) {  // MoDA: the gradient the later layers sent back through this FFN's depth slot
        const long Hk = cfg.n_kv_heads, d = cfg.head_dim, kvd = Hk * d, slots = moda_slots(cfg);
        const long slot = moda_slots_read(cfg, l) + 1;
        T* dfk = a_.dk;  // free scratch here (N, Hk·d)
        std::memset(dfk, 0, size_t(N * kvd) * sizeof(T));
        depth_take(dfk, a_.ddepth_k, slots, slot, N, kvd);
        rope_backward(dfk, pos_.data(), rope_cos_.data(), rope_sin_.data(), N, Hk, d);
        const T* dk_raw = dfk;
        if (cfg.qk_norm) {
            std::memset(a_.dk_raw, 0, size_t(N * kvd) * sizeof(T));
            rmsnorm_backward(a_.dk_raw, g(layers_[l].k_norm), dfk, la.fk_raw, layers_[l].k_norm, la.fk_rstd, N * Hk, d);
            dk_raw = a_.dk_raw;
        }
        T* dkv = a_.dqkv;  // (N, 2·Hk·d) fits in the (N, QKV) scratch
        for (long r = 0; r < N; r++) {
            std::memcpy(dkv + r * 2 * kvd, dk_raw + r * kvd, kvd * sizeof(T));
            std::memcpy(dkv + r * 2 * kvd + kvd, a_.ddepth_v + (r * slots + slot) * kvd, kvd * sizeof(T));
        }
        matmul_backward(din, g(p.wffn), dkv, in, p.wffn, N, D, 2 * kvd);
    }
}

// ---- the residual rule around a sublayer -----------------------------------------------------
//   pre:       out = h + f(N(h))
//   post:      out = N(h + f(h))
//   reordered: out = h + N(f(h))
template <typename T>
void Model<T>::sublayer_forward(SubActs& s, const T* h, const T* nw, long N, bool is_attn, long l, const AttnDims& ad,
                                T* kc, T* vc) {
    const long D = cfg.d_model;
    auto f = [&](const T* in, T* out) {
        if (is_attn) attn_forward(l, in, out, N, ad, kc, vc);
        else mlp_forward(l, in, out, N);
        if (2 * l + (is_attn ? 0 : 1) == skip_sublayer) std::memset(out, 0, size_t(N * D) * sizeof(T));
    };
    switch (cfg.norm_placement) {
        case NormPlacement::pre:
            rmsnorm_forward(s.n_out, s.rstd, h, nw, N, D, cfg.norm_eps);
            f(s.n_out, s.f_out);
#pragma omp parallel for schedule(static)
            for (long i = 0; i < N * D; i++) s.out[i] = h[i] + s.f_out[i];
            break;
        case NormPlacement::post:
            f(h, s.f_out);
#pragma omp parallel for schedule(static)
            for (long i = 0; i < N * D; i++) s.sum[i] = h[i] + s.f_out[i];
            rmsnorm_forward(s.n_out, s.rstd, s.sum, nw, N, D, cfg.norm_eps);  // s.out aliases s.n_out
            break;
        case NormPlacement::reordered:
            f(h, s.f_out);
            rmsnorm_forward(s.n_out, s.rstd, s.f_out, nw, N, D, cfg.norm_eps);
#pragma omp parallel for schedule(static)
            for (long i = 0; i < N * D; i++) s.out[i] = h[i] + s.n_out[i];
            break;
    }
}

// dh (the gradient w.r.t. the sublayer's input h) is accumulated; dout is the gradient w.r.t. out.
template <typename T>
void Model<T>::sublayer_backward(SubActs& s, const T* h, T* dh, const T* dout, long N, bool is_attn, long l,
                                 const AttnDims& ad) {
    const long D = cfg.d_model;
    const LayerParams<T>& p = layers_[l];
    const T* nw = is_attn ? p.attn_norm : p.mlp_norm;
    T* dnw = g(nw);
    auto fb = [&](const T* in, T* din, const T* dy) {
        if (is_attn) attn_backward(l, in, din, dy, N, ad);
        else mlp_backward(l, in, din, dy, N);
    };
    const size_t bytes = size_t(N * D) * sizeof(T);
    switch (cfg.norm_placement) {
        case NormPlacement::pre:
            for (long i = 0; i < N * D; i++) dh[i] += dout[i];
            std::memset(a_.dn, 0, bytes);
            fb(s.n_out, a_.dn, dout);
            rmsnorm_backward(dh, dnw, a_.dn, h, nw, s.rstd, N, D);
            break;
        case NormPlacement::post:
            std::memset(a_.dy, 0, bytes);
            rmsnorm_backward(a_.dy, dnw, dout, s.sum, nw, s.rstd, N, D);
            for (long i = 0; i < N * D; i++) dh[i] += a_.dy[i];
            fb(h, dh, a_.dy);
            break;
        case NormPlacement::reordered:
            for (long i = 0; i < N * D; i++) dh[i] += dout[i];
            std::memset(a_.dy, 0, bytes);
            rmsnorm_backward(a_.dy, dnw, dout, s.f_out, nw, s.rstd, N, D);
            fb(h, dh, a_.dy);
            break;
    }
}

template <typename T>
void Model<T>::run_layers(long N, const AttnDims& ad, KVCache<T>* cache) {
    const long per_layer = cache ? cache->B * cache->max_T * cfg.n_kv_heads * cfg.head_dim : 0;
    const T* h = a_.x0;
    if (cfg.residual != Residual::standard) {  // src/model/attn_res.cpp
        attnres_run_layers(N, ad, cache);
        h = a_.out_mix.out;
    } else {
        for (long l = 0; l < cfg.n_layers; l++) {
            LayerActs& la = a_.layers[l];
            T* kc = cache ? cache->k.data() + l * per_layer : nullptr;
            T* vc = cache ? cache->v.data() + l * per_layer : nullptr;
            sublayer_forward(la.attn, h, layers_[l].attn_norm, N, true, l, ad, kc, vc);
            sublayer_forward(la.mlp, la.attn.out, layers_[l].mlp_norm, N, false, l, ad, nullptr, nullptr);
            h = la.mlp.out;
        }
    }
    rmsnorm_forward(a_.lnf, a_.lnf_rstd, h, final_norm_, N, cfg.d_model, cfg.norm_eps);
    matmul_forward(a_.logits, a_.lnf, lm_head_, N, cfg.d_model, cfg.vocab_size);
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
    B_ = B;
    T_ = seq;
    layout(N, targets != nullptr);
    tokens_.assign(tokens, tokens + N);
    pos_.resize(N);
    for (long i = 0; i < N; i++) pos_[i] = int32_t(i % seq);
    embedding_forward(a_.x0, tokens, tok_emb_, N, cfg.d_model);
    AttnDims ad{B, T_, T_, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, 0, seq * cfg.n_kv_heads * cfg.head_dim};
    run_layers(N, ad, nullptr);
    have_targets_ = targets != nullptr;
    if (!have_targets_) return 0.0;
    for (long i = 0; i < N; i++)
        if (targets[i] >= cfg.vocab_size)
            throw Error("target id " + std::to_string(targets[i]) + " is outside the vocabulary");
    targets_.assign(targets, targets + N);
    n_counted_ = crossentropy_forward(a_.losses, a_.lse, a_.logits, targets, N, (long)cfg.vocab_size);
    double sum = 0;
    for (long i = 0; i < N; i++) sum += double(a_.losses[i]);
    return n_counted_ > 0 ? sum / double(n_counted_) : 0.0;
}

template <typename T>
void Model<T>::backward() {
    if (!have_targets_) throw Error("backward() needs a forward() with targets first");
    if (skip_sublayer >= 0) throw Error("backward() is not defined with skip_sublayer set (a diagnostic)");
    const long N = B_ * T_, D = cfg.d_model, V = cfg.vocab_size;
    AttnDims ad{B_, T_, T_, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, 0, T_ * cfg.n_kv_heads * cfg.head_dim};
    std::memset(a_.dlogits, 0, size_t(N * V) * sizeof(T));
    if (cfg.attention == AttentionKind::moda) {
        const size_t n = size_t(N) * moda_slots(cfg) * cfg.n_kv_heads * cfg.head_dim;
        std::memset(a_.ddepth_k, 0, n * sizeof(T));
        std::memset(a_.ddepth_v, 0, n * sizeof(T));
    }
    if (n_counted_ > 0)
        crossentropy_backward(a_.dlogits, a_.logits, a_.lse, targets_.data(), N, V, T(1) / T(n_counted_));
    std::memset(a_.dlnf, 0, size_t(N * D) * sizeof(T));
    matmul_backward(a_.dlnf, g(lm_head_), a_.dlogits, a_.lnf, lm_head_, N, D, V);
    const bool attnres = cfg.residual != Residual::standard;
    const T* h_last = attnres ? a_.out_mix.out : a_.layers[cfg.n_layers - 1].mlp.out;
    T* dcur = a_.dres_a;  // gradient w.r.t. the current residual stream
    T* dprev = a_.dres_b;
    std::memset(dcur, 0, size_t(N * D) * sizeof(T));
    rmsnorm_backward(dcur, g(final_norm_), a_.dlnf, h_last, final_norm_, a_.lnf_rstd, N, D);
    if (attnres) {
        attnres_layers_backward(N, ad, dcur);
        embedding_backward(g(tok_emb_), a_.demb, tokens_.data(), N, D);
        return;
    }
    for (long l = cfg.n_layers - 1; l >= 0; l--) {
        LayerActs& la = a_.layers[l];
        const T* h_in = l > 0 ? a_.layers[l - 1].mlp.out : a_.x0;
        std::memset(dprev, 0, size_t(N * D) * sizeof(T));
        sublayer_backward(la.mlp, la.attn.out, dprev, dcur, N, false, l, ad);
        std::swap(dcur, dprev);
        std::memset(dprev, 0, size_t(N * D) * sizeof(T));
        sublayer_backward(la.attn, h_in, dprev, dcur, N, true, l, ad);
        std::swap(dcur, dprev);
    }
    embedding_backward(g(tok_emb_), dcur, tokens_.data(), N, D);
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
    cache.k.assign(n, T(0));
    cache.v.assign(n, T(0));
}

template <typename T>
void Model<T>::forward_cached(const int32_t* tokens, long B, long n, KVCache<T>& cache) {
    if (B != cache.B) throw Error("forward_cached: batch size differs from the cache's");
    if (cache.len + n > cache.max_T)
        throw Error("sequence length " + std::to_string(cache.len + n) + " exceeds the cache/model maximum " +
                    std::to_string(cache.max_T));
    const long N = B * n;
    for (long i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= cfg.vocab_size)
            throw Error("token id " + std::to_string(tokens[i]) + " is outside the vocabulary");
    B_ = B;
    T_ = n;
    have_targets_ = false;
    layout(N, false);
    pos_.resize(N);
    for (long i = 0; i < N; i++) pos_[i] = int32_t(cache.len + i % n);
    embedding_forward(a_.x0, tokens, tok_emb_, N, cfg.d_model);
    AttnDims ad{B, n, cache.len + n, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cache.len,
                cache.max_T * cfg.n_kv_heads * cfg.head_dim};
    run_layers(N, ad, &cache);
    cache.len += n;
}

template class Model<float>;
template class Model<double>;

}  // namespace strata
