// DenseFormer (Pagliardini et al. 2024, arXiv 2402.02622), dilation and period 1: a depth-weighted
// average (DWA) of every block's output state after each block,
//   X_0 = the embedding,   X_i = B_i(Y_{i−1}),   Y_i = Σ_{j=0..i} α_{i,j} X_j   (i = 1..L, Y_0 = X_0),
// where B_i is a pre-norm transformer block (h = Y + f_attn(N(Y)); X = h + f_mlp(N(h))) and the head
// reads RMSNorm(Y_L). α_i = blocks.(i−1).dwa, i + 1 static scalars, start as the identity (α_{i,i} = 1,
// the rest 0) and are not weight-decayed. A skipped sublayer's output is zero; its block's state still
// enters every later average.
#include <type_traits>

#include "model/residual/rule.h"

namespace strata {

void denseformer_layer_params(const ModelConfig&, int l, const ParamAdd& add) {
    add("blocks." + std::to_string(l) + ".dwa", {l + 2}, 2 * l + 1, ParamSpec::Init::unit_last);
}

namespace {

template <typename T, typename A>
class DenseFormerRule final : public ResidualRule<T, A> {
public:
    explicit DenseFormerRule(const ModelConfig& c) : ResidualRule<T, A>(c) {
        const size_t L = size_t(c.n_layers);
        rstd_.resize(2 * L);
        mid_.resize(L);
        X_.resize(L + 1);
        Y_.resize(L + 1);
        dX_.resize(L + 1);
        dwa_.resize(L);
        srcs_.resize(L + 1);
    }

    void bind(const ParamView<T>& p) override {
        pv_ = p;
        const int L = cfg.n_layers;
        norm_w_.resize(size_t(2 * L));
        for (int j = 0; j < 2 * L; j++) norm_w_[size_t(j)] = p(this->norm_name(j));
        for (int l = 0; l < L; l++) dwa_[size_t(l)] = p("blocks." + std::to_string(l) + ".dwa");
        final_w_ = p("final_norm");
    }

    void describe(TensorPlan& P, long N, bool) override {
        const long D = cfg.d_model;
        const int L = cfg.n_layers;
        P.add("x_in (every sublayer's)", -1, size_t(N * D), &x_in_);
        for (int j = 0; j < 2 * L; j++) P.add("rstd", j / 2, size_t(N), &rstd_[size_t(j)]);
        for (int l = 0; l < L; l++) {
            P.add("mid", l, size_t(N * D), &mid_[size_t(l)]);       // the state between attention and MLP
            P.add("X", l, size_t(N * D), &X_[size_t(l + 1)]);       // the block's output state
            P.add("Y", l, size_t(N * D), &Y_[size_t(l + 1)]);       // the average after it
        }
    }

    void describe_backward(TensorPlan& P, long N) override {
        const long D = cfg.d_model;
        for (int i = 0; i <= cfg.n_layers; i++) P.add("dX", i - 1, size_t(N * D), &dX_[size_t(i)]);
        P.add("dY", -1, size_t(N * D), &dY_);
        P.add("dmid", -1, size_t(N * D), &dmid_);
        P.add("dn", -1, size_t(N * D), &dn_);
    }

    void begin(const std::vector<char>& skipped) override {
        ResidualRule<T, A>::begin(skipped);
        X_[0] = Y_[0] = const_cast<T*>(io.x0);  // read only: the averages write Y_1.., the blocks X_1..
        input_ready_ = false;
    }

    const A* input(int j) override {
        if (!input_ready_) norm(j, in_state(j));
        input_ready_ = false;
        return x_in_;
    }

    void output(int j, const A* f) override {
        const long N = io.N, D = cfg.d_model, n = N * D;
        const int l = j / 2;
        if (j % 2 == 0) {  // mid = Y_l + f_attn, normed at once for the MLP
            residual_rmsnorm_forward(mid_[size_t(l)], x_in_, rstd_[size_t(j + 1)], Y_[size_t(l)], f,
                                     norm_w_[size_t(j + 1)], N, D, cfg.norm_eps);
            input_ready_ = true;
            return;
        }
        residual_forward(X_[size_t(l + 1)], mid_[size_t(l)], f, n);  // X_{l+1} = mid + f_mlp
        weighted_sum_forward(Y_[size_t(l + 1)], sources(l + 1), l + 2, dwa_[size_t(l)], n);
    }

    void finish() override {
        rmsnorm_forward(io.lnf, io.lnf_rstd, Y_[size_t(cfg.n_layers)], final_w_, io.N, cfg.d_model, cfg.norm_eps);
    }

