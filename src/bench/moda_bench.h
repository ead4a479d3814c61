// `strata bench moda`: what MoDA's depth slots cost over plain attention, against their ideal
// (docs/moda.md). For each sequence length T, group size G and slot count L it times the op's forward
// plus backward at L and at L = 0 (plain causal attention, the same op) in one run, with a memcpy:
//   extra  = (t_MoDA − t_attention) / t_MoDA
//   ideal  = max(depth FLOPs at the attention's measured rate, depth bytes at the copy bandwidth)
// and reports (t_MoDA − t_attention) ÷ ideal, whose target is ≤ 1.5 wherever the ideal is ≥ 2 % of
// t_MoDA.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/machine.h"
#include "bench/stats.h"

namespace strata::bench {

struct ModaBenchOptions {
    int threads = 2;
    std::vector<long> seq = {1024, 2048, 4096, 8192};
    std::vector<long> groups = {2, 4, 8};
    std::vector<long> slots = {16, 64};
    long kv_heads = 2, head_dim = 64, batch = 1;
    int reps = 10;
    std::string json_out, markdown_out;
};

struct ModaBenchPoint {
    long T = 0, G = 0, L = 0;
    double attn_flops = 0, depth_flops = 0, depth_bytes = 0;
    std::vector<double> t_attn, t_moda;  // seconds, forward + backward, per repetition
    std::vector<double> copy_gbs;        // the memcpy of the same repetition
    // per repetition: the extra share, the ideal's share of t_MoDA, (t_MoDA − t_attention) ÷ ideal,
    // the attention's GFLOP/s
    std::vector<double> extra, ideal_share, over_ideal, attn_gflops;
};

struct ModaBenchResult {
    ModaBenchOptions options;
    MachineFacts machine;
    double copy_bytes = 0;
    std::vector<ModaBenchPoint> points;
};

ModaBenchResult run_moda_bench(const ModaBenchOptions& o);

// `strata bench moda --stages` (moda_stages.cpp): the paper's Table 7 ablation, forward only, fp32.
struct ModaStagesOptions {
    int threads = 2;
    long T = 512, G = 8, kv_heads = 2, head_dim = 64, L = 32;
    int reps = 10;
};
struct ModaStagesResult {
    ModaStagesOptions options;
    MachineFacts machine;
    std::vector<std::string> names;             // the stages, in the paper's order, then moda_forward
    std::vector<std::vector<double>> seconds;     // forward, per stage, per repetition
    std::vector<std::vector<double>> seconds_fb;  // forward plus backward, per stage, per repetition
    std::vector<double> rel_err;                  // each stage's output against moda_forward's
    std::vector<double> rel_err_grad;             // its gradients against moda_backward's
};
ModaStagesResult run_moda_stages(const ModaStagesOptions& o);
std::string moda_stages_markdown(const ModaStagesResult& r);
nlohmann::json moda_stages_json(const ModaStagesResult& r);
std::string moda_markdown(const ModaBenchResult& r);
nlohmann::json moda_json(const ModaBenchResult& r);

}  // namespace strata::bench
