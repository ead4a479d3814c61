// strata experiment: trains a suite's grid of runs resumably and summarises the papers' claims with
// paired seeds (analysis/experiment.h, docs/results.md). The summary's figures and report.md are drawn
// from summary.json alone by python/strata_tools/plot.py.
#include <filesystem>

#include "analysis/experiment.h"
#include "cli/commands.h"
#include "cli/python_script.h"
#include "core/error.h"
#include "core/exit_codes.h"
#include "strata_tools_plot_py.h"  // kPlotPy
#include "train/trainer.h"

namespace strata::cli {

void add_experiment_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("experiment", "train a suite of runs over seeds and test the depth papers' claims");
    struct Opts {
        std::string suite, runs, results, corpus = "data/corpus/default.txt", data_dir = "data/prepared/default";
        int threads = 2;
        bool quick = false, report_only = false, no_plots = false, retry_failed = false;
    };
    auto o = std::make_shared<Opts>();
    std::string names;
    for (const auto& n : suite_names()) names += (names.empty() ? "" : ", ") + n;
    cmd->add_option("suite", o->suite, "the suite: " + names + ", or all")->required()->type_name("SUITE");
    cmd->add_flag("--quick", o->quick, "every suite at toy size (minutes), to check that each output is produced");
    cmd->add_option("--runs", o->runs, "folder of the run directories (default: runs/experiments, or runs/experiments-quick)");
    cmd->add_option("--results", o->results,
                    "folder of the results (default: experiments/results, or runs/experiments-quick/results)");
    cmd->add_option("--corpus", o->corpus, "training text")->capture_default_str();
    cmd->add_option("--data-dir", o->data_dir, "its prepared token shards and tokenizer")->capture_default_str();
    cmd->add_option("--threads", o->threads, "threads")->capture_default_str()->check(in_range(1, kMaxThreads));
    cmd->add_flag("--report-only", o->report_only, "train nothing: summarise the results there are");
    cmd->add_flag("--retry-failed", o->retry_failed, "train the runs recorded as failed (diverged, or an error) again");
    cmd->add_flag("--no-plots", o->no_plots, "write summary.json only (no matplotlib needed)");
    cmd->callback([o, names] {
        std::vector<Suite> suites = experiment_suites(o->quick);
        if (o->suite != "all") {
            auto it = std::find_if(suites.begin(), suites.end(), [&](const Suite& s) { return s.name == o->suite; });
            if (it == suites.end()) throw Error("unknown suite \"" + o->suite + "\": the suites are " + names + " (or all)");
            suites = {*it};
        }
        if (dry_run()) return;
        ExperimentOptions eo;
        eo.runs_dir = !o->runs.empty() ? o->runs : o->quick ? "runs/experiments-quick" : "runs/experiments";
        eo.results_dir = !o->results.empty() ? o->results : o->quick ? "runs/experiments-quick/results" : "experiments/results";
        eo.corpus = o->corpus, eo.data_dir = o->data_dir, eo.threads = o->threads;
        eo.report_only = o->report_only, eo.retry_failed = o->retry_failed;
        set_threads(o->threads);
        for (const Suite& s : suites) {
            std::printf("suite %s: %s (%s)\n", s.name.c_str(), s.description.c_str(), s.budget.c_str());
            std::fflush(stdout);
            if (!run_suite(s, eo)) {
                std::printf("interrupted: the finished runs' results are in %s/%s; run the same command to go on\n",
                            eo.results_dir.c_str(), s.name.c_str());
                std::exit(kExitInterrupted);
            }
            const std::string dir = (std::filesystem::path(eo.results_dir) / s.name).string();
            if (!o->no_plots)
                run_python_script("strata experiment", python_interpreter(), kPlotPy, "strata-plot-error: ",
                                  {"--suite", dir + "/summary.json", "--out", dir});
            std::printf("suite %s: %s/%s\n", s.name.c_str(), dir.c_str(), o->no_plots ? "summary.json" : "report.md");
            std::fflush(stdout);
        }
    });
}

}  // namespace strata::cli
