// `strata bench train` as a library: the bench model, the timed strata steps, the op profile, and
// the whole suite (machine facts, sgemm peak, strata, the peer) gathered into one result, which
// report.h writes as Markdown and JSON.
#pragma once
#include <array>
#include <optional>
#include <vector>

#include "bench/flops.h"
#include "bench/gemm_peak.h"
#include "bench/machine.h"
#include "bench/options.h"
#include "bench/peer.h"
#include "bench/stats.h"
#include "model/model.h"
#include "ops/profile.h"
#include "train/optimizer.h"
#include "train/step.h"

namespace strata::bench {

// The bench model: fixed, so results stay comparable across runs and with the peer's defaults; the
// options choose only the residual rule, its block size and the attention kind (and max_seq_len =
// seq). Throws Error naming --residual or --attention for an unknown name.
ModelConfig bench_model_config(const TrainBenchOptions& o);

// One fixed batch from a fixed seed, tokens x and next tokens y, each (B, T) (the peer draws its own
// the same way).
void make_batch(long B, long T, long V, std::vector<int32_t>& x, std::vector<int32_t>& y);

// The op families of some training steps (ops/profile.h), per step.
struct ProfileResult {
    int steps = 0;
    double step_ms = 0;                       // mean wall time of one profiled train_step
    std::array<double, kOpFamilies> ms{};     // per family, ms per step
    std::array<double, kOpFamilies> calls{};  // per family, calls per step
    double families_ms() const;               // Σ ms over the families
    double remainder_ms() const { return step_ms - families_ms(); }  // time outside every op
};
// Runs `steps` train_step calls with the op profiler on (and off again after, also on an error),
// each timed by the wall clock around the call. Throws Error when a loss is not finite.
ProfileResult profile_train_steps(Model<float>& model, AdamW<float>& opt, const StepConfig& sc, double lr, int steps);

inline constexpr int kPhases = 5;
extern const std::array<const char*, kPhases> kPhaseNames;  // zero_grad, forward, backward, clip, AdamW

struct StrataResult {
    Stats step;                      // seconds, over the timed steps
    std::array<Stats, kPhases> phase{};  // seconds
    double loss_first = 0, loss_last = 0;
    size_t params = 0;
    CpuUse cpu;                      // from the model's construction to the last timed step
    std::optional<ProfileResult> profile;  // with --profile: steps after the timed ones
};
// o.warmup + o.steps training steps (src/train/step.h) on the fixed batch, then with o.profile
// max(3, min(o.steps, 5)) more with the op profiler on.
StrataResult run_strata(const ModelConfig& cfg, const TrainBenchOptions& o);

// Everything the report shows.
struct TrainBenchResult {
    TrainBenchOptions options;
    MachineFacts machine;
    ModelConfig model;
    FlopCount flops;
    std::vector<GemmResult> gemm;
    StrataResult strata;
    PeerResult peer;
    CpuUse cpu_gemm, cpu_peer;  // during the sgemm and the peer measurements (strata's: strata.cpu)
    double tokens() const { return double(options.batch) * double(options.seq); }
    double peak_gflops() const { return best_of(gemm).best_gflops; }
    double strata_tokens_per_s() const { return tokens() / strata.step.mean; }
    double strata_gflops() const { return flops.total / strata.step.mean / 1e9; }
};

// The whole suite, in order: sgemm, strata (and its profile), the peer. Sets the OpenMP and OpenBLAS
// thread counts to o.threads. Throws Error (before any measurement) for a bad --repo, a bad model
// option, or a batch that does not fit in memory. Progress goes to stderr.
TrainBenchResult run_train_bench(const TrainBenchOptions& o);

}  // namespace strata::bench
