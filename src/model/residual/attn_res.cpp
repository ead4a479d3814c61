// The AttnRes residual rule (docs/attn_res.md): sublayer j's input is a softmax over depth of the
// embedding, the completed block sums and the current block's partial sum, with a learned,
// zero-initialised pseudo-query per sublayer and an RMSNorm on the keys. attnres_full is one
// sublayer per block, so every sublayer output is its own source.
//
// With S sublayers per block, sublayer j's partial sum p_j = p_{j−1} + f_j, or f_j when j starts a
// block (j % S == 0); block k's sum is p_{(k+1)S−1}. Op 2L is the output op, whose mix feeds the final
// norm.
#include <algorithm>
#include <type_traits>

#include "model/residual/rule.h"

namespace strata {

// Pseudo-queries start at 0, so every mix starts as a plain mean; key norms at 1 (none with the
// parameter-free key norm).
// The input-dependent query's W_j (D, D) starts at 0 too, and replaces the sublayer's pseudo-query.
void attnres_layer_params(const ModelConfig& c, int l, const ParamAdd& add) {
    const bool learned = c.attnres_key_norm == AttnResKeyNorm::learned;
    const std::string p = "blocks." + std::to_string(l) + ".";
    const long D = c.d_model;
    for (int side = 0; side < 2; side++) {
        const std::string s = p + (side == 0 ? "attn" : "mlp");
        if (c.attnres_query == AttnResQuery::input) add(s + "_res_wq", {D, D}, 2 * l + side, ParamSpec::Init::zeros);
        else add(s + "_res_query", {D}, 2 * l + side, ParamSpec::Init::zeros);
        if (learned) add(s + "_res_norm", {D}, 2 * l + side, ParamSpec::Init::ones);
    }
}

void attnres_model_params(const ModelConfig& c, const ParamAdd& add) {
    add("out_res_query", {c.d_model}, -1, ParamSpec::Init::zeros);
    if (c.attnres_key_norm == AttnResKeyNorm::learned) add("out_res_norm", {c.d_model}, -1, ParamSpec::Init::ones);
}

namespace {

template <typename T, typename A>
class AttnResRule final : public ResidualRule<T, A> {
public:
    explicit AttnResRule(const ModelConfig& c)
        : ResidualRule<T, A>(c), S_(attnres_sublayers_per_block(c)), gate_(c.attnres_gate),
          input_query_(c.attnres_query == AttnResQuery::input),
          two_phase_(S_ > 1 && gate_ == AttnResGate::softmax && !input_query_) {
        const int n = 2 * c.n_layers;
        sub_.resize(size_t(n));
        dsub_.resize(size_t(n));
        const int n_max = attnres_max_sources(c);
        src_.resize(size_t(n_max));
        dsrc_.resize(size_t(n_max));
        const size_t P = size_t(std::min(S_, n));
        for (auto* v : {&ph1_.out, &ph1_.logit, &ph1_.rstd, &ph1_.lse}) v->resize(P);
        ph1_.w.resize(P);
        ph1_.gamma.resize(P);
        for (auto* v : {&ph1b_.dw, &ph1b_.dgamma}) v->resize(P);
        ph1b_.dout.resize(P);
        dmixes_.resize(two_phase_ ? P : 0);
    }

    void bind(const ParamView<T>& p) override {
        pv_ = p;
        for (int j = 0; j < int(sub_.size()); j++) {
            Sub& s = sub_[size_t(j)];
            const std::string side = "blocks." + std::to_string(j / 2) + (j % 2 == 0 ? ".attn" : ".mlp");
            s.norm = p(this->norm_name(j));
            const bool learned = cfg.attnres_key_norm == AttnResKeyNorm::learned;
            s.query = input_query_ ? nullptr : p(side + "_res_query");
            s.wq = input_query_ ? p(side + "_res_wq") : nullptr;
            s.key_norm = learned ? p(side + "_res_norm") : nullptr;
        }
        out_.query = p("out_res_query");
        out_.key_norm = cfg.attnres_key_norm == AttnResKeyNorm::learned ? p("out_res_norm") : nullptr;
        final_w_ = p("final_norm");
    }

