// Parameter specs carry the init, the decay flag and the sublayer of every tensor, so nothing reads
// meaning into names any more. These tests hold the specs to the name-based rules they replaced,
// written out here independently: the initial weights are bit-identical to them for every kind of
// config, and every parameter's sublayer is the one its name says.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/model.h"

using namespace strata;

namespace {

std::vector<ModelConfig> configs() {
    ModelConfig base;
    base.vocab_size = 53;
    base.d_model = 16;
    base.n_layers = 3;
    base.n_heads = 2;
    base.n_kv_heads = 1;
    base.head_dim = 8;
    base.ffn_hidden = 24;
    base.max_seq_len = 16;
    base.seed = 99;
    std::vector<ModelConfig> cs;
    cs.push_back(base);
    ModelConfig c = base;
    c.tie_embeddings = false;
    c.qk_norm = true;
    c.norm_placement = NormPlacement::post;
    cs.push_back(c);
    c = base;
    c.attention = AttentionKind::moda;
    c.qk_norm = true;
    cs.push_back(c);
    c = base;
    c.residual = Residual::attnres_block;
    c.attnres_block_size = 2;
    c.attention = AttentionKind::moda;
    c.moda_depth_source = ModaDepthSource::attn_kv;
    cs.push_back(c);
    c = base;
    c.residual = Residual::attnres_full;
    cs.push_back(c);
    c = base;
    c.residual = Residual::attnres_block;
    c.attnres_key_norm = AttnResKeyNorm::none;
    c.attnres_query = AttnResQuery::input;
    cs.push_back(c);
    for (Residual r : {Residual::rezero, Residual::layernorm_scaling, Residual::denseformer}) {
        c = base;
        c.residual = r;
        cs.push_back(c);
    }
    return cs;
}

// The sublayer the name says: blocks.l.{attention tensors, attn_res_*} → 2l, other blocks.l.* → 2l+1.
int sublayer_by_name(const std::string& name) {
    if (name.rfind("blocks.", 0) != 0) return -1;
    const size_t dot = name.find('.', 7);
    const int l = std::stoi(name.substr(7, dot - 7));
    const std::string p = name.substr(dot + 1);
    const bool attn = p == "attn_norm" || p == "wq" || p == "wk" || p == "wv" || p == "q_norm" || p == "k_norm" ||
                      p == "wo" || p.rfind("attn_res_", 0) == 0 || p == "attn_alpha";
    return 2 * l + (attn ? 0 : 1);
}

}  // namespace

TEST(ParamSpecs, InitIsBitIdenticalToTheNameBasedRule) {
    for (const ModelConfig& c : configs()) {
        SCOPED_TRACE(std::string(to_string(c.residual)) + " " + to_string(c.attention));
        Model<float> m(c);
        const std::vector<float> got = m.params().host<float>();
        // One normal stream over the 2-D tensors in buffer order; wo and w_down at std/√(2L) (std
        // under LayerNorm-Scaling); 1-D tensors are ones, except the AttnRes pseudo-queries and the
        // ReZero gates (zeros), the DenseFormer weights (zeros but the last) and the input-dependent
        // AttnRes query's W (zeros, drawing nothing).
        Rng rng(c.seed);
        const double resid =
            c.residual == Residual::layernorm_scaling ? c.init_std : c.init_std / std::sqrt(2.0 * c.n_layers);
        size_t checked = 0;
        for (const ParamSpec& s : m.specs) {
            for (size_t i = 0; i < s.numel; i++) {
                float want;
                if (s.name.ends_with(".dwa")) want = i + 1 == s.numel ? 1.0f : 0.0f;
                else if (s.name.ends_with("_res_wq")) want = 0.0f;  // the input-dependent query's W starts at 0
                else if (s.shape.size() == 1) want = s.name.ends_with("_res_query") || s.name.ends_with("_alpha") ? 0.0f : 1.0f;
                else {
                    const bool r = s.name.ends_with(".wo") || s.name.ends_with(".w_down");
                    want = float(rng.normal() * (r ? resid : c.init_std));
                }
                ASSERT_EQ(got[s.offset + i], want) << s.name << "[" << i << "]";
                checked++;
            }
        }
        EXPECT_EQ(checked, m.num_params());
    }
}

TEST(ParamSpecs, SublayerAndDecayAreTheOnesTheNameAndShapeSay) {
    for (const ModelConfig& c : configs()) {
        Model<float> m(c);
        for (const ParamSpec& s : m.specs) {
            EXPECT_EQ(s.sublayer, sublayer_by_name(s.name)) << s.name;
            EXPECT_EQ(s.decay, s.shape.size() > 1) << s.name;
        }
    }
}
