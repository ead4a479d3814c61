// MoDA's modes (docs/moda.md): which sequence keys a query sees, and which tokens' depth slots. Shared
// by the op (ops.h) and the config, whose one name table gives their names (model/config.cpp).
#pragma once

namespace strata {

// causal: keys 0..p of the query at position p; noncausal: every key; none: no sequence keys, the depth
// slots only (FDA, flash depth attention).
enum class SeqMask { causal, noncausal, none };
// own: the query's own token's depth slots; chunk: also those of the earlier tokens of its chunk.
enum class DepthVisibility { own, chunk };

}  // namespace strata
