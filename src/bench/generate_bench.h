// `strata bench generate` as a library: single-stream greedy decoding at batch 1 with the KV cache,
// timed per precision. One repetition is the prefill of a fixed prompt followed by N decode steps;
// the configurations' repetitions are interleaved after one warm-up each, and each configuration
// reports the median prefill time and decode tokens/s with a percentile-bootstrap 95 % interval of
// the median (and, for each precision besides fp32, the median of its paired per-repetition decode
// ratios to fp32). The report is Markdown and JSON, the same content.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/machine.h"
#include "core/error.h"
#include "core/precision.h"
#include "bench/stats.h"
#include "model/config.h"

namespace strata::bench {

struct GenerateBenchOptions {
    int threads = 2;
    long prompt_tokens = 64;
    long new_tokens = 128;
    int reps = 10;
    std::string precision = "fp32,bf16";  // the --precision list, as given
    std::string ckpt;                     // a checkpoint file or run directory; empty: the bench model
    // The bench model's residual rule, block size and attention kind (bench train's options; not with
    // --ckpt): its init weights, so that two rules are timed on models of the same sizes.
    std::string residual = "standard";
    int attnres_block_size = 4;
    std::string attention = "causal";
    std::string json_out, markdown_out;   // report files (the CLI opens and writes them)
};

inline constexpr int kGenerateWarmup = 1;              // untimed repetitions per configuration
inline constexpr uint64_t kPromptSeed = 4099;          // the prompt's token ids
inline constexpr int kFirstIdsShown = 8;               // generated ids listed in the report

// "fp32,bf16" → the precisions in order. Throws Error naming --precision for an empty entry, an
// unknown name (listing the allowed ones) or a name given twice.
std::vector<Precision> parse_precision_list(const std::string& list);

// The prompt: n token ids in [0, V) from kPromptSeed.
std::vector<int32_t> bench_prompt(long n, int V);

// Thrown when prompt + new tokens do not fit in the model's context (a usage error of the flags).
struct LengthError : Error {
    using Error::Error;
};
// Throws LengthError unless 1 ≤ prompt_tokens and prompt_tokens + new_tokens ≤ cfg.max_seq_len.
void check_lengths(const ModelConfig& cfg, long prompt_tokens, long new_tokens);

// One configuration (a precision) and what its repetitions gave.
struct GenerateConfigResult {
    Precision precision = Precision::fp32;
    bool measured = false;  // false: it threw; `error` holds the message
    std::string error;
    std::vector<double> prefill_s, decode_s;  // per timed repetition
    std::vector<double> decode_tokens_per_s;  // new tokens ÷ decode_s, per repetition
    MedianCI prefill_ms, decode_tps;
    std::vector<int32_t> ids;   // the greedy ids of the warm-up repetition
    bool deterministic = true;  // every repetition chose the same ids as the warm-up
    bool matches_generate = false;  // strata's generate() at temperature 0 chooses the same ids
    // Against fp32's ids (when both were measured): -1 when equal, else the first index that differs.
    long first_diff_vs_fp32 = -1;
    // For a precision besides fp32 with both measured: this ÷ fp32 decode tokens/s, paired by repetition.
    std::vector<double> ratio_vs_fp32;
    MedianCI ratio_vs_fp32_ci;
};

struct GenerateBenchResult {
    GenerateBenchOptions options;
    MachineFacts machine;
    ModelConfig model;
    size_t params = 0;
    std::vector<int32_t> prompt;
    std::vector<GenerateConfigResult> configs;
    CpuUse cpu;  // from the first warm-up to the last repetition
    const GenerateConfigResult* find(Precision p) const;
    bool deterministic() const;  // over the measured configurations
};

// Sets the thread counts, builds one model per precision (the bench model from its fixed seed, or the
// checkpoint of o.ckpt) and calls set_precision on it at once; a configuration whose set-up or decode
// throws Error is recorded as failed and the others go on. Throws Error (LengthError for the lengths)
// before any measurement for bad options. Progress goes to stderr.
GenerateBenchResult run_generate_bench(const GenerateBenchOptions& o);

std::string generate_markdown(const GenerateBenchResult& r);
nlohmann::json generate_json(const GenerateBenchResult& r);

}  // namespace strata::bench
