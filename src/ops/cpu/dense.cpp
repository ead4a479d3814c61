// Dense ops: matmul, embedding, RMSNorm, RoPE, SwiGLU, cross-entropy.
#include <cmath>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops/cpu/gemm.h"
#include "ops/cpu/threads.h"
#include "ops/cpu/vec_math.h"
#include "ops/ops.h"
#include "ops/profile.h"

namespace strata {

// ---- matmul ---------------------------------------------------------------------------------------
template <typename O, typename A>
void matmul_forward(O* out, const A* inp, const A* w, long N, long IC, long OC) {
    using C = compute_t<A>;
    OpTimer t_(OpFamily::gemm_fwd);
    gemm(false, true, N, OC, IC, C(1), inp, IC, w, IC, C(0), out, OC);
}

template <typename A>
void matmul_backward(compute_t<A>* dinp, compute_t<A>* dw, const A* dout, const A* inp, const A* w, long N, long IC,
                     long OC, Into dinp_into) {
    using C = compute_t<A>;
    OpTimer t_(OpFamily::gemm_bwd);
    if (dinp) gemm(false, false, N, IC, OC, C(1), dout, OC, w, IC, C(dinp_into == Into::add), dinp, IC);
    if (dw) gemm(true, false, OC, IC, N, C(1), dout, OC, inp, IC, C(1), dw, IC);
}

// ---- embedding ------------------------------------------------------------------------------------
template <typename T, typename W>
void embedding_forward(T* out, const int32_t* tokens, const W* table, long N, long C) {
    OpTimer t_(OpFamily::embedding);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const W* row = table + (long)tokens[r] * C;
        if constexpr (std::is_same_v<T, W>) std::memcpy(out + r * C, row, C * sizeof(T));
        else for (long c = 0; c < C; c++) out[r * C + c] = T(row[c]);
    }
}

template <typename T, typename W>
void embedding_backward(W* dtable, const T* dout, const int32_t* tokens, long N, long C) {
    OpTimer t_(OpFamily::embedding);
    // Parallel over columns: two rows with the same token never race, and the order of additions per
    // element stays the row order, so the result does not depend on the thread count.
#pragma omp parallel
    {
        auto [c0, c1] = thread_slice(C);
        for (long r = 0; r < N; r++) {
            W* d = dtable + (long)tokens[r] * C;
            const T* g = dout + r * C;
            for (long c = c0; c < c1; c++) d[c] += W(g[c]);
        }
    }
}

// ---- RMSNorm --------------------------------------------------------------------------------------
// Loads and stores convert between the storage types and the compute type C.
template <typename C, typename S>
static inline C ld(S x) {
    return C(float(x));
}
template <>
inline double ld<double, double>(double x) {
    return x;
}
template <typename S, typename C>
static inline S st(C x) {
    return S(x);
}

// One row's rstd. Not inlined, so that RMSNorm and the fused residual + RMSNorm run the same machine
// code for it (inlined, the compiler may contract or schedule the sum differently in each) and agree
// bit for bit.
template <typename I>
[[gnu::noinline]] static compute_t<I> row_rstd(const I* x, long C, double eps) {
    using R = compute_t<I>;
    R ss = 0;
    for (long c = 0; c < C; c++) ss += ld<R>(x[c]) * ld<R>(x[c]);
    return R(1) / std::sqrt(ss / R(C) + R(eps));
}

template <typename O, typename I, typename W>
void rmsnorm_forward(O* out, compute_t<I>* rstd, const I* inp, const W* w, long N, long C, double eps,
                     double scale) {
    using R = compute_t<I>;
    OpTimer t_(OpFamily::rmsnorm);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const I* x = inp + r * C;
        O* y = out + r * C;
        const R s = row_rstd(x, C, eps);
        const R ss = s * R(scale);  // = s at scale 1
        for (long c = 0; c < C; c++) y[c] = st<O>(ld<R>(x[c]) * ss * R(w[c]));
        rstd[r] = s;
    }
}

template <typename O, typename T, typename B, typename W>
void residual_rmsnorm_forward(T* out, O* normed, compute_t<T>* rstd, const T* a, const B* b, const W* w, long N,
                              long C, double eps, double scale) {
    using R = compute_t<T>;
    OpTimer t_(OpFamily::rmsnorm);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const T* x = a + r * C;
        const B* f = b + r * C;
        T* h = out + r * C;
        O* y = normed + r * C;
        for (long c = 0; c < C; c++) h[c] = x[c] + T(f[c]);
        const R s = row_rstd(h, C, eps);
        const R ss = s * R(scale);
        for (long c = 0; c < C; c++) y[c] = st<O>(ld<R>(h[c]) * ss * R(w[c]));
        rstd[r] = s;
    }
}

