// What the two attention kernels share (ops/cpu/attention.cpp: float storage, and bf16 widened to
// float; ops/cpu/attention_bf16.cpp: bf16 on AVX512-BF16): the tile sizes, and MoDA's depth slots,
// one place for how a query token's own L depth keys/values join its softmax, forward and backward.
#pragma once
#include <cmath>
#include <type_traits>
#include <vector>

#include "ops/cpu/tile_gemm.h"
#include "ops/cpu/vec_math.h"
#include "ops/ops.h"

namespace strata::attn {

inline constexpr long BQ = 64;   // query rows per tile
inline constexpr long BK = 128;  // keys per tile (a whole number of SIMD vectors)

// A per-thread buffer of at least n elements; it only grows.
template <typename T>
T* thread_scratch(size_t n) {
    thread_local std::vector<T> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

// float for float and bf16 storage, double for double.
template <typename X>
inline auto widen(X x) {
    if constexpr (std::is_same_v<X, bf16>) return float(x);
    else return x;
}

// Depth keys/values of MoDA: (B, Tq, L_max, Hk, d), slots 0..L−1 of each query token used. They are
// read in their storage type U (bf16 slots are widened as they are read: only the L used of L_max are
// touched, where widening the whole buffer up front cost more than the depth attention itself).
template <typename U>
struct Depth {
    const U *kd = nullptr, *vd = nullptr;
    long L = 0, L_max = 0;
    long offset(const AttnDims& a, long b, long t, long i, long kh) const {
        return (((b * a.Tq + t) * L_max + i) * a.Hk + kh) * a.d;
    }
    const U* key(const AttnDims& a, long b, long t, long i, long kh) const { return kd + offset(a, b, t, i, kh); }
    const U* value(const AttnDims& a, long b, long t, long i, long kh) const { return vd + offset(a, b, t, i, kh); }
};

// The bf16 kernel on AVX512-BF16 (attention_bf16.cpp): taken for bf16 storage where the CPU has
// AVX512-BF16 and bf16 GEMMs run native (bf16_native() in gemm.h, which STRATA_BF16_NATIVE=0 turns
// off); elsewhere bf16 is widened to float for the float kernel. Arguments as attention_forward /
// moda_backward in ops.h.
bool bf16_attention_native();
void forward_bf16_native(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const AttnDims& a,
                         const Depth<bf16>& dep);
void backward_bf16_native(float* dq, float* dk, float* dv, float* dkd, float* dvd, const float* dout, const bf16* out,
                          const float* lse, const bf16* q, const bf16* k, const bf16* v, const AttnDims& a,
                          const Depth<bf16>& dep);

// ---- per-row steps on a score tile (both kernels) ---------------------------------------------------
// Row r of a score tile sees its first nv keys; columns [nv, end) are set to 0 so the next GEMM, which
// may read a few of them, adds nothing.

// Forward: the online softmax of one row. srow holds scores and becomes exp(s − m_new); m, l are the
// row's running max and sum, o (d) its running output, rescaled when the max moves.
template <typename T>
inline void softmax_row(T* srow, long nv, long end, T& m, T& l, T* o, long d) {
    const T mx = tile::row_max(srow, nv, m);
    const T corr = std::exp(m - mx);  // exp(-inf) = 0 on the first tile
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (long c = 0; c < nv; c++) {
        srow[c] = vexp(srow[c] - mx);
        sum += srow[c];
    }
    for (long c = nv; c < end; c++) srow[c] = 0;
    l = l * corr + sum;
    m = mx;
    if (corr != T(1))
        for (long i = 0; i < d; i++) o[i] *= corr;
}

// Backward: P = exp(S − lse) of one row, in place.
template <typename T>
inline void probabilities_row(T* prow, long nv, long end, T lse) {
#pragma omp simd
    for (long c = 0; c < nv; c++) prow[c] = vexp(prow[c] - lse);
    for (long c = nv; c < end; c++) prow[c] = T(0);
}

// Backward: dS = P ⊙ (dP − D) of one row, in place over dP.
template <typename T>
inline void score_grad_row(T* ds, const T* p, long nv, long end, T D) {
#pragma omp simd
    for (long c = 0; c < nv; c++) ds[c] = p[c] * (ds[c] - D);
    for (long c = nv; c < end; c++) ds[c] = T(0);
}

// Forward, one query row (token t of batch b, kv head kh) after its sequence tiles: its depth slots
// join the row's online softmax. qr: the query row (storage type Q); o: its running output; m, l: the
// running max and sum (m finite, since every row has seen its own key); sd: L scores of scratch.
template <typename T, typename Q, typename U>
inline void depth_forward_row(const Q* qr, T* o, T& m, T& l, T* sd, const Depth<U>& dep, const AttnDims& a, long b,
                              long t, long kh, T scale) {
    const long d = a.d;
    T mx = m;
    for (long i = 0; i < dep.L; i++) {
        const U* kd = dep.key(a, b, t, i, kh);
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (long c = 0; c < d; c++) s += T(widen(qr[c])) * T(widen(kd[c]));
        sd[i] = s * scale;
        mx = sd[i] > mx ? sd[i] : mx;
    }
    const T corr = std::exp(m - mx);
    if (corr != T(1))
        for (long c = 0; c < d; c++) o[c] *= corr;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (long i = 0; i < dep.L; i++) {
        sd[i] = vexp(sd[i] - mx);
        sum += sd[i];
    }
    for (long i = 0; i < dep.L; i++) {
        const T p = sd[i];
        const U* vd = dep.value(a, b, t, i, kh);
#pragma omp simd
        for (long c = 0; c < d; c++) o[c] += p * T(widen(vd[c]));
    }
    l = l * corr + sum;
    m = mx;
}

// Backward, one query token t of batch b: the depth slots of kv head kh, seen by row t of each of the
// G query heads of the group. A slot's key and value gradients are summed over the group first, so
// each is written once (the caller's task owns kv head kh: no atomics). D0: G × Tq, D = dO·O per head;
// pd, dpd: G·L each; gk, gv: d each.
template <typename T, typename Q, typename U>
inline void depth_backward_token(T* dq, T* dkd, T* dvd, const T* dout, const Q* q, const T* lse, const T* D0, T* pd,
                                 T* dpd, T* gk, T* gv, const Depth<U>& dep, const AttnDims& a, long b, long t, long kh,
                                 T scale) {
    const long G = a.H / a.Hk, d = a.d, L = dep.L, n = G * L;
    for (long g = 0; g < G; g++) {
        const long off = ((b * a.Tq + t) * a.H + kh * G + g) * d;
        const Q* qr = q + off;
        const T* go = dout + off;
        for (long i = 0; i < L; i++) {
            const U* kd = dep.key(a, b, t, i, kh);
            const U* vd = dep.value(a, b, t, i, kh);
            T s = 0, dp = 0;
#pragma omp simd reduction(+ : s, dp)
            for (long c = 0; c < d; c++) s += T(widen(qr[c])) * T(widen(kd[c])), dp += go[c] * T(widen(vd[c]));
            pd[g * L + i] = s * scale - lse[(b * a.H + kh * G + g) * a.Tq + t];
            dpd[g * L + i] = dp - D0[g * a.Tq + t];
        }
    }
#pragma omp simd
    for (long j = 0; j < n; j++) {
        pd[j] = vexp(pd[j]);      // P
        dpd[j] *= pd[j] * scale;  // s·dS
    }
    for (long i = 0; i < L; i++) {
        const U* kd = dep.key(a, b, t, i, kh);
        for (long c = 0; c < d; c++) gk[c] = gv[c] = T(0);
        for (long g = 0; g < G; g++) {
            const long off = ((b * a.Tq + t) * a.H + kh * G + g) * d;
            const Q* qr = q + off;
            const T* go = dout + off;
            T* gq = dq + off;
            const T p = pd[g * L + i], ds = dpd[g * L + i];
#pragma omp simd
            for (long c = 0; c < d; c++) {
                gq[c] += ds * T(widen(kd[c]));
                gk[c] += ds * T(widen(qr[c]));
                gv[c] += p * go[c];
            }
        }
        T* gkd = dkd + dep.offset(a, b, t, i, kh);
        T* gvd = dvd + dep.offset(a, b, t, i, kh);
#pragma omp simd
        for (long c = 0; c < d; c++) gkd[c] += gk[c], gvd[c] += gv[c];
    }
}

}  // namespace strata::attn