    void finish_backward(const T* dlnf) override {
        const long N = io.N, D = cfg.d_model;
        for (T* d : dX_) fill_zero(d, size_t(N * D));
        rmsnorm_backward(dY_, pv_.grad(final_w_), dlnf, Y_[size_t(cfg.n_layers)], final_w_, io.lnf_rstd, N, D, 1.0,
                         Into::overwrite);
    }

    // MLP of layer l: dY_ holds the gradient w.r.t. Y_{l+1}, complete (block l+2, or the head, has
    // run). Through the average into every X_j, j ≤ l+1; then X_{l+1}'s is complete, and it is f's.
    // Attention: dmid_, set by the MLP's input_backward.
    const T* output_grad(int j, const A*) override {
        const int l = j / 2;
        if (j % 2 == 0) return dmid_;
        weighted_sum_backward(dX_.data(), pv_.grad(dwa_[size_t(l)]), dY_, sources(l + 1), l + 2, dwa_[size_t(l)],
                              this->ND());
        return dX_[size_t(l + 1)];
    }

    const A* input_again(int j) override {
        norm(j, in_state(j));
        return x_in_;
    }

    T* input_grad(int, Into* into) override {
        *into = Into::overwrite;
        return dn_;
    }

    // MLP: dmid = dX_{l+1} + the norm's backward. Attention: dY_l = dmid + the norm's; for l = 0, Y_0
    // is the embedding X_0, whose gradient gathers in dX_0.
    void input_backward(int j) override {
        const long N = io.N, D = cfg.d_model, n = N * D;
        const int l = j / 2;
        T* d = j % 2 == 1 ? dmid_ : (l == 0 ? dX_[0] : dY_);
        const T* through = j % 2 == 1 ? dX_[size_t(l + 1)] : dmid_;
        if (d == dX_[0]) residual_backward(d, static_cast<T*>(nullptr), through, n);
        else copy_forward(d, through, size_t(n));
        rmsnorm_backward(d, pv_.grad(norm_w_[size_t(j)]), dn_, in_state(j), norm_w_[size_t(j)], rstd_[size_t(j)], N, D);
    }

    const T* embedding_grad() const override { return dX_[0]; }

    void depth_stats(DepthStats& s) const override {
        const long N = io.N, D = cfg.d_model;
        for (int j = 0; j < 2 * cfg.n_layers; j++) {
            s.input_ms[size_t(j)] += row_mean_square_sum(input_state(j), N, D);
            const T* state = j % 2 == 0 ? mid_[size_t(j / 2)] : Y_[size_t(j / 2 + 1)];
            s.state_ms[size_t(j)] += row_mean_square_sum(state, N, D);
        }
        s.final_ms += row_mean_square_sum(final_input(), N, D);
    }
    const T* input_state(int j) const override { return in_state(j); }
    const T* final_input() const override { return Y_[size_t(cfg.n_layers)]; }

private:
    using ResidualRule<T, A>::cfg;
    using ResidualRule<T, A>::io;
    ParamView<T> pv_;
    std::vector<const T*> norm_w_, dwa_;
    const T* final_w_ = nullptr;
    A* x_in_ = nullptr;        // (N, D) f's input: one buffer for every sublayer, recomputed by the backward
    std::vector<T*> rstd_;     // (2L) × (N)
    std::vector<T*> mid_;      // (L) the state after each block's attention
    std::vector<T*> X_, Y_;        // (L+1) block output states and their averages; [0] is the embedding
    std::vector<T*> dX_;           // (L+1) their gradients; dX_[0] is the embedding's
    T *dY_ = nullptr, *dmid_ = nullptr, *dn_ = nullptr;
    std::vector<const T*> srcs_;
    bool input_ready_ = false;

    const T* in_state(int j) const { return j % 2 == 0 ? Y_[size_t(j / 2)] : mid_[size_t(j / 2)]; }
    void norm(int j, const T* x) {
        rmsnorm_forward(x_in_, rstd_[size_t(j)], x, norm_w_[size_t(j)], io.N, cfg.d_model, cfg.norm_eps);
    }
    const T* const* sources(int i) {  // X_0 .. X_i
        for (int k = 0; k <= i; k++) srcs_[size_t(k)] = X_[size_t(k)];
        return srcs_.data();
    }
};

}  // namespace

template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_denseformer_rule(const ModelConfig& c) {
    return std::make_unique<DenseFormerRule<T, A>>(c);
}

#define STRATA_DENSEFORMER_RULE(T, A) \
    template std::unique_ptr<ResidualRule<T, A>> make_denseformer_rule<T, A>(const ModelConfig&);
STRATA_RULE_TYPES(STRATA_DENSEFORMER_RULE)

}  // namespace strata
