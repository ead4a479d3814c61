// Glue ops (ops.h, "glue"): zero fill, residual adds, the qkv split, MoDA's depth slots, the KV-cache
// append, scaling, and the reductions the optimizer and the diagnostics need.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops/ops.h"
#include "ops/profile.h"

namespace strata {

// Element-wise loops below this size run on one thread (the fork costs more than it saves).
static constexpr long kParallelMin = 32768;

template <typename T>
void fill_zero(T* x, size_t n) {
    OpTimer t_(OpFamily::glue);
    std::memset(x, 0, n * sizeof(T));
}

template <typename T>
void fill_value(T* x, size_t n, double value) {
    OpTimer t_(OpFamily::glue);
    const T v = T(value);
    for (size_t i = 0; i < n; i++) x[i] = v;
}

template <typename T>
void copy_forward(T* dst, const T* src, size_t n) {
    OpTimer t_(OpFamily::glue);
    std::memcpy(dst, src, n * sizeof(T));
}

template <typename D, typename S>
void convert_forward(D* dst, const S* src, size_t n) {
    OpTimer t_(OpFamily::glue);
    const long m = long(n);
#pragma omp parallel for schedule(static) if (m >= kParallelMin)
    for (long i = 0; i < m; i++) dst[i] = D(float(src[i]));
}

template <typename T, typename B>
void residual_forward(T* out, const T* a, const B* b, long n) {
    OpTimer t_(OpFamily::glue);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (long i = 0; i < n; i++) out[i] = a[i] + T(b[i]);
}

template <typename T>
void residual_backward(T* da, T* db, const T* dout, long n) {
    OpTimer t_(OpFamily::glue);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (long i = 0; i < n; i++) {
        if (da) da[i] += dout[i];
        if (db) db[i] += dout[i];
    }
}

namespace {
// Σ_i a[i]·b[i] in double: fixed chunks summed in parallel, their partials added in chunk order, so
// the result does not depend on the thread count.
template <typename T, typename B>
double chunked_dot(const T* a, const B* b, long n) {
    constexpr long kChunk = 4096;
    const long chunks = (n + kChunk - 1) / kChunk;
    thread_local std::vector<double> partials;  // grown once, reused: no allocation in steady state
    if (partials.size() < size_t(chunks)) partials.resize(size_t(chunks));
    double* part = partials.data();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (long c = 0; c < chunks; c++) {
        double s = 0;
        for (long i = c * kChunk; i < std::min(n, (c + 1) * kChunk); i++) s += double(a[i]) * to_double(b[i]);
        part[c] = s;
    }
    double s = 0;
    for (long c = 0; c < chunks; c++) s += part[c];
    return s;
}
}  // namespace

template <typename T, typename B>
void gated_residual_forward(T* out, const T* a, const B* b, const T* alpha, long n) {
    OpTimer t_(OpFamily::glue);
    const T g = alpha[0];
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (long i = 0; i < n; i++) out[i] = a[i] + g * T(b[i]);
}

template <typename T, typename B>
void gated_residual_backward(T* db, T* dalpha, const T* dout, const B* b, const T* alpha, long n) {
    OpTimer t_(OpFamily::glue);
    const T g = alpha[0];
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (long i = 0; i < n; i++) db[i] = g * dout[i];
    dalpha[0] += T(chunked_dot(dout, b, n));
}

template <typename T>
void weighted_sum_forward(T* out, const T* const* srcs, int n, const T* alpha, long n_elem) {
    OpTimer t_(OpFamily::glue);
#pragma omp parallel for schedule(static) if (n_elem >= kParallelMin)
    for (long i = 0; i < n_elem; i++) {
        T s = alpha[0] * srcs[0][i];
        for (int k = 1; k < n; k++) s += alpha[k] * srcs[k][i];
        out[i] = s;
    }
}

template <typename T>
void weighted_sum_backward(T* const* dsrcs, T* dalpha, const T* dout, const T* const* srcs, int n, const T* alpha,
                           long n_elem) {
    OpTimer t_(OpFamily::glue);
    for (int k = 0; k < n; k++) dalpha[k] += T(chunked_dot(dout, srcs[k], n_elem));
    for (int k = 0; k < n; k++) {
        if (!dsrcs[k]) continue;
        T* d = dsrcs[k];
        const T a = alpha[k];
#pragma omp parallel for schedule(static) if (n_elem >= kParallelMin)
        for (long i = 0; i < n_elem; i++) d[i] += a * dout[i];
    }
}

template <typename T>
void qkv_split_forward(T* q, T* k, T* v, const T* qkv, long N, long Wq, long Wk, long Wv) {
    OpTimer t_(OpFamily::glue);
    const long W = Wq + Wk + Wv;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        const T* row = qkv + r * W;
        std::memcpy(q + r * Wq, row, size_t(Wq) * sizeof(T));
        std::memcpy(k + r * Wk, row + Wq, size_t(Wk) * sizeof(T));
        std::memcpy(v + r * Wv, row + Wq + Wk, size_t(Wv) * sizeof(T));
    }
}

