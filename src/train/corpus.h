// The corpus a run trains on: its tokenizer and its train/validation token shards, made once per
// data_dir and reused while the inputs are unchanged.
#pragma once
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
// With `given`, no tokenizer is trained: the corpus is tokenized with `given` (a checkpoint's, for
// train.init_from or a resumed run whose corpus changed), which becomes data_dir's tokenizer.
PreparedCorpus prepare_corpus(const RunConfig& rc, bool verbose, const Tokenizer* given = nullptr);

}  // namespace strata
