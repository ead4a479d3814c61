#include "bench/gemm_peak.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>

#include "bench/stats.h"
#include "core/error.h"
#include "core/rng.h"
#include "ops/cpu/gemm.h"

namespace strata::bench {

const char* to_string(GemmLib l) { return l == GemmLib::openblas ? "OpenBLAS" : "oneDNN"; }

std::vector<GemmShape> model_gemm_shapes(long tokens, const ModelConfig& c) {
    const long D = c.d_model, F = c.ffn_hidden, V = c.vocab_size, Hd = c.n_heads * c.head_dim,
               QKV = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, N = tokens;
    // (M×K)·(K×N). Forward is x·Wᵀ (B transposed), input gradient dY·W (plain), weight gradient dYᵀ·X.
    return {
        {"square 1024³", false, false, 1024, 1024, 1024},
        {"x·W_qkvᵀ fwd", false, true, N, QKV, D},
        {"att·W_oᵀ fwd", false, true, N, D, Hd},
        {"x·W_guᵀ fwd (fused gate+up)", false, true, N, 2 * F, D},
        {"act·W_downᵀ fwd", false, true, N, D, F},
        {"x·W_lmᵀ fwd (LM head)", false, true, N, V, D},
        {"dY·W_qkv (input grad)", false, false, N, D, QKV},
        {"dY·W_o (input grad)", false, false, N, Hd, D},
        {"dY·W_gu (input grad)", false, false, N, D, 2 * F},
        {"dY·W_down (input grad)", false, false, N, F, D},
        {"dY·W_lm (input grad)", false, false, N, D, V},
        {"dYᵀ·X (W_qkv weight grad)", true, false, QKV, D, N},
        {"dYᵀ·X (W_o weight grad)", true, false, D, Hd, N},
        {"dYᵀ·X (W_gu weight grad)", true, false, 2 * F, D, N},
        {"dYᵀ·X (W_down weight grad)", true, false, D, F, N},
        {"dYᵀ·X (LM head weight grad)", true, false, V, D, N},
    };
}

std::vector<GemmResult> gemm_peaks(long tokens, const ModelConfig& c, Precision p, GemmLib lib, double min_seconds) {
    using Clock = std::chrono::steady_clock;
    auto seconds_since = [](Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); };
    if (p == Precision::bf16 && lib == GemmLib::openblas)
        throw Error("gemm_peaks: strata's bf16 GEMMs are oneDNN's (or their emulation), not OpenBLAS's");
    std::vector<GemmResult> out;
    Rng rng(7);
    for (const GemmShape& s : model_gemm_shapes(tokens, c)) {
        std::vector<float> A(size_t(s.M * s.K)), Bm(size_t(s.K * s.N)), C(size_t(s.M * s.N));
        for (float& x : A) x = float(rng.uniform() - 0.5);
        for (float& x : Bm) x = float(rng.uniform() - 0.5);
        std::vector<bf16> Ab, Bb;
        if (p == Precision::bf16) {
            Ab.resize(A.size());
            Bb.resize(Bm.size());
            for (size_t i = 0; i < A.size(); i++) Ab[i] = bf16(A[i]);
            for (size_t i = 0; i < Bm.size(); i++) Bb[i] = bf16(Bm[i]);
        }
        const long lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
        auto call = [&] {
            if (p == Precision::bf16)
                gemm(s.ta, s.tb, s.M, s.N, s.K, 1.0f, Ab.data(), lda, Bb.data(), ldb, 0.0f, C.data(), s.N);
            else if (lib == GemmLib::onednn)
                gemm_onednn(s.ta, s.tb, s.M, s.N, s.K, 1.0f, A.data(), lda, Bm.data(), ldb, 0.0f, C.data(), s.N);
            else
                cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans, s.M,
                            s.N, s.K, 1.0f, A.data(), lda, Bm.data(), ldb, 0.0f, C.data(), s.N);
        };
        call();  // warm caches, the thread pool and (oneDNN) the primitive
        const double flops = 2.0 * double(s.M) * double(s.N) * double(s.K);
        std::vector<double> t;
        auto t_all = Clock::now();
        while (t.size() < 5 || (seconds_since(t_all) < min_seconds && t.size() < 1000)) {
            auto t0 = Clock::now();
            call();
            t.push_back(seconds_since(t0));
        }
        Stats st = stats_of(t);
        out.push_back({s, flops / st.min / 1e9, flops / st.mean / 1e9, int(t.size())});
    }
    return out;
}

std::vector<GemmResult> sgemm_peaks(long tokens, const ModelConfig& c, double min_seconds) {
    return gemm_peaks(tokens, c, Precision::fp32, GemmLib::openblas, min_seconds);
}

double quick_gemm_gflops(Precision p, double seconds) {
    using Clock = std::chrono::steady_clock;
    const long n = 512;
    std::vector<float> A(size_t(n * n)), B(size_t(n * n)), C(size_t(n * n));
    Rng rng(7);
    for (float& x : A) x = float(rng.uniform() - 0.5);
    for (float& x : B) x = float(rng.uniform() - 0.5);
    std::vector<bf16> Ab(A.size()), Bb(B.size());
    for (size_t i = 0; i < A.size(); i++) Ab[i] = bf16(A[i]), Bb[i] = bf16(B[i]);
    auto call = [&] {
        if (p == Precision::bf16)
            gemm(false, false, n, n, n, 1.0f, Ab.data(), n, Bb.data(), n, 0.0f, C.data(), n);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A.data(), n, B.data(), n, 0.0f,
                        C.data(), n);
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

const GemmResult& highest_mean(const std::vector<GemmResult>& r) {
    const GemmResult* best = &r.at(0);
    for (const auto& g : r)
        if (g.mean_gflops > best->mean_gflops) best = &g;
    return *best;
}

const GemmResult& best_of(const std::vector<GemmResult>& r) {
    const GemmResult* best = &r.at(0);
    for (const auto& g : r)
        if (g.best_gflops > best->best_gflops) best = &g;
    return *best;
}

}  // namespace strata::bench
