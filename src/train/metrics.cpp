#include "train/metrics.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <ctime>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"

namespace strata {

// Returns whether a validation line for `step` survived.
static bool truncate_metrics(const std::string& path, long step, Progress& progress) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return false;
    const std::string text = read_file(path);
    std::string kept;
    long dropped = 0;
    bool has_val = false;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        const bool complete = nl != std::string::npos;
        const std::string line = text.substr(pos, complete ? nl - pos : std::string::npos);
        pos = complete ? nl + 1 : text.size();
        if (line.empty()) continue;
        bool keep = false;
        if (complete) {  // a line without its newline was cut short by a kill
            try {
                const nlohmann::json j = nlohmann::json::parse(line);
                if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
                    j["step"].get<long>() <= step) {
                    keep = true;
                    if (j["step"].get<long>() == step && j.contains("val_loss")) has_val = true;
                }
            } catch (const nlohmann::json::exception&) {
            }
        }
        if (keep) kept += line + "\n";
        else dropped++;
    }
    if (dropped > 0) {
        atomic_write_file(path, kept);
        progress.note("metrics.jsonl: dropped " + std::to_string(dropped) + " line(s) written after step " +
                      std::to_string(step) + " by the interrupted run");
    }
    return has_val;
}

MetricsLog::MetricsLog(const std::string& path, long resume_step, Progress& progress, Observer observer)
    : path_(path), observer_(std::move(observer)) {
    has_val_ = resume_step > 0 && truncate_metrics(path, resume_step, progress);
    f_ = std::fopen(path.c_str(), resume_step > 0 ? "a" : "w");
    if (!f_) throw Error("cannot open " + path + " for writing");
}

MetricsLog::~MetricsLog() {
    if (f_) std::fclose(f_);
}

void MetricsLog::line(const std::string& text) {
    std::fputs(text.c_str(), f_);
    std::fputc('\n', f_);
    std::fflush(f_);
    if (observer_) observer_(text);
}

void MetricsLog::step(const Step& m) {
    char buf[400];
    int n = std::snprintf(buf, sizeof buf,
                          "{\"step\": %ld, \"loss\": %.17g, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, "
                          "\"step_ms\": %.2f, \"tokens\": %.0f, \"time\": %.3f",
                          m.step, m.loss, m.lr, m.grad_norm, m.tokens_per_s, m.step_ms, m.tokens, unix_time());
    std::string text(buf, size_t(n));
    if (m.mfu >= 0) {
        std::snprintf(buf, sizeof buf, ", \"mfu\": %.4f", m.mfu);
        text += buf;
    }
    if (m.sublayer_grad_norms && !m.sublayer_grad_norms->empty()) {
        text += ", \"sublayer_grad_norms\": [";
        for (size_t i = 0; i < m.sublayer_grad_norms->size(); i++) {
            std::snprintf(buf, sizeof buf, "%s%.6g", i ? ", " : "", (*m.sublayer_grad_norms)[i]);
            text += buf;
        }
        text += "]";
    }
    line(text + "}");
}

void MetricsLog::val(long step, double val_loss, bool final) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "{\"step\": %ld, \"val_loss\": %.17g, \"time\": %.3f%s}", step, val_loss,
                  unix_time(), final ? ", \"final\": true" : "");
    line(buf);
}

void MetricsLog::val_by_corpus(long step, double val_loss, const std::vector<std::pair<std::string, double>>& by_corpus,
                               bool final) {
    if (by_corpus.empty()) return val(step, val_loss, final);
    char buf[160];
    std::snprintf(buf, sizeof buf, "{\"step\": %ld, \"val_loss\": %.17g, \"val_loss_by_corpus\": {", step, val_loss);
    std::string text = buf;
    for (size_t i = 0; i < by_corpus.size(); i++) {
        std::snprintf(buf, sizeof buf, ": %.17g", by_corpus[i].second);
        text += (i ? ", " : "") + nlohmann::json(by_corpus[i].first).dump() + buf;
    }
    std::snprintf(buf, sizeof buf, "}, \"time\": %.3f%s}", unix_time(), final ? ", \"final\": true" : "");
    line(text + buf);
}

void MetricsLog::skipped(long step, const std::string& where) {
    line("{\"step\": " + std::to_string(step) + ", \"skipped\": true, \"nonfinite\": " + nlohmann::json(where).dump() +
         "}");
}

double unix_time() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string utc_timestamp() {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

void append_history(const std::string& out_dir, const nlohmann::json& entry) {
    const std::string path = out_dir + "/history.jsonl";
    std::error_code ec;
    std::string text = std::filesystem::exists(path, ec) ? read_file(path) : std::string();
    if (!text.empty() && text.back() != '\n') text += '\n';  // a line cut short by a kill stays apart
    atomic_write_file(path, text + entry.dump() + "\n");
}

}  // namespace strata
