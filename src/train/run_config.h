// A run's configuration: the model section (ModelConfig) and the train section below, read from
// one JSON file plus command-line overrides (`--set train.steps=100`).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"

namespace strata {

constexpr int kMaxThreads = 4096;  // train.threads and every --threads flag
constexpr size_t kMaxCorpusSources = 256;  // entries in a train.corpus list

// One entry of a train.corpus list: a file or folder and its share of the training batches.
struct CorpusSource {
    std::string path;
    double weight = 1.0;  // as given (positive, finite); the sampler uses weight / sum of weights
};

struct TrainConfig {
    std::string corpus = "data/corpus/default.txt";  // a text file or a folder of them ("" for a list)
    // train.corpus given as a list of {"path", "weight"} (a mixture); empty when it is one string.
    std::vector<CorpusSource> corpora = {};
    std::string data_dir = "data/prepared/default";  // tokenizer + token shards, made once
    std::string out_dir = "runs/default";           // checkpoint, config, metrics
    int batch_size = 16;
    int seq_len = 128;  // ≤ model.max_seq_len
    int grad_accum = 1;
    long steps = 400;
    double lr = 3e-3, min_lr = 3e-4;
    long warmup = 40;
    long lr_decay_steps = 0;  // the cosine reaches min_lr here; 0 means `steps`
    double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
    double grad_clip = 1.0;  // 0 disables clipping
    uint64_t seed = 1337;
    int threads = 2;
    long eval_every = 100, eval_batches = 20, ckpt_every = 100, log_every = 10;
    double val_fraction = 0.05;
    // Weight decay applies to the 2-D weights (docs/model.md); these name patterns exempt more.
    std::vector<std::string> no_decay = {};
    bool resume = true;                             // continue from out_dir's checkpoint if present
    bool overwrite = false;      // with resume=false: delete out_dir's checkpoints, metrics and history first
    bool allow_changes = false;  // on resume: accept a new batch_size, seq_len, seed or corpus
    std::string on_nonfinite = "stop";              // "stop" or "skip" the step
    std::string on_divergence = "warn";             // "warn" or "stop" (exit code 3) when the loss diverges
    std::string device = "cpu";                     // the backend (backend/backend.h): "cpu"
    std::string precision = "fp32";  // "fp32" or "bf16" (mixed precision, docs/precision.md)
    double peak_gflops = 0;   // the machine's peak for MFU; 0 measures a short sgemm at start
    long sample_every = 0;    // generate a short sample every N steps (0: never)
    long keep_every = 0;      // also keep checkpoint-STEP.safetensors every N steps (0: never)
    bool keep_best = false;   // also keep checkpoint-best.safetensors, by validation loss
    std::string init_from;    // start from this checkpoint's weights (and its tokenizer)
    bool init_optimizer = false;  // with init_from: also take its AdamW moments

    void validate(const std::string& origin) const;
    // Resolves corpus, data_dir, out_dir and init_from against `base` where they are relative.
    void make_paths_absolute(const std::string& base);
    // Every source: the list form's entries, or {corpus, 1} for a single string.
    std::vector<CorpusSource> sources() const {
        return corpora.empty() ? std::vector<CorpusSource>{{corpus, 1.0}} : corpora;
    }
};

struct RunConfig {
    ModelConfig model;
    TrainConfig train;

    static RunConfig from_json(const nlohmann::json& j, const std::string& origin);
    nlohmann::json to_json() const;
};

// Applies "a.b=value" overrides to a JSON object. The value is parsed as JSON when it is valid
// JSON (numbers, true/false, arrays) and taken as a string otherwise.
void apply_overrides(nlohmann::json& j, const std::vector<std::string>& overrides);

// configs/default.json as built into the binary, less its train.corpus, train.data_dir and
// train.out_dir keys (so the built-in working-directory defaults apply): the base of a run without
// a config file.
nlohmann::json default_config_json();

// Reads the config file (or starts from default_config_json() when path is empty), applies the overrides and
// validates everything; errors name the file or "--set". The file must be a regular file of at most
// kMaxConfigBytes.
constexpr uint64_t kMaxConfigBytes = 1 << 20;
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides);
// The same from a config already in memory (the Python package's dict): its relative paths, like
// --set values, mean paths under the working directory. `origin` names it in errors.
RunConfig run_config_of(nlohmann::json j, std::string origin, const std::vector<std::string>& overrides);

}  // namespace strata
