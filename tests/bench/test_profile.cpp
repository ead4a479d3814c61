// The op profiler (src/ops/profile.h): off it records nothing; on, the families of real training
// steps sum to no more than the steps' wall time; nested scopes, other threads and calls inside a
// parallel region are not counted twice.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <tuple>
#include <vector>

#include "bench/train_bench.h"
#include "model/model.h"
#include "ops/profile.h"
#include "train/optimizer.h"
#include "train/step.h"
#include "../test_util.h"

using namespace strata;

namespace {

using Clock = std::chrono::steady_clock;

ModelConfig tiny(Residual residual, AttentionKind attention) {
    ModelConfig c = strata::testing::tiny_model(64, 8);
    c.ffn_hidden = 48;
    c.residual = residual;
    c.attnres_block_size = 2;
    c.attention = attention;
    return c;
}

struct Trainer {
    Model<float> model;
    AdamW<float> opt;
    std::vector<int32_t> x, y;
    StepConfig sc;
    explicit Trainer(const ModelConfig& c) : model(c), opt(model, AdamWConfig{}) {
        bench::make_batch(2, 8, c.vocab_size, x, y);
        sc = StepConfig{2, 8, 1, 1.0, x.data(), y.data()};
    }
    void step() { ASSERT_TRUE(train_step(model, opt, sc, {}, 1e-3).finite()); }
};

void expect_nothing_recorded() {
    const op_profile::Totals t = op_profile::totals();
    for (int f = 0; f < kOpFamilies; f++) {
        EXPECT_EQ(t.seconds[f], 0.0) << op_profile::family_name(OpFamily(f));
        EXPECT_EQ(t.calls[f], 0) << op_profile::family_name(OpFamily(f));
    }
}

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

}  // namespace

TEST(OpProfile, OffByDefaultAndOffRecordsNothing) {
    EXPECT_FALSE(op_profile::enabled());
    Trainer r(tiny(Residual::standard, AttentionKind::causal));
    op_profile::reset();
    r.step();
    r.step();
    expect_nothing_recorded();

    op_profile::enable();
    op_profile::disable();  // on and off again: still nothing
    r.step();
    expect_nothing_recorded();
}

TEST(OpProfile, FamiliesSumToNoMoreThanTheStep) {
    const std::tuple<Residual, AttentionKind, OpFamily> variants[] = {
        {Residual::standard, AttentionKind::causal, OpFamily::attn_bwd},
        {Residual::attnres_full, AttentionKind::causal, OpFamily::attnres_bwd},
        {Residual::attnres_block, AttentionKind::moda, OpFamily::moda_bwd},
    };
    for (const auto& [residual, attention, own] : variants) {
        SCOPED_TRACE(std::string(to_string(residual)) + " " + to_string(attention));
        Trainer r(tiny(residual, attention));
        r.step();  // the arena and scratch are laid out

        // Timed by hand around the steps...
        op_profile::reset();
        op_profile::enable();
        const Clock::time_point t0 = Clock::now();
        r.step();
        r.step();
        const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
        op_profile::disable();
        const op_profile::Totals t = op_profile::totals();
        EXPECT_GT(t.total_seconds(), 0.0);
        EXPECT_LE(t.total_seconds(), wall);
        for (OpFamily f : {OpFamily::gemm_fwd, OpFamily::gemm_bwd, OpFamily::rmsnorm, OpFamily::xent,
                           OpFamily::embedding, OpFamily::glue, OpFamily::optimizer, own})
            EXPECT_GT(t.calls[int(f)], 0) << op_profile::family_name(f);
        const bool moda = attention == AttentionKind::moda;
        EXPECT_EQ(t.calls[int(OpFamily::attn_fwd)], moda ? 0 : 2 * 2);  // 2 layers, 2 steps
        EXPECT_EQ(t.calls[int(OpFamily::moda_fwd)], moda ? 2 * 2 : 0);
        // 2 steps × (2 layers × 4 matmuls + the LM head) forward
        EXPECT_EQ(t.calls[int(OpFamily::gemm_fwd)], 2 * (2 * 4 + 1) + (moda ? 2 : 0));  // + layer 0's FFN K/V

        // ... and by the bench's helper.
        const bench::ProfileResult p = bench::profile_train_steps(r.model, r.opt, r.sc, 1e-3, 2);
        EXPECT_FALSE(op_profile::enabled());
        EXPECT_EQ(p.steps, 2);
        EXPECT_GT(p.families_ms(), 0.0);
        EXPECT_LE(p.families_ms(), p.step_ms);
        EXPECT_GE(p.remainder_ms(), 0.0);
        EXPECT_EQ(p.calls[int(OpFamily::gemm_fwd)], 2 * 4 + 1 + (moda ? 1 : 0));
    }
    op_profile::reset();
}

TEST(OpProfile, NestedScopesCountOnce) {
    op_profile::reset();
    op_profile::enable();
    {
        OpTimer outer(OpFamily::gemm_fwd);
        sleep_ms(5);
        {
            OpTimer inner(OpFamily::glue);
            sleep_ms(5);
        }
    }
    op_profile::disable();
    const op_profile::Totals t = op_profile::totals();
    EXPECT_EQ(t.calls[int(OpFamily::gemm_fwd)], 1);
    EXPECT_GE(t.seconds[int(OpFamily::gemm_fwd)], 0.010);
    EXPECT_EQ(t.calls[int(OpFamily::glue)], 0);
    EXPECT_EQ(t.seconds[int(OpFamily::glue)], 0.0);
    op_profile::reset();
}

TEST(OpProfile, OnlyTheEnablingThreadOutsideParallelRegionsIsTimed) {
    op_profile::reset();
    op_profile::enable();
    std::thread other([] {
        OpTimer t(OpFamily::glue);
        sleep_ms(2);
    });
    other.join();
#pragma omp parallel num_threads(2)
    {
        OpTimer t(OpFamily::rope);
    }
    { OpTimer t(OpFamily::swiglu); }
    op_profile::disable();
    const op_profile::Totals t = op_profile::totals();
    EXPECT_EQ(t.calls[int(OpFamily::glue)], 0);
    EXPECT_EQ(t.calls[int(OpFamily::rope)], 0);
    EXPECT_EQ(t.calls[int(OpFamily::swiglu)], 1);
    op_profile::reset();
}

TEST(OpProfile, EveryFamilyHasAName) {
    for (int f = 0; f < kOpFamilies; f++) EXPECT_STRNE(op_profile::family_name(OpFamily(f)), "unknown");
    EXPECT_STREQ(op_profile::family_name(OpFamily::gemm_fwd), "GEMM forward (matmul_forward)");
}
