// Generation with the KV cache must agree with full forwards: identical greedy token ids over 64
// steps and logits within 1e-5, for every norm placement and GQA group size, and for AttnRes (Full
// and Block), whose depth mixing is per token and so needs no cache of its own, and MoDA, whose depth
// keys/values are per token too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "infer/generate.h"
#include "core/rng.h"
#include "model/model.h"
#include "../test_util.h"

using namespace strata;

namespace {
ModelConfig tiny(NormPlacement np, int kv_heads, bool qk_norm, Residual res = Residual::standard,
                 AttentionKind att = AttentionKind::causal) {
    ModelConfig c = strata::testing::tiny_model(61, 96);
    c.n_kv_heads = kv_heads;
    c.norm_placement = np;
    c.qk_norm = qk_norm;
    c.residual = res;
    c.attention = att;
    c.attnres_block_size = 3;
    c.init_std = 0.3;  // peaked logits, so the greedy choice is never a near-tie
    c.seed = 5;
    return c;
}

double max_rel(const float* a, const float* b, long n) {
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) num += double(a[i] - b[i]) * (a[i] - b[i]), den += double(b[i]) * b[i];
    return std::sqrt(num / std::max(den, 1e-30));
}
}  // namespace

class KVCache_ : public ::testing::TestWithParam<std::tuple<NormPlacement, int, bool, Residual, AttentionKind>> {};

namespace {
void check_greedy_matches_full_forward(Model<float>& m);
}

TEST_P(KVCache_, GreedyMatchesFullForward) {
    auto [np, kv, qk, res, att] = GetParam();
    Model<float> m(tiny(np, kv, qk, res, att));
    check_greedy_matches_full_forward(m);
}

// The AttnRes ablations: the parameter-free key norm, the sigmoid gate and the input-dependent query
// (the last two one-phase under Block).
TEST(KVCache, AttnResAblationsMatchFullForward) {
    using Q = AttnResQuery;
    for (auto [res, kn, gate, q] :
         {std::tuple{Residual::attnres_block, AttnResKeyNorm::none, AttnResGate::softmax, Q::fixed},
          std::tuple{Residual::attnres_block, AttnResKeyNorm::learned, AttnResGate::sigmoid, Q::fixed},
          std::tuple{Residual::attnres_full, AttnResKeyNorm::none, AttnResGate::sigmoid, Q::fixed},
          std::tuple{Residual::attnres_block, AttnResKeyNorm::learned, AttnResGate::softmax, Q::input}}) {
        ModelConfig c = tiny(NormPlacement::pre, 2, false, res);
        c.attnres_key_norm = kn;
        c.attnres_gate = gate;
        c.attnres_query = q;
        SCOPED_TRACE(std::string(to_string(res)) + " " + to_string(kn) + " " + to_string(gate) + " " + to_string(q));
        Model<float> m(c);
        Rng rng(3);  // the input-dependent query's W starts at 0: give it small values (q sums D of them, and the
                     // peaked logits of init_std 0.3 turn its GEMM's rounding into 1e-5-level logit error)
        for (const auto& s : m.specs)
            if (s.name.ends_with("_res_wq")) {
                std::vector<float> w(s.numel);
                for (float& x : w) x = float(0.03 * rng.normal());
                m.param_from_host(s, w.data());
            }
        check_greedy_matches_full_forward(m);
    }
}

