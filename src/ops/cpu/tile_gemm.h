// Register-blocked GEMM for the small tiles of flash attention (ops/cpu/attention.cpp).
//
//   C[r][n] = (accumulate ? C[r][n] : 0) + alpha · Σ_{k ∈ K(r-block)} A(r, k) · B[k][n]
//
// A(r, k) = A[r·sr + k·sk], so one kernel serves A and Aᵀ; B's rows are contiguous in n. Rows go in
// blocks of up to kRows, columns in blocks of one or two SIMD vectors, with the block's products held
// in registers over the whole k loop (a BLAS library packs both operands and dispatches per call,
// which costs more than the work at 64×128×64). Causal tiles ask each row block for its own k range
// and column count (`bounds`), so the work a mask would zero is skipped, not done.
//
// The vectors are GCC's vector extension at the width -march allows (64 bytes with AVX-512, else 32),
// so the compiler emits FMAs of that width; columns past the last whole vector run as scalars. The sum
// over k runs in order: the result does not depend on the blocking or on the thread count.
#pragma once
#include <algorithm>
#include <cstring>
#include <utility>

#include "ops/cpu/vec_math.h"

namespace strata::tile {

inline constexpr int kRows = 6;  // rows per register block: 6 × 2 vectors of accumulators

using simd::kVecBytes;
using simd::Simd;

// max(init, x[0..n)) of values that are not NaN, in whole vectors where it can.
template <typename T>
T row_max(const T* x, long n, T init) {
    using S = Simd<T>;
    using V = typename S::V;
    long c = 0;
    if (n >= S::W) {
        V m = S::load(x);
        for (c = S::W; c + S::W <= n; c += S::W) {
            const V v = S::load(x + c);
            m = v > m ? v : m;
        }
        for (long i = 0; i < S::W; i++) init = m[i] > init ? m[i] : init;
    }
    for (; c < n; c++) init = x[c] > init ? x[c] : init;
    return init;
}

// One register block: MR rows × NV vectors of columns starting at C, over k in [k0, k1).
template <typename T, int MR, int NV>
inline void block(long k0, long k1, T alpha, const T* A, long sr, long sk, const T* B, long ldb, bool accumulate,
                  T* C, long ldc) {
    using S = Simd<T>;
    using V = typename S::V;
    V acc[MR][NV];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NV; j++) acc[i][j] = V{};
    for (long k = k0; k < k1; k++) {
        V b[NV];
        for (int j = 0; j < NV; j++) b[j] = S::load(B + k * ldb + j * S::W);
        for (int i = 0; i < MR; i++) {
            const V a = S::splat(A[i * sr + k * sk]);
            for (int j = 0; j < NV; j++) acc[i][j] += a * b[j];
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NV; j++) {
            T* c = C + i * ldc + j * S::W;
            S::store(c, accumulate ? S::load(c) + alpha * acc[i][j] : alpha * acc[i][j]);
        }
}

// The scalar columns [n0, n1) of rows [0, mr), for a width that is not a whole number of vectors.
template <typename T>
inline void scalar_columns(long mr, long n0, long n1, long k0, long k1, T alpha, const T* A, long sr, long sk,
                           const T* B, long ldb, bool accumulate, T* C, long ldc) {
    for (long i = 0; i < mr; i++)
        for (long n = n0; n < n1; n++) {
            T s = 0;
            for (long k = k0; k < k1; k++) s += A[i * sr + k * sk] * B[k * ldb + n];
            T* c = C + i * ldc + n;
            *c = accumulate ? *c + alpha * s : alpha * s;
        }
}

template <typename T, int MR>
inline void row_block(long N, long k0, long k1, T alpha, const T* A, long sr, long sk, const T* B, long ldb,
                      bool accumulate, T* C, long ldc) {
    constexpr long W = Simd<T>::W;
    long n = 0;
    for (; n + 2 * W <= N; n += 2 * W) block<T, MR, 2>(k0, k1, alpha, A, sr, sk, B + n, ldb, accumulate, C + n, ldc);
    if (n + W <= N) block<T, MR, 1>(k0, k1, alpha, A, sr, sk, B + n, ldb, accumulate, C + n, ldc), n += W;
    if (n < N) scalar_columns<T>(MR, n, N, k0, k1, alpha, A, sr, sk, B, ldb, accumulate, C, ldc);
}

struct Bounds {
    long k0, k1, n;  // k in [k0, k1); columns [0, n)
};

// C (M × N) as above. bounds(r0, r1) gives the row block [r0, r1)'s k range and column count:
// a Bounds. Rows outside any k range get alpha · 0 (or keep C when accumulating).
template <typename T, typename F>
void gemm(long M, T alpha, const T* A, long sr, long sk, const T* B, long ldb, bool accumulate, T* C, long ldc,
          F bounds) {
    for (long r0 = 0; r0 < M; r0 += kRows) {
        const long mr = std::min<long>(kRows, M - r0);
        const auto bd = bounds(r0, r0 + mr);
        const long k0 = bd.k0, k1 = std::max(bd.k0, bd.k1), N = bd.n;
        const T* a = A + r0 * sr;
        T* c = C + r0 * ldc;
        switch (mr) {
            case 6: row_block<T, 6>(N, k0, k1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
            case 5: row_block<T, 5>(N, k0, k1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
            case 4: row_block<T, 4>(N, k0, k1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
            case 3: row_block<T, 3>(N, k0, k1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
            case 2: row_block<T, 2>(N, k0, k1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
            default: row_block<T, 1>(N, k0, k1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
        }
    }
}

// dst (cols × rows, row stride ld_dst) = srcᵀ for src (rows × cols, row stride ld_src); columns
// [rows, pad) of dst are zeroed, so a kernel may read whole vectors past the last row.
template <typename T>
void transpose_pad(T* dst, long ld_dst, const T* src, long ld_src, long rows, long cols, long pad) {
    for (long c = 0; c < cols; c++) {
        T* d = dst + c * ld_dst;
        for (long r = 0; r < rows; r++) d[r] = src[r * ld_src + c];
        for (long r = rows; r < pad; r++) d[r] = T(0);
    }
}

}  // namespace strata::tile
