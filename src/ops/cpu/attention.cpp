// Causal grouped-query attention, flash-style, on the CPU.
//
// Forward: one task per (batch, query head, query tile). The task walks the key tiles the causal
// mask lets it see; each tile's scores come from one small GEMM, then an online softmax rescales
// the running output. Only a BQ×BK score tile per thread is ever held; the log-sum-exp per row is
// written out for the backward.
//
// Backward: one task per (batch, kv head), so dq, dk and dv of a task are written by that task
// alone (no atomics, no reduction, a result independent of the thread count). For every query
// head of the group and every visible (key tile, query tile) pair it recomputes P from the lse and
// runs the five GEMMs of the FlashAttention-2 backward: S, dV += Pᵀ·dO, dP = dO·Vᵀ,
// dS = P⊙(dP − D), dQ += s·dS·K, dK += s·dSᵀ·Q.
//
// MoDA (Mixture-of-Depths Attention, docs/moda.md) is the same kernel with one more set of keys per
// query token: its own L depth keys/values from earlier layers, inside the same softmax. In the
// forward they are folded into each row's online softmax after the sequence tiles; in the backward
// the task of kv head kh owns the depth gradients of kh, so they too are written without atomics.
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/vec_math.h"
#include "ops/ops.h"
#include "ops/profile.h"

