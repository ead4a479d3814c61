// `strata bench train` as a library: the bench model, the strata configuration a worker process
// serves, the op profile, and the whole suite (machine facts, sgemm peak, the interleaved
// repetitions of every strata and PyTorch configuration) gathered into one result, which report.h
// writes as Markdown and JSON (bench/README.md describes the protocol).
#pragma once
#include <array>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
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
    std::string precision = "fp32";           // the model's precision in the profiled steps
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

// One configuration measured in the interleaved protocol: a strata precision or a PyTorch
// configuration, each in its own long-running process (a strata worker is this binary in serve mode).
struct ConfigResult {
    std::string id;     // "strata-fp32", "strata-bf16", "pytorch-eager", "pytorch-eager-bf16", ...
    std::string kind;   // "strata" or "pytorch"
    std::string which;  // the precision ("fp32") or the peer configuration ("compile-bf16")
    std::string label;  // as the report names it
    bool measured = false;  // every repetition ran
    std::string failure;    // why not, when !measured
    std::vector<std::vector<double>> reps;          // seconds of each timed step, per repetition
    std::vector<std::vector<std::array<double, kPhases>>> phases;  // strata: the step's phases, per step
    std::vector<int> order;                         // the position of each repetition in the run
    nlohmann::json info = nlohmann::json::object();  // the worker's ready line (less "ready")
    double rss_before_model = 0, peak_rss = 0;      // bytes, the worker's own (0 when unknown)
    double loss_first = 0, loss_last = 0;
    // tokens/s of each repetition: tokens per step × steps ÷ the repetition's time
    std::vector<double> rep_tokens_per_s(double tokens_per_step) const;
    std::vector<double> step_seconds() const;  // every timed step, in order
    double rss_delta() const { return peak_rss > 0 && rss_before_model > 0 ? peak_rss - rss_before_model : 0; }
};

// Everything the report shows.
struct TrainBenchResult {
    TrainBenchOptions options;
    MachineFacts machine;
    ModelConfig model;
    FlopCount flops;
    std::vector<GemmResult> gemm;         // OpenBLAS f32
    std::vector<GemmResult> gemm_onednn;  // oneDNN f32
    std::vector<GemmResult> gemm_bf16;    // strata's bf16 GEMM (oneDNN, or its emulation); when bf16 is requested
    // The bf16 path strata does not take here, for comparison (where the CPU has native bf16, both
    // paths exist); not part of the peak.
    std::vector<GemmResult> gemm_bf16_other;
    std::string bf16_backend, bf16_other_backend;
    std::vector<ConfigResult> configs;     // strata precisions first, then the PyTorch configurations
    std::vector<std::string> schedule;     // the ids in the order their repetitions ran
    size_t params = 0;                     // of strata's bench model
    std::vector<ProfileResult> profiles;   // with --profile: steps of each strata precision, after the repetitions
    CpuUse cpu_gemm, cpu_configs;          // during the sgemm and the repetitions (warm-ups included)
    std::string peer_python;
    double tokens() const { return double(options.batch) * double(options.seq); }
    double peak_gflops() const { return best_of(gemm).best_gflops; }
    // The protocol's peak of a precision (bench/README.md): the highest shape mean, over OpenBLAS and
    // oneDNN for fp32; 0 when not measured.
    double precision_peak(const std::string& precision) const;
    const ConfigResult* find(const std::string& id) const;
};

// The strata worker: builds the bench model at o.serve's precision, runs o.warmup steps, then
// answers `rep` (o.steps timed steps) and `quit` (memory figures) on stdin with JSON lines on stdout
// (bench/README.md). A precision this build cannot run is answered with {"error": ...}. Returns the
// exit status.
int serve_strata(const TrainBenchOptions& o);

// The whole suite, in order: sgemm, then every configuration started and warmed up one at a time,
// then o.reps rounds of one repetition of each, then their memory figures, then the profile. Sets
// the OpenMP and OpenBLAS thread counts to o.threads. Throws Error (before any measurement) for a bad
// --repo, a bad model option, or a batch that does not fit in memory; a configuration that fails is
// recorded as failed and the rest go on. Progress goes to stderr.
TrainBenchResult run_train_bench(const TrainBenchOptions& o);

}  // namespace strata::bench
