// A small, portable, seedable random number generator (SplitMix64). Its whole state is one u64, so
// it is trivially saved in a checkpoint, and results are identical on every platform.
#pragma once
#include <cmath>
#include <cstdint>

namespace strata {

inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed = 0) : state(seed) {}
    uint64_t next_u64() {
        state += 0x9E3779B97F4A7C15ull;
        return splitmix64(state);
    }
    // uniform in [0, 1) with 53 random bits
    double uniform() { return double(next_u64() >> 11) * (1.0 / 9007199254740992.0); }
    double normal() {  // Box-Muller; draws two uniforms per sample, keeps no cached spare
        double u1 = uniform(), u2 = uniform();
        if (u1 < 1e-300) u1 = 1e-300;
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
};

}  // namespace strata
