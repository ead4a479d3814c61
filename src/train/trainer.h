// The training loop: prepare the corpus once (corpus.h), start or resume the run (resume.h), then
// step (step.h) with periodic evaluation (evaluate.h), metrics (metrics.h), non-finite handling
// (faults.h), SIGINT handling (interrupt.h) and atomic checkpoints; resumable bit for bit.
#pragma once
#include <string>

#include "train/run_config.h"

namespace strata {

struct TrainResult {
    long step = 0;
    double train_loss = 0, val_loss = 0;
    bool interrupted = false;  // stopped by SIGINT after saving a checkpoint
};

TrainResult train(const RunConfig& rc);

// Sets the thread count for OpenMP and OpenBLAS alike.
void set_threads(int n);

}  // namespace strata
