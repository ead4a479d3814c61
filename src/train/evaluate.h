// Validation loss: the mean cross-entropy over a shard walked in order (EvalBatches).
#pragma once
#include <atomic>
#include <functional>

#include "model/model.h"
#include "train/data.h"

namespace strata {

// Refuses a shard made with a larger vocabulary than the model's (it would feed ids the embedding
// does not have).
void check_shard_vocab(const TokenShard& shard, const Model<float>& model);

struct EvalResult {
    double loss = 0;   // mean over the scored targets
    long tokens = 0;   // targets scored
    bool complete = true;  // false when *stop cut it short
};

// Mean loss over the first `max_batches` batches of (B, T) windows (all if max_batches ≤ 0),
// weighted by the number of targets. Stops early (complete = false) once *stop is non-zero.
// after_batch, when set, runs after each batch's forward.
EvalResult eval_loop(Model<float>& model, const TokenShard& shard, int B, int T, long max_batches,
                     const std::atomic<int>* stop = nullptr, const std::function<void()>& after_batch = {});

// eval_loop after checking memory and the shard's vocabulary; returns the loss.
double evaluate(Model<float>& model, const TokenShard& shard, int B, int T, long max_batches,
                const std::function<void()>& after_batch = {});

}  // namespace strata
