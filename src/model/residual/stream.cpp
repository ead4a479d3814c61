// The residual stream (stream.h): the `standard` rule, and the body of ReZero and LayerNorm-Scaling.
#include "model/residual/stream.h"

#include <cmath>
#include <type_traits>

namespace strata {

template <typename T, typename A>
StreamRule<T, A>::StreamRule(const ModelConfig& c, StreamOptions o)
    : ResidualRule<T, A>(c), opt_(o), placement_(c.norm_placement) {
    STRATA_CHECK(placement_ == NormPlacement::pre || (!o.gated && !o.depth_scaled),
                 "ReZero and LayerNorm-Scaling are pre-norm streams");
    sub_.resize(size_t(2 * c.n_layers));
}

template <typename T, typename A>
void StreamRule<T, A>::bind(const ParamView<T>& p) {
    pv_ = p;
    const int n = 2 * cfg.n_layers;
    norm_w_.resize(size_t(n));
    for (int j = 0; j < n; j++) norm_w_[size_t(j)] = p(this->norm_name(j));
    if (opt_.gated) {
        gate_.resize(size_t(n));
        for (int j = 0; j < n; j++)
            gate_[size_t(j)] = p("blocks." + std::to_string(j / 2) + (j % 2 == 0 ? ".attn_alpha" : ".mlp_alpha"));
    }
    final_w_ = p("final_norm");
}

template <typename T, typename A>
double StreamRule<T, A>::scale(int j) const {
    return opt_.depth_scaled ? 1.0 / std::sqrt(double(j / 2 + 1)) : 1.0;
}

template <typename T, typename A>
void StreamRule<T, A>::describe(TensorPlan& P, long N, bool) {
    const long D = cfg.d_model;
    const bool pre = placement_ == NormPlacement::pre, post = placement_ == NormPlacement::post;
    constexpr bool same = std::is_same_v<A, T>;
    for (int j = 0; j < int(sub_.size()); j++) {
        Sub& s = sub_[size_t(j)];
        const int l = j / 2;
        s.x_in = nullptr;
        s.n_out = s.sum = s.out = nullptr;
        if (pre) {
            if (j == 0) P.add("x_in (every sublayer's)", -1, size_t(N * D), &s.x_in);
        } else {
            P.add("n_out", l, size_t(N * D), &s.n_out);
            if (!same) P.add("x_in", l, size_t(N * D), &s.x_in);
        }
        P.add("rstd", l, size_t(N), &s.rstd);
        if (post) P.add("sum", l, size_t(N * D), &s.sum);
        else P.add("out", l, size_t(N * D), &s.out);
    }
}

template <typename T, typename A>
void StreamRule<T, A>::describe_backward(TensorPlan& P, long N) {
    const long D = cfg.d_model;
    P.add("dres_a", -1, size_t(N * D), &dcur_);
    P.add("dres_b", -1, size_t(N * D), &dprev_);
    dn_ = dy_ = nullptr;
    if (placement_ == NormPlacement::pre) P.add("dn", -1, size_t(N * D), &dn_);
    if (placement_ != NormPlacement::pre || opt_.gated) P.add("dy", -1, size_t(N * D), &dy_);
}

template <typename T, typename A>
void StreamRule<T, A>::begin(const std::vector<char>& skipped) {
    ResidualRule<T, A>::begin(skipped);
    // the aliases (set here, after every carve)
    for (Sub& s : sub_) {
        if (!s.out) s.out = s.n_out;  // post-norm: the stream is the norm's output
        if (!s.x_in && placement_ == NormPlacement::pre) s.x_in = sub_[0].x_in;
    }
    input_ready_ = final_ready_ = false;
}

template <typename T, typename A>
const A* StreamRule<T, A>::input(int j) {
    Sub& s = sub_[size_t(j)];
    const long N = io.N, D = cfg.d_model;
    if (placement_ == NormPlacement::pre) {
        if (!input_ready_) rmsnorm_forward(s.x_in, s.rstd, h(j), norm_w_[size_t(j)], N, D, cfg.norm_eps, scale(j));
        input_ready_ = false;
        return s.x_in;
    }
    if constexpr (std::is_same_v<A, T>) {
        return h(j);
    } else {
        convert_forward(s.x_in, h(j), size_t(N * D));
        return s.x_in;
    }
}

template <typename T, typename A>
void StreamRule<T, A>::output(int j, const A* f) {
    Sub& s = sub_[size_t(j)];
    const long N = io.N, D = cfg.d_model, n = N * D;
    const T* nw = norm_w_[size_t(j)];
    switch (placement_) {
        case NormPlacement::pre:
            if (opt_.gated) {
                gated_residual_forward(s.out, h(j), f, gate_[size_t(j)], n);
            } else if (j + 1 < int(sub_.size())) {  // the add fused with the next sublayer's norm
                residual_rmsnorm_forward(s.out, sub_[size_t(j + 1)].x_in, sub_[size_t(j + 1)].rstd, h(j), f,
                                         norm_w_[size_t(j + 1)], N, D, cfg.norm_eps, scale(j + 1));
                input_ready_ = true;
            } else {  // ... or with the final norm
                residual_rmsnorm_forward(s.out, io.lnf, io.lnf_rstd, h(j), f, final_w_, N, D, cfg.norm_eps);
                final_ready_ = true;
            }
            break;
        case NormPlacement::post:
            residual_forward(s.sum, h(j), f, n);
            rmsnorm_forward(s.n_out, s.rstd, s.sum, nw, N, D, cfg.norm_eps);  // s.out aliases s.n_out
            break;
        case NormPlacement::reordered:
            rmsnorm_forward(s.n_out, s.rstd, f, nw, N, D, cfg.norm_eps);
            residual_forward(s.out, h(j), s.n_out, n);
            break;
    }
}

template <typename T, typename A>
void StreamRule<T, A>::finish() {
    if (!final_ready_)
        rmsnorm_forward(io.lnf, io.lnf_rstd, sub_.back().out, final_w_, io.N, cfg.d_model, cfg.norm_eps);
}

template <typename T, typename A>
void StreamRule<T, A>::finish_backward(const T* dlnf) {
    const long N = io.N, D = cfg.d_model;
    rmsnorm_backward(dcur_, pv_.grad(final_w_), dlnf, sub_.back().out, final_w_, io.lnf_rstd, N, D, 1.0,
                     Into::overwrite);
}

// dcur_ holds the gradient w.r.t. the stream after j.
template <typename T, typename A>
const T* StreamRule<T, A>::output_grad(int j, const A* f) {
    const Sub& s = sub_[size_t(j)];
    const long N = io.N, D = cfg.d_model, n = N * D;
    const T* nw = norm_w_[size_t(j)];
    switch (placement_) {
        case NormPlacement::pre:
            if (!opt_.gated) return dcur_;
            gated_residual_backward(dy_, pv_.grad(gate_[size_t(j)]), dcur_, f, gate_[size_t(j)], n);
            return dy_;
        case NormPlacement::post:  // through the norm; then h's gradient starts as f's output gradient
            rmsnorm_backward(dy_, pv_.grad(nw), dcur_, s.sum, nw, s.rstd, N, D, 1.0, Into::overwrite);
            copy_forward(dprev_, dy_, size_t(n));
            return dy_;
        case NormPlacement::reordered:  // h's gradient starts as the stream's; f's goes through the norm
            copy_forward(dprev_, dcur_, size_t(n));
            rmsnorm_backward(dy_, pv_.grad(nw), dcur_, f, nw, s.rstd, N, D, 1.0, Into::overwrite);
            return dy_;
    }
    return nullptr;
}

template <typename T, typename A>
const A* StreamRule<T, A>::input_again(int j) {
    Sub& s = sub_[size_t(j)];
    if (placement_ == NormPlacement::pre) {  // f's input again (shared buffer): bit for bit the forward's
        rmsnorm_forward(s.x_in, s.rstd, h(j), norm_w_[size_t(j)], io.N, cfg.d_model, cfg.norm_eps, scale(j));
        return s.x_in;
    }
    if constexpr (std::is_same_v<A, T>) return h(j);
    else return s.x_in;
}

template <typename T, typename A>
T* StreamRule<T, A>::input_grad(int, Into* into) {
    if (placement_ == NormPlacement::pre) {
        *into = Into::overwrite;  // the normed input's gradient: nothing else writes dn
        return dn_;
    }
    *into = Into::add;  // f reads h itself: its input gradient adds into h's
    return dprev_;
}

template <typename T, typename A>
void StreamRule<T, A>::input_backward(int j) {
    if (placement_ == NormPlacement::pre) {
        const long N = io.N, D = cfg.d_model, n = N * D;
        const T* nw = norm_w_[size_t(j)];
        copy_forward(dprev_, dcur_, size_t(n));  // the stream passes straight through
        rmsnorm_backward(dprev_, pv_.grad(nw), dn_, h(j), nw, sub_[size_t(j)].rstd, N, D, scale(j));
    }
    std::swap(dcur_, dprev_);
}

template <typename T, typename A>
void StreamRule<T, A>::depth_stats(DepthStats& s) const {
    const long N = io.N, D = cfg.d_model;
    for (int j = 0; j < int(sub_.size()); j++) {
        s.input_ms[size_t(j)] += row_mean_square_sum(input_state(j), N, D);
        s.state_ms[size_t(j)] += row_mean_square_sum(sub_[size_t(j)].out, N, D);
    }
    s.final_ms += row_mean_square_sum(final_input(), N, D);
}

template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_standard_rule(const ModelConfig& c) {
    return std::make_unique<StreamRule<T, A>>(c, StreamOptions{});
}

#define STRATA_STREAM_RULE(T, A)                                                                   \
    template class StreamRule<T, A>;                                                              \
    template std::unique_ptr<ResidualRule<T, A>> make_standard_rule<T, A>(const ModelConfig&);
STRATA_RULE_TYPES(STRATA_STREAM_RULE)

}  // namespace strata
