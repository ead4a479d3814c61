// Block usefulness measures (analysis/usefulness.h, docs/analysis.md).
#include "analysis/usefulness.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "analysis/depth_report.h"
#include "core/error.h"
#include "train/evaluate.h"

namespace strata {

namespace {

struct Progress {
    bool on;
    void operator()(const std::string& what) const {
        if (on) std::fprintf(stderr, "\r%-60s", what.c_str());
    }
    ~Progress() {
        if (on) std::fprintf(stderr, "\r%60s\r", "");
    }
};

// The validation loss with the given sublayers skipped and the hook set; both cleared afterwards.
double loss_with(Model<float>& m, const TokenShard& val, const UsefulnessOptions& o, std::vector<int> skip,
                 decltype(Model<float>::sublayer_hook) hook = {}) {
    m.skip_sublayers = std::move(skip);
    m.sublayer_hook = std::move(hook);
    double loss = 0;
    try {
        loss = evaluate(m, val, o.batch_size, o.seq_len, o.batches);
    } catch (...) {
        m.skip_sublayers.clear();
        m.sublayer_hook = {};
        throw;
    }
    m.skip_sublayers.clear();
    m.sublayer_hook = {};
    return loss;
}

std::vector<int> block_sublayers(const std::vector<int>& blocks) {
    std::vector<int> s;
    for (int b : blocks) s.insert(s.end(), {2 * b, 2 * b + 1});
    return s;
}

// Row-wise (1/π)·arccos(cos(a_r, b_r)), summed over the N rows.
double angular_distance_sum(const float* a, const float* b, long N, long D) {
    double sum = 0;
    for (long r = 0; r < N; r++) {
        double ab = 0, aa = 0, bb = 0;
        for (long c = 0; c < D; c++) {
            const double x = a[r * D + c], y = b[r * D + c];
            ab += x * y, aa += x * x, bb += y * y;
        }
        const double cs = aa > 0 && bb > 0 ? std::clamp(ab / std::sqrt(aa * bb), -1.0, 1.0) : 1.0;
        sum += std::acos(cs) / M_PI;
    }
    return sum;
}

// The affine map f ≈ [x, 1]·W of one sublayer, W (D+1) × D, from the normal equations
// G = Σ [x,1]ᵀ[x,1] and C = Σ [x,1]ᵀ f accumulated in double; solved by Cholesky with a small ridge
// (1e-6 of G's mean diagonal) so that a rank-deficient input (a norm that zeroes a channel) still fits.
struct AffineFit {
    long D = 0, rows = 0;
    std::vector<double> G, C, xa;  // xa: one chunk of rows with the trailing 1, as doubles
    std::vector<double> fa;
    std::vector<float> W;          // the solution, (D+1) × D

    explicit AffineFit(long d) : D(d), G(size_t((d + 1) * (d + 1)), 0.0), C(size_t((d + 1) * d), 0.0) {}

    void add(const float* x, const float* f, long N) {
        xa.resize(size_t(N * (D + 1)));
        fa.resize(size_t(N * D));
        for (long r = 0; r < N; r++) {
            for (long c = 0; c < D; c++) xa[size_t(r * (D + 1) + c)] = x[r * D + c];
            xa[size_t(r * (D + 1) + D)] = 1.0;
            for (long c = 0; c < D; c++) fa[size_t(r * D + c)] = f[r * D + c];
        }
        const int K = int(D + 1);
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, K, int(N), 1.0, xa.data(), K, xa.data(), K, 1.0,
                    G.data(), K);
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, int(D), int(N), 1.0, xa.data(), K, fa.data(), int(D),
                    1.0, C.data(), int(D));
        rows += N;
    }

