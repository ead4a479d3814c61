// Register-blocked GEMM on AVX512-BF16 for the small tiles of the bf16 flash attention
// (ops/cpu/attention_bf16.cpp): the bf16 counterpart of tile_gemm.h.
//
//   C[r][n] = (accumulate ? C[r][n] : 0) + alpha · Σ_k A(r, k) · B(k, n)     (C float)
//
// VDPBF16PS multiplies pairs: lane n of the result gains a₀·b₀ + a₁·b₁ for the bf16 pairs (a₀, a₁)
// and (b₀, b₁) in that lane, products exact and sums in float. So both operands come as 32-bit words
// holding consecutive-k pairs (`Pair`, the k-even element in the low half):
//   A(r, k-pair p) = A[r·sr + p·sk]: a bf16 row-major matrix with k along its rows is the words of its
//     rows as they lie (sr = row stride in words, sk = 1); a matrix whose k runs down its columns is
//     stored pair-interleaved (pair_rows below) and read with sr = 1, sk = row stride;
//   B(k-pair p, n) = B[p·ldb + n]: always pair-interleaved, n contiguous.
// An odd k is padded with a zero partner, so the kernel runs ⌈k/2⌉ pair steps.
//
// Rows go in blocks of kRows with 2 vectors of 16 columns each in registers over the whole k loop;
// the last vector of a row is stored under a mask when n is not a multiple of 16 (B must still be
// readable to the next multiple of 16 columns). `bounds` works as in tile_gemm.h, in elements: a row
// block's k range [k0, k1) runs as pairs [⌊k0/2⌋, ⌈k1/2⌉), so the caller keeps A or B zero on the
// one element each side that the rounding adds. The k sum runs in order: the result does not depend
// on the blocking or on the thread count.
//
// Compiled for AVX512-BF16 whatever -march says; only called where the CPU has it
// (cpu_has_avx512_bf16 in gemm.h).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/precision.h"
#include "ops/cpu/tile_gemm.h"

// GCC's target pragma; clang ignores it and takes its own attribute pragma, so a build whose -march
// lacks AVX-512 (a Zen 3's -march=native, say) still compiles these kernels for AVX512-BF16.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")
#endif

namespace strata::tile_bf16 {

using Pair = uint32_t;
inline constexpr long W = 16;  // float lanes of one vector
inline constexpr int kRows = 6;

inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }
inline __mmask16 lanes(long n) { return n >= W ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }

template <int MR, int NV>
inline void block(long p0, long p1, float alpha, const Pair* A, long sr, long sk, const Pair* B, long ldb,
                  bool accumulate, float* C, long ldc, __mmask16 last) {
    __m512 acc[MR][NV];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NV; j++) acc[i][j] = _mm512_setzero_ps();
    for (long p = p0; p < p1; p++) {
        __m512bh b[NV];
        for (int j = 0; j < NV; j++) b[j] = as_bh(_mm512_loadu_si512(B + p * ldb + j * W));
        for (int i = 0; i < MR; i++) {
            const __m512bh a = as_bh(_mm512_set1_epi32(int(A[i * sr + p * sk])));
            for (int j = 0; j < NV; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], a, b[j]);
        }
    }
    const __m512 al = _mm512_set1_ps(alpha);
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NV; j++) {
            float* c = C + i * ldc + j * W;
            const __mmask16 m = j == NV - 1 ? last : __mmask16(0xffff);
            __m512 r = _mm512_mul_ps(al, acc[i][j]);
            if (accumulate) r = _mm512_add_ps(_mm512_maskz_loadu_ps(m, c), r);
            _mm512_mask_storeu_ps(c, m, r);
        }
}

template <int MR>
inline void row_block(long N, long p0, long p1, float alpha, const Pair* A, long sr, long sk, const Pair* B, long ldb,
                      bool accumulate, float* C, long ldc) {
    long n = 0;
    for (; n + 2 * W <= N; n += 2 * W)
        block<MR, 2>(p0, p1, alpha, A, sr, sk, B + n, ldb, accumulate, C + n, ldc, lanes(W));
    const long rest = N - n;
    if (rest > W) block<MR, 2>(p0, p1, alpha, A, sr, sk, B + n, ldb, accumulate, C + n, ldc, lanes(rest - W));
    else if (rest > 0) block<MR, 1>(p0, p1, alpha, A, sr, sk, B + n, ldb, accumulate, C + n, ldc, lanes(rest));
}

