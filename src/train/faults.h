// Numerical faults in training: finding a non-finite value, naming where it is, and the test hook
// that injects one.
#pragma once
#include <string>

#include "model/model.h"

namespace strata {

// The first tensor of a parameter-shaped buffer (weights, gradients, a moment) holding a NaN or an
// infinity, or "" when all are finite.
std::string first_nonfinite(const Model<float>& m, const Buffer& buf);

// Where a step's non-finite loss or gradient norm came from, e.g. "the weights of wq.0",
// "the loss (and the gradient of wo.1)", "the gradient of norm.3".
std::string nonfinite_where(const Model<float>& m, double loss);

// Test hook STRATA_FAULT_NONFINITE=STEP[:PARAM] | STEP:weights[:PARAM]: at the 1-based step STEP,
// after the backward pass, fill PARAM's gradient with NaN (default: the first parameter); with
// "weights", fill PARAM's values with NaN after that step's update instead, so the next step's loss
// is NaN.
struct NonfiniteFault {
    long step = 0;  // 0: no fault
    bool weights = false;
    const ParamSpec* spec = nullptr;

    static NonfiniteFault from_env(const Model<float>& model);
    bool grads_at(long step1) const { return step == step1 && !weights; }
    bool weights_at(long step1) const { return step == step1 && weights; }
};

// Fills the span of `s` in a parameter-shaped buffer with NaN.
void fill_nan(Buffer& buf, const ParamSpec& s);

}  // namespace strata
