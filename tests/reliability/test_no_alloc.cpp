// Zero heap allocations in training steps 2–10: a counting operator new around forward, backward,
// gradient clipping and the AdamW update.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <tuple>
#include <utility>

#include "model/model.h"
#include "train/optimizer.h"
#include "train/step.h"

static std::atomic<long> g_allocs{0};

void* operator new(std::size_t n) {
    g_allocs++;
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
    g_allocs++;
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

using namespace strata;

TEST(Training, NoHeapAllocationsAfterTheFirstStep) {
    const std::tuple<NormPlacement, Residual, AttentionKind> variants[] = {
        {NormPlacement::pre, Residual::standard, AttentionKind::causal},
        {NormPlacement::post, Residual::standard, AttentionKind::causal},
        {NormPlacement::reordered, Residual::standard, AttentionKind::causal},
        {NormPlacement::pre, Residual::attnres_full, AttentionKind::causal},
        {NormPlacement::pre, Residual::attnres_block, AttentionKind::causal},
        {NormPlacement::pre, Residual::standard, AttentionKind::moda},
        {NormPlacement::pre, Residual::attnres_block, AttentionKind::moda}};
    for (auto [np, res, att] : variants) {
        ModelConfig c;
        c.vocab_size = 97;
        c.d_model = 64;
        c.n_layers = 2;
        c.n_heads = 4;
        c.n_kv_heads = 2;
        c.head_dim = 16;
        c.ffn_hidden = 96;
        c.max_seq_len = 80;
        c.qk_norm = true;
        c.norm_placement = np;
        c.residual = res;
        c.attnres_block_size = 3;
        c.attention = att;
        Model<float> m(c);
        AdamW<float> opt(m, AdamWConfig{});
        const long B = 3, T = 70;  // two attention tiles
        std::vector<int32_t> x(B * T), y(B * T);
        for (long i = 0; i < B * T; i++) x[i] = int32_t((i * 7) % 97), y[i] = int32_t((i * 11 + 3) % 97);
        const StepConfig sc{B, T, 1, 1.0, x.data(), y.data()};  // the training step of strata train
        long before = 0;
        for (int step = 1; step <= 10; step++) {
            if (step == 2) before = g_allocs.load();
            train_step(m, opt, sc, {}, 1e-3);
        }
        EXPECT_EQ(g_allocs.load() - before, 0)
            << "allocations in steps 2-10 with norm " << to_string(np) << ", residual " << to_string(res)
            << ", attention " << to_string(att);
        EXPECT_GT(before, 0) << "the counting allocator saw nothing: it is not installed";
    }
}
