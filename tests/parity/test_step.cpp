// The one training step (train/step.h): its per-layer "gradients complete" callback fires once per
// layer, from the last layer down, at a moment when that layer's gradients already hold their final
// values (what a data-parallel all-reduce started there would send), for every residual rule and
// attention kind; the after_backward hook runs before the gradient norm, so the norm sees what it did.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/model.h"
#include "train/step.h"
#include "../test_util.h"

using namespace strata;

namespace {
ModelConfig small(Residual res, AttentionKind att) {
    ModelConfig c = strata::testing::tiny_model(67, 24);
    c.n_layers = 3;
    c.qk_norm = true;
    c.residual = res;
    c.attnres_block_size = 3;
    c.attention = att;
    return c;
}
}  // namespace

TEST(TrainStep, LayerCallbackSeesEachLayersFinalGradients) {
    for (auto [res, att] : {std::pair{Residual::standard, AttentionKind::causal},
                            std::pair{Residual::attnres_block, AttentionKind::causal},
                            std::pair{Residual::attnres_full, AttentionKind::moda},
                            std::pair{Residual::standard, AttentionKind::moda},
                            std::pair{Residual::rezero, AttentionKind::causal},
                            std::pair{Residual::layernorm_scaling, AttentionKind::causal},
                            std::pair{Residual::denseformer, AttentionKind::moda}}) {
        SCOPED_TRACE(std::string(to_string(res)) + " " + to_string(att));
        Model<float> m(small(res, att));
        const long B = 2, T = 19, L = m.cfg.n_layers;
        std::vector<int32_t> x(B * T), y(B * T);
        for (long i = 0; i < B * T; i++) x[i] = int32_t((i * 5) % 67), y[i] = int32_t((i * 13 + 1) % 67);
        const StepConfig sc{B, T, 2, 1.0, x.data(), y.data()};  // two micro-batches: only the last one calls
        std::vector<int> order;
        std::vector<std::vector<float>> at_callback(static_cast<size_t>(L));
        StepHooks hooks;
        hooks.layer_grads_ready = [&](int l) {
            order.push_back(l);
            at_callback[size_t(l)] = m.grads().host<float>();
        };
        compute_gradients(m, sc, {}, hooks);
        std::vector<int> want;
        for (long l = L - 1; l >= 0; l--) want.push_back(int(l));
        ASSERT_EQ(order, want);
        // The final gradient is the sum over both micro-batches, halved; the callback saw the sum, so
        // compare the callback's values halved (exact: a power of two) with the final ones.
        const std::vector<float> final_g = m.grads().host<float>();
        long checked = 0;
        for (const ParamSpec& s : m.specs) {
            if (s.sublayer < 0) continue;
            const auto& seen = at_callback[size_t(s.sublayer / 2)];
            for (size_t i = 0; i < s.numel; i++, checked++)
                ASSERT_EQ(seen[s.offset + i] * 0.5f, final_g[s.offset + i]) << s.name << "[" << i << "]";
        }
        EXPECT_GT(checked, 0);
    }
}

TEST(TrainStep, AfterBackwardRunsBeforeTheGradientNorm) {
    Model<float> m(small(Residual::standard, AttentionKind::causal));
    const long B = 1, T = 9;
    std::vector<int32_t> x(B * T, 3), y(B * T, 4);
    const StepConfig sc{B, T, 1, 1.0, x.data(), y.data()};
    const StepStats plain = compute_gradients(m, sc, {});
    EXPECT_GT(plain.grad_norm, 0);
    int calls = 0;
    StepHooks hooks;
    hooks.after_backward = [&] {
        calls++;
        scale_grads(m, 3.0);
    };
    const StepStats hooked = compute_gradients(m, sc, {}, hooks);
    EXPECT_EQ(calls, 1);
    EXPECT_NEAR(hooked.grad_norm, 3.0 * plain.grad_norm, 1e-6 * plain.grad_norm);
    EXPECT_EQ(hooked.loss, plain.loss);
}
