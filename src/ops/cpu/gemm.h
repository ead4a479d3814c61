// Row-major GEMM for the ops: C (M×N, ldc) = alpha·op(A)·op(B) + beta·C, op(X) = Xᵀ when tX.
//
//  - double: CBLAS (OpenBLAS).
//  - float: oneDNN's f32 matmul where it measured faster than OpenBLAS on the model's shapes (AMD
//    CPUs with AVX-512: Zen 4 ran it at 160–194 GFLOP/s against OpenBLAS's 110–170 on 2 threads,
//    bench/results/train-2026-12-02-amd.md), else OpenBLAS (faster on the Intel Xeons measured). Small
//    GEMMs (a side under 64: decoding, tests' tiny shapes) stay on OpenBLAS, so oneDNN only keeps
//    primitives for the model's large shapes. STRATA_F32_GEMM=openblas or =onednn forces one;
//    set_f32_onednn does the same from code, so tests run both on every machine.
//  - bf16 inputs with float accumulation, C float or bf16: oneDNN's matmul where the CPU multiplies
//    bf16 natively and that is faster than fp32 (AMX-BF16, or AVX512-BF16 on AMD), else an emulation
//    that widens A and B to float and calls sgemm (correct; on Intel's AVX512-BF16 without AMX it
//    measured faster than the native kernel, docs/precision.md). STRATA_BF16_NATIVE=0 forces the
//    emulation and =1 the native path where the CPU has it; set_bf16_native does the same from code,
//    so both paths are tested on every machine that has both.
//
// oneDNN primitives are created once per shape and kept; their scratchpads live in one buffer that
// only grows, so a repeated shape allocates nothing of ours (oneDNN's execute itself makes a few small
// bookkeeping allocations per call, which tests/reliability/test_no_alloc.cpp accounts for).
#pragma once
#include <cblas.h>

#include <string>

#include "core/precision.h"

namespace strata {

inline void gemm_openblas(bool ta, bool tb, long M, long N, long K, float alpha, const float* A, long lda,
                          const float* B, long ldb, float beta, float* C, long ldc) {
    // One row of C (a decode step): a matrix-vector product. OpenBLAS 0.3.21 (Debian 12) does not
    // forward such GEMMs to its GEMV, and its GEMM kernel packs B for the single row.
    if (M == 1) {
        const long incx = ta ? lda : 1;  // A's K elements: a row, or a column of a transposed A
        if (tb) cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A, incx, beta, C, 1);
        else cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, A, incx, beta, C, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}
// oneDNN's f32 matmul (also the benchmarks' second fp32 peak).
void gemm_onednn(bool ta, bool tb, long M, long N, long K, float alpha, const float* A, long lda, const float* B,
                 long ldb, float beta, float* C, long ldc);
// Whether float GEMMs of at least kOnednnMinSide on every side go to oneDNN: by default where
// cpu_prefers_onednn_f32(); STRATA_F32_GEMM=openblas or set_f32_onednn(false) never, =onednn or
// set_f32_onednn(true) always.
bool f32_onednn();
void set_f32_onednn(bool on);
bool cpu_prefers_onednn_f32();
// "OpenBLAS sgemm" or "oneDNN <version> matmul (f32)": for reports.
const char* f32_gemm_backend();
constexpr long kOnednnMinSide = 64;

inline void gemm(bool ta, bool tb, long M, long N, long K, float alpha, const float* A, long lda, const float* B,
                 long ldb, float beta, float* C, long ldc) {
    if (M >= kOnednnMinSide && N >= kOnednnMinSide && K >= kOnednnMinSide && f32_onednn())
        gemm_onednn(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        gemm_openblas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool ta, bool tb, long M, long N, long K, double alpha, const double* A, long lda, const double* B,
                 long ldb, double beta, double* C, long ldc) {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}
void gemm(bool ta, bool tb, long M, long N, long K, float alpha, const bf16* A, long lda, const bf16* B, long ldb,
          float beta, float* C, long ldc);
void gemm(bool ta, bool tb, long M, long N, long K, float alpha, const bf16* A, long lda, const bf16* B, long ldb,
          float beta, bf16* C, long ldc);

// True while a call into the GEMM library (oneDNN) is running: a counting allocator can tell the
// library's own small per-call bookkeeping from allocations by strata (tests/reliability/test_no_alloc.cpp).
bool inside_gemm_library();

// Reads STRATA_F32_GEMM and STRATA_BF16_NATIVE now (else on the first GEMM); a value they do not
// accept is an Error naming the variable.
void check_gemm_environment();

// Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16), read once from cpuid.
bool cpu_has_native_bf16();
// Whether it has AVX512-BF16 itself (VDPBF16PS): what the bf16 attention kernel runs on.
bool cpu_has_avx512_bf16();
// Whether the native path is also the faster one here: AMX-BF16, or AVX512-BF16 on an AMD CPU (Zen 4
// runs it at twice its fp32 rate; Intel's AVX512-BF16 without AMX measured below its fp32 sgemm).
bool cpu_prefers_native_bf16();
// Whether bf16 GEMMs take the native path: by default where cpu_prefers_native_bf16();
// STRATA_BF16_NATIVE=0 or set_bf16_native(false) never, =1 or set_bf16_native(true) wherever the CPU
// has it.
bool bf16_native();
void set_bf16_native(bool allowed);
// "oneDNN <version> matmul (native bf16)" or the emulation's name: for reports.
const char* bf16_gemm_backend();
// Empty where bf16 is native; else a one-line note for the user on the path bf16 takes here, and why.
std::string bf16_speed_note();

}  // namespace strata
