// The float GEMM behind every matmul op has two libraries (ops/cpu/gemm.h): OpenBLAS, and oneDNN's
// matmul where that is the faster one. Each is checked here against a float64 product on shapes large
// enough to reach oneDNN (every side ≥ kOnednnMinSide), in every transpose, with padded leading
// dimensions and with beta = 0 and 1, so both paths are tested on every machine whichever is the
// default.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "ops/cpu/gemm.h"

namespace strata {
namespace {

struct Case {
    bool ta, tb;
    long M, N, K;
    float beta;
};

// C = op(A)·op(B) + beta·C0 in float64, the same layout as gemm's arguments.
std::vector<double> reference(const Case& c, const std::vector<float>& A, long lda, const std::vector<float>& B,
                              long ldb, const std::vector<float>& C0, long ldc) {
    std::vector<double> C(size_t(c.M * ldc), 0.0);
    for (long i = 0; i < c.M; i++)
        for (long j = 0; j < c.N; j++) {
            double s = 0;
            for (long k = 0; k < c.K; k++) {
                const double a = c.ta ? A[size_t(k * lda + i)] : A[size_t(i * lda + k)];
                const double b = c.tb ? B[size_t(j * ldb + k)] : B[size_t(k * ldb + j)];
                s += a * b;
            }
            C[size_t(i * ldc + j)] = s + double(c.beta) * C0[size_t(i * ldc + j)];
        }
    return C;
}

class GemmF32 : public ::testing::TestWithParam<bool> {
protected:
    void SetUp() override { set_f32_onednn(GetParam()); }
    void TearDown() override { set_f32_onednn(cpu_prefers_onednn_f32()); }
};

TEST_P(GemmF32, MatchesFloat64InEveryLayout) {
    EXPECT_NE(std::string(f32_gemm_backend()).find(GetParam() ? "oneDNN" : "OpenBLAS"), std::string::npos)
        << f32_gemm_backend();
    std::mt19937_64 g(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const std::vector<Case> cases = {
        {false, true, 96, 80, 64, 0.0f},  {false, false, 64, 72, 100, 1.0f}, {true, false, 70, 64, 96, 1.0f},
        {true, true, 64, 65, 67, 0.0f},   {false, true, 128, 64, 200, 1.0f},
    };
    for (const Case& c : cases) {
        const long ar = c.ta ? c.K : c.M, ac = c.ta ? c.M : c.K, br = c.tb ? c.N : c.K, bc = c.tb ? c.K : c.N;
        const long lda = ac + 3, ldb = bc + 5, ldc = c.N + 7;  // padded: the strides must be honoured
        std::vector<float> A(size_t(ar * lda)), B(size_t(br * ldb)), C(size_t(c.M * ldc));
        for (float& x : A) x = nd(g);
        for (float& x : B) x = nd(g);
        for (float& x : C) x = nd(g);
        const std::vector<float> C0 = C;
        const std::vector<double> want = reference(c, A, lda, B, ldb, C0, ldc);
        gemm(c.ta, c.tb, c.M, c.N, c.K, 1.0f, A.data(), lda, B.data(), ldb, c.beta, C.data(), ldc);
        const std::string what = std::string("ta=") + (c.ta ? "1" : "0") + " tb=" + (c.tb ? "1" : "0") +
                                 " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" +
                                 std::to_string(c.K) + " beta=" + std::to_string(c.beta);
        double worst = 0;
        for (long i = 0; i < c.M; i++)
            for (long j = 0; j < ldc; j++) {
                const size_t e = size_t(i * ldc + j);
                if (j >= c.N) {  // padding is not written
                    ASSERT_EQ(C[e], C0[e]) << what << " wrote past N at row " << i;
                    continue;
                }
                // float accumulation of K unit-variance products: error ~ sqrt(K)·2^-24 relative to sqrt(K)
                worst = std::max(worst, std::abs(double(C[e]) - want[e]) / std::sqrt(double(c.K)));
            }
        EXPECT_LT(worst, 1e-5) << what;
    }
}

INSTANTIATE_TEST_SUITE_P(Libraries, GemmF32, ::testing::Values(false, true),
                         [](const auto& info) { return std::string(info.param ? "onednn" : "openblas"); });

}  // namespace
}  // namespace strata
