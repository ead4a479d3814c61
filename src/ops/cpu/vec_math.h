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

}  // namespace strata
