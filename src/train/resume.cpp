#include "train/resume.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "train/faults.h"

namespace strata {

namespace fs = std::filesystem;

// Keys that describe one invocation, not the run: they may differ on every resume unremarked.
static const std::set<std::string> kInvocationKeys = {"resume", "overwrite", "allow_changes", "init_from",
                                                      "init_optimizer"};
// Keys that change what the run trains on: refused on resume unless train.allow_changes=true.
static const std::set<std::string> kGuardedKeys = {"batch_size", "seq_len", "seed", "corpus"};

static std::string show(const nlohmann::json& v) { return v.is_null() ? "(unset)" : v.dump(); }

std::vector<ConfigChange> config_changes(const nlohmann::json& a, const nlohmann::json& b, const std::string& prefix) {
    std::vector<ConfigChange> out;
    std::set<std::string> keys;
    for (auto it = a.begin(); it != a.end(); ++it) keys.insert(it.key());
    for (auto it = b.begin(); it != b.end(); ++it) keys.insert(it.key());
    for (const std::string& k : keys) {
        const nlohmann::json va = a.contains(k) ? a[k] : nlohmann::json(), vb = b.contains(k) ? b[k] : nlohmann::json();
        if (va != vb) out.push_back({prefix + "." + k, va, vb});
    }
    return out;
}

// A corpus entry as a normal absolute path, so "data/x.txt" recorded by an older run and the
// absolute form recorded now compare equal.
static nlohmann::json normal_paths(const nlohmann::json& c) {
    auto norm = [](const nlohmann::json& p) {
        return p.is_string() ? nlohmann::json(fs::absolute(p.get<std::string>()).lexically_normal().string()) : p;
    };
    if (c.is_string()) return norm(c);
    nlohmann::json out = c;
    if (out.is_array())
        for (auto& e : out)
            if (e.is_object() && e.contains("path")) e["path"] = norm(e["path"]);
    return out;
}

nlohmann::json RunStart::trainer_state() const {
    return {{"lr_schedule", schedule.to_json()},
            {"first_logged_loss", first_logged_loss},
            {"diverged_logs", diverged_logs},
            {"best_val_loss", best_val_loss},
            {"tokens_seen", tokens_seen}};
}

void prepare_run_dir(const TrainConfig& t) {
    if (t.resume) return;
    const fs::path dir(t.out_dir);
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return;
    std::vector<fs::path> run_files;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        const bool ckpt = name.rfind("checkpoint", 0) == 0 && it->path().extension() == ".safetensors";
        if (ckpt || name == "metrics.jsonl" || name == "history.jsonl" || name == "config.json" ||
            name == "tokenizer.model")
            run_files.push_back(it->path());
    }
    if (run_files.empty()) return;
    if (!t.overwrite)
        throw Error(t.out_dir + " already holds a run (" + run_files.front().filename().string() +
                    "); with train.resume=false it would be overwritten. Set train.resume=true to continue it, "
                    "train.overwrite=true to delete it and start over, or choose another train.out_dir");
    std::string names;
    for (const fs::path& p : run_files) {
        fs::remove(p, ec);
        if (ec) throw Error("train.overwrite: cannot delete " + p.string() + ": " + ec.message());
        names += (names.empty() ? "" : ", ") + p.filename().string();
    }
    std::fprintf(stderr, "train.overwrite: deleted the previous run in %s (%s)\n", t.out_dir.c_str(), names.c_str());
}

static void load_trainer_state(RunStart& rs, const RunConfig& prev, const std::string& ckpt) {
    rs.schedule = LrSchedule::of(prev.train);
    rs.tokens_seen = double(rs.st.step) * double(prev.train.batch_size) * prev.train.seq_len * prev.train.grad_accum;
    const nlohmann::json& j = rs.st.trainer;
    if (j.is_null()) return;  // a checkpoint from before the trainer state was saved
    try {
        if (j.contains("lr_schedule")) rs.schedule = LrSchedule::from_json(j.at("lr_schedule"));
        rs.first_logged_loss = j.value("first_logged_loss", 0.0);
        rs.diverged_logs = j.value("diverged_logs", 0L);
        rs.best_val_loss = j.value("best_val_loss", 0.0);
        rs.tokens_seen = j.value("tokens_seen", rs.tokens_seen);
    } catch (const nlohmann::json::exception& e) {
        throw Error("checkpoint " + ckpt + " has a corrupt \"trainer\" field: " + e.what());
    }
}

static std::string model_diff(const RunConfig& a, const RunConfig& b) {
    std::string diff;
    for (const ConfigChange& c : config_changes(a.model.to_json(), b.model.to_json(), "model"))
        diff += (diff.empty() ? "" : ", ") + c.key + " " + show(c.old_value) + " → " + show(c.new_value);
    return diff;
}

