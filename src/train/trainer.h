// The training loop: prepare the corpus once (corpus.h), start or resume the run (resume.h), then
// step (step.h) with periodic evaluation (evaluate.h), metrics and history (metrics.h), non-finite
// and divergence handling (faults.h), SIGINT handling (interrupt.h) and atomic checkpoints;
// resumable bit for bit.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "train/run_config.h"

namespace strata {

// What the caller knows about the machine and the model's cost, for MFU in the metrics.
struct TrainOptions {
    double flops_per_step = 0;  // the FLOP model of one optimizer step (all micro-batches); 0: unknown
    double peak_gflops = 0;     // the machine's peak; 0: unknown (train.peak_gflops overrides it)
    // Called with each line of metrics.jsonl (a step, a validation, a skipped step) once it is
    // written. An exception it throws ends the run (the last checkpoint on disk is kept).
    std::function<void(const std::string& line)> on_metrics;
};

struct TrainResult {
    long step = 0;        // the step the run is at now
    long start_step = 0;  // where this invocation started (the checkpoint's step when resumed)
    double train_loss = 0, val_loss = 0;
    std::vector<std::pair<std::string, double>> val_loss_by_corpus;  // a mixture's sources (corpus.h)
    bool interrupted = false;  // stopped by SIGINT after saving a checkpoint
    bool diverged = false;     // the loss stayed above the divergence threshold (see trainer.cpp)
    bool stopped_diverged = false;  // ... and train.on_divergence = "stop" ended the run
    long diverged_at = 0;           // the logged step at which it was declared
    double divergence_threshold = 0;
    // The train settings the checkpoint's result came from when nothing was left to train.
    nlohmann::json result_settings;
    long steps_run() const { return step - start_step; }
};

TrainResult train(const RunConfig& rc, const TrainOptions& opts = {});

// Sets the thread count for OpenMP and OpenBLAS alike.
void set_threads(int n);

// The loss level above which training counts as diverged: max(ln V + 1, 1.5 × the first logged loss).
double divergence_threshold(int vocab_size, double first_logged_loss);
// Consecutive logged steps above the threshold that make a divergence.
constexpr long kDivergenceLogs = 10;

}  // namespace strata
