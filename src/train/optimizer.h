// AdamW with decoupled weight decay (torch.optim.AdamW semantics), global gradient-norm clipping and
// the warm-up + cosine learning-rate schedule. The moments mirror the parameter buffer's layout, so
// the update is one loop over the named tensors and a checkpoint is one write per buffer.
#pragma once
#include <cmath>
#include <algorithm>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "model/model.h"

namespace strata {

struct AdamWConfig {
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

template <typename T>
struct AdamW {
    AdamWConfig cfg;
    std::vector<T> m, v;  // same layout as the parameters
    long step = 0;

    AdamW(size_t n, const AdamWConfig& c) : cfg(c), m(n, T(0)), v(n, T(0)) {}

    void update(std::vector<T>& params, const std::vector<T>& grads, const std::vector<ParamSpec>& specs, double lr) {
        step++;
        const double bc1 = 1.0 - std::pow(cfg.beta1, double(step));
        const double bc2 = 1.0 - std::pow(cfg.beta2, double(step));
        const T b1 = T(cfg.beta1), b2 = T(cfg.beta2), eps = T(cfg.eps);
        const T step_size = T(lr / bc1), inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2));
        for (const ParamSpec& s : specs) {
            const T decay = s.decay ? T(1.0 - lr * cfg.weight_decay) : T(1);
            T* p = params.data() + s.offset;
            const T* g = grads.data() + s.offset;
            T* mm = m.data() + s.offset;
            T* vv = v.data() + s.offset;
#pragma omp parallel for schedule(static)
            for (long i = 0; i < long(s.numel); i++) {
                mm[i] = b1 * mm[i] + (T(1) - b1) * g[i];
                vv[i] = b2 * vv[i] + (T(1) - b2) * g[i] * g[i];
                p[i] = p[i] * decay - step_size * mm[i] / (std::sqrt(vv[i]) * inv_sqrt_bc2 + eps);
            }
        }
    }
};

// The global L2 norm of the gradient, summed in a fixed order (per-thread partials in double over
// static chunks), so it is identical run to run for a given thread count.
template <typename T>
double grad_norm(const std::vector<T>& grads) {
    // Per-thread partial sums over fixed static chunks, combined in thread order: no dependence on
    // the order in which threads finish.
    double partial[256] = {0};
    int nt = 1;
#pragma omp parallel
    {
        int id = 0;
#ifdef _OPENMP
        id = omp_get_thread_num();
#pragma omp single
        nt = std::min(omp_get_num_threads(), 256);
#endif
        if (id < 256) {
            long n = long(grads.size()), per = (n + nt - 1) / nt;
            double ss = 0;
            for (long i = id * per; i < std::min(n, (id + 1) * per); i++) ss += double(grads[i]) * double(grads[i]);
            partial[id] = ss;
        }
    }
    double ss = 0;
    for (int i = 0; i < nt; i++) ss += partial[i];
    return std::sqrt(ss);
}

template <typename T>
void scale_grads(std::vector<T>& grads, double s) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < long(grads.size()); i++) grads[i] *= T(s);
}

// Linear warm-up from 0 to lr_max over `warmup` steps, then cosine decay to lr_min at `total`.
inline double lr_at(long step, long warmup, long total, double lr_max, double lr_min) {
    if (warmup > 0 && step < warmup) return lr_max * double(step + 1) / double(warmup);
    if (step >= total) return lr_min;
    double t = double(step - warmup) / double(std::max(1L, total - warmup));
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + std::cos(M_PI * t));
}

}  // namespace strata
