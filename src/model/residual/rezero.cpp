// ReZero (Bachlechner et al. 2020, arXiv 2003.04887), as the AttnRes paper's Table 5 baseline runs it:
// the pre-norm stream with a learned scalar gate on each sublayer's output,
//   h ← h + α_j · f_j(RMSNorm(h)),   α_j initialised to 0 (so the model starts as the embedding alone),
// one α per sublayer (blocks.l.attn_alpha, blocks.l.mlp_alpha), not weight-decayed.
#include "model/residual/stream.h"

namespace strata {

void rezero_layer_params(const ModelConfig&, int l, const ParamAdd& add) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    add(p + "attn_alpha", {1}, 2 * l, ParamSpec::Init::zeros);
    add(p + "mlp_alpha", {1}, 2 * l + 1, ParamSpec::Init::zeros);
}

template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_rezero_rule(const ModelConfig& c) {
    StreamOptions o;
    o.gated = true;
    return std::make_unique<StreamRule<T, A>>(c, o);
}

#define STRATA_REZERO_RULE(T, A) template std::unique_ptr<ResidualRule<T, A>> make_rezero_rule<T, A>(const ModelConfig&);
STRATA_RULE_TYPES(STRATA_REZERO_RULE)

}  // namespace strata
