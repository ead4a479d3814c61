// RUN_DIR/metrics.jsonl: one JSON object per line (fields in docs/metrics.md). On resume, lines a
// killed or interrupted run wrote after its last checkpoint are dropped first, so the resumed run
// appends exactly the lines an uninterrupted run would have written.
#pragma once
#include <cstdio>
#include <string>

#include "train/progress.h"

namespace strata {

class MetricsLog {
public:
    // Opens `path` for appending after dropping the lines past `resume_step` (> 0), or truncates it
    // for a new run (resume_step 0).
    MetricsLog(const std::string& path, long resume_step, Progress& progress);
    ~MetricsLog();
    MetricsLog(const MetricsLog&) = delete;
    MetricsLog& operator=(const MetricsLog&) = delete;

    // Whether a validation line for resume_step survived (the eval due there was done).
    bool has_val_at_resume() const { return has_val_; }

    void step(long step, double loss, double lr, double grad_norm, double tokens_per_s, double step_ms);
    void val(long step, double val_loss);
    void skipped(long step, const std::string& where);

private:
    void line(const std::string& text);
    std::string path_;
    FILE* f_ = nullptr;
    bool has_val_ = false;
};

}  // namespace strata
