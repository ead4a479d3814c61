// Weight decay follows the spec's rule (docs/model.md: every 2-D weight decays, no 1-D tensor does)
// and train.no_decay only adds exemptions. The AttnRes pseudo-queries are 1-D: they never decay,
// whatever no_decay says (they once did, when the default pattern "norm" replaced the rule).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/model.h"
#include "train/optimizer.h"

using namespace strata;

namespace {
ModelConfig attnres_config() {
    ModelConfig c;
    c.vocab_size = 61;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 8;
    c.ffn_hidden = 24;
    c.max_seq_len = 16;
    c.residual = Residual::attnres_block;
    c.attnres_block_size = 2;
    c.qk_norm = true;
    return c;
}
}  // namespace

TEST(WeightDecay, SpecRuleExemptsEvery1DTensorAndNoDecayOnlyAddsExemptions) {
    Model<float> m(attnres_config());
    int queries = 0;
    for (const ParamSpec& s : m.specs) {
        EXPECT_EQ(s.decay, s.shape.size() > 1) << s.name;
        queries += s.name.ends_with("_res_query");
    }
    EXPECT_EQ(queries, 2 * 2 + 1);
    apply_no_decay(m.specs, {"norm", "wq"});
    for (const ParamSpec& s : m.specs) {
        const bool exempt = s.shape.size() == 1 || s.name.find("wq") != std::string::npos;
        EXPECT_EQ(s.decay, !exempt) << s.name;
    }
}

// One AdamW step with a zero gradient moves a parameter only by its decay: p ← p·(1 − lr·wd).
TEST(WeightDecay, AdamWLeavesPseudoQueriesUndecayed) {
    Model<float> m(attnres_config());
    apply_no_decay(m.specs, {"norm"});  // the old default pattern
    std::vector<float> before = m.params().host<float>();
    for (size_t i = 0; i < before.size(); i++) before[i] = 0.5f + 0.001f * float(i % 97);
    m.params().from_host(before.data(), 0, before.size());
    m.zero_grad();
    AdamW<float> opt(m, AdamWConfig{0.9, 0.95, 1e-8, 0.5});
    const double lr = 0.1;
    opt.update(m, lr);
    const std::vector<float> after = m.params().host<float>();
    for (const ParamSpec& s : m.specs) {
        const float keep = s.shape.size() > 1 ? float(1.0 - lr * 0.5) : 1.0f;
        for (size_t i = 0; i < s.numel; i++)
            ASSERT_EQ(after[s.offset + i], before[s.offset + i] * keep) << s.name << "[" << i << "]";
    }
}