// C (M × N) as above; bounds(r0, r1) gives a tile::Bounds in elements.
template <typename F>
void gemm(long M, float alpha, const Pair* A, long sr, long sk, const Pair* B, long ldb, bool accumulate, float* C,
          long ldc, F bounds) {
    for (long r0 = 0; r0 < M; r0 += kRows) {
        const long mr = std::min<long>(kRows, M - r0);
        const auto bd = bounds(r0, r0 + mr);
        const long p0 = bd.k0 / 2, p1 = std::max(p0, (bd.k1 + 1) / 2), N = bd.n;
        const Pair* a = A + r0 * sr;
        float* c = C + r0 * ldc;
        switch (mr) {
            case 6: row_block<6>(N, p0, p1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
            case 5: row_block<5>(N, p0, p1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
            case 4: row_block<4>(N, p0, p1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
            case 3: row_block<3>(N, p0, p1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
            case 2: row_block<2>(N, p0, p1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
            default: row_block<1>(N, p0, p1, alpha, a, sr, sk, B, ldb, accumulate, c, ldc); break;
        }
    }
}

// ---- packing -----------------------------------------------------------------------------------------
inline uint16_t bits(bf16 x) { return x.bits; }
inline uint16_t bits(float x) { return bf16::round(x); }
inline Pair pair(uint16_t lo, uint16_t hi) { return Pair(lo) | (Pair(hi) << 16); }

// dst[0..n) = src rounded to bf16.
inline void round_row(bf16* dst, const float* src, long n) {
    long i = 0;
    for (; i + W <= n; i += W)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
    for (; i < n; i++) dst[i] = bf16(src[i]);
}

// dst (rows × ⌈cols/2⌉ words, row stride ld_dst words) = src's rows rounded to bf16, an odd last
// column paired with 0, words [⌈cols/2⌉, pad) zeroed: A with k along its rows.
template <typename X>
void bf16_rows(Pair* dst, long ld_dst, const X* src, long ld_src, long rows, long cols, long pad) {
    const long full = cols / 2;
    for (long r = 0; r < rows; r++) {
        const X* s = src + r * ld_src;
        Pair* o = dst + r * ld_dst;
        long p = 0;
        if constexpr (std::is_same_v<X, float>) {
            for (; p + W <= full; p += W) {  // 32 floats → 32 bf16
                const __m512 x0 = _mm512_loadu_ps(s + 2 * p), x1 = _mm512_loadu_ps(s + 2 * p + W);
                _mm512_storeu_si512(o + p, (__m512i)_mm512_cvtne2ps_pbh(x1, x0));
            }
        } else {
            std::memcpy(o, s, size_t(full) * sizeof(Pair));  // bf16 pairs are already words
            p = full;
        }
        for (; p < full; p++) o[p] = pair(bits(s[2 * p]), bits(s[2 * p + 1]));
        if (cols % 2) o[p++] = pair(bits(s[cols - 1]), 0);
        for (; p < pad; p++) o[p] = 0;
    }
}

// dst (⌈rows/2⌉ × pad words, row stride ld_dst) = src's rows taken two at a time and interleaved,
// word (p, n) = (src[2p][n], src[2p+1][n]); an odd last row paired with 0, columns [cols, pad) zero:
// B, or A with k down its columns.
template <typename X>
void pair_rows(Pair* dst, long ld_dst, const X* src, long ld_src, long rows, long cols, long pad) {
    for (long p = 0; p < (rows + 1) / 2; p++) {
        const X* s0 = src + 2 * p * ld_src;
        const X* s1 = 2 * p + 1 < rows ? s0 + ld_src : nullptr;
        Pair* o = dst + p * ld_dst;
        long n = 0;
        if constexpr (std::is_same_v<X, float>) {
            // cvtne2ps puts s0's 16 values in the low half and s1's in the high half; the permutation
            // interleaves them into (s0[i], s1[i]) words
            alignas(64) static const uint16_t order[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                           8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
            const __m512i idx = _mm512_load_si512(order);
            for (; n + W <= cols; n += W) {
                const __m512 x0 = _mm512_loadu_ps(s0 + n), x1 = s1 ? _mm512_loadu_ps(s1 + n) : _mm512_setzero_ps();
                _mm512_storeu_si512(o + n, _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(x1, x0)));
            }
        }
        if constexpr (std::is_same_v<X, bf16>) {
            // 32 bf16 of each row: the low 16 of both interleaved, then the high 16
            alignas(64) static const uint16_t lo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                        8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
            alignas(64) static const uint16_t hi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                        24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
            const __m512i ilo = _mm512_load_si512(lo), ihi = _mm512_load_si512(hi);
            for (; n + 2 * W <= cols; n += 2 * W) {
                const __m512i x0 = _mm512_loadu_si512(s0 + n), x1 = s1 ? _mm512_loadu_si512(s1 + n) : _mm512_setzero_si512();
                _mm512_storeu_si512(o + n, _mm512_permutex2var_epi16(x0, ilo, x1));
                _mm512_storeu_si512(o + n + W, _mm512_permutex2var_epi16(x0, ihi, x1));
            }
        }
        for (; n < cols; n++) o[n] = pair(bits(s0[n]), s1 ? bits(s1[n]) : uint16_t(0));
        for (; n < pad; n++) o[n] = 0;
    }
}

// dst (⌈cols/2⌉ × pad words) = srcᵀ pair-interleaved: word (p, n) = (src[n][2p], src[n][2p+1]), an
// odd last column paired with 0, columns [rows, pad) zero: B = Xᵀ for X stored rows × cols.
template <typename X>
void pair_columns(Pair* dst, long ld_dst, const X* src, long ld_src, long rows, long cols, long pad) {
    for (long p = 0; p < (cols + 1) / 2; p++) {
        Pair* o = dst + p * ld_dst;
        const bool two = 2 * p + 1 < cols;
        if (std::is_same_v<X, bf16> && two)
            for (long n = 0; n < rows; n++) std::memcpy(o + n, src + n * ld_src + 2 * p, sizeof(Pair));
        else
            for (long n = 0; n < rows; n++) {
                const X* s = src + n * ld_src + 2 * p;
                o[n] = pair(bits(s[0]), two ? bits(s[1]) : uint16_t(0));
            }
        for (long n = rows; n < pad; n++) o[n] = 0;
    }
}

}  // namespace strata::tile_bf16

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
