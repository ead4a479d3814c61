// Starting a run: a fresh model and optimizer, or the state of the run directory's checkpoint after
// the checks that make resuming safe and honest:
//   - the model config must be the checkpoint's (each differing key is named);
//   - batch_size, seq_len, seed and the corpus may change only with train.allow_changes=true;
//   - every other train-key change is accepted, printed as old → new and recorded in history.jsonl;
//   - the lr schedule continues without a jump when train.steps changes (schedule.h);
//   - the tokenizer, the step counters and the values must be consistent and finite.
#pragma once
#include <memory>
#include <optional>
#include <vector>

#include "train/checkpoint.h"
#include "train/schedule.h"

namespace strata {

struct ConfigChange {
    std::string key;  // "train.lr"
    nlohmann::json old_value, new_value;
};

// The keys of two config sections (model or train) that differ, named "<prefix>.<key>".
std::vector<ConfigChange> config_changes(const nlohmann::json& old_section, const nlohmann::json& new_section,
                                         const std::string& prefix);

struct RunStart {
    std::unique_ptr<Model<float>> model;
    std::unique_ptr<AdamW<float>> opt;
    TrainState st;
    long saved_step = -1;  // the step of the checkpoint on disk, -1 when there is none yet
    bool resumed = false;
    std::optional<RunConfig> previous;  // the checkpoint's config, when resumed
    std::unique_ptr<Tokenizer> tok;     // the checkpoint's tokenizer, when resumed or initialised from one
    std::string init_from;              // the checkpoint whose weights a new run started from
    std::vector<ConfigChange> changes;  // train keys that differ from the checkpoint's
    // The trainer's state carried by the checkpoint (TrainState::trainer).
    LrSchedule schedule;
    double first_logged_loss = 0;  // 0: none logged yet
    long diverged_logs = 0;        // consecutive logged steps above the divergence threshold
    double best_val_loss = 0;      // for train.keep_best; 0: none yet
    double tokens_seen = 0;        // tokens trained on so far (skipped steps included)
    nlohmann::json trainer_state() const;
};

// With train.resume=false, a run directory that already holds a run is refused unless
// train.overwrite=true, which deletes its checkpoints, metrics and history (and says so).
void prepare_run_dir(const TrainConfig& t);

// A new run (from scratch, or from train.init_from's weights), or the resumed one. The corpus is
// prepared after this, with rs.tok when it is set.
RunStart start_run(const RunConfig& rc, Device device);

}  // namespace strata
