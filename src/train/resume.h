// Starting a run: a fresh model and optimizer, or the state of the run directory's checkpoint after
// the checks that make resuming safe (same model, same tokenizer, consistent counters, finite
// values).
#pragma once
#include <memory>

#include "train/checkpoint.h"
#include "train/corpus.h"

namespace strata {

struct RunStart {
    std::unique_ptr<Model<float>> model;
    std::unique_ptr<AdamW<float>> opt;
    TrainState st;
    long saved_step = -1;  // the step of the checkpoint on disk, -1 when there is none yet
    bool resumed = false;
};

RunStart start_run(const RunConfig& rc, const PreparedCorpus& pc, Device device);

}  // namespace strata