template <typename T>
void qkv_split_backward(T* dqkv, const T* dq, const T* dk, const T* dv, long N, long Wq, long Wk, long Wv) {
    OpTimer t_(OpFamily::glue);
    const long W = Wq + Wk + Wv;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < N; r++) {
        T* row = dqkv + r * W;
        std::memcpy(row, dq + r * Wq, size_t(Wq) * sizeof(T));
        std::memcpy(row + Wq, dk + r * Wk, size_t(Wk) * sizeof(T));
        std::memcpy(row + Wq + Wk, dv + r * Wv, size_t(Wv) * sizeof(T));
    }
}

template <typename T>
void depth_slot_forward(T* depth, long slots, long slot, const T* src, long src_stride, long N, long W) {
    OpTimer t_(OpFamily::glue);
    for (long r = 0; r < N; r++) std::memcpy(depth + (r * slots + slot) * W, src + r * src_stride, size_t(W) * sizeof(T));
}

template <typename T>
void depth_slot_backward(T* dsrc, long dsrc_stride, const T* ddepth, long slots, long slot, long N, long W) {
    OpTimer t_(OpFamily::glue);
    for (long r = 0; r < N; r++) {
        T* d = dsrc + r * dsrc_stride;
        const T* s = ddepth + (r * slots + slot) * W;
        for (long i = 0; i < W; i++) d[i] += s[i];
    }
}

template <typename T>
void kv_append_forward(T* kc, T* vc, const T* k, const T* v, long B, long n, long pos0, long bstride, long W) {
    OpTimer t_(OpFamily::glue);
    for (long b = 0; b < B; b++) {
        const size_t dst = size_t(b * bstride + pos0 * W), src = size_t(b * n * W), bytes = size_t(n * W) * sizeof(T);
        std::memcpy(kc + dst, k + src, bytes);
        std::memcpy(vc + dst, v + src, bytes);
    }
}

template <typename T>
void scale_forward(T* x, long n, double s) {
    OpTimer t_(OpFamily::optimizer);
    const T f = T(s);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) x[i] *= f;
}

template <typename T>
double sum_squares(const T* x, long n) {
    OpTimer t_(OpFamily::optimizer);
    constexpr int kMax = 256;
    double partial[kMax] = {0};
    int nt = 1;
#pragma omp parallel
    {
        int id = 0;
#ifdef _OPENMP
        id = omp_get_thread_num();
#pragma omp single
        nt = std::min(omp_get_num_threads(), kMax);
#endif
        if (id < kMax) {
            const long per = (n + nt - 1) / nt;
            double ss = 0;
            for (long i = id * per; i < std::min(n, (id + 1) * per); i++) ss += double(x[i]) * double(x[i]);
            partial[id] = ss;
        }
    }
    double ss = 0;
    for (int i = 0; i < nt; i++) ss += partial[i];
    return ss;
}

template <typename T>
double sum_ordered(const T* x, long n) {
    OpTimer t_(OpFamily::glue);
    double s = 0;
    for (long i = 0; i < n; i++) s += double(x[i]);
    return s;
}

template <typename T>
long nonfinite_count(const T* x, long n) {
    OpTimer t_(OpFamily::glue);
    long bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if (n >= kParallelMin)
    for (long i = 0; i < n; i++) bad += !std::isfinite(x[i]);
    return bad;
}

template <typename T>
double row_mean_square_sum(const T* x, long N, long C) {
    OpTimer t_(OpFamily::glue);
    double total = 0;
    for (long r = 0; r < N; r++) {
        double ss = 0;
        for (long c = 0; c < C; c++) ss += to_double(x[r * C + c]) * to_double(x[r * C + c]);
        total += ss / double(C);
    }
    return total;
}

