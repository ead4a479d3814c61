// The learning-rate schedule: linear warm-up to lr, then a cosine down to min_lr at `total` steps
// (lr_decay_steps, or steps when that is 0), flat at min_lr after.
//
// A resumed run whose total grows (train.steps raised) continues from where it is: the cosine runs
// from the lr the old schedule gave at the checkpoint's step down to min_lr over the remaining
// steps, so the lr never jumps. The schedule a run is on is saved with its checkpoint.
#pragma once
#include <nlohmann/json.hpp>

#include "train/optimizer.h"
#include "train/run_config.h"

namespace strata {

struct LrSchedule {
    long warmup = 0, total = 1;
    double lr = 0, min_lr = 0;
    long from_step = -1;  // ≥ 0: a continuation, the cosine runs from from_lr at from_step to min_lr at total
    double from_lr = 0;

    static LrSchedule of(const TrainConfig& t) {
        LrSchedule s;
        s.warmup = t.warmup;
        s.total = t.lr_decay_steps > 0 ? t.lr_decay_steps : t.steps;
        s.lr = t.lr;
        s.min_lr = t.min_lr;
        return s;
    }

    // The lr of the step that runs after `step` steps were done (0-based step index).
    double at(long step) const {
        if (from_step < 0 || step < from_step) return lr_at(step, warmup, total, lr, min_lr);
        if (step >= total) return min_lr;
        const double u = double(step - from_step) / double(std::max(1L, total - from_step));
        return min_lr + 0.5 * (from_lr - min_lr) * (1.0 + std::cos(M_PI * u));
    }

    // The schedule that continues this one under new settings `t` from `step`: unchanged when the
    // settings give the same schedule; a continuation when only the total changed (and warm-up is
    // over); else the new settings' own schedule (the lr then changes at `step`, as asked).
    LrSchedule resumed(const TrainConfig& t, long step) const {
        LrSchedule n = of(t);
        if (n.warmup == warmup && n.lr == lr && n.min_lr == min_lr) {
            if (n.total == total) return *this;
            if (step < warmup) return n;  // warm-up does not depend on the total: no jump
            n.from_step = step;
            n.from_lr = at(step);
            if (n.total <= step) n.from_lr = min_lr;
        }
        return n;
    }

    nlohmann::json to_json() const {
        return {{"warmup", warmup}, {"total", total}, {"lr", lr}, {"min_lr", min_lr},
                {"from_step", from_step}, {"from_lr", from_lr}};
    }
    static LrSchedule from_json(const nlohmann::json& j) {
        LrSchedule s;
        s.warmup = j.at("warmup").get<long>();
        s.total = j.at("total").get<long>();
        s.lr = j.at("lr").get<double>();
        s.min_lr = j.at("min_lr").get<double>();
        s.from_step = j.at("from_step").get<long>();
        s.from_lr = j.at("from_lr").get<double>();
        return s;
    }
};

}  // namespace strata
