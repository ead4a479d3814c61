// ModelConfig::memory_bytes is what strata checks against the machine's memory before building a
// model (docs/limits.md). It must describe what a Model really allocates: the parameter and gradient
// buffers, the RoPE tables and the activation arena after a training step (the AdamW moments, which
// the optimizer allocates, are the remaining 2·P).
#include <gtest/gtest.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "model/model.h"
#include "../test_util.h"

using namespace strata;

TEST(MemoryEstimate, MatchesWhatTheModelAllocates) {
    struct Variant {
        NormPlacement np;
        Residual res;
        int block, layers;
        AttentionKind att = AttentionKind::causal;
        bool ffn_kv = true;
        AttnResQuery query = AttnResQuery::fixed;
    };
    const Variant variants[] = {{NormPlacement::pre, Residual::standard, 4, 2},
                                {NormPlacement::post, Residual::standard, 4, 3},
                                {NormPlacement::pre, Residual::attnres_full, 1, 3},
                                {NormPlacement::pre, Residual::attnres_block, 4, 3},
                                {NormPlacement::pre, Residual::attnres_block, 5, 2},
                                {NormPlacement::pre, Residual::standard, 4, 3, AttentionKind::moda},
                                {NormPlacement::post, Residual::standard, 4, 3, AttentionKind::moda, false},
                                {NormPlacement::pre, Residual::attnres_block, 2, 3, AttentionKind::moda},
                                {NormPlacement::pre, Residual::rezero, 4, 3},
                                {NormPlacement::pre, Residual::layernorm_scaling, 4, 2},
                                {NormPlacement::pre, Residual::denseformer, 4, 3},
                                {NormPlacement::pre, Residual::denseformer, 4, 3, AttentionKind::moda},
                                {NormPlacement::pre, Residual::attnres_block, 3, 3, AttentionKind::causal, true,
                                 AttnResQuery::input}};
    for (const auto& v : variants) {
        ModelConfig c = strata::testing::tiny_model(97, 40);
        c.n_layers = v.layers;
        c.norm_placement = v.np;
        c.residual = v.res;
        c.attnres_block_size = v.block;
        c.attention = v.att;
        c.moda_depth_source = v.ffn_kv ? ModaDepthSource::attn_ffn_kv : ModaDepthSource::attn_kv;
        c.attnres_query = v.query;
        c.qk_norm = v.att == AttentionKind::moda;
        SCOPED_TRACE(std::string(to_string(v.np)) + " " + to_string(v.res) + " S=" + std::to_string(v.block) + " " +
                     to_string(v.att) + (v.ffn_kv ? "" : " (no FFN K/V)"));
        Model<float> m(c);
        EXPECT_EQ(double(m.num_params()), c.num_params());
        for (bool training : {false, true}) {
            const long B = 2, T = 17;
            std::vector<int32_t> x(B * T, 3), y(B * T, 5);
            Model<float> fresh(c);  // a model that has seen only this shape: its arena is exactly this plan
            ASSERT_EQ(fresh.backend().live_bytes(), m.memory_bytes() + fresh.memory_bytes());  // no arena yet
            fresh.forward(x.data(), training ? y.data() : nullptr, B, T);
            if (training) fresh.backward();
            // The arena is the plan's total, and the plan ends where its last tensor ends (each aligned).
            // Two tensors share bytes only inside an overlay, from two of its groups (TensorPlan), which
            // may be an overlay inside another's group.
            const TensorPlan& plan = fresh.activation_plan();
            EXPECT_EQ(fresh.arena_bytes(), plan.bytes());
            auto size_of = [](const TensorPlan::Entry& e) {
                return (e.numel * dtype_size(e.dtype) + Backend::kAlign - 1) / Backend::kAlign * Backend::kAlign;
            };
            size_t end = 0;
            bool shared = false;
            for (const auto& e : plan.entries()) end = std::max(end, e.offset + size_of(e));
            EXPECT_EQ(end, plan.bytes());
            for (size_t i = 0; i < plan.entries().size(); i++)
                for (size_t j = i + 1; j < plan.entries().size(); j++) {
                    const auto &x = plan.entries()[i], &y = plan.entries()[j];
                    const bool overlap = x.offset < y.offset + size_of(y) && y.offset < x.offset + size_of(x);
                    if (!overlap || size_of(x) == 0 || size_of(y) == 0) continue;
                    shared = true;
                    bool apart = false;  // in some overlay they are both in, their groups differ
                    for (int u = 0; u < TensorPlan::kMaxNest; u++)
                        for (int v = 0; v < TensorPlan::kMaxNest; v++)
                            apart |= x.overlay[u] != 0 && x.overlay[u] == y.overlay[v] && x.group[u] != y.group[v];
                    EXPECT_TRUE(apart) << x.name << " (layer " << x.layer << ") overlaps " << y.name << " (layer "
                                       << y.layer << ")";
                }
            // Training overlays the backward's scratch on the forward-only buffers.
            EXPECT_EQ(shared, training);
            // memory_bytes() is every byte the model allocated: parameters, gradients, RoPE, arena.
            const double allocated = 4.0 * (2.0 * double(fresh.num_params()) + double(c.max_seq_len) * c.head_dim) +
                                     double(fresh.arena_bytes());
            EXPECT_EQ(double(fresh.memory_bytes()), allocated);
            // ... as the backend counted them (m is the only other model alive).
            EXPECT_EQ(fresh.backend().live_bytes() - m.memory_bytes(), fresh.memory_bytes());
            // The config's estimate, made without a model, adds only the AdamW moments when training.
            const double adamw = training ? 4.0 * 2 * c.num_params() : 0.0;
            EXPECT_EQ(double(fresh.memory_bytes()), c.memory_bytes(B, T, training) - adamw)
                << (training ? "training" : "inference");
        }
    }
}

// The backward's scratch shares bytes with the forward's head gradient, so a backward consumes its
// forward: a second backward is refused, and each forward + backward pair gives the same gradients.
TEST(MemoryEstimate, BackwardConsumesItsForward) {
    const std::pair<Residual, AttentionKind> variants[] = {{Residual::standard, AttentionKind::causal},
                                                           {Residual::attnres_block, AttentionKind::causal},
                                                           {Residual::standard, AttentionKind::moda}};
    for (auto [res, att] : variants) {
        ModelConfig c = strata::testing::tiny_model(97, 40);
        c.residual = res;
        c.attnres_block_size = 2;
        c.attention = att;
        c.qk_norm = att == AttentionKind::moda;
        for (Precision p : {Precision::fp32, Precision::bf16}) {
            SCOPED_TRACE(std::string(to_string(res)) + " " + to_string(att) + " " + to_string(p));
            Model<float> m(c);
            m.init_weights(3);
            m.set_precision(p);
            const long B = 2, T = 17;
            std::vector<int32_t> x(B * T), y(B * T);
            for (long i = 0; i < B * T; i++) x[i] = int32_t((i * 5) % 97), y[i] = int32_t((i * 13 + 1) % 97);
            std::vector<float> first(m.grads().numel()), second(m.grads().numel());
            for (std::vector<float>* g : {&first, &second}) {
                m.zero_grad();
                m.forward(x.data(), y.data(), B, T);
                m.backward();
                m.grads().to_host(g->data(), 0, g->size());
            }
            EXPECT_EQ(first, second);
            try {
                m.backward();
                ADD_FAILURE() << "a second backward after one forward ran";
            } catch (const Error& e) {
                EXPECT_NE(std::string(e.what()).find("run forward() with targets again"), std::string::npos) << e.what();
            }
        }
    }
}
