// Dense ops: matmul, embedding, RMSNorm, RoPE, SwiGLU, cross-entropy.
#include <cmath>
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
// BLAS multiplies one type: activations narrower than the weights need a mixed-precision GEMM, which
// is not here yet (only W = T is instantiated).
template <typename T, typename W>
void matmul_forward(T* out, const T* inp, const W* w, long N, long IC, long OC) {
    static_assert(std::is_same_v<T, W>, "matmul: mixed activation/weight types need a mixed-precision GEMM");
    OpTimer t_(OpFamily::gemm_fwd);
    gemm(false, true, N, OC, IC, T(1), inp, IC, w, IC, T(0), out, OC);
}

template <typename T, typename W>
void matmul_backward(T* dinp, W* dw, const T* dout, const T* inp, const W* w, long N, long IC, long OC) {
    static_assert(std::is_same_v<T, W>, "matmul: mixed activation/weight types need a mixed-precision GEMM");
    OpTimer t_(OpFamily::gemm_bwd);
    if (dinp) gemm(false, false, N, IC, OC, T(1), dout, OC, w, IC, T(1), dinp, IC);
    if (dw) gemm(true, false, OC, IC, N, T(1), dout, OC, inp, IC, T(1), dw, IC);
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
template <typename T, typename W>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const W* w, long N, long C, double eps) {
    OpTimer t_(OpFamily::rmsnorm);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const T* x = inp + r * C;
        T* y = out + r * C;
        T ss = 0;
        for (long c = 0; c < C; c++) ss += x[c] * x[c];
        T s = T(1) / std::sqrt(ss / T(C) + T(eps));
        for (long c = 0; c < C; c++) y[c] = x[c] * s * T(w[c]);
        rstd[r] = s;
    }
}

// y = x·s·w with s = (mean(x²)+eps)^-½, so with g = dy⊙w:  dx = s·g − s³·x·(g·x)/C,  dw = Σ_rows dy·x·s.
template <typename T, typename W>
void rmsnorm_backward(T* dinp, W* dw, const T* dout, const T* inp, const W* w, const T* rstd, long N, long C) {
    OpTimer t_(OpFamily::rmsnorm);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const T* x = inp + r * C;
        const T* dy = dout + r * C;
        T* dx = dinp + r * C;
        T s = rstd[r];
        T gx = 0;
        for (long c = 0; c < C; c++) gx += dy[c] * T(w[c]) * x[c];
        T k = s * s * s * gx / T(C);
        for (long c = 0; c < C; c++) dx[c] += s * dy[c] * T(w[c]) - k * x[c];
    }
    // dw: a column reduction; split columns across threads so the sum order is fixed.
#pragma omp parallel
    {
        auto [c0, c1] = thread_slice(C);
        for (long r = 0; r < N; r++) {
            const T* x = inp + r * C;
            const T* dy = dout + r * C;
            T s = rstd[r];
            for (long c = c0; c < c1; c++) dw[c] += W(dy[c] * x[c] * s);
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

template <typename T>
static void rope_rotate(T* x, const int32_t* pos, const T* cos_t, const T* sin_t, long rows, long n_heads, long d,
                        T sign) {
    long h = d / 2;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        const T* c = cos_t + (long)pos[r] * h;
        const T* s = sin_t + (long)pos[r] * h;
        for (long hd = 0; hd < n_heads; hd++) {
            T* v = x + (r * n_heads + hd) * d;
            for (long i = 0; i < h; i++) {
                T a = v[i], b = v[i + h], sn = sign * s[i];
                v[i] = a * c[i] - b * sn;
                v[i + h] = a * sn + b * c[i];
            }
        }
    }
}

template <typename T>
void rope_forward(T* x, const int32_t* pos, const T* cos_t, const T* sin_t, long rows, long n_heads, long d) {
    OpTimer t_(OpFamily::rope);
    rope_rotate(x, pos, cos_t, sin_t, rows, n_heads, d, T(1));
}
template <typename T>
void rope_backward(T* dx, const int32_t* pos, const T* cos_t, const T* sin_t, long rows, long n_heads, long d) {
    OpTimer t_(OpFamily::rope);
    rope_rotate(dx, pos, cos_t, sin_t, rows, n_heads, d, T(-1));
}

// ---- SwiGLU ---------------------------------------------------------------------------------------
template <typename T>
void swiglu_forward(T* out, const T* gu, long N, long F) {
    OpTimer t_(OpFamily::swiglu);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const T* g = gu + r * 2 * F;
        const T* u = g + F;
        T* o = out + r * F;
#pragma omp simd
        for (long i = 0; i < F; i++) o[i] = g[i] / (T(1) + vexp(-g[i])) * u[i];
    }
}

