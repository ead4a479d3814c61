// How much each block of a trained model does (docs/analysis.md): the measures of the curse-of-depth
// papers (arXiv 2502.05795; arXiv 2603.15389), defined for every residual rule and attention kind.
//
// A block is layer l: its attention (sublayer 2l) and its MLP (2l+1). Its input is what its attention
// normalises and reads (Model::sublayer_input_state(2l): the stream before it; AttnRes: its depth mix;
// DenseFormer: the averaged state); its update is the sum of its two sublayers' outputs f_2l + f_2l+1,
// which is h_{l+1} − h_l for the standard pre-norm stream.
#pragma once
#include <nlohmann/json.hpp>

#include "model/model.h"
#include "train/data.h"

namespace strata {

struct UsefulnessOptions {
    int batch_size = 0, seq_len = 0;
    long batches = 4;          // validation batches per evaluation (≤ 0: all)
    long fit_tokens = 65536;   // rows the linear replacements are fitted on, read from `fit`
    double useful_ratio = 1.1; // a block is useful when its linear replacement's loss / the base loss exceeds it
    bool causal = true;        // the causal-score matrix (one forward per block and batch)
    bool progress = false;
};

// Adds to the JSON:
//  "block_skip": per block, the loss with both sublayers skipped (outputs zero, as diagnose's skip);
//  "removal": blocks removed cumulatively in order of their skip Δloss, least useful first: the order
//             and the loss after removing k = 0 .. L blocks;
//  "angular_distance": per block l, the mean over tokens of (1/π)·arccos(cos(x_l, x_{l+1})) between
//             its input and the next block's (the last block's next is the final norm's input);
//  "causal_score": an L × L matrix, [s][l] = mean over tokens of ‖Δ̄_l − Δ_l‖ / ‖Δ_l‖ for l > s (null
//             elsewhere), Δ_l block l's update and Δ̄_l the same with block s skipped;
//  "linear": each sublayer replaced by an affine map of its (normed) input, fitted by least squares on
//             `fit_tokens` rows of `fit`; per block, the loss with both its sublayers replaced, the
//             ratio to the base loss, whether it counts as useful, and the share of useful blocks.
nlohmann::json measure_usefulness(Model<float>& m, const TokenShard& val, const TokenShard& fit,
                                  const UsefulnessOptions& o);

}  // namespace strata