    void solve() {
        const long K = D + 1;
        std::vector<double> A = G, X = C;
        double diag = 0;
        for (long i = 0; i < K; i++) diag += A[size_t(i * K + i)];
        const double ridge = 1e-6 * std::max(diag / double(K), 1e-30);
        for (long i = 0; i < K; i++) A[size_t(i * K + i)] += ridge;
        for (long j = 0; j < K; j++) {  // A = L·Lᵀ, L in the lower triangle
            double d = A[size_t(j * K + j)];
            for (long k = 0; k < j; k++) d -= A[size_t(j * K + k)] * A[size_t(j * K + k)];
            if (!(d > 0)) throw Error("linear replacement: the fit's normal equations are not positive definite");
            const double ljj = std::sqrt(d);
            A[size_t(j * K + j)] = ljj;
            for (long i = j + 1; i < K; i++) {
                double s = A[size_t(i * K + j)];
                for (long k = 0; k < j; k++) s -= A[size_t(i * K + k)] * A[size_t(j * K + k)];
                A[size_t(i * K + j)] = s / ljj;
            }
        }
        for (long c = 0; c < D; c++) {  // L·y = C[:, c], then Lᵀ·x = y
            for (long i = 0; i < K; i++) {
                double s = X[size_t(i * D + c)];
                for (long k = 0; k < i; k++) s -= A[size_t(i * K + k)] * X[size_t(k * D + c)];
                X[size_t(i * D + c)] = s / A[size_t(i * K + i)];
            }
            for (long i = K - 1; i >= 0; i--) {
                double s = X[size_t(i * D + c)];
                for (long k = i + 1; k < K; k++) s -= A[size_t(k * K + i)] * X[size_t(k * D + c)];
                X[size_t(i * D + c)] = s / A[size_t(i * K + i)];
            }
        }
        W.assign(X.begin(), X.end());
        G.clear(), C.clear(), xa.clear(), fa.clear();
        G.shrink_to_fit(), C.shrink_to_fit(), xa.shrink_to_fit(), fa.shrink_to_fit();
    }

    // f = [x, 1]·W over N rows.
    void apply(const float* x, float* f, long N) const {
        for (long r = 0; r < N; r++) std::copy(W.end() - D, W.end(), f + r * D);  // the bias row
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(D), int(D), 1.0f, x, int(D), W.data(),
                    int(D), 1.0f, f, int(D));
    }
};

}  // namespace

