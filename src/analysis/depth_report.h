// The depth report: what `strata diagnose` prints and the first part of what `strata analyze` measures
// (docs/diagnostics.md, docs/analysis.md). One JSON schema for both: diagnose's fields, to which
// analyze adds its own (analysis/usefulness.h).
#pragma once
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model.h"
#include "train/data.h"

namespace strata {

struct DepthReportOptions {
    int batch_size = 0, seq_len = 0;  // of the validation batches
    long batches = 4;                 // validation batches per measurement (≤ 0: all)
    bool skip = true;                 // the single-sublayer skip ablation (one evaluation per sublayer)
    bool progress = false;            // a progress line on stderr
};

// "attn 3", "mlp 3": the name of sublayer j.
std::string sublayer_name(long j);

// Per sublayer: input, output and state RMS, the gradient norm of its parameters and its skip Δloss;
// the final norm's input RMS; the slopes of ln RMS over depth; under AttnRes the mean depth weights,
// under MoDA the depth and sink mass per layer and query head. `checkpoint` names the model.
nlohmann::json depth_report(Model<float>& m, const TokenShard& val, const DepthReportOptions& o,
                            const std::string& checkpoint);

// The report's diagnose part as text (the tables of `strata diagnose`).
void print_depth_report(const nlohmann::json& r, std::FILE* out);

// The least-squares slope of ln(y) over x (y > 0), 0 when fewer than two points.
double log_slope(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace strata