// silu'(z) = σ(z)·(1 + z·(1 − σ(z)))
template <typename T>
void swiglu_backward(T* dgu, const T* dout, const T* gu, long N, long F) {
    OpTimer t_(OpFamily::swiglu);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const T* g = gu + r * 2 * F;
        const T* u = g + F;
        const T* dy = dout + r * F;
        T* dg = dgu + r * 2 * F;
        T* du = dg + F;
#pragma omp simd
        for (long i = 0; i < F; i++) {
            T sg = T(1) / (T(1) + vexp(-g[i]));
            du[i] += dy[i] * g[i] * sg;
            dg[i] += dy[i] * u[i] * sg * (T(1) + g[i] * (T(1) - sg));
        }
    }
}

// ---- cross-entropy --------------------------------------------------------------------------------
template <typename T>
long crossentropy_forward(T* losses, T* lse, const T* logits, const int32_t* targets, long N, long V) {
    OpTimer t_(OpFamily::xent);
    long counted = 0;
#pragma omp parallel for schedule(static) reduction(+ : counted)
    for (long r = 0; r < N; r++) {
        const T* z = logits + r * V;
        T m = z[0];
        for (long i = 1; i < V; i++) m = z[i] > m ? z[i] : m;
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (long i = 0; i < V; i++) s += vexp(z[i] - m);
        lse[r] = m + std::log(s);
        if (targets[r] >= 0) {
            losses[r] = lse[r] - z[targets[r]];
            counted++;
        } else {
            losses[r] = 0;
        }
    }
    return counted;
}

template <typename T>
void crossentropy_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets, long N, long V,
                           T scale) {
    OpTimer t_(OpFamily::xent);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        if (targets[r] < 0) continue;
        const T* z = logits + r * V;
        T* dz = dlogits + r * V;
#pragma omp simd
        for (long i = 0; i < V; i++) dz[i] += scale * vexp(z[i] - lse[r]);
        dz[targets[r]] -= scale;
    }
}

#define STRATA_INSTANTIATE(T)                                                                                  \
    template void matmul_forward<T, T>(T*, const T*, const T*, long, long, long);                              \
    template void matmul_backward<T, T>(T*, T*, const T*, const T*, const T*, long, long, long);               \
    template void embedding_forward<T, T>(T*, const int32_t*, const T*, long, long);                           \
    template void embedding_backward<T, T>(T*, const T*, const int32_t*, long, long);                          \
    template void rmsnorm_forward<T, T>(T*, T*, const T*, const T*, long, long, double);                       \
    template void rmsnorm_backward<T, T>(T*, T*, const T*, const T*, const T*, const T*, long, long);          \
    template void rope_table<T>(T*, T*, long, long, double);                                                   \
    template void rope_forward<T>(T*, const int32_t*, const T*, const T*, long, long, long);                   \
    template void rope_backward<T>(T*, const int32_t*, const T*, const T*, long, long, long);                  \
    template void swiglu_forward<T>(T*, const T*, long, long);                                                 \
    template void swiglu_backward<T>(T*, const T*, const T*, long, long);                                      \
    template long crossentropy_forward<T>(T*, T*, const T*, const int32_t*, long, long);                       \
    template void crossentropy_backward<T>(T*, const T*, const T*, const int32_t*, long, long, T);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)

}  // namespace strata