// y = x·s·w·a with s = (mean(x²)+eps)^-½ and a the constant scale, so with g = a·dy⊙w:
//   dx = s·g − s³·x·(g·x)/C,  dw = a·Σ_rows dy·x·s.
// The scale multiplies dy as it is read (a no-op at a = 1).
template <typename I, typename W>
void rmsnorm_backward(compute_t<I>* dinp, W* dw, const compute_t<I>* dout, const I* inp, const W* w,
                      const compute_t<I>* rstd, long N, long C, double scale, Into dinp_into) {
    using R = compute_t<I>;
    OpTimer t_(OpFamily::rmsnorm);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const I* x = inp + r * C;
        const R* dy = dout + r * C;
        R* dx = dinp + r * C;
        R s = rstd[r], sa = s * R(scale);
        R gx = 0;
        for (long c = 0; c < C; c++) gx += dy[c] * R(w[c]) * ld<R>(x[c]);
        R k = sa * s * s * gx / R(C);
        if (dinp_into == Into::overwrite)
            for (long c = 0; c < C; c++) dx[c] = sa * dy[c] * R(w[c]) - k * ld<R>(x[c]);
        else
            for (long c = 0; c < C; c++) dx[c] += sa * dy[c] * R(w[c]) - k * ld<R>(x[c]);
    }
    // dw: a column reduction; split columns across threads so the sum order is fixed.
#pragma omp parallel
    {
        auto [c0, c1] = thread_slice(C);
        for (long r = 0; r < N; r++) {
            const I* x = inp + r * C;
            const R* dy = dout + r * C;
            R sa = rstd[r] * R(scale);
            for (long c = c0; c < c1; c++) dw[c] += W(dy[c] * ld<R>(x[c]) * sa);
        }
    }
}

// ---- RoPE -----------------------------------------------------------------------------------------
template <typename T>
void rope_table(T* cos_t, T* sin_t, long max_pos, long d, double theta) {
    OpTimer t_(OpFamily::rope);
    long h = d / 2;
    for (long p = 0; p < max_pos; p++)
        for (long i = 0; i < h; i++) {
            double f = std::pow(theta, -2.0 * double(i) / double(d));
            double a = double(p) * f;
            cos_t[p * h + i] = T(std::cos(a));
            sin_t[p * h + i] = T(std::sin(a));
        }
}

template <typename S, typename T>
static void rope_rotate(S* x, const int32_t* pos, const T* cos_t, const T* sin_t, long rows, long n_heads, long d,
                        T sign) {
    long h = d / 2;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        const T* c = cos_t + (long)pos[r] * h;
        const T* s = sin_t + (long)pos[r] * h;
        for (long hd = 0; hd < n_heads; hd++) {
            S* v = x + (r * n_heads + hd) * d;
            for (long i = 0; i < h; i++) {
                T a = ld<T>(v[i]), b = ld<T>(v[i + h]), sn = sign * s[i];
                v[i] = st<S>(a * c[i] - b * sn);
                v[i + h] = st<S>(a * sn + b * c[i]);
            }
        }
    }
}

template <typename S, typename T>
void rope_forward(S* x, const int32_t* pos, const T* cos_t, const T* sin_t, long rows, long n_heads, long d) {
    OpTimer t_(OpFamily::rope);
    rope_rotate(x, pos, cos_t, sin_t, rows, n_heads, d, T(1));
}
template <typename T>
void rope_backward(T* dx, const int32_t* pos, const T* cos_t, const T* sin_t, long rows, long n_heads, long d) {
    OpTimer t_(OpFamily::rope);
    rope_rotate(dx, pos, cos_t, sin_t, rows, n_heads, d, T(-1));
}

// ---- SwiGLU ---------------------------------------------------------------------------------------
template <typename S>
void swiglu_forward(S* out, const S* gu, long N, long F) {
    using T = compute_t<S>;
    OpTimer t_(OpFamily::swiglu);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const S* g = gu + r * 2 * F;
        const S* u = g + F;
        S* o = out + r * F;
#pragma omp simd
        for (long i = 0; i < F; i++) {
            const T gi = ld<T>(g[i]);
            o[i] = st<S>(gi / (T(1) + vexp(-gi)) * ld<T>(u[i]));
        }
    }
}

