// GEMM peaks per precision and library: OpenBLAS's and oneDNN's f32, and strata's bf16 GEMM (oneDNN
// where the CPU has bf16), on a square shape and on every GEMM shape of the model, at the thread
// count already set.
#pragma once
#include <vector>

#include "core/precision.h"
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

enum class GemmLib { openblas, onednn };
const char* to_string(GemmLib l);
// 1024³ and the model's 15 GEMMs for `tokens` rows (forward, input gradient, weight gradient of each).
std::vector<GemmShape> model_gemm_shapes(long tokens, const ModelConfig& c);
// Each shape called repeatedly (at least 5 times and min_seconds) after one untimed call. bf16 is
// oneDNN's only (lib must be onednn).
std::vector<GemmResult> gemm_peaks(long tokens, const ModelConfig& c, Precision p, GemmLib lib,
                                   double min_seconds = 0.4);
// OpenBLAS's f32 peaks (gemm_peaks with fp32 and openblas).
std::vector<GemmResult> sgemm_peaks(long tokens, const ModelConfig& c, double min_seconds = 0.4);
// A short measurement (about `seconds`) of the square 512³ GEMM of a precision (fp32: sgemm; bf16:
// strata's bf16 GEMM): the best GFLOP/s of its repetitions. The trainer's MFU is against this when
// train.peak_gflops is not given.
double quick_gemm_gflops(Precision p, double seconds = 0.15);
// The shape with the highest mean GFLOP/s: the peak of the protocol (bench/README.md).
const GemmResult& highest_mean(const std::vector<GemmResult>& r);
// The result with the highest best_gflops (results must not be empty).
const GemmResult& best_of(const std::vector<GemmResult>& r);

}  // namespace strata::bench
