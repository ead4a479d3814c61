// Sampling and generation with a KV cache.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "core/rng.h"
#include "model/model.h"

namespace strata {

struct SampleOptions {
    double temperature = 0.8;  // 0 = greedy
    int top_k = 0;             // 0 = no top-k filter
    double top_p = 1.0;        // 1 = no nucleus filter
    long max_tokens = 200;
    uint64_t seed = 1337;
    int stop_token = -1;       // generation ends after emitting it (-1: never)
};

// Draws one token from logits (V) under the options; greedy when temperature is 0. `scratch` is
// reused between calls.
int32_t sample_token(const float* logits, int V, const SampleOptions& o, Rng& rng,
                     std::vector<std::pair<float, int32_t>>& scratch);

// What generate() did besides sampling: the prompt's prefill and the re-prefills after a full context.
struct GenerateStats {
    long prefill_tokens = 0;  // tokens of the first prefill (the prompt)
    long crops = 0;           // times the context was full and its last half was prefilled again
};

// One generation, a token at a time: the prompt runs through the model once (prefill) on the first
// next(), then one token per call from the KV cache. The prompt must hold 1 … max_seq_len tokens
// (an Error otherwise). When the context (prompt + generated tokens) fills max_seq_len, the cache
// is emptied and the last max(1, max_seq_len / 2) tokens are prefilled again, from position 0, and
// generation goes on: each token is then sampled from a full forward over the window since the
// last crop. A token's own forward runs only when the next one is asked for, so stopping early
// costs nothing. The model must outlive the Generator and not be used by anything else meanwhile.
class Generator {
public:
    Generator(Model<float>& model, std::vector<int32_t> prompt, const SampleOptions& o);
    // The next token; nullopt once max_tokens were generated or after the stop token.
    std::optional<int32_t> next();
    const GenerateStats& stats() const { return st_; }

private:
    Model<float>& model_;
    SampleOptions o_;
    KVCache<float> cache_;
    Rng rng_;
    std::vector<std::pair<float, int32_t>> scratch_;
    std::vector<int32_t> ctx_;    // every token so far, the prompt's included
    std::vector<float> logits_;   // the last position's logits, on the host
    long produced_ = 0;           // tokens handed out
    bool done_ = false;
    Precision precision_;         // the model's at the start: the cache is stored in its type
    GenerateStats st_;
};

// A whole generation (Generator's loop). on_token is called with each new token as soon as it is
// chosen; returning false ends the generation there. Returns the new tokens.
std::vector<int32_t> generate(Model<float>& model, const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<bool(int32_t)>& on_token = {}, GenerateStats* stats = nullptr);

}  // namespace strata
