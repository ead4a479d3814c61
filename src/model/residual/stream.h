// The residual stream h, one state carried from sublayer to sublayer (docs/residual.md):
//   pre:       h ← h + g_j · f_j(c_j · N_j(h))
//   post:      h ← N_j(h + f_j(h))
//   reordered: h ← h + N_j(f_j(h))
// `standard` is g_j = c_j = 1 under any placement. Two pre-norm variants are this class with one
// option each: ReZero's gate g_j, a learned scalar per sublayer that starts at 0 (rezero.cpp), and
// LayerNorm-Scaling's c_j = 1/√ℓ for the sublayers of layer ℓ (1-based; layernorm_scaling.cpp).
#pragma once
#include <vector>

#include "model/residual/rule.h"

namespace strata {

struct StreamOptions {
    bool gated = false;         // ReZero: h ← h + g_j·f_j, g_j = blocks.l.{attn,mlp}_alpha
    bool depth_scaled = false;  // LayerNorm-Scaling: each norm's output in layer ℓ times 1/√ℓ
};

template <typename T, typename A>
class StreamRule final : public ResidualRule<T, A> {
public:
    StreamRule(const ModelConfig& c, StreamOptions o);
    void bind(const ParamView<T>& p) override;
    bool backward_reads_outputs() const override { return opt_.gated || placement_ == NormPlacement::reordered; }
    void describe(TensorPlan& P, long N, bool training) override;
    void describe_backward(TensorPlan& P, long N) override;
    void begin(const std::vector<char>& skipped) override;
    const A* input(int j) override;
    void output(int j, const A* f) override;
    void finish() override;
    void finish_backward(const T* dlnf) override;
    const T* output_grad(int j, const A* f) override;
    const A* input_again(int j) override;
    T* input_grad(int j, Into* into) override;
    void input_backward(int j) override;
    const T* embedding_grad() const override { return dcur_; }
    void depth_stats(DepthStats& s) const override;
    const T* input_state(int j) const override { return h(j); }
    const T* final_input() const override { return sub_.back().out; }

private:
    using ResidualRule<T, A>::cfg;
    using ResidualRule<T, A>::io;
    const StreamOptions opt_;
    const NormPlacement placement_;
    ParamView<T> pv_;
    std::vector<const T*> norm_w_;  // (2L) the norm of each sublayer
    std::vector<const T*> gate_;    // (2L) ReZero's gates
    const T* final_w_ = nullptr;
    struct Sub {
        A* x_in;   // f's input. pre: the norm's output, one buffer for every sublayer (the backward
                   // recomputes it); post, reordered: h itself (aliased when A is T, else h converted)
        T* n_out;  // post, reordered: the norm's output (post: it is the stream)
        T* rstd;   // (N)
        T* sum;    // post: h + f(h), the norm's input
        T* out;    // the stream after the sublayer
    };
    std::vector<Sub> sub_;
    bool input_ready_ = false;  // pre: output(j − 1) has already normed sublayer j's input
    bool final_ready_ = false;
    T *dcur_ = nullptr, *dprev_ = nullptr, *dn_ = nullptr, *dy_ = nullptr;  // backward scratch

    const T* h(int j) const { return j == 0 ? io.x0 : sub_[size_t(j - 1)].out; }  // the stream before j
    double scale(int j) const;  // c_j
};

}  // namespace strata