// MoDA's modes: chunk visibility (chunks of 3 tokens, so the prompt spans several and decoding crosses
// their boundaries; the cache keeps the chunk's earlier depth slots), the depth window, the depth-only
// mask (FDA) and the attention-K/V-only source.
TEST(KVCache, MoDAModesMatchFullForward) {
    struct Mode {
        DepthVisibility vis;
        int chunk, window;
        SeqMask mask;
        ModaDepthSource src;
        NormPlacement np;
    };
    for (const Mode& md : {Mode{DepthVisibility::chunk, 3, 0, SeqMask::causal, ModaDepthSource::attn_ffn_kv, NormPlacement::pre},
                           Mode{DepthVisibility::chunk, 5, 3, SeqMask::causal, ModaDepthSource::attn_kv, NormPlacement::post},
                           Mode{DepthVisibility::own, 0, 2, SeqMask::causal, ModaDepthSource::attn_ffn_kv, NormPlacement::pre},
                           Mode{DepthVisibility::chunk, 4, 0, SeqMask::none, ModaDepthSource::attn_ffn_kv, NormPlacement::pre}}) {
        ModelConfig c = tiny(md.np, 2, true, Residual::standard, AttentionKind::moda);
        c.n_layers = 4;  // 6 slots with FFN K/V, 3 without
        c.moda_depth_visibility = md.vis;
        c.moda_chunk_size = md.chunk;
        c.moda_depth_window = md.window;
        c.moda_sequence_mask = md.mask;
        c.moda_depth_source = md.src;
        c.validate("test");
        SCOPED_TRACE(std::string(to_string(md.vis)) + " C=" + std::to_string(md.chunk) + " W=" +
                     std::to_string(md.window) + " " + to_string(md.mask) + " " + to_string(md.src));
        Model<float> m(c);
        check_greedy_matches_full_forward(m);
    }
}

namespace {
void check_greedy_matches_full_forward(Model<float>& m) {
    // AttnRes queries and ReZero gates start at 0 and DenseFormer weights at the identity; give them
    // values so that what they do matters
    Rng rng(11);
    for (const auto& s : m.specs)
        if (s.name.ends_with("_res_query") || s.name.ends_with("_alpha") || s.name.ends_with(".dwa")) {
            std::vector<float> q(s.numel);
            for (float& x : q) x = float(0.5 * rng.normal()) + (s.name.ends_with("_alpha") ? 0.5f : 0.0f);
            if (s.name.ends_with(".dwa")) q.back() += 1.0f;
            m.param_from_host(s, q.data());
        }
    const int V = m.cfg.vocab_size;
    std::vector<int32_t> prompt = {3, 14, 15, 9, 26, 53, 5, 8};
    const long steps = 64;

    SampleOptions o;
    o.temperature = 0;
    o.max_tokens = steps;
    std::vector<int32_t> gen = generate(m, prompt, o);
    ASSERT_EQ(long(gen.size()), steps);

    // The same sequence, one full forward per step, and the cached path's logits step by step.
    KVCache<float> cache;
    m.init_cache(cache, 1, long(prompt.size()) + steps);
    std::vector<int32_t> seq = prompt;
    m.forward_cached(prompt.data(), 1, long(prompt.size()), cache);
    std::vector<float> cached(static_cast<size_t>(V)), full_row(static_cast<size_t>(V));
    m.logits_to_host(cached.data(), long(prompt.size()) - 1, 1);
    for (long s = 0; s < steps; s++) {
        m.forward(seq.data(), nullptr, 1, long(seq.size()));
        m.logits_to_host(full_row.data(), long(seq.size()) - 1, 1);
        const float* full = full_row.data();
        EXPECT_LE(max_rel(cached.data(), full, V), 1e-5) << "step " << s;
        int32_t arg = int32_t(std::max_element(full, full + V) - full);
        ASSERT_EQ(arg, gen[s]) << "greedy token differs at step " << s;
        seq.push_back(arg);
        m.forward_cached(&arg, 1, 1, cache);
        m.logits_to_host(cached.data(), 0, 1);
    }
}
}  // namespace

