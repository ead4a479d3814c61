#include "train/run_config.h"

#include "backend/backend.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"
#include "core/json_fields.h"
#include "train/tokenizer.h"

#include "default_config.h"  // generated from configs/default.json (CMakeLists.txt)

namespace strata {

// A train.corpus list: 1 … kMaxCorpusSources entries, each a non-empty path without NUL and a
// positive finite weight, no path twice (compared as absolute, normalised paths).
static void validate_corpora(const std::string& o, const std::vector<CorpusSource>& list) {
    if (list.size() > kMaxCorpusSources)
        throw Error(o + ": train.corpus lists " + std::to_string(list.size()) + " sources; at most " +
                    std::to_string(kMaxCorpusSources) + " are allowed");
    std::vector<std::string> seen;
    double sum = 0;
    for (size_t i = 0; i < list.size(); i++) {
        const std::string at = o + ": train.corpus[" + std::to_string(i) + "]";
        const CorpusSource& s = list[i];
        if (s.path.empty()) throw Error(at + ".path must name a file or folder");
        if (s.path.find('\0') != std::string::npos) throw Error(at + ".path contains a NUL character");
        if (!(std::isfinite(s.weight) && s.weight > 0))
            throw Error(at + ".weight must be a positive finite number, got " + std::to_string(s.weight));
        sum += s.weight;
        std::error_code ec;
        std::filesystem::path p = std::filesystem::absolute(s.path, ec);
        if (ec) p = s.path;
        p = p.lexically_normal();
        if (p.has_relative_path() && p.filename().empty()) p = p.parent_path();  // "dir/" is "dir"
        for (size_t j = 0; j < seen.size(); j++)
            if (seen[j] == p.string())
                throw Error(at + ": " + s.path + " is the same path as train.corpus[" + std::to_string(j) +
                            "] (" + list[j].path + "); list each source once");
        seen.push_back(p.string());
    }
    if (!std::isfinite(sum)) throw Error(o + ": train.corpus weights must have a finite sum");
}

// train.corpus: one string (a file or folder), or a list of {"path": ..., "weight": ...} objects
// (weight defaults to 1). The list is checked by validate_corpora.
static void read_corpus(const nlohmann::json& v, const std::string& origin, TrainConfig& c) {
    if (v.is_string()) {
        c.corpus = v.get<std::string>();
        c.corpora.clear();
        return;
    }
    if (!v.is_array())
        throw Error(origin + " [train]: \"corpus\" must be a string or a list of {\"path\", \"weight\"} objects, "
                    "got " + v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    if (v.empty()) throw Error(origin + ": train.corpus must list at least one {\"path\", \"weight\"} entry");
    c.corpus.clear();
    c.corpora.clear();
    for (size_t i = 0; i < v.size(); i++) {
        const std::string at = origin + " [train.corpus[" + std::to_string(i) + "]]";
        JsonFields f(v[i], at);
        CorpusSource s;
        f.get("path", s.path);
        f.get("weight", s.weight);
        f.finish();
        if (!v[i].contains("path")) throw Error(at + ": \"path\" is missing");
        c.corpora.push_back(s);
    }
}

static nlohmann::json corpus_json(const TrainConfig& c) {
    if (c.corpora.empty()) return c.corpus;
    nlohmann::json list = nlohmann::json::array();
    for (const CorpusSource& s : c.corpora) list.push_back({{"path", s.path}, {"weight", s.weight}});
    return list;
}

void TrainConfig::validate(const std::string& o) const {
    auto pos = [&](const char* name, double v, double max) {
        if (!(v > 0)) throw Error(o + ": train." + name + " must be positive, got " + std::to_string(v));
        if (v > max) throw Error(o + ": train." + name + " = " + std::to_string(v) + " is absurdly large");
    };
    auto nonneg = [&](const char* name, double v) {
        if (!(v >= 0)) throw Error(o + ": train." + name + " must not be negative, got " + std::to_string(v));
    };
    pos("batch_size", batch_size, 1 << 16);
    pos("seq_len", seq_len, 1 << 20);
    pos("grad_accum", grad_accum, 1 << 16);
    pos("steps", double(steps), 1e12);
    pos("lr", lr, 10);
    nonneg("min_lr", min_lr);
    nonneg("warmup", double(warmup));
    nonneg("lr_decay_steps", double(lr_decay_steps));
    nonneg("weight_decay", weight_decay);
    nonneg("grad_clip", grad_clip);
    pos("eps", eps, 1);
    pos("threads", threads, kMaxThreads);
    pos("eval_every", double(eval_every), 1e12);
    pos("eval_batches", double(eval_batches), 1e9);
    pos("ckpt_every", double(ckpt_every), 1e12);
    pos("log_every", double(log_every), 1e12);
    if (!(beta1 >= 0 && beta1 < 1)) throw Error(o + ": train.beta1 must be in [0, 1)");
    if (!(beta2 >= 0 && beta2 < 1)) throw Error(o + ": train.beta2 must be in [0, 1)");
    if (!(val_fraction > 0 && val_fraction < 0.5)) throw Error(o + ": train.val_fraction must be in (0, 0.5)");
    if (min_lr > lr)
        throw Error(o + ": train.min_lr (" + std::to_string(min_lr) + ") must not exceed train.lr (" +
                    std::to_string(lr) + ")");
    // AdamW's decoupled decay multiplies the weights by 1 - lr * weight_decay each step.
    if (!(lr * weight_decay < 1))
        throw Error(o + ": train.lr * train.weight_decay must be below 1 (the weights are scaled by 1 - lr * "
                        "weight_decay every step), got " + std::to_string(lr * weight_decay));
    parse_device(device, o);
    parse_precision(precision, o + ": train.precision");
    if (on_nonfinite != "stop" && on_nonfinite != "skip")
        throw Error(o + ": train.on_nonfinite must be \"stop\" or \"skip\"");
    if (on_divergence != "warn" && on_divergence != "stop")
        throw Error(o + ": train.on_divergence must be \"warn\" or \"stop\", got \"" + on_divergence + "\"");
    nonneg("peak_gflops", peak_gflops);
    if (!std::isfinite(peak_gflops) || peak_gflops > 1e9)
        throw Error(o + ": train.peak_gflops = " + std::to_string(peak_gflops) + " is absurdly large");
    nonneg("sample_every", double(sample_every));
    nonneg("keep_every", double(keep_every));
    if (init_optimizer && init_from.empty())
        throw Error(o + ": train.init_optimizer needs train.init_from (the checkpoint whose AdamW state to take)");
    if (init_from.find('\0') != std::string::npos) throw Error(o + ": train.init_from contains a NUL character");
    if (corpora.empty() && corpus.empty()) throw Error(o + ": train.corpus must name a file or folder");
    validate_corpora(o, corpora);
    if (out_dir.empty() || data_dir.empty()) throw Error(o + ": train.out_dir and train.data_dir must be set");
    // The config is saved as JSON (config.json, the checkpoint's metadata), which holds only UTF-8:
    // a path that is not would fail the first checkpoint save, after the training it was to keep.
    auto utf8 = [&](const char* name, const std::string& v) {
        size_t bad = find_invalid_utf8(v);
        if (bad != std::string::npos)
            throw Error(o + ": train." + name + " is not valid UTF-8 (at byte " + std::to_string(bad) + ")");
    };
    utf8("corpus", corpus);
    for (size_t i = 0; i < corpora.size(); i++)
        utf8(("corpus[" + std::to_string(i) + "].path").c_str(), corpora[i].path);
    utf8("data_dir", data_dir);
    utf8("out_dir", out_dir);
    utf8("init_from", init_from);
    for (const std::string& s : no_decay) utf8("no_decay", s);
    // A NUL would silently cut the path short at the operating-system boundary.
    for (auto [name, v] : {std::pair{"corpus", &corpus}, {"data_dir", &data_dir}, {"out_dir", &out_dir}})
        if (v->find('\0') != std::string::npos) throw Error(o + ": train." + name + " contains a NUL character");
    for (const auto& pat : no_decay)
        if (pat.empty() || pat.find('\0') != std::string::npos)
            throw Error(o + ": train.no_decay entries must be non-empty strings without NUL characters");
}

RunConfig RunConfig::from_json(const nlohmann::json& j, const std::string& origin) {
    RunConfig rc;
    JsonFields top(j, origin);
    top.skip("model");
    top.skip("train");
    top.finish();
    if (j.contains("model")) rc.model = ModelConfig::from_json(j["model"], origin + " [model]");
    if (j.contains("train")) {
        const auto& t = j["train"];
        JsonFields f(t, origin + " [train]");
        TrainConfig& c = rc.train;
        f.skip("corpus");
        if (t.contains("corpus")) read_corpus(t["corpus"], origin, c);
        f.get("data_dir", c.data_dir);
        f.get("out_dir", c.out_dir);
        f.get("batch_size", c.batch_size);
        f.get("seq_len", c.seq_len);
        f.get("grad_accum", c.grad_accum);
        f.get("steps", c.steps);
        f.get("lr", c.lr);
        f.get("min_lr", c.min_lr);
        f.get("warmup", c.warmup);
        f.get("lr_decay_steps", c.lr_decay_steps);
        f.get("weight_decay", c.weight_decay);
        f.get("beta1", c.beta1);
        f.get("beta2", c.beta2);
        f.get("eps", c.eps);
        f.get("grad_clip", c.grad_clip);
        f.get("seed", c.seed);
        f.get("threads", c.threads);
        f.get("eval_every", c.eval_every);
        f.get("eval_batches", c.eval_batches);
        f.get("ckpt_every", c.ckpt_every);
        f.get("log_every", c.log_every);
        f.get("val_fraction", c.val_fraction);
        f.skip("no_decay");
        if (t.contains("no_decay")) {
            if (!t["no_decay"].is_array()) throw Error(origin + ": train.no_decay must be an array of strings");
            c.no_decay.clear();
            for (const auto& s : t["no_decay"]) {
                if (!s.is_string()) throw Error(origin + ": train.no_decay must be an array of strings");
                c.no_decay.push_back(s.get<std::string>());
            }
        }
        f.get("resume", c.resume);
        f.get("overwrite", c.overwrite);
        f.get("allow_changes", c.allow_changes);
        f.get("on_nonfinite", c.on_nonfinite);
        f.get("on_divergence", c.on_divergence);
        f.get("device", c.device);
        f.get("precision", c.precision);
        f.get("peak_gflops", c.peak_gflops);
        f.get("sample_every", c.sample_every);
        f.get("keep_every", c.keep_every);
        f.get("keep_best", c.keep_best);
        f.get("init_from", c.init_from);
        f.get("init_optimizer", c.init_optimizer);
        f.finish();
    }
    rc.model.validate(origin + " [model]");
    rc.train.validate(origin);
    if (rc.model.attention == AttentionKind::moda && rc.model.moda_sequence_mask == SeqMask::noncausal)
        throw Error(origin + ": model.moda_sequence_mask = \"noncausal\" cannot train a language model: every position "
                             "would attend to the token it is asked to predict (its target is the next key). The mode "
                             "is for the op and the reference; train with \"causal\" (or \"none\", depth slots only)");
    if (rc.train.seq_len > rc.model.max_seq_len)
        throw Error(origin + ": train.seq_len (" + std::to_string(rc.train.seq_len) +
                    ") is longer than the model's maximum, model.max_seq_len (" +
                    std::to_string(rc.model.max_seq_len) + ")");
    return rc;
}

nlohmann::json RunConfig::to_json() const {
    const TrainConfig& c = train;
    nlohmann::json t = {{"corpus", corpus_json(c)},       {"data_dir", c.data_dir},         {"out_dir", c.out_dir},
                        {"batch_size", c.batch_size}, {"seq_len", c.seq_len},         {"grad_accum", c.grad_accum},
                        {"steps", c.steps},         {"lr", c.lr},                     {"min_lr", c.min_lr},
                        {"warmup", c.warmup},       {"lr_decay_steps", c.lr_decay_steps},       {"weight_decay", c.weight_decay}, {"beta1", c.beta1},
                        {"beta2", c.beta2},         {"eps", c.eps},                   {"grad_clip", c.grad_clip},
                        {"seed", c.seed},           {"threads", c.threads},           {"eval_every", c.eval_every},
                        {"eval_batches", c.eval_batches}, {"ckpt_every", c.ckpt_every}, {"log_every", c.log_every},
                        {"val_fraction", c.val_fraction}, {"no_decay", c.no_decay},   {"resume", c.resume},
                        {"overwrite", c.overwrite},       {"allow_changes", c.allow_changes},
                        {"on_nonfinite", c.on_nonfinite}, {"on_divergence", c.on_divergence},
                        {"device", c.device},             {"precision", c.precision},             {"peak_gflops", c.peak_gflops},
                        {"sample_every", c.sample_every}, {"keep_every", c.keep_every},
                        {"keep_best", c.keep_best},       {"init_from", c.init_from},
                        {"init_optimizer", c.init_optimizer}};
    return {{"model", model.to_json()}, {"train", t}};
}

void TrainConfig::make_paths_absolute(const std::string& base) {
    auto fix = [&](std::string& p) {
        if (p.empty()) return;
        std::filesystem::path fp(p);
        if (fp.is_relative()) p = (std::filesystem::path(base) / fp).lexically_normal().string();
    };
    fix(corpus);
    for (CorpusSource& s : corpora) fix(s.path);
    fix(data_dir);
    fix(out_dir);
    fix(init_from);
}

// The path keys of a config file's train section, resolved against the file's folder where they
// are relative (so a config means the same files from any working directory).
static void resolve_file_paths(nlohmann::json& j, const std::string& config_path) {
    if (!j.is_object() || !j.contains("train") || !j["train"].is_object()) return;
    const std::filesystem::path base = std::filesystem::absolute(config_path).parent_path();
    auto fix = [&](nlohmann::json& v) {
        if (!v.is_string()) return;  // a wrong type is reported by from_json
        const std::string p = v.get<std::string>();
        if (!p.empty() && std::filesystem::path(p).is_relative()) v = (base / p).lexically_normal().string();
    };
    nlohmann::json& t = j["train"];
    for (const char* key : {"corpus", "data_dir", "out_dir", "init_from"})
        if (t.contains(key)) {
            if (t[key].is_array()) {  // a corpus mixture: [{"path": ..., "weight": ...}, ...]
                for (auto& e : t[key])
                    if (e.is_object() && e.contains("path")) fix(e["path"]);
            } else {
                fix(t[key]);
            }
        }
}

void apply_overrides(nlohmann::json& j, const std::vector<std::string>& overrides) {
    for (const std::string& o : overrides) {
        auto eq = o.find('=');
        if (eq == std::string::npos || eq == 0)
            throw Error("--set " + o + ": expected SECTION.KEY=VALUE, e.g. train.steps=100");
        std::string key = o.substr(0, eq), val = o.substr(eq + 1);
        nlohmann::json v;
        try {
            v = nlohmann::json::parse(val);
        } catch (const nlohmann::json::exception&) {
            v = val;
        }
        nlohmann::json* cur = &j;
        size_t start = 0;
        for (;;) {
            auto dot = key.find('.', start);
            std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
            if (part.empty()) throw Error("--set " + o + ": empty key segment");
            if (!cur->is_object()) throw Error("--set " + o + ": " + key.substr(0, start) + " is not a section");
            if (dot == std::string::npos) {
                (*cur)[part] = v;
                break;
            }
            cur = &(*cur)[part];
            if (cur->is_null()) *cur = nlohmann::json::object();
            start = dot + 1;
        }
    }
}

nlohmann::json default_config_json() {
    nlohmann::json j = nlohmann::json::parse(kDefaultConfigJson);
    if (j.contains("train") && j["train"].is_object())
        for (const char* key : {"corpus", "data_dir", "out_dir"}) j["train"].erase(key);
    return j;
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
    nlohmann::json j = nlohmann::json::object();
    std::string origin = path.empty() ? "the default config" : path;
    if (path.empty()) {
        j = default_config_json();
    } else {
        // Only a regular file: reading a FIFO or a device would block or never end.
        struct stat sb {};
        if (::stat(path.c_str(), &sb) != 0) throw Error("cannot read config " + path + ": " + std::strerror(errno));
        if (!S_ISREG(sb.st_mode)) throw Error("config " + path + " is not a regular file");
        if (uint64_t(sb.st_size) > kMaxConfigBytes)
            throw Error("config " + path + " is " + std::to_string(sb.st_size) + " bytes; a config is at most " +
                        std::to_string(kMaxConfigBytes) + " bytes");
        std::string text = read_file(path);
        try {
            j = nlohmann::json::parse(text);
        } catch (const nlohmann::json::exception& e) {
            throw Error("config " + path + " is not valid JSON: " + e.what());
        }
        resolve_file_paths(j, path);
    }
    return run_config_of(std::move(j), origin, overrides);
}

RunConfig run_config_of(nlohmann::json j, std::string origin, const std::vector<std::string>& overrides) {
    if (!overrides.empty()) {
        apply_overrides(j, overrides);
        origin += " (with --set overrides)";
    }
    RunConfig rc = RunConfig::from_json(j, origin);
    // --set values and the built-in defaults mean paths under the working directory; a run records
    // them absolute, so its config names the same files wherever it is read.
    rc.train.make_paths_absolute(std::filesystem::current_path().string());
    return rc;
}

}  // namespace strata
