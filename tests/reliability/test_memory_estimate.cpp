// ModelConfig::memory_bytes is what strata checks against the machine's memory before building a
// model (docs/limits.md). It must describe what a Model really allocates: the parameter and gradient
// buffers, the RoPE tables and the activation arena after a training step (the AdamW moments, which
// the optimizer allocates, are the remaining 2·P).
#include <gtest/gtest.h>

#include <vector>

#include "model/model.h"

using namespace strata;

TEST(MemoryEstimate, MatchesWhatTheModelAllocates) {
    struct Variant {
        NormPlacement np;
        Residual res;
        int block, layers;
        AttentionKind att = AttentionKind::causal;
        bool ffn_kv = true;
    };
    const Variant variants[] = {{NormPlacement::pre, Residual::standard, 4, 2},
                                {NormPlacement::post, Residual::standard, 4, 3},
                                {NormPlacement::pre, Residual::attnres_full, 1, 3},
                                {NormPlacement::pre, Residual::attnres_block, 4, 3},
                                {NormPlacement::pre, Residual::attnres_block, 5, 2},
                                {NormPlacement::pre, Residual::standard, 4, 3, AttentionKind::moda},
                                {NormPlacement::post, Residual::standard, 4, 3, AttentionKind::moda, false},
                                {NormPlacement::pre, Residual::attnres_block, 2, 3, AttentionKind::moda}};
    for (const auto& v : variants) {
        ModelConfig c;
        c.vocab_size = 97;
        c.d_model = 32;
        c.n_layers = v.layers;
        c.n_heads = 4;
        c.n_kv_heads = 2;
        c.head_dim = 8;
        c.ffn_hidden = 40;
        c.max_seq_len = 40;
        c.norm_placement = v.np;
        c.residual = v.res;
        c.attnres_block_size = v.block;
        c.attention = v.att;
        c.moda_ffn_kv = v.ffn_kv;
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
            // The arena is the plan's total, and the plan is the sum of its tensors (each aligned).
            EXPECT_EQ(fresh.arena_bytes(), fresh.activation_plan().bytes());
            size_t sum = 0;
            for (const auto& e : fresh.activation_plan().entries())
                sum += (e.numel * dtype_size(e.dtype) + Backend::kAlign - 1) / Backend::kAlign * Backend::kAlign;
            EXPECT_EQ(sum, fresh.activation_plan().bytes());
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
