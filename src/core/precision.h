// Training and inference precision (`train.precision`, `--precision`), and the bf16 storage type.
//
// fp32: every role in float. bf16 (mixed precision): activations and GEMM inputs are stored as bf16;
// the residual stream, the master weights, the gradients and the AdamW moments stay float; norm
// statistics, softmax, log-sum-exp, losses and the depth statistics are computed in float
// (docs/precision.md).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace strata {

enum class Precision { fp32, bf16 };
const char* to_string(Precision p);
// "fp32" | "bf16"; anything else is an Error naming `origin` and listing the allowed values.
Precision parse_precision(const std::string& s, const std::string& origin);
const std::vector<std::string>& precision_names();

// bfloat16: the top 16 bits of an IEEE float. Conversion from float rounds to nearest, ties to even;
// NaN stays NaN (quiet). Arithmetic is never done in bf16: load to float, compute, store.
struct bf16 {
    uint16_t bits = 0;
    bf16() = default;
    explicit bf16(float f) : bits(round(f)) {}
    explicit operator float() const {
        const uint32_t u = uint32_t(bits) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    static uint16_t round(float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // NaN: keep it a NaN
        u += 0x7fffu + ((u >> 16) & 1u);
        return uint16_t(u >> 16);
    }
};
static_assert(sizeof(bf16) == 2);

// Any storage type widened to double (reductions in double).
inline double to_double(double x) { return x; }
inline double to_double(float x) { return x; }
inline double to_double(bf16 x) { return double(float(x)); }

// Rounds x to the nearest bf16 value and back: what storing x as bf16 keeps of it.
inline float round_bf16(float x) { return float(bf16(x)); }

}  // namespace strata
