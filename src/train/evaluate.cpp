#include "train/evaluate.h"

#include <string>
#include <vector>

#include "core/error.h"

namespace strata {

void check_shard_vocab(const TokenShard& shard, const Model<float>& model) {
    if (shard.vocab_size() > model.cfg.vocab_size)
        throw Error("token shard " + shard.path() + " was made with a " + std::to_string(shard.vocab_size()) +
                    "-token vocabulary, larger than the model's " + std::to_string(model.cfg.vocab_size) +
                    " (another tokenizer?)");
}

EvalResult eval_loop(Model<float>& model, const TokenShard& shard, int B, int T, long max_batches,
                     const std::atomic<int>* stop, const std::function<void()>& after_batch) {
    EvalBatches it(shard, B, T);
    std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
    double sum = 0;
    long count = 0, batches = 0;
    EvalResult r;
    while (max_batches <= 0 || batches < max_batches) {
        if (stop && stop->load() > 0) {
            r.complete = false;
            break;
        }
        if (it.next(x.data(), y.data()) == 0) break;
        double loss = model.forward(x.data(), y.data(), B, T);
        if (after_batch) after_batch();
        sum += loss * double(model.last_count());
        count += model.last_count();
        batches++;
    }
    r.loss = count > 0 ? sum / double(count) : 0.0;
    r.tokens = count;
    return r;
}

double evaluate(Model<float>& model, const TokenShard& shard, int B, int T, long max_batches,
                const std::function<void()>& after_batch) {
    check_memory(model.cfg.memory_bytes(B, T, false, model.precision()),
                 "evaluation with batch " + std::to_string(B) + " x " + std::to_string(T),
                 "the model and its activations");
    check_shard_vocab(shard, model);
    return eval_loop(model, shard, B, T, max_batches, nullptr, after_batch).loss;
}

}  // namespace strata
