// Sampling and generation with a KV cache.
#pragma once
#include <cstdint>
#include <functional>
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

// Runs the prompt through the model once (prefill), then one token at a time from the KV cache.
// on_token is called with each new token as soon as it is chosen. Returns the new tokens. The prompt
// plus max_tokens must fit in the model's max_seq_len (an Error otherwise); the prompt must not be
// empty.
std::vector<int32_t> generate(Model<float>& model, const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace strata