namespace strata {

namespace {
constexpr long BQ = 64;  // query rows per tile
constexpr long BK = 128;  // keys per tile

template <typename T>
T* thread_scratch(size_t n) {
    thread_local std::vector<T> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

// Scratch per thread for both passes. Every thread of the team grows its buffer up front, so once a
// shape has been seen no call allocates, whichever thread the dynamic schedule hands a task to.
template <typename T>
size_t reserve_scratch(long Tq, long d) {
    const size_t n = size_t(2 * BQ * BK + BQ * d + 2 * BQ + Tq);
#pragma omp parallel
    thread_scratch<T>(n);
    return n;
}
}  // namespace

// Depth keys/values of MoDA: (B, Tq, L_max, Hk, d), slots 0..L−1 of each query token used.
template <typename T>
struct Depth {
    const T *kd = nullptr, *vd = nullptr;
    long L = 0, L_max = 0;
    const T* key(const AttnDims& a, long b, long t, long i, long kh) const {
        return kd + (((b * a.Tq + t) * L_max + i) * a.Hk + kh) * a.d;
    }
    const T* value(const AttnDims& a, long b, long t, long i, long kh) const {
        return vd + (((b * a.Tq + t) * L_max + i) * a.Hk + kh) * a.d;
    }
};

template <typename T>
static void attention_forward_impl(T* out, T* lse, const T* q, const T* k, const T* v, const AttnDims& a,
                                   const Depth<T>& dep) {
    const long G = a.H / a.Hk, d = a.d, qs = a.H * d, ks = a.Hk * d;
    const long n_qt = (a.Tq + BQ - 1) / BQ;
    const T scale = T(1) / std::sqrt(T(d));
    const T neg_inf = -std::numeric_limits<T>::infinity();
    const size_t scratch_n = reserve_scratch<T>(a.Tq, d);
#pragma omp parallel for collapse(3) schedule(dynamic)
    for (long b = 0; b < a.B; b++)
        for (long h = 0; h < a.H; h++)
            for (long qt = 0; qt < n_qt; qt++) {
                T* scratch = thread_scratch<T>(scratch_n);
                T* S = scratch;
                T* O = S + BQ * BK;
                T* m = O + BQ * d;
                T* l = m + BQ;
                const long t0 = qt * BQ, tq = std::min(BQ, a.Tq - t0);
                const long kh = h / G;
                const T* Q = q + ((b * a.Tq + t0) * a.H + h) * d;
                const T* K0 = k + b * a.kv_bstride + kh * d;
                const T* V0 = v + b * a.kv_bstride + kh * d;
                for (long r = 0; r < tq; r++) m[r] = neg_inf, l[r] = 0;
                for (long i = 0; i < tq * d; i++) O[i] = 0;
                const long k_end = std::min(a.Tk, a.q_pos0 + t0 + tq);  // keys visible to the last row
                for (long s0 = 0; s0 < k_end; s0 += BK) {
                    const long tk = std::min(BK, k_end - s0);
                    gemm(false, true, tq, tk, d, scale, Q, qs, K0 + s0 * ks, ks, T(0), S, tk);
                    for (long r = 0; r < tq; r++) {
                        T* srow = S + r * tk;
                        const long vis = std::min(tk, a.q_pos0 + t0 + r + 1 - s0);  // keys s0..s0+vis-1 visible
                        T mx = m[r];
                        for (long c = 0; c < vis; c++) mx = srow[c] > mx ? srow[c] : mx;
                        const T corr = std::exp(m[r] - mx);  // exp(-inf) = 0 on the first tile
                        T sum = 0;
#pragma omp simd reduction(+ : sum)
                        for (long c = 0; c < vis; c++) {
                            srow[c] = vexp(srow[c] - mx);
                            sum += srow[c];
                        }
                        for (long c = vis > 0 ? vis : 0; c < tk; c++) srow[c] = 0;
                        l[r] = l[r] * corr + sum;
                        m[r] = mx;
                        if (corr != T(1))
                            for (long i = 0; i < d; i++) O[r * d + i] *= corr;
                    }
                    gemm(false, false, tq, d, tk, T(1), S, tk, V0 + s0 * ks, ks, T(1), O, d);
                }
                // MoDA: each row's own depth slots join its softmax (every row already saw its own key,
                // so m[r] is finite here).
                for (long r = 0; r < tq && dep.L > 0; r++) {
                    const T* qr = Q + r * qs;
                    T* sd = S;  // the score tile is free again: L ≤ BQ·BK scores for this row
                    T mx = m[r];
                    for (long i = 0; i < dep.L; i++) {
                        const T* kd = dep.key(a, b, t0 + r, i, kh);
                        T s = 0;
#pragma omp simd reduction(+ : s)
                        for (long c = 0; c < d; c++) s += qr[c] * kd[c];
                        sd[i] = s * scale;
                        mx = sd[i] > mx ? sd[i] : mx;
                    }
                    const T corr = std::exp(m[r] - mx);
                    T* o = O + r * d;
                    if (corr != T(1))
                        for (long c = 0; c < d; c++) o[c] *= corr;
                    T sum = 0;
                    for (long i = 0; i < dep.L; i++) {
                        const T p = std::exp(sd[i] - mx);
                        const T* vd = dep.value(a, b, t0 + r, i, kh);
#pragma omp simd
                        for (long c = 0; c < d; c++) o[c] += p * vd[c];
                        sum += p;
                    }
                    l[r] = l[r] * corr + sum;
                    m[r] = mx;
                }
                for (long r = 0; r < tq; r++) {
                    T* o = out + ((b * a.Tq + t0 + r) * a.H + h) * d;
                    const T inv = T(1) / l[r];
                    for (long i = 0; i < d; i++) o[i] = O[r * d + i] * inv;
                    lse[(b * a.H + h) * a.Tq + t0 + r] = m[r] + std::log(l[r]);
                }
            }
}

template <typename T>
static void attention_backward_impl(T* dq, T* dk, T* dv, T* dkd, T* dvd, const T* dout, const T* out, const T* lse,
                                    const T* q, const T* k, const T* v, const AttnDims& a, const Depth<T>& dep) {
    const long G = a.H / a.Hk, d = a.d, qs = a.H * d, ks = a.Hk * d;
    const T scale = T(1) / std::sqrt(T(d));
    const size_t scratch_n = reserve_scratch<T>(a.Tq, d);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (long b = 0; b < a.B; b++)
        for (long kh = 0; kh < a.Hk; kh++) {
            T* scratch = thread_scratch<T>(scratch_n);
            T* P = scratch;
            T* dP = P + BQ * BK;
            T* D = dP + BQ * BK;
            for (long g = 0; g < G; g++) {
                const long h = kh * G + g;
                const T* L = lse + (b * a.H + h) * a.Tq;
                for (long t = 0; t < a.Tq; t++) {  // D_t = dO_t · O_t
                    const T* o = out + ((b * a.Tq + t) * a.H + h) * d;
                    const T* go = dout + ((b * a.Tq + t) * a.H + h) * d;
                    T s = 0;
                    for (long i = 0; i < d; i++) s += o[i] * go[i];
                    D[t] = s;
                }
                for (long s0 = 0; s0 < a.Tk; s0 += BK) {
                    const long tk = std::min(BK, a.Tk - s0);
                    const T* K = k + b * a.kv_bstride + s0 * ks + kh * d;
                    const T* V = v + b * a.kv_bstride + s0 * ks + kh * d;
                    T* dK = dk + b * a.kv_bstride + s0 * ks + kh * d;
                    T* dV = dv + b * a.kv_bstride + s0 * ks + kh * d;
                    // the first query row that sees key s0 sits at position s0
                    const long t_first = std::max(0L, s0 - a.q_pos0);
                    for (long t0 = (t_first / BQ) * BQ; t0 < a.Tq; t0 += BQ) {
                        const long tq = std::min(BQ, a.Tq - t0);
                        const long off = ((b * a.Tq + t0) * a.H + h) * d;
                        gemm(false, true, tq, tk, d, scale, q + off, qs, K, ks, T(0), P, tk);
                        for (long r = 0; r < tq; r++) {
                            const long vis = std::min(tk, a.q_pos0 + t0 + r + 1 - s0);
                            T* prow = P + r * tk;
                            const long nv = std::max(0L, vis);
                            const T lr = L[t0 + r];
#pragma omp simd
                            for (long c = 0; c < nv; c++) prow[c] = vexp(prow[c] - lr);
                            for (long c = nv; c < tk; c++) prow[c] = T(0);
                        }
                        gemm(true, false, tk, d, tq, T(1), P, tk, dout + off, qs, T(1), dV, ks);
                        gemm(false, true, tq, tk, d, T(1), dout + off, qs, V, ks, T(0), dP, tk);
                        for (long r = 0; r < tq; r++)
                            for (long c = 0; c < tk; c++) dP[r * tk + c] = P[r * tk + c] * (dP[r * tk + c] - D[t0 + r]);
                        gemm(false, false, tq, d, tk, scale, dP, tk, K, ks, T(1), dq + off, qs);
                        gemm(true, false, tk, d, tq, scale, dP, tk, q + off, qs, T(1), dK, ks);
                    }
                }
                // MoDA: the depth slots of every query token t (seen by this head's row t only).
                for (long t = 0; t < a.Tq && dep.L > 0; t++) {
                    const long off = ((b * a.Tq + t) * a.H + h) * d;
                    const T *qr = q + off, *go = dout + off;
                    T* gq = dq + off;
                    for (long i = 0; i < dep.L; i++) {
                        const T* kd = dep.key(a, b, t, i, kh);
                        const T* vd = dep.value(a, b, t, i, kh);
                        T s = 0, dp = 0;
#pragma omp simd reduction(+ : s, dp)
                        for (long c = 0; c < d; c++) s += qr[c] * kd[c], dp += go[c] * vd[c];
                        const T p = std::exp(s * scale - L[t]);
                        const T ds = p * (dp - D[t]) * scale;
                        const long slot = (((b * a.Tq + t) * dep.L_max + i) * a.Hk + kh) * d;
                        T* gkd = dkd + slot;
                        T* gvd = dvd + slot;
#pragma omp simd
                        for (long c = 0; c < d; c++) {
                            gq[c] += ds * kd[c];
                            gkd[c] += ds * qr[c];
                            gvd[c] += p * go[c];
                        }
                    }
                }
            }
        }
}

// bf16 storage: q, k, v (and out, the depth K/V) are widened to float once per call, the float kernel
// runs, and the output is rounded back. Every score, softmax statistic and gradient is float, as in
// the float op; only the stored tensors are bf16. The widened copies live in per-thread buffers that
// only grow.
namespace {
struct Widened {
    std::vector<float> q, k, v, o, kd, vd;
};
Widened& widened() {
    thread_local Widened w;
    return w;
}
const float* widen(std::vector<float>& dst, const bf16* src, size_t n) {
    if (!src) return nullptr;
    if (dst.size() < n) dst.resize(n);
    float* d = dst.data();
    const long m = long(n);
#pragma omp parallel for schedule(static) if (m >= 32768)
    for (long i = 0; i < m; i++) d[i] = float(src[i]);
    return d;
}
size_t q_elems(const AttnDims& a) { return size_t(a.B * a.Tq * a.H * a.d); }
size_t kv_elems(const AttnDims& a) { return size_t((a.B - 1) * a.kv_bstride + a.Tk * a.Hk * a.d); }
size_t depth_elems(const AttnDims& a, long L_max) { return size_t(a.B * a.Tq * L_max * a.Hk * a.d); }

template <typename S>
void forward_any(S* out, compute_t<S>* lse, const S* q, const S* k, const S* v, const AttnDims& a, const S* kd,
                 const S* vd, long L, long L_max) {
    if constexpr (std::is_same_v<S, bf16>) {
        Widened& w = widened();
        const float* qf = widen(w.q, q, q_elems(a));
        const float* kf = widen(w.k, k, kv_elems(a));
        const float* vf = widen(w.v, v, kv_elems(a));
        const float* kdf = L > 0 ? widen(w.kd, kd, depth_elems(a, L_max)) : nullptr;
        const float* vdf = L > 0 ? widen(w.vd, vd, depth_elems(a, L_max)) : nullptr;
        if (w.o.size() < q_elems(a)) w.o.resize(q_elems(a));
        attention_forward_impl(w.o.data(), lse, qf, kf, vf, a, Depth<float>{kdf, vdf, L, L_max});
        convert_forward(out, w.o.data(), q_elems(a));
    } else {
        attention_forward_impl(out, lse, q, k, v, a, Depth<S>{kd, vd, L, L_max});
    }
}

template <typename S>
void backward_any(compute_t<S>* dq, compute_t<S>* dk, compute_t<S>* dv, compute_t<S>* dkd, compute_t<S>* dvd,
                  const compute_t<S>* dout, const S* out, const compute_t<S>* lse, const S* q, const S* k, const S* v,
                  const S* kd, const S* vd, long L, long L_max, const AttnDims& a) {
    if constexpr (std::is_same_v<S, bf16>) {
        Widened& w = widened();
        const float* of = widen(w.o, out, q_elems(a));
        const float* qf = widen(w.q, q, q_elems(a));
        const float* kf = widen(w.k, k, kv_elems(a));
        const float* vf = widen(w.v, v, kv_elems(a));
        const float* kdf = L > 0 ? widen(w.kd, kd, depth_elems(a, L_max)) : nullptr;
        const float* vdf = L > 0 ? widen(w.vd, vd, depth_elems(a, L_max)) : nullptr;
        attention_backward_impl(dq, dk, dv, dkd, dvd, dout, of, lse, qf, kf, vf, a, Depth<float>{kdf, vdf, L, L_max});
    } else {
        attention_backward_impl(dq, dk, dv, dkd, dvd, dout, out, lse, q, k, v, a, Depth<S>{kd, vd, L, L_max});
    }
}
}  // namespace

template <typename S>
void attention_forward(S* out, compute_t<S>* lse, const S* q, const S* k, const S* v, const AttnDims& a) {
    OpTimer t_(OpFamily::attn_fwd);
    forward_any(out, lse, q, k, v, a, static_cast<const S*>(nullptr), static_cast<const S*>(nullptr), 0, 0);
}

template <typename S>
void moda_forward(S* out, compute_t<S>* lse, const S* q, const S* k, const S* v, const S* kd, const S* vd, long L,
                  long L_max, const AttnDims& a) {
    OpTimer t_(OpFamily::moda_fwd);
    STRATA_CHECK(L >= 0 && L <= L_max && L <= BQ * BK, "moda_forward: bad depth slot count");
    forward_any(out, lse, q, k, v, a, kd, vd, L, L_max);
}

template <typename S>
void attention_backward(compute_t<S>* dq, compute_t<S>* dk, compute_t<S>* dv, const compute_t<S>* dout, const S* out,
                        const compute_t<S>* lse, const S* q, const S* k, const S* v, const AttnDims& a) {
    OpTimer t_(OpFamily::attn_bwd);
    using T = compute_t<S>;
    backward_any(dq, dk, dv, static_cast<T*>(nullptr), static_cast<T*>(nullptr), dout, out, lse, q, k, v,
                 static_cast<const S*>(nullptr), static_cast<const S*>(nullptr), 0, 0, a);
}

template <typename S>
void moda_backward(compute_t<S>* dq, compute_t<S>* dk, compute_t<S>* dv, compute_t<S>* dkd, compute_t<S>* dvd,
                   const compute_t<S>* dout, const S* out, const compute_t<S>* lse, const S* q, const S* k, const S* v,
                   const S* kd, const S* vd, long L, long L_max, const AttnDims& a) {
    OpTimer t_(OpFamily::moda_bwd);
    STRATA_CHECK(L >= 0 && L <= L_max, "moda_backward: bad depth slot count");
    backward_any(dq, dk, dv, dkd, dvd, dout, out, lse, q, k, v, kd, vd, L, L_max, a);
}

#define STRATA_INSTANTIATE_ATTN(S, T)                                                                        \
    template void attention_forward<S>(S*, T*, const S*, const S*, const S*, const AttnDims&);               \
    template void attention_backward<S>(T*, T*, T*, const T*, const S*, const T*, const S*, const S*,         \
                                        const S*, const AttnDims&);                                          \
    template void moda_forward<S>(S*, T*, const S*, const S*, const S*, const S*, const S*, long, long,      \
                                  const AttnDims&);                                                          \
    template void moda_backward<S>(T*, T*, T*, T*, T*, const T*, const S*, const T*, const S*, const S*,     \
                                   const S*, const S*, const S*, long, long, const AttnDims&);
STRATA_INSTANTIATE_ATTN(float, float)
STRATA_INSTANTIATE_ATTN(double, double)
STRATA_INSTANTIATE_ATTN(bf16, float)

}  // namespace strata