// silu'(z) = σ(z)·(1 + z·(1 − σ(z)))
template <bool Add, typename D, typename S>
static void swiglu_backward_rows(D* dgu, const compute_t<S>* dout, const S* gu, long N, long F) {
    using T = compute_t<S>;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const S* g = gu + r * 2 * F;
        const S* u = g + F;
        const T* dy = dout + r * F;
        D* dg = dgu + r * 2 * F;
        D* du = dg + F;
#pragma omp simd
        for (long i = 0; i < F; i++) {
            const T gi = ld<T>(g[i]), ui = ld<T>(u[i]);
            T sg = T(1) / (T(1) + vexp(-gi));
            const T gu_ = dy[i] * gi * sg, gg = dy[i] * ui * sg * (T(1) + gi * (T(1) - sg));
            du[i] = st<D>(Add ? ld<T>(du[i]) + gu_ : gu_);
            dg[i] = st<D>(Add ? ld<T>(dg[i]) + gg : gg);
        }
    }
}

template <typename D, typename S>
void swiglu_backward(D* dgu, const compute_t<S>* dout, const S* gu, long N, long F, Into into) {
    OpTimer t_(OpFamily::swiglu);
    if (into == Into::add) swiglu_backward_rows<true>(dgu, dout, gu, N, F);
    else swiglu_backward_rows<false>(dgu, dout, gu, N, F);
}

// ---- cross-entropy --------------------------------------------------------------------------------
template <typename S>
long crossentropy_forward(compute_t<S>* losses, compute_t<S>* lse, const S* logits, const int32_t* targets, long N,
                          long V) {
    using T = compute_t<S>;
    OpTimer t_(OpFamily::xent);
    long counted = 0;
#pragma omp parallel for schedule(static) reduction(+ : counted)
    for (long r = 0; r < N; r++) {
        const S* z = logits + r * V;
        T m = ld<T>(z[0]);
        for (long i = 1; i < V; i++) m = ld<T>(z[i]) > m ? ld<T>(z[i]) : m;
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (long i = 0; i < V; i++) s += vexp(ld<T>(z[i]) - m);
        lse[r] = m + std::log(s);
        if (targets[r] >= 0) {
            losses[r] = lse[r] - ld<T>(z[targets[r]]);
            counted++;
        } else {
            losses[r] = 0;
        }
    }
    return counted;
}

template <typename D, typename S>
void crossentropy_backward(D* dlogits, const S* logits, const compute_t<S>* lse, const int32_t* targets, long N,
                           long V, compute_t<S> scale) {
    using T = compute_t<S>;
    OpTimer t_(OpFamily::xent);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        if (targets[r] < 0) continue;
        const S* z = logits + r * V;
        D* dz = dlogits + r * V;
        const T lr = lse[r];
        const long tr = targets[r];
#pragma omp simd
        for (long i = 0; i < V; i++) dz[i] = st<D>(ld<T>(dz[i]) + scale * vexp(ld<T>(z[i]) - lr) - (i == tr ? scale : T(0)));
    }
}

// ---- LM head fused with cross-entropy, in row chunks ------------------------------------------------
template <typename A>
long head_crossentropy_forward(compute_t<A>* losses, compute_t<A>* lse, A* dlogits, compute_t<A>* scratch,
                               const A* x, const A* w, const int32_t* targets, long N, long D, long V, long chunk) {
    using T = compute_t<A>;
    long counted = 0;
    for (long r = 0; r < N; r++) counted += targets[r] >= 0;
    const T scale = counted > 0 ? T(1) / T(counted) : T(0);
    for (long r0 = 0; r0 < N; r0 += chunk) {
        const long R = std::min(chunk, N - r0);
        // In full precision the chunk's logits are computed where its gradient goes and overwritten
        // in place; a bf16 run computes them in float in the scratch and rounds only the gradient.
        T* z;
        if constexpr (std::is_same_v<A, T>) z = dlogits + r0 * V;
        else z = scratch;
        matmul_forward(z, x + r0 * D, w, R, D, V);
        OpTimer t_(OpFamily::xent);
#pragma omp parallel for schedule(static)
        for (long i = 0; i < R; i++) {
            const long r = r0 + i;
            const T* zr = z + i * V;
            A* dz = dlogits + r * V;
            T m = zr[0];
            for (long j = 1; j < V; j++) m = zr[j] > m ? zr[j] : m;
            T s = 0;
#pragma omp simd reduction(+ : s)
            for (long j = 0; j < V; j++) s += vexp(zr[j] - m);
            const T l = m + std::log(s);
            lse[r] = l;
            const long tr = targets[r];
            if (tr < 0) {
                losses[r] = 0;
                for (long j = 0; j < V; j++) dz[j] = A(0);
                continue;
            }
            losses[r] = l - zr[tr];
#pragma omp simd
            for (long j = 0; j < V; j++) dz[j] = st<A>(scale * vexp(zr[j] - l) - (j == tr ? scale : T(0)));
        }
    }
    return counted;
}

