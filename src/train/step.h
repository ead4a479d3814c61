// One training step, the same for `strata train`, `strata bench train` and the bindings:
//   zero-grad → grad_accum × (forward, backward) → mean → [after_backward hook] → global gradient
//   norm → clip → AdamW.
// It is split in two halves so the trainer can look at the loss and the norm (non-finite handling)
// before it decides to update: compute_gradients() and apply_update(). train_step() runs both.
#pragma once
#include <cstdint>
#include <functional>

#include "model/model.h"
#include "train/optimizer.h"

namespace strata {

// Fills one micro-batch into the caller's buffers: tokens x and targets y, each (B, T) (the bench's
// fixed batch leaves them as they are).
using BatchFn = std::function<void(int32_t* x, int32_t* y)>;

struct StepHooks {
    // Called during the last micro-batch's backward, once per layer l = L−1 .. 0, when every gradient
    // of layer l's parameters is complete (a data-parallel all-reduce of that layer can start here).
    std::function<void(int layer)> layer_grads_ready;
    // Called after the backward and the micro-batch mean, before the gradient norm (fault injection;
    // the place to finish an all-reduce of what no layer owns: embedding, final norm, output mix).
    std::function<void()> after_backward;
};

// Seconds spent in each phase of the last step (for `bench train`).
struct StepTimes {
    double zero_grad = 0, forward = 0, backward = 0, clip = 0, update = 0;
};

struct StepStats {
    double loss = 0;       // mean over the micro-batches of each one's mean loss
    double grad_norm = 0;  // global L2 norm of the mean gradient, before clipping
    bool finite() const;   // loss and grad_norm are both finite
};

struct StepConfig {
    long batch = 1, seq = 1;
    int grad_accum = 1;
    double grad_clip = 1.0;  // clip the global norm to this (0: no clipping)
    int32_t *x = nullptr, *y = nullptr;  // (batch, seq) host buffers for the micro-batches
};

// zero-grad, the micro-batches, the mean, the after_backward hook and the global norm.
StepStats compute_gradients(Model<float>& model, const StepConfig& sc, const BatchFn& next_batch,
                            const StepHooks& hooks = {}, StepTimes* times = nullptr);
// Clips the gradient to sc.grad_clip (when its norm `grad_norm` exceeds it) and applies AdamW at `lr`.
void apply_update(Model<float>& model, AdamW<float>& opt, const StepConfig& sc, double grad_norm, double lr,
                  StepTimes* times = nullptr);
// Both halves; the update is skipped (and the stats say why) when the loss or the norm is not finite.
StepStats train_step(Model<float>& model, AdamW<float>& opt, const StepConfig& sc, const BatchFn& next_batch,
                     double lr, const StepHooks& hooks = {}, StepTimes* times = nullptr);

}  // namespace strata
