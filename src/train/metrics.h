// RUN_DIR/metrics.jsonl: one JSON object per line (fields in docs/metrics.md). On resume, lines a
// killed or interrupted run wrote after its last checkpoint are dropped first, so the resumed run
// appends exactly the lines an uninterrupted run would have written.
#pragma once
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/progress.h"

namespace strata {

class MetricsLog {
public:
    // Opens `path` for appending after dropping the lines past `resume_step` (> 0), or truncates it
    // for a new run (resume_step 0).
    // Each line written is also passed to `observer` (if set), as the JSON text of the line.
    using Observer = std::function<void(const std::string& line)>;
    MetricsLog(const std::string& path, long resume_step, Progress& progress, Observer observer = {});
    ~MetricsLog();
    MetricsLog(const MetricsLog&) = delete;
    MetricsLog& operator=(const MetricsLog&) = delete;

    // Whether a validation line for resume_step survived (the eval due there was done).
    bool has_val_at_resume() const { return has_val_; }

    // One optimizer step. mfu < 0 leaves it out (no FLOP count or peak); an empty
    // sublayer_grad_norms leaves them out (they are logged every log_every steps).
    struct Step {
        long step = 0;
        double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, step_ms = 0;
        double tokens = 0;  // tokens trained on so far
        double mfu = -1;
        const std::vector<double>* sublayer_grad_norms = nullptr;
    };
    void step(const Step& s);
    void val(long step, double val_loss, bool final = false);
    // A mixture's validation line: val's fields plus "val_loss_by_corpus", each source's loss keyed by
    // its path (val_loss being their weight-averaged mean); exactly val's line when by_corpus is empty.
    void val_by_corpus(long step, double val_loss, const std::vector<std::pair<std::string, double>>& by_corpus,
                       bool final = false);
    void skipped(long step, const std::string& where);

private:
    void line(const std::string& text);
    std::string path_;
    Observer observer_;
    FILE* f_ = nullptr;
    bool has_val_ = false;
};

// RUN_DIR/history.jsonl: one line per `strata train` invocation (fields in docs/metrics.md).
void append_history(const std::string& out_dir, const nlohmann::json& entry);

// Seconds since the Unix epoch, with sub-second precision.
double unix_time();
// The current UTC time as ISO 8601, e.g. 2026-12-02T01:23:45Z.
std::string utc_timestamp();

}  // namespace strata
