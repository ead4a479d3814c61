// Row-major GEMM on top of CBLAS, for float and double: C = alpha·op(A)·op(B) + beta·C.
#pragma once
#include <cblas.h>

namespace strata {

inline void gemm(bool ta, bool tb, long M, long N, long K, float alpha, const float* A, long lda, const float* B,
                 long ldb, float beta, float* C, long ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool ta, bool tb, long M, long N, long K, double alpha, const double* A, long lda, const double* B,
                 long ldb, double beta, double* C, long ldc) {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}

}  // namespace strata