nlohmann::json measure_usefulness(Model<float>& m, const TokenShard& val, const TokenShard& fit,
                                  const UsefulnessOptions& o) {
    STRATA_CHECK(o.batch_size > 0 && o.seq_len > 0, "measure_usefulness: batch size and sequence length must be set");
    if (m.precision() != Precision::fp32)
        throw Error("the usefulness measures run in fp32 precision (their hooks read the model's float tensors)");
    const int L = m.cfg.n_layers, B = o.batch_size, T = o.seq_len;
    const long D = m.cfg.d_model;
    const Progress progress{o.progress && ::isatty(2)};
    nlohmann::json js;
    const double base = loss_with(m, val, o, {});
    js["base_loss"] = base;

    // Whole-block skips, and the cumulative removal of the least useful blocks.
    std::vector<double> skip(size_t(L), 0.0);
    for (int l = 0; l < L; l++) {
        progress("skipping block " + std::to_string(l) + " ...");
        skip[size_t(l)] = loss_with(m, val, o, block_sublayers({l}));
    }
    std::vector<int> order(static_cast<size_t>(L));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return skip[size_t(a)] < skip[size_t(b)]; });
    std::vector<double> removal = {base};
    for (int k = 1; k <= L; k++) {
        progress("removing the " + std::to_string(k) + " least useful blocks ...");
        removal.push_back(k == 1 ? skip[size_t(order[0])]
                                 : loss_with(m, val, o, block_sublayers(std::vector<int>(order.begin(), order.begin() + k))));
    }
    nlohmann::json bs = nlohmann::json::array();
    for (int l = 0; l < L; l++) bs.push_back({{"block", l}, {"loss", skip[size_t(l)]}, {"delta_loss", skip[size_t(l)] - base}});
    js["block_skip"] = bs;
    js["removal"] = {{"order", order}, {"loss", removal}};

    // The angular distances and the causal scores, over the validation batches: one forward that keeps
    // each block's input and update, then (causal) one per skipped block.
    {
        EvalBatches it(val, B, T);
        std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
        std::vector<double> ang(size_t(L), 0.0), causal(size_t(L * L), 0.0);
        long rows = 0, n = 0;
        std::vector<float> delta(size_t(L) * B * T * D), cur(size_t(B) * T * D);
        std::vector<float> prev_in(size_t(B) * T * D);
        m.keep_sublayer_outputs = true;
        for (; (o.batches <= 0 || n < o.batches) && it.next(x.data(), y.data()) > 0; n++) {
            progress("angular distances and causal scores, batch " + std::to_string(n + 1) + " ...");
            const long N = long(B) * T;
            // Block l's update Δ_l = f_2l + f_2l+1, gathered by the hook.
            auto gather = [&](std::vector<float>& out) {
                return [&out, D](int j, const float*, const float*, float* f, long rows_) {
                    float* d = out.data() + size_t(j / 2) * size_t(rows_ * D);
                    if (j % 2 == 0) std::copy(f, f + rows_ * D, d);
                    else for (long i = 0; i < rows_ * D; i++) d[i] += f[i];
                };
            };
            m.sublayer_hook = gather(delta);
            m.forward(x.data(), nullptr, B, T);
            m.sublayer_hook = {};
            for (int l = 0; l < L; l++) {
                const float* a = m.sublayer_input_state(2 * l);
                const float* b = l + 1 < L ? m.sublayer_input_state(2 * l + 2) : m.final_input_state();
                ang[size_t(l)] += angular_distance_sum(a, b, N, D);
            }
            std::vector<float> skipped(delta.size());
            for (int s = 0; o.causal && s + 1 < L; s++) {
                m.skip_sublayers = block_sublayers({s});
                m.sublayer_hook = gather(skipped);
                m.forward(x.data(), nullptr, B, T);
                m.sublayer_hook = {};
                m.skip_sublayers.clear();
                for (int l = s + 1; l < L; l++) {
                    const float* d0 = delta.data() + size_t(l) * size_t(N * D);
                    const float* d1 = skipped.data() + size_t(l) * size_t(N * D);
                    double sum = 0;
                    for (long r = 0; r < N; r++) {
                        double num = 0, den = 0;
                        for (long c = 0; c < D; c++) {
                            const double e = double(d1[r * D + c]) - d0[r * D + c];
                            num += e * e, den += double(d0[r * D + c]) * d0[r * D + c];
                        }
                        sum += den > 0 ? std::sqrt(num / den) : 0.0;
                    }
                    causal[size_t(s * L + l)] += sum;
                }
            }
            rows += N;
        }
        m.keep_sublayer_outputs = false;
        m.skip_sublayers.clear();
        m.sublayer_hook = {};
        nlohmann::json a = nlohmann::json::array(), cm = nlohmann::json::array();
        for (int l = 0; l < L; l++) a.push_back(ang[size_t(l)] / double(rows));
        for (int s = 0; s < L; s++) {
            nlohmann::json row = nlohmann::json::array();
            for (int l = 0; l < L; l++)
                row.push_back(l > s ? nlohmann::json(causal[size_t(s * L + l)] / double(rows)) : nlohmann::json());
            cm.push_back(row);
        }
        js["angular_distance"] = a;
        if (o.causal) js["causal_score"] = cm;
        js["rows"] = rows;
    }

    // The linear replacements: fit every sublayer on the fit shard's first rows, then replace one
    // block at a time.
    {
        std::vector<AffineFit> fits;
        for (int j = 0; j < 2 * L; j++) fits.emplace_back(D);
        EvalBatches it(fit, B, T);
        std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
        long got = 0;
        int filled;
        m.sublayer_hook = [&](int j, const float*, const float* in, float* f, long N) {
            fits[size_t(j)].add(in, f, std::min(N, long(filled) * T));
        };
        while (got < o.fit_tokens && (filled = it.next(x.data(), y.data())) > 0) {
            progress("fitting the linear replacements: " + std::to_string(got) + " rows ...");
            m.forward(x.data(), nullptr, B, T);
            got += long(filled) * T;
        }
        m.sublayer_hook = {};
        if (got < o.fit_tokens)
            throw Error("linear replacement: " + fit.path() + " holds " + std::to_string(got) + " tokens in " +
                        std::to_string(T) + "-token windows, fewer than the " + std::to_string(o.fit_tokens) +
                        " the fit needs (--fit-tokens)");
        for (auto& f : fits) f.solve();
        nlohmann::json blocks = nlohmann::json::array();
        int useful = 0;
        for (int l = 0; l < L; l++) {
            progress("block " + std::to_string(l) + " replaced by its linear fit ...");
            const double loss = loss_with(m, val, o, {}, [&](int j, const float*, const float* in, float* f, long N) {
                if (j / 2 == l) fits[size_t(j)].apply(in, f, N);
            });
            const bool u = loss / base > o.useful_ratio;
            useful += u;
            blocks.push_back({{"block", l}, {"loss", loss}, {"ratio", loss / base}, {"useful", u}});
        }
        js["linear"] = {{"fit_rows", got}, {"useful_ratio", o.useful_ratio}, {"blocks", blocks},
                        {"useful_share", double(useful) / double(L)}};
    }
    return js;
}

}  // namespace strata