INSTANTIATE_TEST_SUITE_P(Placements, KVCache_,
                         ::testing::Values(std::make_tuple(NormPlacement::pre, 4, false, Residual::standard, AttentionKind::causal),
                                           std::make_tuple(NormPlacement::pre, 2, true, Residual::standard, AttentionKind::causal),
                                           std::make_tuple(NormPlacement::post, 1, false, Residual::standard, AttentionKind::causal),
                                           std::make_tuple(NormPlacement::reordered, 2, false, Residual::standard, AttentionKind::causal),
                                           std::make_tuple(NormPlacement::pre, 2, false, Residual::attnres_full, AttentionKind::causal),
                                           std::make_tuple(NormPlacement::pre, 1, true, Residual::attnres_block, AttentionKind::causal),
                                           std::make_tuple(NormPlacement::pre, 2, true, Residual::standard, AttentionKind::moda),
                                           std::make_tuple(NormPlacement::post, 1, false, Residual::standard, AttentionKind::moda),
                                           std::make_tuple(NormPlacement::pre, 2, false, Residual::attnres_full, AttentionKind::moda),
                                           std::make_tuple(NormPlacement::pre, 2, false, Residual::rezero, AttentionKind::causal),
                                           std::make_tuple(NormPlacement::pre, 1, true, Residual::layernorm_scaling, AttentionKind::causal),
                                           std::make_tuple(NormPlacement::pre, 2, false, Residual::denseformer, AttentionKind::causal),
                                           std::make_tuple(NormPlacement::pre, 2, true, Residual::rezero, AttentionKind::moda),
                                           std::make_tuple(NormPlacement::pre, 1, false, Residual::denseformer, AttentionKind::moda)));

TEST(Generate, RejectsPromptLongerThanMaxSeqLen) {
    Model<float> m(tiny(NormPlacement::pre, 2, false));
    std::vector<int32_t> prompt(97, 1);
    SampleOptions o;
    o.max_tokens = 1;
    try {
        generate(m, prompt, o);
        FAIL() << "expected an error";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("max_seq_len"), std::string::npos) << e.what();
    }
}

TEST(Generate, SamplingIsSeededAndRespectsTopK) {
    Model<float> m(tiny(NormPlacement::pre, 2, false));
    std::vector<int32_t> prompt = {1, 2, 3};
    SampleOptions o;
    o.temperature = 1.0;
    o.top_k = 1;  // top-1 sampling is greedy
    o.max_tokens = 20;
    SampleOptions g = o;
    g.temperature = 0;
    EXPECT_EQ(generate(m, prompt, o), generate(m, prompt, g));
    o.top_k = 0;
    o.top_p = 0.9;
    EXPECT_EQ(generate(m, prompt, o), generate(m, prompt, o));  // same seed, same text
    SampleOptions o2 = o;
    o2.seed = o.seed + 1;
    EXPECT_NE(generate(m, prompt, o), generate(m, prompt, o2));
}

// A forward with targets fuses the LM head with the loss in row chunks and keeps no logits: its loss
// equals the float64 cross-entropy of the logits of a forward without targets (more rows than one
// chunk, ignored targets among them), and asking it for logits is an error.
TEST(FusedHead, LossIsTheCrossEntropyOfTheUnfusedLogits) {
    Model<float> m(tiny(NormPlacement::pre, 2, false));
    const long B = 2, T = 80, N = B * T, V = m.cfg.vocab_size;  // 160 rows: two full chunks and a short one
    static_assert(Model<float>::kHeadChunkRows < 80);
    std::vector<int32_t> tok(N), tgt(N);
    for (long i = 0; i < N; i++) tok[i] = int32_t((i * 7 + 3) % V), tgt[i] = i % 9 == 4 ? -1 : int32_t((i * 5 + 1) % V);
    m.forward(tok.data(), nullptr, B, T);
    std::vector<float> logits(size_t(N * V));
    m.logits_to_host(logits.data(), 0, N);
    double sum = 0;
    long counted = 0;
    for (long r = 0; r < N; r++) {
        if (tgt[r] < 0) continue;
        const float* z = logits.data() + r * V;
        double mx = z[0], s = 0;
        for (long v = 1; v < V; v++) mx = std::max(mx, double(z[v]));
        for (long v = 0; v < V; v++) s += std::exp(double(z[v]) - mx);
        sum += mx + std::log(s) - z[tgt[r]];
        counted++;
    }
    const double loss = m.forward(tok.data(), tgt.data(), B, T);
    EXPECT_NEAR(loss, sum / double(counted), 1e-5 * std::abs(loss));
    EXPECT_THROW(m.logits_to_host(logits.data(), 0, 1), Error);
}