#define STRATA_INSTANTIATE(T)                                                                                  \
    template void matmul_forward<T, T>(T*, const T*, const T*, long, long, long);                              \
    template void matmul_backward<T>(T*, T*, const T*, const T*, const T*, long, long, long, Into);                  \
    template void embedding_forward<T, T>(T*, const int32_t*, const T*, long, long);                           \
    template void embedding_backward<T, T>(T*, const T*, const int32_t*, long, long);                          \
    template void rmsnorm_forward<T, T, T>(T*, T*, const T*, const T*, long, long, double, double);            \
    template void rmsnorm_backward<T, T>(T*, T*, const T*, const T*, const T*, const T*, long, long, double,  \
                                        Into);                                                                \
    template void residual_rmsnorm_forward<T, T, T, T>(T*, T*, T*, const T*, const T*, const T*, long, long,   \
                                                       double, double);                                        \
    template void rope_table<T>(T*, T*, long, long, double);                                                   \
    template void rope_forward<T, T>(T*, const int32_t*, const T*, const T*, long, long, long);                \
    template void rope_backward<T>(T*, const int32_t*, const T*, const T*, long, long, long);                  \
    template void swiglu_forward<T>(T*, const T*, long, long);                                                 \
    template void swiglu_backward<T, T>(T*, const T*, const T*, long, long, Into);                                   \
    template long crossentropy_forward<T>(T*, T*, const T*, const int32_t*, long, long);                       \
    template void crossentropy_backward<T, T>(T*, const T*, const T*, const int32_t*, long, long, T);           \
    template long head_crossentropy_forward<T>(T*, T*, T*, T*, const T*, const T*, const int32_t*, long, long, long, \
                                               long);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)

// Mixed precision: bf16 storage, float statistics and gradients.
template void matmul_forward<bf16, bf16>(bf16*, const bf16*, const bf16*, long, long, long);
template void matmul_forward<float, bf16>(float*, const bf16*, const bf16*, long, long, long);
template void matmul_backward<bf16>(float*, float*, const bf16*, const bf16*, const bf16*, long, long, long, Into);
template void rmsnorm_forward<bf16, float, float>(bf16*, float*, const float*, const float*, long, long, double,
                                                  double);
template void rmsnorm_forward<bf16, bf16, float>(bf16*, float*, const bf16*, const float*, long, long, double, double);
template void rmsnorm_forward<float, bf16, float>(float*, float*, const bf16*, const float*, long, long, double,
                                                   double);
template void residual_rmsnorm_forward<bf16, float, bf16, float>(float*, bf16*, float*, const float*, const bf16*,
                                                                 const float*, long, long, double, double);
template void rmsnorm_backward<bf16, float>(float*, float*, const float*, const bf16*, const float*, const float*,
                                            long, long, double, Into);
template void rope_forward<bf16, float>(bf16*, const int32_t*, const float*, const float*, long, long, long);
template void swiglu_forward<bf16>(bf16*, const bf16*, long, long);
template void swiglu_backward<bf16, bf16>(bf16*, const float*, const bf16*, long, long, Into);
template void swiglu_backward<float, bf16>(float*, const float*, const bf16*, long, long, Into);
template long crossentropy_forward<bf16>(float*, float*, const bf16*, const int32_t*, long, long);
template void crossentropy_backward<bf16, bf16>(bf16*, const bf16*, const float*, const int32_t*, long, long, float);
template long head_crossentropy_forward<bf16>(float*, float*, bf16*, float*, const bf16*, const bf16*,
                                              const int32_t*, long, long, long, long);
template void crossentropy_backward<float, bf16>(float*, const bf16*, const float*, const int32_t*, long, long,
                                                 float);

}  // namespace strata
