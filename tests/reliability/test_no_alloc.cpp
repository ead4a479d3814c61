// Zero heap allocations in training steps 2–10: a counting operator new around forward, backward,
// gradient clipping and the AdamW update, in fp32 (on both float GEMM libraries) and in bf16 (on both
// bf16 GEMM paths).
//
// oneDNN's execute builds a small argument map on every call (a few allocations of tens of bytes,
// whatever the scratchpad mode); those are counted apart, and must stay small and the same for
// every step: the library holds no buffer of its own between calls.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <tuple>
#include <utility>

#include "model/model.h"
#include "ops/cpu/gemm.h"
#include "train/optimizer.h"
#include "train/step.h"

static std::atomic<long> g_allocs{0}, g_library_allocs{0}, g_library_max{0};

static void count(std::size_t n) {
    if (strata::inside_gemm_library()) {
        g_library_allocs++;
        long m = g_library_max.load();
        while (long(n) > m && !g_library_max.compare_exchange_weak(m, long(n))) {
        }
    } else {
        g_allocs++;
    }
}

void* operator new(std::size_t n) {
    count(n);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
    count(n);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

using namespace strata;

class NoAlloc : public ::testing::TestWithParam<std::string> {};

TEST_P(NoAlloc, NoHeapAllocationsAfterTheFirstStep) {
    const std::string mode = GetParam();  // fp32-openblas, fp32-onednn, bf16 (native where the CPU has it), bf16-emulated
    const Precision prec = mode.rfind("fp32", 0) == 0 ? Precision::fp32 : Precision::bf16;
    set_bf16_native(mode != "bf16-emulated");
    set_f32_onednn(mode == "fp32-onednn");
    const std::tuple<NormPlacement, Residual, AttentionKind, AttnResQuery> variants[] = {
        {NormPlacement::pre, Residual::standard, AttentionKind::causal, AttnResQuery::fixed},
        {NormPlacement::post, Residual::standard, AttentionKind::causal, AttnResQuery::fixed},
        {NormPlacement::reordered, Residual::standard, AttentionKind::causal, AttnResQuery::fixed},
        {NormPlacement::pre, Residual::attnres_full, AttentionKind::causal, AttnResQuery::fixed},
        {NormPlacement::pre, Residual::attnres_block, AttentionKind::causal, AttnResQuery::fixed},
        {NormPlacement::pre, Residual::standard, AttentionKind::moda, AttnResQuery::fixed},
        {NormPlacement::pre, Residual::attnres_block, AttentionKind::moda, AttnResQuery::fixed},
        {NormPlacement::pre, Residual::rezero, AttentionKind::causal, AttnResQuery::fixed},
        {NormPlacement::pre, Residual::layernorm_scaling, AttentionKind::causal, AttnResQuery::fixed},
        {NormPlacement::pre, Residual::denseformer, AttentionKind::moda, AttnResQuery::fixed},
        {NormPlacement::pre, Residual::attnres_block, AttentionKind::causal, AttnResQuery::input}};
    for (auto [np, res, att, query] : variants) {
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
        c.attnres_query = query;
        Model<float> m(c);
        m.set_precision(prec);
        AdamW<float> opt(m, AdamWConfig{});
        const long B = 3, T = 70;  // two attention tiles
        std::vector<int32_t> x(B * T), y(B * T);
        for (long i = 0; i < B * T; i++) x[i] = int32_t((i * 7) % 97), y[i] = int32_t((i * 11 + 3) % 97);
        const StepConfig sc{B, T, 1, 1.0, x.data(), y.data()};  // the training step of strata train
        long before = 0, lib_step2 = 0;
        std::vector<long> lib_per_step;
        lib_per_step.reserve(16);  // before the counted steps
        for (int step = 1; step <= 10; step++) {
            if (step == 2) before = g_allocs.load();
            if (step == 2) g_library_max = 0;
            const long lib0 = g_library_allocs.load();
            train_step(m, opt, sc, {}, 1e-3);
            if (step >= 2) lib_per_step.push_back(g_library_allocs.load() - lib0);
        }
        const long ours = g_allocs.load() - before;  // read before the messages below allocate
        lib_step2 = lib_per_step.front();
        const std::string what = mode + ", norm " + to_string(np) + ", residual " + to_string(res) + ", attention " +
                                 to_string(att);
        EXPECT_EQ(ours, 0) << "allocations in steps 2-10 with " << what;
        EXPECT_GT(before, 0) << "the counting allocator saw nothing: it is not installed";
        for (long n : lib_per_step) EXPECT_EQ(n, lib_step2) << "the GEMM library's allocations vary by step: " << what;
        EXPECT_LE(g_library_max.load(), 1024) << "the GEMM library allocated a buffer during a step: " << what;
        if (prec == Precision::fp32 ? !f32_onednn() : !bf16_native()) EXPECT_EQ(lib_step2, 0) << what;
    }
    set_bf16_native(true);
    set_f32_onednn(cpu_prefers_onednn_f32());
}

INSTANTIATE_TEST_SUITE_P(Precisions, NoAlloc, ::testing::Values("fp32-openblas", "fp32-onednn", "bf16", "bf16-emulated"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                             std::string n = i.param;
                             for (char& ch : n)
                                 if (ch == '-') ch = '_';
                             return n;
                         });
