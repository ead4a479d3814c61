// `strata bench attnres`: the AttnRes op's achieved memory bandwidth against the machine's copy
// bandwidth, measured in the same run (docs/attn_res.md). The op reads n sources of (N, D) and writes
// one; with the sources several times the last-level cache, it is bound by memory, and its ideal is
// the copy bandwidth.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/machine.h"
#include "bench/stats.h"

namespace strata::bench {

struct AttnResBenchOptions {
    int threads = 2;
    int sources = 9;     // n: what Full AttnRes's mix at sublayer 8 of the bench model reads
    long d_model = 384;  // the bench model's D
    long rows = 0;       // N; 0: enough rows that the sources total ≥ 4× the last-level cache
    int reps = 10;
    std::string json_out, markdown_out;
};

struct AttnResBenchResult {
    AttnResBenchOptions options;
    MachineFacts machine;
    long rows = 0;
    double llc_bytes = 0;             // the last-level cache, from sysfs (0: unknown, 32 MiB assumed)
    double source_bytes = 0;          // n·N·D·4
    double copy_bytes = 0;            // the memcpy buffer (bytes read; as many are written)
    double fwd_bytes = 0, bwd_bytes = 0;  // bytes each op moves, as counted in the report
    std::vector<double> copy_gbs, fwd_gbs, bwd_gbs;  // per repetition, GB/s
    std::vector<double> fwd_share, bwd_share;         // per repetition, ÷ the copy's GB/s of that repetition
};

AttnResBenchResult run_attnres_bench(const AttnResBenchOptions& o);
std::string attnres_markdown(const AttnResBenchResult& r);
nlohmann::json attnres_json(const AttnResBenchResult& r);

}  // namespace strata::bench
