// AdamW with decoupled weight decay (torch.optim.AdamW semantics), global gradient-norm clipping and
// the warm-up + cosine learning-rate schedule. The moments mirror the parameter buffer's layout and
// live on the model's backend, so the update is one op call per named tensor (ops.h adamw_update)
// and a checkpoint is one copy per buffer.
#pragma once
#include <cmath>
#include <algorithm>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/model.h"

namespace strata {

struct AdamWConfig {
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

template <typename T>
struct AdamW {
    using O = typename Model<T>::optim_t;  // the optimizer state's storage type
    AdamWConfig cfg;
    Buffer m, v;  // same layout as the parameters, on the model's backend
    long step = 0;

    AdamW(const Model<T>& model, const AdamWConfig& c)
        : cfg(c), m(model.backend(), dtype_of<O>(), model.num_params()),
          v(model.backend(), dtype_of<O>(), model.num_params()) {}

    // One step at learning rate lr. A parameter decays when its spec says so (ParamSpec::decay).
    void update(Model<T>& model, double lr) {
        step++;
        const AdamWArgs a{lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, step};
        T* p = model.param_data();
        const T* g = model.grad_data();
        O* mm = m.data<O>();
        O* vv = v.data<O>();
        for (const ParamSpec& s : model.specs)
            adamw_update(p + s.offset, g + s.offset, mm + s.offset, vv + s.offset, long(s.numel), a, s.decay);
    }
};

// The decay rule: a parameter decays when its spec says so (every 2-D weight; docs/model.md) and its
// name contains none of `no_decay` (train.no_decay), which can only exempt more.
inline void apply_no_decay(std::vector<ParamSpec>& specs, const std::vector<std::string>& no_decay) {
    for (ParamSpec& s : specs)
        for (const auto& pat : no_decay)
            if (s.name.find(pat) != std::string::npos) s.decay = false;
}

// The global L2 norm of the gradient: sqrt of the op's fixed-order partial sum of squares, so it is
// identical run to run for a given thread count (and ranks can add their partials).
template <typename T>
double grad_norm(Model<T>& model) {
    return std::sqrt(sum_squares(model.grad_data(), long(model.num_params())));
}

template <typename T>
void scale_grads(Model<T>& model, double s) {
    scale_forward(model.grad_data(), long(model.num_params()), s);
}

// Linear warm-up from 0 to lr_max over `warmup` steps, then cosine decay to lr_min at `total`.
inline double lr_at(long step, long warmup, long total, double lr_max, double lr_min) {
    if (warmup > 0 && step < warmup) return lr_max * double(step + 1) / double(warmup);
    if (step >= total) return lr_min;
    double t = double(step - warmup) / double(std::max(1L, total - warmup));
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + std::cos(M_PI * t));
}

}  // namespace strata
