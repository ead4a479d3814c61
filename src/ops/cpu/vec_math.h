// exp for the ops' inner loops, written so the compiler vectorises it under `omp simd` (glibc's
// vector exp is only offered with -ffast-math, which would also break our inf/NaN handling).
// float: range reduction x = n·ln2 + r, |r| ≤ ln2/2 (n the nearest integer to x/ln2), then a
// degree-6 Taylor polynomial for e^r and 2^n assembled in the exponent bits; relative error ≤ 2e-7 on [-87, 88]. Inputs below -87 give
// about 1.6e-38 instead of a smaller number or 0, inputs above 88 saturate at e^88: the callers only
// feed it x ≤ 0 (softmax) or use it where those tails vanish (sigmoid). double: std::exp.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace strata {

#pragma omp declare simd notinbranch
inline float vexp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    // n = x·log2(e) rounded to the nearest integer by the 1.5·2^23 shift (exact for |n| < 2^22): GCC does
    // not vectorise std::floor without -fno-trapping-math, and a loop calling vexp stayed scalar.
    const float kShift = 12582912.0f;
    const float n = (x * 1.44269504088896341f + kShift) - kShift;
    const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln2 split hi + lo
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const float scale = std::bit_cast<float>((int32_t(n) + 127) << 23);
    return p * scale;
}

#pragma omp declare simd notinbranch
inline double vexp(double x) { return std::exp(x); }

// ---- SIMD vectors and the sums the kernels take per row --------------------------------------------
// GCC's vector extension at the width -march allows (64 bytes with AVX-512, else 32), so the compiler
// emits instructions of that width. Sums run in a fixed order: a result depends on n, not on the thread
// count or the caller.
namespace simd {

#if defined(__AVX512F__)
inline constexpr int kVecBytes = 64;
#else
inline constexpr int kVecBytes = 32;
#endif

template <typename T>
struct Simd {
    typedef T V __attribute__((vector_size(kVecBytes)));
    static constexpr long W = kVecBytes / long(sizeof(T));
    static V load(const T* p) {
        V v;
        std::memcpy(&v, p, sizeof v);
        return v;
    }
    static void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
    // x in every lane: x − 0 is x exactly (also for −0), so this is one broadcast (`V{} + x` would
    // add 0 to x first, since −0 + 0 is +0; a lane-by-lane loop compiles to masked inserts)
    static V splat(T x) { return x - V{}; }
};

// The sum of a vector's lanes, halving it down to 16 bytes and then in scalars: a fixed order, a few
// instructions. GCC's code for the end of an `omp simd` sum stores the partial vector and adds its
// lanes one at a time through memory, which costs more than the products of a 64-element dot, so the
// per-row sums of the kernels use dot() and sum() below instead.
template <typename T, int Bytes>
inline T lane_sum(const void* v) {
    if constexpr (Bytes > 16) {
        typedef T H __attribute__((vector_size(Bytes / 2)));
        H lo, hi;
        std::memcpy(&lo, v, sizeof lo);
        std::memcpy(&hi, static_cast<const char*>(v) + sizeof lo, sizeof hi);
        const H s = lo + hi;
        return lane_sum<T, Bytes / 2>(&s);
    } else {
        T x[16 / sizeof(T)];
        std::memcpy(x, v, sizeof x);
        T s = x[0];
        for (size_t i = 1; i < 16 / sizeof(T); i++) s += x[i];
        return s;
    }
}

// Σ x[i]·y[i] over [0, n): whole vectors into two accumulators, their lane sum, then a scalar tail.
template <typename T>
inline T dot(const T* x, const T* y, long n) {
    using S = Simd<T>;
    using V = typename S::V;
    V a0{}, a1{};
    long i = 0;
    for (; i + 2 * S::W <= n; i += 2 * S::W) {
        a0 += S::load(x + i) * S::load(y + i);
        a1 += S::load(x + i + S::W) * S::load(y + i + S::W);
    }
    if (i + S::W <= n) a0 += S::load(x + i) * S::load(y + i), i += S::W;
    const V a = a0 + a1;
    T s = lane_sum<T, kVecBytes>(&a);
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

// Σ x[i] over [0, n), in whole vectors, then a scalar tail.
template <typename T>
inline T sum(const T* x, long n) {
    using S = Simd<T>;
    using V = typename S::V;
    V a{};
    long i = 0;
    for (; i + S::W <= n; i += S::W) a += S::load(x + i);
    T s = lane_sum<T, kVecBytes>(&a);
    for (; i < n; i++) s += x[i];
    return s;
}

}  // namespace simd

}  // namespace strata
