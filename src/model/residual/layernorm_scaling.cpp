// LayerNorm-Scaling (Sun et al. 2025, "The Curse of Depth in Large Language Models", arXiv 2502.05795):
// the pre-norm stream with every norm's output in layer ℓ (1-based) scaled by 1/√ℓ,
//   h ← h + f_j(RMSNorm(h) / √ℓ),
// which keeps the stream's variance from growing with depth. As the paper does, it drops the
// depth-scaled init of wo and w_down (residual_scaled_init); the final norm is not scaled. It has no
// parameters of its own.
#include "model/residual/stream.h"

namespace strata {

template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_layernorm_scaling_rule(const ModelConfig& c) {
    StreamOptions o;
    o.depth_scaled = true;
    return std::make_unique<StreamRule<T, A>>(c, o);
}

#define STRATA_LNS_RULE(T, A) \
    template std::unique_ptr<ResidualRule<T, A>> make_layernorm_scaling_rule<T, A>(const ModelConfig&);
STRATA_RULE_TYPES(STRATA_LNS_RULE)

}  // namespace strata