    void describe(TensorPlan& P, long N, bool) override {
        const long D = cfg.d_model, n_max = attnres_max_sources(cfg);
        auto mix = [&](Mix& m, int layer) {
            P.add("mix.out", layer, size_t(N * D), &m.out);
            P.add("mix.logit", layer, size_t(n_max * N), &m.logit);
            P.add("mix.rstd", layer, size_t(n_max * N), &m.rstd);
            P.add("mix.lse", layer, size_t(N), &m.lse);
        };
        for (int j = 0; j < int(sub_.size()); j++) {
            Sub& s = sub_[size_t(j)];
            const int l = j / 2;
            s.x_in = nullptr;
            if (j == 0) P.add("x_in (every sublayer's)", -1, size_t(N * D), &s.x_in);
            P.add("rstd", l, size_t(N), &s.rstd);
            P.add("out", l, size_t(N * D), &s.out);
            mix(s.mix, l);
            s.pn = s.q = s.prstd = nullptr;
            if (input_query_) {
                P.add("query.normed_p", l, size_t(N * D), &s.pn);
                P.add("query.rstd", l, size_t(N), &s.prstd);
                P.add("query", l, size_t(N * D), &s.q);
            }
        }
        mix(out_.mix, -1);
        ones_ = nullptr;
        if (input_query_) P.add("ones", -1, size_t(D), &ones_);
    }

    void carved() override {
        if (input_query_) fill_value(ones_, size_t(cfg.d_model), 1.0);
    }

    void describe_backward(TensorPlan& P, long N) override {
        const long D = cfg.d_model;
        for (int j = 0; j < int(dsub_.size()); j++) P.add("dsub", j / 2, size_t(N * D), &dsub_[size_t(j)]);
        P.add("demb", -1, size_t(N * D), &demb_);
        if (two_phase_) {  // one per sublayer of a block: the block's phase-1 backward reads them all
            for (size_t k = 0; k < dmixes_.size(); k++) P.add("dmix", -1, size_t(N * D), &dmixes_[k]);
        } else {
            P.add("dmix", -1, size_t(N * D), &dmix_);
        }
        P.add("dn", -1, size_t(N * D), &dn_);
        dq_ = dpn_ = dones_ = nullptr;
        if (input_query_) {
            P.add("dquery", -1, size_t(N * D), &dq_);
            P.add("dnormed_p", -1, size_t(N * D), &dpn_);
            P.add("dones", -1, size_t(D), &dones_);
        }
    }

    void begin(const std::vector<char>& skipped) override {
        ResidualRule<T, A>::begin(skipped);
        for (Sub& s : sub_)
            if (!s.x_in) s.x_in = sub_[0].x_in;
    }

    const A* input(int j) override {
        Sub& s = sub_[size_t(j)];
        const long N = io.N, D = cfg.d_model;
        const int n = sources(j, false);
        if (input_query_) {  // q_j = W_j · RMSNorm(p), one query per row
            rmsnorm_forward(s.pn, s.prstd, query_source(j), ones_, N, D, cfg.norm_eps);
            matmul_forward(s.q, s.pn, s.wq, N, D, D);
            attnres_forward(s.mix.out, s.mix.logit, s.mix.rstd, s.mix.lse, src_.data(), n, s.q, s.key_norm, N, D,
                            cfg.norm_eps, gate_, true);
        } else if (!two_phase_) {  // Full, and the sigmoid gate: every op mixes its own sources
            attnres_forward(s.mix.out, s.mix.logit, s.mix.rstd, s.mix.lse, src_.data(), n, s.query, s.key_norm, N, D,
                            cfg.norm_eps, gate_);
        } else {  // Block, two-phase: the block's completed sources once for all its sublayers, then the partial
            if (j % S_ == 0) phase1(j, n);
            else if (has_partial_)
                attnres_phase2(s.mix.out, s.mix.logit, s.mix.rstd, s.mix.lse, src_[size_t(n - 1)], n - 1, s.query,
                               s.key_norm, N, D, cfg.norm_eps);
        }
        rmsnorm_forward(s.x_in, s.rstd, s.mix.out, s.norm, N, D, cfg.norm_eps);
        return s.x_in;
    }

    void output(int j, const A* f) override {
        const long n = this->ND();
        Sub& s = sub_[size_t(j)];
        if (j % S_ == 0) {  // a block starts: its partial sum is f_j alone (widened to T under bf16)
            if constexpr (std::is_same_v<A, T>) copy_forward(s.out, f, size_t(n));
            else convert_forward(s.out, f, size_t(n));
        } else {
            residual_forward(s.out, sub_[size_t(j - 1)].out, f, n);
        }
    }

