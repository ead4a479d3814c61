#include "infer/generate.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace strata {

int32_t sample_token(const float* logits, int V, const SampleOptions& o, Rng& rng,
                     std::vector<std::pair<float, int32_t>>& c) {
    if (o.temperature <= 0) return int32_t(std::max_element(logits, logits + V) - logits);
    c.resize(V);
    for (int i = 0; i < V; i++) c[i] = {logits[i], i};
    // Sort by logit, descending; ties broken by id so the order is total and reproducible.
    auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
    size_t n = size_t(V);
    if (o.top_k > 0 && o.top_k < V) {
        n = size_t(o.top_k);
        std::partial_sort(c.begin(), c.begin() + n, c.end(), by_logit);
    } else {
        std::sort(c.begin(), c.end(), by_logit);
    }
    // softmax with temperature over the kept candidates
    const double mx = c[0].first;
    double z = 0;
    for (size_t i = 0; i < n; i++) z += std::exp((double(c[i].first) - mx) / o.temperature);
    if (o.top_p < 1.0) {  // keep the smallest prefix whose mass reaches top_p
        double acc = 0;
        size_t keep = n;
        for (size_t i = 0; i < n; i++) {
            acc += std::exp((double(c[i].first) - mx) / o.temperature) / z;
            if (acc >= o.top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        z = 0;
        for (size_t i = 0; i < n; i++) z += std::exp((double(c[i].first) - mx) / o.temperature);
    }
    double r = rng.uniform() * z, acc = 0;
    for (size_t i = 0; i < n; i++) {
        acc += std::exp((double(c[i].first) - mx) / o.temperature);
        if (r < acc) return c[i].second;
    }
    return c[n - 1].second;
}

std::vector<int32_t> generate(Model<float>& model, const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<bool(int32_t)>& on_token, GenerateStats* stats) {
    if (prompt.empty()) throw Error("generate: the prompt must hold at least one token");
    if (o.max_tokens < 0) throw Error("generate: max_tokens must not be negative");
    if (!(o.temperature >= 0)) throw Error("generate: temperature must not be negative");
    if (!(o.top_p > 0 && o.top_p <= 1)) throw Error("generate: top_p must be in (0, 1]");
    if (o.top_k < 0) throw Error("generate: top_k must not be negative");
    const long max_T = model.cfg.max_seq_len;
    if (long(prompt.size()) > max_T)
        throw Error("the prompt is " + std::to_string(prompt.size()) + " tokens, longer than the model's max_seq_len " +
                    std::to_string(max_T));
    const long keep = std::max(1L, max_T / 2);  // the window prefilled again when the context is full
    const int V = model.cfg.vocab_size;
    GenerateStats st;
    KVCache<float> cache;
    model.init_cache(cache, 1, std::min(max_T, long(prompt.size()) + o.max_tokens));
    Rng rng(o.seed);
    std::vector<std::pair<float, int32_t>> scratch;
    std::vector<int32_t> out, ctx = prompt;  // ctx: every token so far, the prompt's included
    model.forward_cached(prompt.data(), 1, long(prompt.size()), cache);
    st.prefill_tokens = long(prompt.size());
    std::vector<float> logits(static_cast<size_t>(V));  // the last position's logits, on the host
    model.logits_to_host(logits.data(), long(prompt.size()) - 1, 1);
    for (long i = 0; i < o.max_tokens; i++) {
        int32_t tok = sample_token(logits.data(), V, o, rng, scratch);
        out.push_back(tok);
        ctx.push_back(tok);
        if (on_token && !on_token(tok)) break;
        if (tok == o.stop_token || i + 1 == o.max_tokens) break;
        if (cache.len < cache.max_T) {
            model.forward_cached(&tok, 1, 1, cache);
            model.logits_to_host(logits.data(), 0, 1);
        } else {  // the context is full: start a fresh cache on its last `keep` tokens
            cache.len = 0;
            model.forward_cached(ctx.data() + (ctx.size() - size_t(keep)), 1, keep, cache);
            model.logits_to_host(logits.data(), keep - 1, 1);
            st.crops++;
        }
    }
    if (stats) *stats = st;
    return out;
}

}  // namespace strata
