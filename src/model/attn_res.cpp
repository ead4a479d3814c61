// The AttnRes residual rule (docs/attn_res.md): sublayer j's input is a softmax over depth of the
// embedding, the completed block sums and the current block's partial sum, with a learned,
// zero-initialised pseudo-query per sublayer and an RMSNorm on the keys. attnres_full is one
// sublayer per block, so every sublayer output is its own source.
//
// Sublayers are numbered j = 0 .. 2L−1 (attention of layer l is 2l, its MLP 2l+1); j = 2L is the
// output op, whose mix feeds the final norm. With S sublayers per block, sublayer j's partial sum
// p_j = p_{j−1} + f_j, or f_j when j starts a block (j % S == 0); block k's sum is p_{(k+1)S−1}.
#include <algorithm>

#include "model/model.h"

namespace strata {

// Fills mix_src_ (and mix_dsrc_ with the matching gradient buffers) with sublayer j's sources:
// the embedding, every block completed before j, and the partial sum of j's block when j does not
// start it. Returns their count.
template <typename T>
bool Model<T>::skipped_empty(long e) const {
    return e == skip_sublayer && e % attnres_sublayers_per_block(cfg) == 0;
}

template <typename T>
template <typename A>
int Model<T>::mix_sources(long j, bool grads) {
    ActsOf<A>& a_ = acts<A>();
    const int S = attnres_sublayers_per_block(cfg);
    auto sub_out = [&](long i) { return i % 2 == 0 ? a_.layers[i / 2].attn.out : a_.layers[i / 2].mlp.out; };
    int n = 0;
    auto push = [&](const T* src, T* dsrc) {
        mix_src_[n] = src;
        mix_dsrc_[n] = grads ? dsrc : nullptr;
        n++;
    };
    push(a_.x0, grads ? a_.demb : nullptr);
    for (long e = S - 1; e < j; e += S)
        if (!skipped_empty(e)) push(sub_out(e), grads ? a_.dsub[e] : nullptr);
    mix_has_partial_ = j % S != 0 && !skipped_empty(j - 1);
    if (mix_has_partial_) push(sub_out(j - 1), grads ? a_.dsub[j - 1] : nullptr);
    return n;
}

// Phase 1 of two-phase Block AttnRes for the block starting at sublayer j0: its n sources (the
// embedding and the completed blocks) mixed with the queries of all its sublayers at once. Sublayer
// j0 + i's mix then holds the normalised phase-1 result, which phase 2 completes with the partial sum.
template <typename T>
template <typename A>
void Model<T>::phase1(long j0, int n, long N) {
    ActsOf<A>& a_ = acts<A>();
    const long end = std::min<long>(j0 + attnres_sublayers_per_block(cfg), 2 * cfg.n_layers);
    int S = 0;
    for (long j = j0; j < end; j++, S++) {
        const LayerParams<T>& p = layers_[j / 2];
        MixActs& m = j % 2 == 0 ? a_.layers[j / 2].attn.mix : a_.layers[j / 2].mlp.mix;
        ph1_.out[S] = m.out;
        ph1_.logit[S] = m.logit;
        ph1_.rstd[S] = m.rstd;
        ph1_.lse[S] = m.lse;
        ph1_.w[S] = j % 2 == 0 ? p.attn_res_query : p.mlp_res_query;
        ph1_.gamma[S] = j % 2 == 0 ? p.attn_res_norm : p.mlp_res_norm;
    }
    attnres_phase1(ph1_.out.data(), ph1_.logit.data(), ph1_.rstd.data(), ph1_.lse.data(), mix_src_.data(), n,
                   ph1_.w.data(), ph1_.gamma.data(), S, N, cfg.d_model, cfg.norm_eps);
}

template <typename T>
template <typename A>
void Model<T>::attnres_run_layers(long N, const AttnDims& ad, KVCache<T>* cache) {
    ActsOf<A>& a_ = acts<A>();
    const long D = cfg.d_model, L = cfg.n_layers;
    const int S = attnres_sublayers_per_block(cfg);
    const long per_layer = cache ? cache->B * cache->max_T * cfg.n_kv_heads * cfg.head_dim : 0;
    for (long j = 0; j < 2 * L; j++) {
        const long l = j / 2;
        const bool is_attn = j % 2 == 0;
        const LayerParams<T>& p = layers_[l];
        SubActs<A>& s = is_attn ? a_.layers[l].attn : a_.layers[l].mlp;
        const T* q = is_attn ? p.attn_res_query : p.mlp_res_query;
        const T* kn = is_attn ? p.attn_res_norm : p.mlp_res_norm;
        const int n = mix_sources<A>(j, false);
        if (S == 1) {  // Full: every op has its own sources
            attnres_forward(s.mix.out, s.mix.logit, s.mix.rstd, s.mix.lse, mix_src_.data(), n, q, kn, N, D,
                            cfg.norm_eps);
        } else {  // Block, two-phase: the block's completed sources once for all its sublayers, then the partial
            if (j % S == 0) phase1<A>(j, n, N);
            else if (mix_has_partial_) attnres_phase2(s.mix.out, s.mix.logit, s.mix.rstd, s.mix.lse, mix_src_[n - 1], n - 1, q, kn, N, D,
                                cfg.norm_eps);
        }
        rmsnorm_forward(s.x_in, s.rstd, s.mix.out, is_attn ? p.attn_norm : p.mlp_norm, N, D, cfg.norm_eps);
        if (is_attn) {
            A* kc = cache ? cache->k.template data<A>() + l * per_layer : nullptr;
            A* vc = cache ? cache->v.template data<A>() + l * per_layer : nullptr;
            attn_forward(l, s.x_in, s.f_out, N, ad, kc, vc);
        } else {
            mlp_forward(l, s.x_in, s.f_out, N);
        }
        if (j == skip_sublayer) fill_zero(s.f_out, size_t(N * D));
        if (j % S == 0) {  // a block starts: its partial sum is f_j alone (widened to T under bf16)
            if constexpr (std::is_same_v<A, T>) copy_forward(s.out, s.f_out, size_t(N * D));
            else convert_forward(s.out, s.f_out, size_t(N * D));
        } else {
            const T* prev = (j - 1) % 2 == 0 ? a_.layers[(j - 1) / 2].attn.out : a_.layers[(j - 1) / 2].mlp.out;
            residual_forward(s.out, prev, s.f_out, N * D);
        }
    }
    const int n = mix_sources<A>(2 * L, false);
    attnres_forward(a_.out_mix.out, a_.out_mix.logit, a_.out_mix.rstd, a_.out_mix.lse, mix_src_.data(), n,
                    out_res_query_, out_res_norm_, N, D, cfg.norm_eps);
}

// dfinal: the gradient w.r.t. the output op's mix. Leaves the embedding's gradient in a_.demb.
template <typename T>
template <typename A>
void Model<T>::attnres_layers_backward(long N, const AttnDims& ad, const T* dfinal,
                                       const std::function<void(int)>& layer_done) {
    ActsOf<A>& a_ = acts<A>();
    const long D = cfg.d_model, L = cfg.n_layers;
    const int S = attnres_sublayers_per_block(cfg);
    const size_t ND = size_t(N * D);
    for (T* ds : a_.dsub) fill_zero(ds, ND);
    fill_zero(a_.demb, ND);
    int n = mix_sources<A>(2 * L, true);
    attnres_backward(mix_dsrc_.data(), g(out_res_query_), g(out_res_norm_), dfinal, a_.out_mix.out, a_.out_mix.logit,
                     a_.out_mix.rstd, a_.out_mix.lse, mix_src_.data(), n, out_res_query_, out_res_norm_, N, D);
    for (long j = 2 * L - 1; j >= 0; j--) {
        const long l = j / 2;
        const bool is_attn = j % 2 == 0;
        const LayerParams<T>& p = layers_[l];
        SubActs<A>& s = is_attn ? a_.layers[l].attn : a_.layers[l].mlp;
        const T* dp = a_.dsub[j];  // complete: every later op and p_{j+1} have contributed
        if (j % S != 0) {
            residual_backward(a_.dsub[j - 1], static_cast<T*>(nullptr), dp, N * D);
        }
        const T* nw = is_attn ? p.attn_norm : p.mlp_norm;
        rmsnorm_forward(s.x_in, s.rstd, s.mix.out, nw, N, D, cfg.norm_eps);  // f's input again (shared buffer)
        if (is_attn) attn_backward(l, static_cast<const A*>(s.x_in), a_.dn, dp, N, ad, Into::overwrite);
        else mlp_backward(l, static_cast<const A*>(s.x_in), a_.dn, dp, N, Into::overwrite);
        fill_zero(a_.dmix, ND);
        rmsnorm_backward(a_.dmix, g(nw), a_.dn, s.mix.out, nw, s.rstd, N, D);
        const T* q = is_attn ? p.attn_res_query : p.mlp_res_query;
        const T* kn = is_attn ? p.attn_res_norm : p.mlp_res_norm;
        n = mix_sources<A>(j, true);
        attnres_backward(mix_dsrc_.data(), g(q), g(kn), a_.dmix, s.mix.out, s.mix.logit, s.mix.rstd, s.mix.lse,
                         mix_src_.data(), n, q, kn, N, D);
        if (is_attn && layer_done) layer_done(int(l));  // sublayer 2l is the layer's last to finish
    }
}

template bool Model<float>::skipped_empty(long) const;
template bool Model<double>::skipped_empty(long) const;
#define STRATA_ATTNRES_LAYERS(T, A)                                                                           \
    template void Model<T>::attnres_run_layers<A>(long, const AttnDims&, KVCache<T>*);                        \
    template void Model<T>::attnres_layers_backward<A>(long, const AttnDims&, const T*,                       \
                                                       const std::function<void(int)>&);
STRATA_ATTNRES_LAYERS(float, float)
STRATA_ATTNRES_LAYERS(float, bf16)
STRATA_ATTNRES_LAYERS(double, double)

}  // namespace strata
