// Depth statistics of the last forward (docs/diagnostics.md): how large each sublayer's input,
// output and running state are, and under AttnRes where each depth softmax puts its weight.
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
    STRATA_CHECK(skip_sublayer < 0, "accumulate_depth_stats describes the whole model: clear skip_sublayer");
    STRATA_CHECK(keep_sublayer_outputs && plan_keep_,
                 "accumulate_depth_stats reads every sublayer's output: set keep_sublayer_outputs before the forward");
    const bool attnres = cfg.residual != Residual::standard;
    const int S = attnres_sublayers_per_block(cfg);
    const long n_cols = attnres ? 1 + (2 * L + S - 1) / S + (S > 1 ? 1 : 0) : 0;
    if (s.input_ms.empty()) {
        s.input_ms.assign(2 * L, 0.0);
        s.output_ms.assign(2 * L, 0.0);
        s.state_ms.assign(2 * L, 0.0);
        if (attnres) s.alpha.assign(2 * L + 1, std::vector<double>(size_t(n_cols), 0.0));
    }
    STRATA_CHECK(long(s.input_ms.size()) == 2 * L, "DepthStats from another model");
    auto sum_ms = [&](const auto* x) { return row_mean_square_sum(x, N, D); };  // Σ over rows of the row's mean square
    auto sub = [&](long j) -> const SubActs<A>& { return j % 2 == 0 ? a_.layers[j / 2].attn : a_.layers[j / 2].mlp; };
    for (long j = 0; j < 2 * L; j++) {
        const SubActs<A>& sa = sub(j);
        const T* input = attnres ? sa.mix.out : (j == 0 ? a_.x0 : sub(j - 1).out);
        s.input_ms[j] += sum_ms(input);
        s.output_ms[j] += sum_ms(sa.f_out);
        s.state_ms[j] += sum_ms(sa.out);
    }
    s.final_ms += sum_ms(attnres ? a_.out_mix.out : sub(2 * L - 1).out);
    if (attnres) {
        // Op j's sources in order: the embedding, blocks 0.. completed before j, then (Block) its partial.
        for (long j = 0; j <= 2 * L; j++) {
            const MixActs& m = j < 2 * L ? sub(j).mix : a_.out_mix;
            const long completed = j / S;
            const bool partial = j % S != 0;
            for (long i = 0; i < 1 + completed + (partial ? 1 : 0); i++) {
                // the output op's trailing partial sum is the last (short) block
                const long col = i <= completed || j == 2 * L ? i : n_cols - 1;
                s.alpha[j][col] += softmax_weight_sum(m.logit + i * N, m.lse, N);
            }
        }
    }
    s.rows += N;
}

template void Model<float>::accumulate_depth_stats(DepthStats&) const;
template void Model<double>::accumulate_depth_stats(DepthStats&) const;

}  // namespace strata
