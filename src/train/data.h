// strata: token shards, corpus preparation and batch sampling.
//
// Token shard file format (".bin", little-endian throughout):
//   offset  size  field
//        0     8  magic "STRTOKS1"
//        8     4  u32 version = 1
//       12     4  u32 vocab_size (every token is < vocab_size)
//       16     8  u64 n_tokens
//       24     4  u32 bytes_per_token: 2 when vocab_size <= 65536, else 4
//       28     4  u32 reserved = 0
//       32     …  n_tokens tokens, bytes_per_token each, unsigned
// The file is exactly 32 + n_tokens × bytes_per_token bytes long.
//
// Corpus preparation turns text files into train.bin / val.bin: each file is one document, encoded
// exactly (newlines and blank lines kept, as the tokenizer's byte fallback allows) and followed by one
// eos token; the last val_fraction of the token stream becomes the validation shard.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "train/tokenizer.h"

namespace strata {

// Atomic (see fileio.h). Throws Error when a token is outside [0, vocab_size).
void write_token_shard(const std::string& path, std::span<const int32_t> tokens, int vocab_size);
void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int vocab_size);

// A read-only, memory-mapped token shard. Opening validates the header against the file length and
// checks every token against vocab_size once, so later reads need no checks.
class TokenShard {
public:
    static TokenShard open(const std::string& path);
    TokenShard(TokenShard&& other) noexcept;
    TokenShard& operator=(TokenShard&& other) noexcept;
    TokenShard(const TokenShard&) = delete;
    TokenShard& operator=(const TokenShard&) = delete;
    ~TokenShard();

    size_t size() const { return n_tokens_; }
    int vocab_size() const { return vocab_size_; }
    const std::string& path() const { return path_; }
    int32_t operator[](size_t i) const;
    // out[0..n) = tokens [begin, begin + n); throws Error when that runs past the end.
    void copy(size_t begin, size_t n, int32_t* out) const;

private:
    TokenShard() = default;
    std::string path_;
    void* map_ = nullptr;
    size_t map_bytes_ = 0;
    const unsigned char* tokens_ = nullptr;
    size_t n_tokens_ = 0;
    int vocab_size_ = 0;
    int bytes_per_token_ = 2;
};

// A file is its own corpus; a folder contributes every regular file below it (recursively, skipping
// names that start with '.'), sorted by path. Throws Error naming `path` when nothing is found.
std::vector<std::string> list_corpus_files(const std::string& path);

struct PreparedData {
    std::string train_path, val_path;
    size_t n_train = 0, n_val = 0;
    bool reused = false;  // true when out_dir already held shards made from the same inputs
};

// Tokenizes `files` into out_dir/train.bin and out_dir/val.bin and records what they were made from
// in out_dir/meta.json (size, mtime and content hash of each input, hash of the tokenizer, the split).
// When that record matches, the existing shards are reused and nothing is tokenized. Throws Error
// naming the file for unreadable or invalid UTF-8 input, and naming the inputs when they hold no
// tokens at all. Output does not depend on the number of threads.
PreparedData prepare_data(const std::vector<std::string>& files, const Tokenizer& tok, const std::string& out_dir,
                          double val_fraction = 0.05);

// The tokenizer hash prepare_data records in meta.json ("tokenizer_hash", 16 hex digits).
std::string prepared_tokenizer_hash(const Tokenizer& tok);

// Throws Error unless data_dir/meta.json records that the shard `shard` (data_dir/val.bin or
// data_dir/train.bin) was made with `tok` and still holds the tokens recorded: a data dir that another
// run re-prepared with its own tokenizer would otherwise be scored as if it were this one's.
// `ckpt` names the checkpoint `tok` came from, for the message, and `other_way` (e.g. ", or pass
// --text FILE ...") is appended to its advice; a missing or unreadable meta.json is refused the same
// way (nothing then says what made the shard).
void check_prepared_with(const std::string& data_dir, const TokenShard& shard, const Tokenizer& tok,
                         const std::string& ckpt, const std::string& other_way = "");

// The content hash prepare_data records for each input in meta.json (16 hex digits; fast and
// non-cryptographic: it tells whether an input changed, nothing more).
std::string content_hash(std::string_view bytes);

// Random training windows. Batch k, row b starts at hash(seed, k·B + b) mod (n − T), so batches are
// reproducible and the whole sampler state is the batch counter k (save it with position(), restore
// it with set_position()). x holds B×T inputs, y the next-token targets, both row-major.
class BatchSampler {
public:
    // Throws Error("corpus <path> has N tokens, fewer than one sequence of T+1") on a short shard.
    // The shard must outlive the sampler.
    BatchSampler(const TokenShard& shard, int B, int T, uint64_t seed);
    void next(int32_t* x, int32_t* y);
    uint64_t position() const { return k_; }
    void set_position(uint64_t k) { k_ = k; }
    uint64_t offset(uint64_t k, int b) const;  // the start of row b of batch k

private:
    const TokenShard* shard_;
    int B_, T_;
    uint64_t key_;
    uint64_t k_ = 0;
};

// Random training windows from several shards, mixed by weight. Row b of batch k takes its source
// from a second hash of (seed, k·B + b), a uniform number in [0, 1) compared with the cumulative
// normalised weights, and its window within that source's shard exactly as BatchSampler places it
// (the same row hash, modulo that shard's n − T). With one shard no source is drawn and the batches
// are BatchSampler's, bit for bit. The whole state is still the batch counter k.
class MixtureSampler {
public:
    // Throws Error for no shards, a weight count that differs from the shard count, a weight that is
    // not positive and finite, and (as BatchSampler) a shard shorter than T+1 tokens. The shards must
    // outlive the sampler.
    MixtureSampler(std::vector<const TokenShard*> shards, const std::vector<double>& weights, int B, int T,
                   uint64_t seed);
    void next(int32_t* x, int32_t* y);
    uint64_t position() const { return k_; }
    void set_position(uint64_t k) { k_ = k; }
    size_t num_sources() const { return shards_.size(); }
    size_t source(uint64_t k, int b) const;    // the shard row b of batch k is drawn from
    uint64_t offset(uint64_t k, int b) const;  // its start within that shard

private:
    std::vector<const TokenShard*> shards_;
    std::vector<double> cumulative_;  // cumulative normalised weights; the last is exactly 1
    int B_, T_;
    uint64_t key_, source_key_;
    uint64_t k_ = 0;
};

// Walks a shard in order in non-overlapping windows of T inputs (window i covers tokens
// [i·T, i·T + T], its last token being the final target), B windows per batch, for evaluation.
class EvalBatches {
public:
    // Throws the same short-corpus Error as BatchSampler. The shard must outlive this object.
    EvalBatches(const TokenShard& shard, int B, int T);
    size_t num_windows() const { return n_windows_; }
    size_t num_batches() const { return (n_windows_ + B_ - 1) / B_; }
    // Fills the next batch and returns how many rows hold data (0 once all windows were seen). Rows past
    // that count get x = 0 and y = -1, a target the loss ignores, so a partial batch needs no special case.
    int next(int32_t* x, int32_t* y);
    void reset() { next_window_ = 0; }

private:
    const TokenShard* shard_;
    int B_, T_;
    size_t n_windows_;
    size_t next_window_ = 0;
};

}  // namespace strata