    void finish() override {
        const long N = io.N, D = cfg.d_model;
        const int n = sources(int(sub_.size()), false);
        attnres_forward(out_.mix.out, out_.mix.logit, out_.mix.rstd, out_.mix.lse, src_.data(), n, out_.query,
                        out_.key_norm, N, D, cfg.norm_eps, gate_);
        rmsnorm_forward(io.lnf, io.lnf_rstd, out_.mix.out, final_w_, N, D, cfg.norm_eps);
    }

    void finish_backward(const T* dlnf) override {
        const long N = io.N, D = cfg.d_model;
        const size_t nd = size_t(N * D);
        if (dones_) fill_zero(dones_, size_t(D));  // the constant weight's gradient: written, never read
        for (T* ds : dsub_) fill_zero(ds, nd);
        fill_zero(demb_, nd);
        if (two_phase_) dmix_ = dmixes_[0];  // free until the last block's backward
        rmsnorm_backward(dmix_, pv_.grad(final_w_), dlnf, out_.mix.out, final_w_, io.lnf_rstd, N, D, 1.0,
                         Into::overwrite);
        const int n = sources(int(sub_.size()), true);
        attnres_backward(dsrc_.data(), pv_.grad(out_.query), grad_or_null(out_.key_norm), dmix_, out_.mix.out,
                         out_.mix.logit, out_.mix.rstd, out_.mix.lse, src_.data(), n, out_.query, out_.key_norm, N, D,
                         gate_);
    }

    // dsub_[j] is complete: every later op and p_{j+1} have contributed.
    const T* output_grad(int j, const A*) override {
        if (j % S_ != 0) residual_backward(dsub_[size_t(j - 1)], static_cast<T*>(nullptr), dsub_[size_t(j)], this->ND());
        return dsub_[size_t(j)];
    }

    const A* input_again(int j) override {  // f's input again (shared buffer)
        Sub& s = sub_[size_t(j)];
        rmsnorm_forward(s.x_in, s.rstd, s.mix.out, s.norm, io.N, cfg.d_model, cfg.norm_eps);
        return s.x_in;
    }

    T* input_grad(int, Into* into) override {
        *into = Into::overwrite;
        return dn_;
    }

    void input_backward(int j) override {
        Sub& s = sub_[size_t(j)];
        const long N = io.N, D = cfg.d_model;
        if (two_phase_) {  // the partial sum now (p_{j−1}'s gradient is due next), the block's sources at its start
            T* dm = dmixes_[size_t(j % S_)];
            rmsnorm_backward(dm, pv_.grad(s.norm), dn_, s.mix.out, s.norm, s.rstd, N, D, 1.0, Into::overwrite);
            const int n = sources(j, true);
            if (has_partial_) {
                const T* p = src_[size_t(n - 1)];
                T* dp = dsrc_[size_t(n - 1)];
                attnres_backward(&dp, pv_.grad(s.query), grad_or_null(s.key_norm), dm, s.mix.out,
                                 s.mix.logit + (n - 1) * N, s.mix.rstd + (n - 1) * N, s.mix.lse, &p, 1, s.query,
                                 s.key_norm, N, D, gate_);
            }
            if (j % S_ == 0) phase1_backward(j, has_partial_ ? n - 1 : n);
            return;
        }
        rmsnorm_backward(dmix_, pv_.grad(s.norm), dn_, s.mix.out, s.norm, s.rstd, N, D, 1.0, Into::overwrite);
        const int n = sources(j, true);
        if (!input_query_) {
            attnres_backward(dsrc_.data(), pv_.grad(s.query), grad_or_null(s.key_norm), dmix_, s.mix.out, s.mix.logit,
                             s.mix.rstd, s.mix.lse, src_.data(), n, s.query, s.key_norm, N, D, gate_);
            return;
        }
        // the per-row queries' gradient, back through W_j and the norm into p
        fill_zero(dq_, size_t(N * D));
        attnres_backward(dsrc_.data(), dq_, grad_or_null(s.key_norm), dmix_, s.mix.out, s.mix.logit, s.mix.rstd,
                         s.mix.lse, src_.data(), n, s.q, s.key_norm, N, D, gate_, true);
        matmul_backward(dpn_, pv_.grad(s.wq), dq_, s.pn, s.wq, N, D, D, Into::overwrite);
        rmsnorm_backward(query_source_grad(j), dones_, dpn_, query_source(j), ones_, s.prstd, N, D);
    }

