// The FLOP model of bench/README.md: the bench model's 183.61 GFLOP, and MoDA's and AttnRes's terms
// against a count written out here, layer by layer and op by op.
#include <gtest/gtest.h>

#include "bench/flops.h"
#include "bench/train_bench.h"
#include "../test_util.h"

using namespace strata;
using namespace strata::bench;

namespace {

ModelConfig small(Residual residual, int block, AttentionKind attention) {
    ModelConfig c = strata::testing::tiny_model(64, 5);
    c.n_layers = 3;
    c.ffn_hidden = 48;
    c.residual = residual;
    c.attnres_block_size = block;
    c.attention = attention;
    c.validate("test");
    return c;
}

constexpr long B = 2, T = 5, N = B * T;

// P_mm of the standard model, written out per matrix.
double plain_matmul_weights(const ModelConfig& c) {
    const double D = c.d_model, H = c.n_heads, Hk = c.n_kv_heads, d = c.head_dim, F = c.ffn_hidden;
    const double per_layer = D * H * d + 2 * D * Hk * d + H * d * D + 2 * D * F + F * D;  // q, k+v, o, gate+up, down
    return c.n_layers * per_layer + c.vocab_size * D;  // + the LM head
}

}  // namespace

TEST(Flops, TheBenchModelIs183_61GflopPerStep) {
    const TrainBenchOptions o;  // the defaults: standard, causal, batch 8 × seq 256
    const FlopCount f = training_flops(bench_model_config(o), o.batch, o.seq);
    EXPECT_EQ(f.matmul_params, 14155776.0);
    EXPECT_NEAR(f.matmul / 1e9, 173.95, 0.01);
    EXPECT_NEAR(f.attention / 1e9, 9.66, 0.01);
    EXPECT_EQ(f.moda_depth, 0.0);
    EXPECT_EQ(f.attnres_mix, 0.0);
    EXPECT_NEAR(f.total / 1e9, 183.61, 0.01);
}

TEST(Flops, TheStandardModelIsSixTimesWeightsTimesTokensPlusAttention) {
    const ModelConfig c = small(Residual::standard, 4, AttentionKind::causal);
    const FlopCount f = training_flops(c, B, T);
    EXPECT_DOUBLE_EQ(f.matmul_params, plain_matmul_weights(c));
    EXPECT_DOUBLE_EQ(f.matmul, 6.0 * plain_matmul_weights(c) * N);
    // Q·Kᵀ and P·V: B·H·T²·d MACs each, half of them under the causal mask, 2 FLOPs each, ×3
    EXPECT_DOUBLE_EQ(f.attention, 3.0 * 2.0 * 2.0 * (B * c.n_heads * T * T * c.head_dim) / 2.0 * c.n_layers);
    EXPECT_DOUBLE_EQ(f.total, f.matmul + f.attention);
}

TEST(Flops, ModaCountsTheFfnKvProjectionsAndTheDepthScores) {
    const ModelConfig c = small(Residual::standard, 4, AttentionKind::moda);
    const long L = c.n_layers, H = c.n_heads, Hk = c.n_kv_heads, d = c.head_dim, D = c.d_model;
    // Every layer but the last projects its FFN input to one more K and V: 2·Hk·d·D weights each.
    double ffn_kv = 0;
    for (long l = 0; l < L; l++)
        if (l + 1 < L) ffn_kv += 2.0 * Hk * d * D;
    // Layer l's query rows see the attention K/V of every earlier layer and the FFN K/V of every
    // earlier layer that has one (all but the last).
    double depth_flops = 0;
    for (long l = 0; l < L; l++) {
        long slots = 0;
        for (long m = 0; m < l; m++) {
            slots++;                // its attention K/V
            if (m + 1 < L) slots++;  // its FFN K/V
        }
        const double macs = 2.0 * N * H * slots * d;  // Q·Kdᵀ and P·Vd
        depth_flops += 3.0 * 2.0 * macs;
    }
    const FlopCount f = training_flops(c, B, T);
    EXPECT_DOUBLE_EQ(f.matmul_params, plain_matmul_weights(c) + ffn_kv);
    EXPECT_DOUBLE_EQ(f.matmul, 6.0 * (plain_matmul_weights(c) + ffn_kv) * N);
    EXPECT_DOUBLE_EQ(f.moda_depth, depth_flops);
    EXPECT_DOUBLE_EQ(f.moda_slots, 0 + 2 + 4);
    EXPECT_DOUBLE_EQ(f.total, f.matmul + f.attention + f.moda_depth);

    ModelConfig no_ffn = c;
    no_ffn.moda_depth_source = ModaDepthSource::attn_kv;  // only the attention K/V: layer l reads l slots
    const FlopCount g = training_flops(no_ffn, B, T);
    EXPECT_DOUBLE_EQ(g.matmul_params, plain_matmul_weights(c));
    EXPECT_DOUBLE_EQ(g.moda_depth, 3.0 * 2.0 * 2.0 * N * H * d * (0 + 1 + 2));
}

// AttnRes: the model's state walked sublayer by sublayer. Op j (the output op at j = 2L) mixes the
// embedding, the completed blocks and, when one is open, the current block's partial sum; sublayer j
// then adds to the open block, which completes after S sublayers.
TEST(Flops, AttnResCountsEveryMixWithTheModelsSources) {
    for (const auto& [residual, S] : {std::pair{Residual::attnres_full, 1}, std::pair{Residual::attnres_block, 2},
                                      std::pair{Residual::attnres_block, 4}, std::pair{Residual::attnres_block, 9}}) {
        const ModelConfig c = small(residual, S, AttentionKind::causal);
        const long D = c.d_model, ops = 2 * c.n_layers + 1;
        long completed = 0, in_open_block = 0, total_sources = 0;
        double mix_flops = 0;
        for (long j = 0; j < ops; j++) {
            const long n = 1 + completed + (in_open_block > 0 ? 1 : 0);
            EXPECT_EQ(attnres_op_sources(c, j), n) << "S " << S << " op " << j;
            total_sources += n;
            mix_flops += 3.0 * 2.0 * (n * D + n * D) * N;  // logits and weighted sum, forward ×3
            if (++in_open_block == S) completed++, in_open_block = 0;
        }
        const FlopCount f = training_flops(c, B, T);
        EXPECT_DOUBLE_EQ(f.attnres_sources, double(total_sources)) << "S " << S;
        EXPECT_DOUBLE_EQ(f.attnres_mix, mix_flops) << "S " << S;
        EXPECT_DOUBLE_EQ(f.total, f.matmul + f.attention + f.attnres_mix);
        EXPECT_EQ(attnres_op_sources(c, 2 * c.n_layers), attnres_max_sources(c));  // the output op sees the most
    }
    // attnres_full, 3 layers: ops see 1, 2, ..., 7 sources
    EXPECT_DOUBLE_EQ(training_flops(small(Residual::attnres_full, 1, AttentionKind::causal), B, T).attnres_sources,
                     28.0);
}

TEST(Flops, TheFamiliesShareTheTotal) {
    for (const ModelConfig& c : {small(Residual::standard, 4, AttentionKind::causal),
                                 small(Residual::attnres_block, 2, AttentionKind::moda)}) {
        const FlopCount f = training_flops(c, B, T);
        double sum = 0;
        for (int k = 0; k < kOpFamilies; k++) sum += family_flops(f, OpFamily(k));
        EXPECT_NEAR(sum, f.total, 1e-9 * f.total);
        EXPECT_DOUBLE_EQ(family_flops(f, OpFamily::gemm_bwd), 2 * family_flops(f, OpFamily::gemm_fwd));
    }
}
