// The report of `strata bench train`: one TrainBenchResult as Markdown and as JSON, the same content,
// and the statistics both show (bench/README.md, "The protocol").
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/stats.h"
#include "bench/train_bench.h"

namespace strata::bench {

// A configuration's median tokens/s over its repetitions, with the bootstrap interval of the median.
struct ConfigSummary {
    const ConfigResult* c = nullptr;
    MedianCI tokens_per_s;
    double step_ms = 0;  // tokens per step ÷ the median tokens/s, in ms
};

// strata ÷ one PyTorch configuration (or the faster / fastest of several), in tokens/s: the median of
// the per-repetition ratios (repetition i of each) with its bootstrap interval.
struct Comparison {
    std::string strata_id, vs;  // vs: a configuration id, or "faster-fp32" / "fastest"
    std::string vs_label;       // as the report names it ("PyTorch eager fp32", "the faster fp32 …")
    std::string picked;         // for faster-fp32 / fastest: the id picked (by the higher median)
    bool ok = false;            // a ratio was computed
    bool complete = false;      // every configuration it stands for was measured
    std::string reason;         // why not ok, or what was missing when !complete
    MedianCI ratio;
};

struct TargetCheck {
    std::string what;       // e.g. "strata fp32 ÷ the faster PyTorch fp32 configuration"
    std::string kind;       // "speed" (the interval's lower bound must reach the target) or "memory" (at most)
    double target = 0, aim = 0;
    bool evaluated = false; // both sides measured
    double value = 0, lo = 0, hi = 0;
    bool met = false, aim_met = false;
    std::string reason;     // why not evaluated
};

struct Analysis {
    std::vector<ConfigSummary> configs;
    std::vector<Comparison> ratios;
    std::vector<TargetCheck> targets;
    const ConfigSummary* find(const std::string& id) const;
};
Analysis analyze(const TrainBenchResult& r);

std::string to_markdown(const TrainBenchResult& r);
nlohmann::json to_json(const TrainBenchResult& r);

}  // namespace strata::bench