    const T* embedding_grad() const override { return demb_; }
    // Two-phase: a block's queries and key norms gain their shared sources' terms at its first sublayer.
    int grads_final_at(int j) const override { return two_phase_ ? j - j % S_ : j; }

    void depth_stats(DepthStats& s) const override {
        const long N = io.N, D = cfg.d_model, L2 = long(sub_.size());
        const long n_cols = 1 + (L2 + S_ - 1) / S_ + (S_ > 1 ? 1 : 0);
        if (s.alpha.empty()) s.alpha.assign(size_t(L2 + 1), std::vector<double>(size_t(n_cols), 0.0));
        for (long j = 0; j < L2; j++) {
            s.input_ms[size_t(j)] += row_mean_square_sum(input_state(int(j)), N, D);
            s.state_ms[size_t(j)] += row_mean_square_sum(sub_[size_t(j)].out, N, D);
        }
        s.final_ms += row_mean_square_sum(final_input(), N, D);
        // Op j's sources in order: the embedding, blocks 0.. completed before j, then (Block) its partial.
        for (long j = 0; j <= L2; j++) {
            const Mix& m = j < L2 ? sub_[size_t(j)].mix : out_.mix;
            const long completed = j / S_;
            const bool partial = j % S_ != 0;
            for (long i = 0; i < 1 + completed + (partial ? 1 : 0); i++) {
                // the output op's trailing partial sum is the last (short) block
                const long col = i <= completed || j == L2 ? i : n_cols - 1;
                s.alpha[size_t(j)][size_t(col)] += softmax_weight_sum(m.logit + i * N, m.lse, N, gate_);
            }
        }
    }
    const T* input_state(int j) const override { return sub_[size_t(j)].mix.out; }
    const T* final_input() const override { return out_.mix.out; }

private:
    using ResidualRule<T, A>::cfg;
    using ResidualRule<T, A>::io;
    const int S_;  // sublayers per block
    const AttnResGate gate_;
    const bool input_query_;  // the ablation: q_j = W_j·RMSNorm(p) per token
    const bool two_phase_;    // Block with the softmax and static queries: the paper's two-phase computation
    ParamView<T> pv_;
    T* grad_or_null(const T* p) const { return p ? pv_.grad(p) : nullptr; }
    struct Mix {  // one AttnRes op
        T* out;           // (N, D) the mix: the sublayer's input h
        T *logit, *rstd;  // (n_max, N)
        T* lse;           // (N)
    };
    struct Sub {
        A* x_in;  // (N, D) f's input, the norm of the mix: one buffer for every sublayer
        T* rstd;  // (N)
        T* out;   // (N, D) the block's partial sum after this sublayer
        Mix mix;
        const T *norm, *query, *key_norm;
        const T* wq;     // the input-dependent query's W_j (D, D), else null
        T *pn, *prstd;   // its input RMSNorm(p) (N, D) and rstd (N)
        T* q;            // (N, D) the queries
    };
    std::vector<Sub> sub_;
    struct {
        Mix mix;
        const T *query, *key_norm;
    } out_{};
    const T* final_w_ = nullptr;
    std::vector<T*> dsub_;  // (2L) the gradient of each sublayer's partial sum
    T *demb_ = nullptr, *dmix_ = nullptr, *dn_ = nullptr;
    T* ones_ = nullptr;  // (D) the parameter-free norm's weight of the input-dependent query
    T *dq_ = nullptr, *dpn_ = nullptr, *dones_ = nullptr;
    // one op's sources and their gradients, sized once
    std::vector<const T*> src_;
    std::vector<T*> dsrc_;
    bool has_partial_ = false;  // whether the last sources() ended with a partial sum
    struct {                    // pointers for attnres_phase1 over one block's sublayers, sized once
        std::vector<T*> out, logit, rstd, lse;
        std::vector<const T*> w, gamma;
    } ph1_;
    struct {  // and the gradients attnres_phase1_backward adds to, and reads
        std::vector<T*> dw, dgamma;
        std::vector<const T*> dout;
    } ph1b_;
    std::vector<T*> dmixes_;  // two-phase: each sublayer's mix gradient, by its place in the block