// train.init_from: a new run that starts from a checkpoint's weights (and with init_optimizer its
// AdamW moments), keeping its tokenizer; its step counter, schedule and metrics start at 0.
static RunStart init_from(const RunConfig& rc, Device device) {
    const TrainConfig& t = rc.train;
    RunStart rs;
    LoadedCheckpoint lc = load_checkpoint(t.init_from, !t.init_optimizer, device);
    const std::string diff = model_diff(lc.rc, rc);
    if (!diff.empty())
        throw Error("train.init_from " + t.init_from + " has another model config (" + diff +
                    "); the model section must be the checkpoint's");
    rs.model = std::move(lc.model);
    if (t.init_optimizer) {
        rs.opt = std::move(lc.opt);
        rs.opt->cfg = AdamWConfig{t.beta1, t.beta2, t.eps, t.weight_decay};
    } else {
        rs.opt = std::make_unique<AdamW<float>>(*rs.model, AdamWConfig{t.beta1, t.beta2, t.eps, t.weight_decay});
    }
    for (const Buffer* buf : {&rs.model->params(), &rs.opt->m, &rs.opt->v}) {
        std::string bad = first_nonfinite(*rs.model, *buf);
        if (!bad.empty()) throw Error("train.init_from " + t.init_from + " holds non-finite values in " + bad);
    }
    rs.tok = std::move(lc.tok);
    rs.schedule = LrSchedule::of(t);
    rs.init_from = t.init_from;
    std::fprintf(stderr, "starting from the weights%s of %s (step %ld of its run), with its tokenizer\n",
                 t.init_optimizer ? " and AdamW moments" : "", t.init_from.c_str(), lc.st.step);
    return rs;
}

RunStart start_run(const RunConfig& rc, Device device) {
    const TrainConfig& t = rc.train;
    RunStart rs;
    const std::string ckpt = checkpoint_path(t.out_dir);
    if (!(t.resume && fs::exists(ckpt))) {
        if (!t.init_from.empty()) return init_from(rc, device);
        rs.model = std::make_unique<Model<float>>(rc.model, device);
        rs.opt = std::make_unique<AdamW<float>>(*rs.model, AdamWConfig{t.beta1, t.beta2, t.eps, t.weight_decay});
        rs.schedule = LrSchedule::of(t);
        return rs;
    }
    LoadedCheckpoint lc = load_checkpoint(ckpt, false, device);
    const nlohmann::json old_j = lc.rc.to_json(), new_j = rc.to_json();
    if (const std::string diff = model_diff(lc.rc, rc); !diff.empty())
        throw Error("checkpoint " + ckpt + " was made with a different model config (" + diff +
                    "); choose another train.out_dir, or set train.resume=false and train.overwrite=true to start "
                    "over");
    nlohmann::json old_t = old_j["train"], new_t = new_j["train"];
    for (const std::string& k : kInvocationKeys) {  // (init_from only matters for a new run)
        old_t.erase(k);
        new_t.erase(k);
    }
    if (old_t.contains("corpus")) old_t["corpus"] = normal_paths(old_t["corpus"]);
    if (old_t.contains("data_dir")) old_t["data_dir"] = normal_paths(old_t["data_dir"]);
    if (old_t.contains("out_dir")) old_t["out_dir"] = normal_paths(old_t["out_dir"]);
    rs.changes = config_changes(old_t, new_t, "train");
    std::string guarded;
    for (const ConfigChange& c : rs.changes)
        if (kGuardedKeys.count(c.key.substr(6)))
            guarded += (guarded.empty() ? "" : ", ") + c.key + " " + show(c.old_value) + " → " + show(c.new_value);
    if (!guarded.empty() && !t.allow_changes)
        throw Error("resuming " + ckpt + " with changed data settings (" + guarded +
                    "): the rest of the run would train on other batches than its first part. Set "
                    "train.allow_changes=true to accept this, or choose another train.out_dir for a new run");

    rs.model = std::move(lc.model);
    STRATA_CHECK(&rs.model->backend() == &backend_for(device), "the checkpoint's model is on another backend");
    rs.opt = std::move(lc.opt);
    rs.opt->cfg = AdamWConfig{t.beta1, t.beta2, t.eps, t.weight_decay};
    rs.st = lc.st;
    // A loadable file can still hold a state no run could have written: refuse to train from it.
    if (rs.st.step < 0 || rs.opt->step < 0 || rs.opt->step > rs.st.step)
        throw Error("checkpoint " + ckpt + " has inconsistent step counters (step " + std::to_string(rs.st.step) +
                    ", adamw_step " + std::to_string(rs.opt->step) + ")");
    for (const Buffer* buf : {&rs.model->params(), &rs.opt->m, &rs.opt->v}) {
        std::string bad = first_nonfinite(*rs.model, *buf);
        if (!bad.empty())
            throw Error("checkpoint " + ckpt + " holds non-finite values in the " +
                        (buf == &rs.model->params() ? "weights" : "AdamW moments") + " of " + bad +
                        "; it cannot be trained from");
    }
    load_trainer_state(rs, lc.rc, ckpt);
    rs.saved_step = rs.st.step;
    rs.resumed = true;
    rs.previous = lc.rc;
    rs.tok = std::move(lc.tok);
    std::fprintf(stderr, "resuming from %s at step %ld\n", ckpt.c_str(), rs.st.step);
    for (const ConfigChange& c : rs.changes)
        std::fprintf(stderr, "  changed on resume: %s %s → %s\n", c.key.c_str(), show(c.old_value).c_str(),
                     show(c.new_value).c_str());
    const LrSchedule next = rs.schedule.resumed(t, rs.st.step);
    if (rs.st.step < t.steps && next.at(rs.st.step) != rs.schedule.at(rs.st.step))
        std::fprintf(stderr, "  the lr schedule follows the new settings: lr %.3e at step %ld (was %.3e)\n",
                     next.at(rs.st.step), rs.st.step + 1, rs.schedule.at(rs.st.step));
    else if (next.from_step == rs.st.step && rs.st.step < t.steps)
        std::fprintf(stderr, "  the lr continues from %.3e at step %ld down to %.3e at step %ld\n", next.from_lr,
                     rs.st.step + 1, next.min_lr, next.total);
    rs.schedule = next;
    return rs;
}

}  // namespace strata
