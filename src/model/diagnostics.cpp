// Depth statistics of the last forward (docs/diagnostics.md): how large each sublayer's input,
// output and running state are, and under AttnRes where each depth softmax puts its weight. The
// residual rule says what a sublayer's input and state are (its depth_stats).
#include <cmath>

#include "core/error.h"
#include "model/model.h"

namespace strata {

template <typename T>
void Model<T>::accumulate_depth_stats(DepthStats& s) const {
    if constexpr (std::is_same_v<T, float>) {
        if (precision_ == Precision::bf16) return accumulate_depth_stats_impl<bf16>(s);
    }
    accumulate_depth_stats_impl<T>(s);
}

template <typename T>
template <typename A>
void Model<T>::accumulate_depth_stats_impl(DepthStats& s) const {
    const ActsOf<A>& a_ = acts<A>();
    const long L = cfg.n_layers, D = cfg.d_model, N = B_ * T_;
    STRATA_CHECK(N > 0, "accumulate_depth_stats needs a forward first");
    STRATA_CHECK(skip_sublayers.empty() && !sublayer_hook,
                 "accumulate_depth_stats describes the whole model: clear skip_sublayers and sublayer_hook");
    STRATA_CHECK(keep_sublayer_outputs && plan_keep_,
                 "accumulate_depth_stats reads every sublayer's output: set keep_sublayer_outputs before the forward");
    if (s.input_ms.empty()) {
        s.input_ms.assign(2 * L, 0.0);
        s.output_ms.assign(2 * L, 0.0);
        s.state_ms.assign(2 * L, 0.0);
    }
    STRATA_CHECK(long(s.input_ms.size()) == 2 * L, "DepthStats from another model");
    for (long j = 0; j < 2 * L; j++) s.output_ms[j] += row_mean_square_sum(a_.f_out[size_t(j)], N, D);
    rule<A>().depth_stats(s);  // the inputs, states and final input as the rule defines them
    if (cfg.attention == AttentionKind::moda) {  // each layer's MoDA mass, from the q, k and lse it kept
        const long H = cfg.n_heads;
        if (s.depth_mass.empty()) {
            s.depth_mass.assign(size_t(L), std::vector<double>(size_t(H), 0.0));
            s.sink_mass.assign(size_t(L), std::vector<double>(size_t(H), 0.0));
        }
        using C = compute_t<A>;
        std::vector<C> dm(size_t(N * H)), sm(size_t(N * H));
        AttnDims ad{B_, T_, T_, H, cfg.n_kv_heads, cfg.head_dim, 0, T_ * cfg.n_kv_heads * cfg.head_dim};
        for (long l = 0; l < L; l++) {
            const LayerActs<A>& la = a_.layers[size_t(l)];
            ModaParams<A> mp = moda_params<A>(l, ad);
            mp.q = la.q, mp.k = la.k, mp.v = la.v, mp.out = la.att, mp.lse = la.lse;
            moda_mass(mp, dm.data(), sm.data());
            for (long b = 0; b < B_; b++)
                for (long h = 0; h < H; h++)
                    for (long t = 0; t < T_; t++) {
                        s.depth_mass[size_t(l)][size_t(h)] += double(dm[size_t((b * H + h) * T_ + t)]);
                        s.sink_mass[size_t(l)][size_t(h)] += double(sm[size_t((b * H + h) * T_ + t)]);
                    }
        }
    }
    s.rows += N;
}

template <typename T>
const T* Model<T>::sublayer_input_state(int j) const {
    STRATA_CHECK(B_ * T_ > 0 && precision_ != Precision::bf16, "sublayer_input_state needs an fp32 forward first");
    STRATA_CHECK(j >= 0 && j < 2 * cfg.n_layers, "sublayer_input_state: no sublayer " + std::to_string(j));
    return rule<T>().input_state(j);
}

template <typename T>
const T* Model<T>::final_input_state() const {
    STRATA_CHECK(B_ * T_ > 0 && precision_ != Precision::bf16, "final_input_state needs an fp32 forward first");
    return rule<T>().final_input();
}

template void Model<float>::accumulate_depth_stats(DepthStats&) const;
template const float* Model<float>::sublayer_input_state(int) const;
template const double* Model<double>::sublayer_input_state(int) const;
template const float* Model<float>::final_input_state() const;
template const double* Model<double>::final_input_state() const;
template void Model<double>::accumulate_depth_stats(DepthStats&) const;

}  // namespace strata
