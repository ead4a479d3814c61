// strata experiment: named suites of training runs that test the depth papers' claims with paired
// seeds (docs/results.md, docs/analysis.md). A suite is a grid of variants × seeds on one base config;
// each run trains resumably, writes its result as JSON when it finishes, and the suite's summary
// compares the variants by paired per-seed differences with 95 % t intervals.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace strata {

struct SuiteVariant {
    std::string name;
    std::vector<std::string> sets;  // --set overrides on top of the suite's base
    std::string describe;           // one line for the report
};

// A claim compared across variants: the per-seed value of `metric` in `a` minus that in `b` (or, with
// c and d, (a − b) − (c − d)); the paper's sign says which way it should point.
struct SuiteClaim {
    std::string name, source;       // what the paper claims, and where
    std::string metric;             // "val_loss", "useful_share", "output_log_rms_slope", ...
    std::string a, b, c, d;         // variant names; c and d empty for a plain difference
    int expected_sign = -1;         // the paper's direction: −1 (a below b) or +1
};

struct Suite {
    std::string name, description;
    std::vector<std::string> base;  // --set overrides of the default config
    // The first variant of each depth (n_layers) is the reference whose non-embedding parameters the
    // others of that depth match within ±3 % (a variant that adds some gets a narrower MLP).
    std::vector<SuiteVariant> variants;
    std::vector<uint64_t> seeds;    // model.seed and train.seed alike
    bool usefulness = false;        // run the block-usefulness measures on each finished run
    long fit_tokens = 65536;        // training tokens the linear replacements are fitted on
    std::vector<SuiteClaim> claims;
    std::string budget;             // the stated cost, for the report
};

// The suites at full size, or at toy size (quick: every suite in minutes, for CI).
std::vector<Suite> experiment_suites(bool quick);
// The names, for errors and --help.
std::vector<std::string> suite_names();

struct ExperimentOptions {
    std::string runs_dir;     // run directories: RUNS/SUITE/VARIANT/seed-S
    std::string results_dir;  // results: RESULTS/SUITE/VARIANT-seed-S.json, summary.json, report.md, PNGs
    std::string corpus, data_dir;
    int threads = 2;
    bool plots = true;
    bool report_only = false;  // summarise what is there, train nothing
    bool retry_failed = false; // train the runs recorded as failed again
};

// Runs the suite's missing or stale runs and writes its summary. Returns false when interrupted.
bool run_suite(const Suite& s, const ExperimentOptions& o);

// The Student-t 0.975 quantile with df degrees of freedom (df ≥ 1).
double t_quantile_975(int df);

// Paired differences x: their mean, a 95 % t interval, and the number of seeds at which the observed
// mean and spread would give an interval that excludes zero (0 when it already does or cannot).
nlohmann::json paired_interval(const std::vector<double>& x);

}  // namespace strata
