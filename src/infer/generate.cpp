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

Generator::Generator(Model<float>& model, std::vector<int32_t> prompt, const SampleOptions& o)
    : model_(model), o_(o), rng_(o.seed), ctx_(std::move(prompt)), precision_(model.precision()) {
    if (ctx_.empty()) throw Error("generate: the prompt must hold at least one token");
    if (o.max_tokens < 0) throw Error("generate: max_tokens must not be negative");
    if (!(o.temperature >= 0)) throw Error("generate: temperature must not be negative");
    if (!(o.top_p > 0 && o.top_p <= 1)) throw Error("generate: top_p must be in (0, 1]");
    if (o.top_k < 0) throw Error("generate: top_k must not be negative");
    const long max_T = model.cfg.max_seq_len;
    if (long(ctx_.size()) > max_T)
        throw Error("the prompt is " + std::to_string(ctx_.size()) + " tokens, longer than the model's max_seq_len " +
                    std::to_string(max_T));
    const int V = model.cfg.vocab_size;
    for (int32_t t : ctx_)
        if (t < 0 || t >= V)
            throw Error("generate: prompt token " + std::to_string(t) + " is outside the vocabulary [0, " +
                        std::to_string(V) + ")");
    logits_.resize(static_cast<size_t>(V));
    done_ = o.max_tokens == 0;
}

std::optional<int32_t> Generator::next() {
    if (done_) return std::nullopt;
    if (model_.precision() != precision_)
        throw Error("generate: the model's precision changed during the generation (its KV cache is in the old one)");
    if (produced_ == 0) {  // prefill
        model_.init_cache(cache_, 1, std::min(long(model_.cfg.max_seq_len), long(ctx_.size()) + o_.max_tokens));
        model_.forward_cached(ctx_.data(), 1, long(ctx_.size()), cache_);
        st_.prefill_tokens = long(ctx_.size());
        model_.logits_to_host(logits_.data(), long(ctx_.size()) - 1, 1);
    } else if (cache_.len < cache_.max_T) {  // the previous token's forward
        model_.forward_cached(&ctx_.back(), 1, 1, cache_);
        model_.logits_to_host(logits_.data(), 0, 1);
    } else {  // the context is full: start a fresh cache on its last `keep` tokens
        const long keep = std::max(1L, long(model_.cfg.max_seq_len) / 2);
        cache_.len = 0;
        model_.forward_cached(ctx_.data() + (ctx_.size() - size_t(keep)), 1, keep, cache_);
        model_.logits_to_host(logits_.data(), keep - 1, 1);
        st_.crops++;
    }
    const int32_t tok = sample_token(logits_.data(), int(logits_.size()), o_, rng_, scratch_);
    ctx_.push_back(tok);
    produced_++;
    done_ = tok == o_.stop_token || produced_ == o_.max_tokens;
    return tok;
}

std::vector<int32_t> generate(Model<float>& model, const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<bool(int32_t)>& on_token, GenerateStats* stats) {
    Generator g(model, prompt, o);
    std::vector<int32_t> out;
    while (std::optional<int32_t> t = g.next()) {
        out.push_back(*t);
        if (on_token && !on_token(*t)) break;
    }
    if (stats) *stats = g.stats();
    return out;
}

}  // namespace strata
