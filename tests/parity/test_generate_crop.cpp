// Generation past the context: when prompt + generated tokens fill max_seq_len, generate() prefills
// the last max_seq_len/2 tokens into an emptied cache and goes on. Every greedy token, before and
// after each crop, must be the argmax of a full forward over the window since the last crop.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/rng.h"
#include "infer/generate.h"
#include "model/model.h"
#include "../test_util.h"

using namespace strata;

namespace {
ModelConfig tiny(int max_seq_len, Residual res, AttentionKind att) {
    ModelConfig c = strata::testing::tiny_model(61, max_seq_len);
    c.residual = res;
    c.attention = att;
    c.attnres_block_size = 3;
    c.init_std = 0.3;  // peaked logits, so the greedy choice is never a near-tie
    c.seed = 7;
    return c;
}

// The reference: one full forward per token over the tokens since the last crop; the window is cut
// to its last max(1, T/2) tokens whenever it would exceed max_seq_len T.
std::vector<int32_t> greedy_by_full_forwards(Model<float>& m, const std::vector<int32_t>& prompt, long steps,
                                             long* crops) {
    const long T = m.cfg.max_seq_len, keep = std::max(1L, T / 2);
    const int V = m.cfg.vocab_size;
    std::vector<int32_t> seq = prompt, out;
    std::vector<float> row(static_cast<size_t>(V));
    size_t start = 0;
    *crops = 0;
    for (long s = 0; s < steps; s++) {
        const long n = long(seq.size() - start);
        m.forward(seq.data() + start, nullptr, 1, n);
        m.logits_to_host(row.data(), n - 1, 1);
        int32_t arg = int32_t(std::max_element(row.begin(), row.end()) - row.begin());
        out.push_back(arg);
        seq.push_back(arg);
        if (long(seq.size() - start) > T) {
            start = seq.size() - size_t(keep);
            ++*crops;
        }
    }
    return out;
}
}  // namespace

class GenerateCrop : public ::testing::TestWithParam<std::tuple<int, long, Residual, AttentionKind>> {};

TEST_P(GenerateCrop, GreedyAfterEachCropMatchesFullForwardOnTheWindow) {
    auto [max_T, prompt_len, res, att] = GetParam();
    Model<float> m(tiny(max_T, res, att));
    Rng rng(3);
    for (const auto& s : m.specs)  // AttnRes queries start at 0; give them values so the mix matters
        if (s.name.ends_with("_res_query")) {
            std::vector<float> q(s.numel);
            for (float& x : q) x = float(0.5 * rng.normal());
            m.param_from_host(s, q.data());
        }
    std::vector<int32_t> prompt;
    for (long i = 0; i < prompt_len; i++) prompt.push_back(int32_t((i * 17 + 3) % m.cfg.vocab_size));
    const long steps = 3 * max_T + 5;  // several crops
    SampleOptions o;
    o.temperature = 0;
    o.max_tokens = steps;
    GenerateStats st;
    std::vector<int32_t> gen = generate(m, prompt, o, {}, &st);
    ASSERT_EQ(long(gen.size()), steps);
    long ref_crops = 0;
    std::vector<int32_t> ref = greedy_by_full_forwards(m, prompt, steps, &ref_crops);
    for (long s = 0; s < steps; s++) ASSERT_EQ(gen[s], ref[s]) << "greedy token differs at step " << s;
    EXPECT_GE(st.crops, 3);
    EXPECT_EQ(st.crops, ref_crops);
    EXPECT_EQ(st.prefill_tokens, prompt_len);
}

INSTANTIATE_TEST_SUITE_P(
    Windows, GenerateCrop,
    ::testing::Values(std::make_tuple(16, 3L, Residual::standard, AttentionKind::causal),
                      std::make_tuple(15, 15L, Residual::standard, AttentionKind::causal),  // odd; prompt fills it
                      std::make_tuple(2, 1L, Residual::standard, AttentionKind::causal),    // keeps one token
                      std::make_tuple(16, 5L, Residual::attnres_block, AttentionKind::causal),
                      std::make_tuple(16, 4L, Residual::standard, AttentionKind::moda)));

TEST(GenerateCrop, MaxSeqLen64Generates150Tokens) {
    Model<float> m(tiny(64, Residual::standard, AttentionKind::causal));
    SampleOptions o;
    o.temperature = 1.0;
    o.max_tokens = 150;
    GenerateStats st;
    std::vector<int32_t> gen = generate(m, {1, 2, 3}, o, {}, &st);
    EXPECT_EQ(gen.size(), 150u);
    // 3 + 150 tokens: full at 64, then every 32 more (96, 128)
    EXPECT_EQ(st.crops, 3);
    for (int32_t t : gen) EXPECT_TRUE(t >= 0 && t < m.cfg.vocab_size);
}

TEST(GenerateCrop, CallbackReturningFalseEndsGeneration) {
    Model<float> m(tiny(16, Residual::standard, AttentionKind::causal));
    SampleOptions o;
    o.temperature = 0;
    o.max_tokens = 40;
    long seen = 0;
    std::vector<int32_t> gen = generate(m, {4, 5}, o, [&](int32_t) { return ++seen < 7; });
    EXPECT_EQ(gen.size(), 7u);
    EXPECT_EQ(seen, 7);
}
