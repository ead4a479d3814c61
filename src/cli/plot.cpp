// strata plot: PNG training curves of one or more runs, drawn by python/strata_tools/plot.py with
// matplotlib. The interpreter is `python3` from PATH, or STRATA_PYTHON.
//
// The module's source is embedded in the binary at build time and run with `-c` (python_script.h).
// Locating the source tree through a compile definition would break as soon as the binary is copied
// to another machine or the tree moves. The same file stays an ordinary module for Python callers
// (`import strata_tools.plot`).
#include "cli/commands.h"
#include "cli/python_script.h"
#include "strata_tools_plot_py.h"  // kPlotPy: the source of python/strata_tools/plot.py

namespace strata::cli {

namespace {
const char* kErrorPrefix = "strata-plot-error: ";  // plot.py's ERROR_PREFIX
}  // namespace

void add_plot_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("plot", "PNG training curves of runs (needs matplotlib)");
    struct Opts {
        std::vector<std::string> runs;
        std::string out, metrics = "loss,val_loss,lr,grad_norm,tokens_per_s";
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("run_dirs", o->runs, "run directories (each holding metrics.jsonl), overlaid in every figure")
        ->required()->expected(1, -1)->type_name("RUN_DIR");
    cmd->add_option("--out", o->out, "output directory (default: FIRST_RUN_DIR/plots)");
    cmd->add_option("--metrics", o->metrics, "comma-separated metrics, one PNG each (absent from every run: skipped)")
        ->capture_default_str();
    cmd->callback([o] {
        if (dry_run()) return;
        const std::string python = python_interpreter();
        std::vector<std::string> args = {"--metrics", o->metrics};
        if (!o->out.empty()) args.insert(args.end(), {"--out", o->out});
        args.push_back("--");
        args.insert(args.end(), o->runs.begin(), o->runs.end());
        run_python_script("strata plot", python, kPlotPy, kErrorPrefix, args);
    });
}

}  // namespace strata::cli
