// The sgemm peak: cblas_sgemm of the OpenBLAS strata links, on a square shape and on the shapes of
// the bench model's matmuls, at the thread count already set.
#pragma once
#include <vector>

#include "model/config.h"

namespace strata::bench {

struct GemmShape {
    const char* what;
    bool ta, tb;  // A and B transposed
    long M, N, K;  // (M×K)·(K×N)
};
struct GemmResult {
    GemmShape s;
    double best_gflops = 0, mean_gflops = 0;
    int reps = 0;
};

// Each shape called repeatedly (at least 5 times and 0.4 s) after one untimed call.
std::vector<GemmResult> sgemm_peaks(long tokens, const ModelConfig& c);
// A short measurement (about `seconds`) of the square 512³ sgemm: the best GFLOP/s of its repetitions.
// The trainer's MFU is against this when train.peak_gflops is not given.
double quick_sgemm_gflops(double seconds = 0.15);
// The result with the highest best_gflops (results must not be empty).
const GemmResult& best_of(const std::vector<GemmResult>& r);

}  // namespace strata::bench
