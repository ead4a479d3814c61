#include "train/step.h"

#include <chrono>
#include <cmath>

namespace strata {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point& t) {
    const Clock::time_point now = Clock::now();
    const double s = std::chrono::duration<double>(now - t).count();
    t = now;
    return s;
}
}  // namespace

bool StepStats::finite() const { return std::isfinite(loss) && std::isfinite(grad_norm); }

StepStats compute_gradients(Model<float>& model, const StepConfig& sc, const BatchFn& next_batch,
                            const StepHooks& hooks, StepTimes* times) {
    StepTimes tm;
    Clock::time_point t = Clock::now();
    model.zero_grad();
    tm.zero_grad = since(t);
    StepStats s;
    for (int micro = 0; micro < sc.grad_accum; micro++) {
        if (next_batch) next_batch(sc.x, sc.y);
        s.loss += model.forward(sc.x, sc.y, sc.batch, sc.seq);
        tm.forward += since(t);
        const bool last = micro + 1 == sc.grad_accum;
        model.backward(last ? hooks.layer_grads_ready : std::function<void(int)>());
        tm.backward += since(t);
    }
    s.loss /= sc.grad_accum;
    if (sc.grad_accum > 1) scale_grads(model, 1.0 / sc.grad_accum);
    if (hooks.after_backward) hooks.after_backward();
    s.grad_norm = grad_norm(model);
    tm.clip += since(t);
    if (times) *times = tm;
    return s;
}

void apply_update(Model<float>& model, AdamW<float>& opt, const StepConfig& sc, double gn, double lr,
                  StepTimes* times) {
    Clock::time_point t = Clock::now();
    if (sc.grad_clip > 0 && gn > sc.grad_clip) scale_grads(model, sc.grad_clip / gn);
    if (times) times->clip += since(t);
    opt.update(model, lr);
    if (times) times->update = since(t);
}

StepStats train_step(Model<float>& model, AdamW<float>& opt, const StepConfig& sc, const BatchFn& next_batch,
                     double lr, const StepHooks& hooks, StepTimes* times) {
    StepStats s = compute_gradients(model, sc, next_batch, hooks, times);
    if (s.finite()) apply_update(model, opt, sc, s.grad_norm, lr, times);
    return s;
}

}  // namespace strata
