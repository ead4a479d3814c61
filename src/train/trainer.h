// The training loop: prepare the tokenizer and token shards once, then step (forward, backward,
// clip, AdamW) with periodic evaluation and atomic checkpoints; resumable bit for bit.
#pragma once
#include <functional>
#include <string>

#include "model/model.h"
#include "train/data.h"
#include "train/run_config.h"
#include "train/tokenizer.h"

namespace strata {

struct PreparedCorpus {
    Tokenizer tok;
    PreparedData data;
};

// Trains the tokenizer on the corpus (unless data_dir already holds one for the same corpus and
// vocabulary size) and tokenizes the corpus into train/val shards (unless they are up to date).
PreparedCorpus prepare_corpus(const RunConfig& rc, bool verbose);

// Mean cross-entropy over the first `max_batches` batches of the shard (all if max_batches ≤ 0),
// weighted by the number of targets. after_batch, when set, runs after each batch's forward.
double evaluate(Model<float>& model, const TokenShard& shard, int B, int T, long max_batches,
                const std::function<void()>& after_batch = {});

struct TrainResult {
    long step = 0;
    double train_loss = 0, val_loss = 0;
    bool interrupted = false;  // stopped by SIGINT after saving a checkpoint
};

TrainResult train(const RunConfig& rc);

// Sets the thread count for OpenMP and OpenBLAS alike.
void set_threads(int n);

}  // namespace strata
