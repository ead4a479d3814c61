#include "bench/gemm_peak.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>

#include "bench/stats.h"
#include "core/rng.h"

namespace strata::bench {

std::vector<GemmResult> sgemm_peaks(long tokens, const ModelConfig& c) {
    using Clock = std::chrono::steady_clock;
    auto seconds_since = [](Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); };
    const long D = c.d_model, F = c.ffn_hidden, V = c.vocab_size, QKV = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
    const long Nt = tokens;
    // (M×K)·(K×N). Forward is x·Wᵀ (B transposed), input gradient dY·W (plain), weight gradient dYᵀ·X.
    const std::vector<GemmShape> shapes = {
        {"square 1024³", false, false, 1024, 1024, 1024},
        {"x·W_gateᵀ (2048×384)·(384×1024)", false, true, Nt, F, D},
        {"x·W_qkvᵀ fwd", false, true, Nt, QKV, D},
        {"x·W_guᵀ fwd (fused gate+up)", false, true, Nt, 2 * F, D},
        {"act·W_downᵀ fwd", false, true, Nt, D, F},
        {"x·W_lmᵀ fwd (LM head)", false, true, Nt, V, D},
        {"dY·W_gu (input grad)", false, false, Nt, D, 2 * F},
        {"dYᵀ·X (W_gu weight grad)", true, false, 2 * F, D, Nt},
        {"dYᵀ·X (LM head weight grad)", true, false, V, D, Nt},
    };
    std::vector<GemmResult> out;
    Rng rng(7);
    for (const GemmShape& s : shapes) {
        std::vector<float> A(size_t(s.M * s.K)), Bm(size_t(s.K * s.N)), C(size_t(s.M * s.N));
        for (float& x : A) x = float(rng.uniform() - 0.5);
        for (float& x : Bm) x = float(rng.uniform() - 0.5);
        const long lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
        auto call = [&] {
            cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans, s.M, s.N,
                        s.K, 1.0f, A.data(), lda, Bm.data(), ldb, 0.0f, C.data(), s.N);
        };
        call();  // warm caches and OpenBLAS's thread pool
        const double flops = 2.0 * double(s.M) * double(s.N) * double(s.K);
        std::vector<double> t;
        auto t_all = Clock::now();
        while (t.size() < 5 || (seconds_since(t_all) < 0.4 && t.size() < 1000)) {
            auto t0 = Clock::now();
            call();
            t.push_back(seconds_since(t0));
        }
        Stats st = stats_of(t);
        out.push_back({s, flops / st.min / 1e9, flops / st.mean / 1e9, int(t.size())});
    }
    return out;
}

double quick_sgemm_gflops(double seconds) {
    using Clock = std::chrono::steady_clock;
    const long n = 512;
    std::vector<float> A(size_t(n * n)), B(size_t(n * n)), C(size_t(n * n));
    Rng rng(7);
    for (float& x : A) x = float(rng.uniform() - 0.5);
    for (float& x : B) x = float(rng.uniform() - 0.5);
    auto call = [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A.data(), n, B.data(), n, 0.0f, C.data(), n);
    };
    call();
    double best = 1e30;
    const auto t_all = Clock::now();
    for (int reps = 0; reps < 3 || (std::chrono::duration<double>(Clock::now() - t_all).count() < seconds && reps < 1000);
         reps++) {
        const auto t0 = Clock::now();
        call();
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    return 2.0 * double(n) * double(n) * double(n) / best / 1e9;
}

const GemmResult& best_of(const std::vector<GemmResult>& r) {
    const GemmResult* best = &r.at(0);
    for (const auto& g : r)
        if (g.best_gflops > best->best_gflops) best = &g;
    return *best;
}

}  // namespace strata::bench
