// How an AttnRes op turns its depth logits into weights: the paper's softmax, or the ablation's
// unnormalised sigmoid gates (docs/attn_res.md). Shared by the op (ops.h) and the config.
#pragma once

namespace strata {

enum class AttnResGate { softmax, sigmoid };

}  // namespace strata