    // The input-dependent query reads p: the partial sum of j's block before j, or the embedding when j
    // starts its block (or the skip left the partial sum empty).
    bool reads_partial(int j) const { return j % S_ != 0 && !skipped_empty(j - 1); }
    const T* query_source(int j) const { return reads_partial(j) ? sub_[size_t(j - 1)].out : io.x0; }
    T* query_source_grad(int j) const { return reads_partial(j) ? dsub_[size_t(j - 1)] : demb_; }

    // Sublayer e's partial sum (its block's sum up to e) is empty under the skip: every sublayer of its
    // block up to e is skipped.
    bool skipped_empty(long e) const {
        for (long i = e - e % S_; i <= e; i++)
            if (!this->skipped(i)) return false;
        return true;
    }

    // Fills src_ (and dsrc_ with the matching gradient buffers) with op j's sources: the embedding,
    // every block completed before j, and the partial sum of j's block when j does not start it. A
    // source the skip leaves empty is dropped. Returns their count.
    int sources(int j, bool grads) {
        int n = 0;
        auto push = [&](const T* src, T* dsrc) {
            src_[size_t(n)] = src;
            dsrc_[size_t(n)] = grads ? dsrc : nullptr;
            n++;
        };
        push(io.x0, demb_);
        for (long e = S_ - 1; e < j; e += S_)
            if (!skipped_empty(e)) push(sub_[size_t(e)].out, dsub_[size_t(e)]);
        has_partial_ = j % S_ != 0 && !skipped_empty(j - 1);
        if (has_partial_) push(sub_[size_t(j - 1)].out, dsub_[size_t(j - 1)]);
        return n;
    }

    // The pointers of the block starting at sublayer j0 into ph1_: each sublayer's mix and query.
    // Returns the block's sublayer count (the last block may be short).
    int gather_block(int j0) {
        const int end = std::min<int>(j0 + S_, int(sub_.size()));
        int k = 0;
        for (int j = j0; j < end; j++, k++) {
            Sub& s = sub_[size_t(j)];
            ph1_.out[size_t(k)] = s.mix.out;
            ph1_.logit[size_t(k)] = s.mix.logit;
            ph1_.rstd[size_t(k)] = s.mix.rstd;
            ph1_.lse[size_t(k)] = s.mix.lse;
            ph1_.w[size_t(k)] = s.query;
            ph1_.gamma[size_t(k)] = s.key_norm;
        }
        return k;
    }

    // Phase 1 of two-phase Block AttnRes for the block starting at sublayer j0: its n sources (the
    // embedding and the completed blocks) mixed with the queries of all its sublayers at once.
    // Sublayer j0 + i's mix then holds the normalised phase-1 result, which phase 2 completes with the
    // partial sum.
    void phase1(int j0, int n) {
        const int k = gather_block(j0);
        attnres_phase1(ph1_.out.data(), ph1_.logit.data(), ph1_.rstd.data(), ph1_.lse.data(), src_.data(), n,
                       ph1_.w.data(), ph1_.gamma.data(), k, io.N, cfg.d_model, cfg.norm_eps);
    }

    // Its backward, at the block's first sublayer (the last of the block the backward reaches): every
    // sublayer's gradient through the n shared sources, from the mix gradients kept in dmixes_, each
    // source row and its gradient read once for the block.
    void phase1_backward(int j0, int n) {
        const int k = gather_block(j0);
        for (int i = 0; i < k; i++) {
            const Sub& s = sub_[size_t(j0 + i)];
            ph1b_.dw[size_t(i)] = pv_.grad(s.query);
            ph1b_.dgamma[size_t(i)] = grad_or_null(s.key_norm);
            ph1b_.dout[size_t(i)] = dmixes_[size_t(i)];
        }
        attnres_phase1_backward(dsrc_.data(), ph1b_.dw.data(), ph1b_.dgamma.data(), ph1b_.dout.data(),
                                ph1_.out.data(), ph1_.logit.data(), ph1_.rstd.data(), ph1_.lse.data(),
                                src_.data(), n, ph1_.w.data(), ph1_.gamma.data(), k, io.N, cfg.d_model);
    }
};

}  // namespace

template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_attnres_rule(const ModelConfig& c) {
    return std::make_unique<AttnResRule<T, A>>(c);
}

#define STRATA_ATTNRES_RULE(T, A) \
    template std::unique_ptr<ResidualRule<T, A>> make_attnres_rule<T, A>(const ModelConfig&);
STRATA_RULE_TYPES(STRATA_ATTNRES_RULE)

}  // namespace strata
