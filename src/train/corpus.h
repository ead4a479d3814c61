// The corpus a run trains on: its tokenizer and its train/validation token shards, made once per
// data_dir and reused while the inputs' content is unchanged.
//
// train.corpus is one file or folder, or a list of sources mixed by weight. One tokenizer is trained on
// the files of all sources together (DATA_DIR/tokenizer.model). A single string keeps its shards in
// DATA_DIR/train.bin and val.bin; the sources of a list keep theirs in DATA_DIR/corpus<i>/ (i the
// entry's index in the list, from 0), each split by val_fraction on its own.
#pragma once
#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "model/model.h"
#include "train/data.h"
#include "train/run_config.h"
#include "train/tokenizer.h"

namespace strata {

struct PreparedSource {
    std::string name;   // the path as train.corpus gives it (the key of val_loss_by_corpus)
    double weight = 1;  // normalised: the sources' weights sum to 1
    PreparedData data;
};

struct PreparedCorpus {
    Tokenizer tok;
    PreparedData data;  // the first source's shards: all of them for a single train.corpus string
    std::vector<PreparedSource> sources;
    bool mixture = false;  // train.corpus is a list (even of one entry)
};

// Trains the tokenizer on the corpus (unless data_dir already holds one trained on the same content
// with the same vocabulary size) and tokenizes each source into its train/val shards (unless they
// are up to date). The inputs are known by their sizes and content hashes, so another spelling of a
// path, or a copy of the corpus elsewhere, reuses what was prepared.
// With `given`, no tokenizer is trained: the corpus is tokenized with `given` (a checkpoint's, for
// train.init_from or a resumed run whose corpus changed), which becomes data_dir's tokenizer.
PreparedCorpus prepare_corpus(const RunConfig& rc, bool verbose, const Tokenizer* given = nullptr);

// Every source's shards, open. MixtureSampler and eval_corpora keep pointers into the vectors: do not
// resize them while those are in use.
struct CorpusShards {
    std::vector<std::string> names;
    std::vector<double> weights;  // normalised
    std::vector<TokenShard> train, val;
    bool mixture = false;

    MixtureSampler sampler(int B, int T, uint64_t seed) const;
    // Refuses a validation shard too short for one (B, T) window (before any training, not at the
    // first evaluation).
    void probe(int B, int T) const;
    // Refuses shards made with a larger vocabulary than the model's.
    void check_vocab(const Model<float>& model) const;
};
CorpusShards open_corpus_shards(const PreparedCorpus& pc);

struct CorpusEval {
    // Mean validation loss; for a mixture the weight-averaged mean of the sources' losses.
    double loss = 0;
    // Each source's loss, in train.corpus order; empty unless train.corpus is a list.
    std::vector<std::pair<std::string, double>> by_corpus;
    bool complete = true;  // false when *stop cut it short
};

// eval_loop (evaluate.h) on each source's validation shard, max_batches batches each. With one source
// the loss is exactly eval_loop's.
CorpusEval eval_corpora(Model<float>& model, const CorpusShards& shards, int B, int T, long max_batches,
                        const std::atomic<int>* stop = nullptr);

}  // namespace strata