template <typename T>
double softmax_weight_sum(const T* logit, const T* lse, long N, AttnResGate gate) {
    OpTimer t_(OpFamily::glue);
    double a = 0;
    if (gate == AttnResGate::sigmoid)
        for (long r = 0; r < N; r++) a += 1.0 / (1.0 + std::exp(-double(logit[r])));
    else
        for (long r = 0; r < N; r++) a += std::exp(double(logit[r]) - double(lse[r]));
    return a;
}

template <typename T, typename S>
void adamw_update(T* p, const T* g, S* m, S* v, long n, const AdamWArgs& a, bool decay) {
    OpTimer t_(OpFamily::optimizer);
    const double bc1 = 1.0 - std::pow(a.beta1, double(a.step));
    const double bc2 = 1.0 - std::pow(a.beta2, double(a.step));
    const T b1 = T(a.beta1), b2 = T(a.beta2), eps = T(a.eps);
    const T step_size = T(a.lr / bc1), inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2));
    const T keep = decay ? T(1.0 - a.lr * a.weight_decay) : T(1);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        const T mi = b1 * T(m[i]) + (T(1) - b1) * g[i];  // computed in T, stored as S
        const T vi = b2 * T(v[i]) + (T(1) - b2) * g[i] * g[i];
        m[i] = S(mi);
        v[i] = S(vi);
        p[i] = p[i] * keep - step_size * T(m[i]) / (std::sqrt(T(v[i])) * inv_sqrt_bc2 + eps);
    }
}

#define STRATA_GLUE(T)                                                                                      \
    template void fill_zero<T>(T*, size_t);                                                                 \
    template void fill_value<T>(T*, size_t, double);                                                        \
    template void copy_forward<T>(T*, const T*, size_t);                                                    \
    template void residual_forward<T, T>(T*, const T*, const T*, long);                                     \
    template void residual_backward<T>(T*, T*, const T*, long);                                             \
    template void gated_residual_forward<T, T>(T*, const T*, const T*, const T*, long);                     \
    template void gated_residual_backward<T, T>(T*, T*, const T*, const T*, const T*, long);                \
    template void weighted_sum_forward<T>(T*, const T* const*, int, const T*, long);                        \
    template void weighted_sum_backward<T>(T* const*, T*, const T*, const T* const*, int, const T*, long);  \
    template void qkv_split_forward<T>(T*, T*, T*, const T*, long, long, long, long);                       \
    template void qkv_split_backward<T>(T*, const T*, const T*, const T*, long, long, long, long);          \
    template void depth_slot_forward<T>(T*, long, long, const T*, long, long, long);                        \
    template void depth_slot_backward<T>(T*, long, const T*, long, long, long, long);                       \
    template void kv_append_forward<T>(T*, T*, const T*, const T*, long, long, long, long, long);           \
    template void scale_forward<T>(T*, long, double);                                                       \
    template double sum_squares<T>(const T*, long);                                                         \
    template double sum_ordered<T>(const T*, long);                                                         \
    template long nonfinite_count<T>(const T*, long);                                                       \
    template double row_mean_square_sum<T>(const T*, long, long);                                           \
    template double softmax_weight_sum<T>(const T*, const T*, long, AttnResGate);                                        \
    template void adamw_update<T, T>(T*, const T*, T*, T*, long, const AdamWArgs&, bool);
STRATA_GLUE(float)
STRATA_GLUE(double)

// Mixed precision: the bf16 activations' copies and conversions.
template void fill_zero<bf16>(bf16*, size_t);
template void copy_forward<bf16>(bf16*, const bf16*, size_t);
template void convert_forward<bf16, float>(bf16*, const float*, size_t);
template void convert_forward<float, bf16>(float*, const bf16*, size_t);
template void residual_forward<float, bf16>(float*, const float*, const bf16*, long);
template void gated_residual_forward<float, bf16>(float*, const float*, const bf16*, const float*, long);
template void gated_residual_backward<float, bf16>(float*, float*, const float*, const bf16*, const float*, long);
template void qkv_split_forward<bf16>(bf16*, bf16*, bf16*, const bf16*, long, long, long, long);
template void depth_slot_forward<bf16>(bf16*, long, long, const bf16*, long, long, long);
template void kv_append_forward<bf16>(bf16*, bf16*, const bf16*, const bf16*, long, long, long, long, long);
template double row_mean_square_sum<bf16>(const bf16*, long, long);

}  // namespace strata
