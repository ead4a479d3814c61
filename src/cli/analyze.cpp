// strata analyze: a depth report per checkpoint of a run (docs/analysis.md). It measures what
// `diagnose` does and the usefulness of each block (analysis/usefulness.h), reads the per-sublayer
// gradient norms the run logged, and writes OUT/<checkpoint>/report.json; the figures and report.md
// are drawn from that file alone by python/strata_tools/plot.py, so the JSON holds exactly the
// plotted numbers.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "analysis/depth_report.h"
#include "analysis/usefulness.h"
#include "cli/commands.h"
#include "cli/python_script.h"
#include "core/error.h"
#include "core/fileio.h"
#include "strata_tools_plot_py.h"  // kPlotPy
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/trainer.h"

namespace strata::cli {

namespace fs = std::filesystem;

namespace {

// The checkpoints of a run directory: the rolling one, those kept every N steps (by step) and the
// best one; or the one file given.
std::vector<fs::path> checkpoints_of(const fs::path& p, bool all) {
    if (!fs::exists(p)) throw Error(p.string() + " not found");
    if (!fs::is_directory(p)) return {p};
    const fs::path rolling = p / "checkpoint.safetensors";
    if (!all) {
        if (!fs::exists(rolling)) throw Error(p.string() + " holds no checkpoint.safetensors (is it a strata run directory?)");
        return {rolling};
    }
    std::vector<std::pair<long, fs::path>> kept;
    const std::regex step_re("checkpoint-([0-9]+)\\.safetensors");
    fs::path best;
    for (const auto& e : fs::directory_iterator(p)) {
        const std::string name = e.path().filename().string();
        std::smatch mt;
        if (std::regex_match(name, mt, step_re)) kept.emplace_back(std::stol(mt[1]), e.path());
        else if (name == "checkpoint-best.safetensors") best = e.path();
    }
    std::sort(kept.begin(), kept.end());
    std::vector<fs::path> out;
    for (auto& [s, f] : kept) out.push_back(f);
    if (fs::exists(rolling)) out.push_back(rolling);
    if (!best.empty()) out.push_back(best);
    if (out.empty()) throw Error(p.string() + " holds no checkpoint (is it a strata run directory?)");
    return out;
}

// The per-sublayer gradient norms the run logged (metrics.jsonl) up to `step`; empty when absent.
nlohmann::json training_grad_norms(const fs::path& run_dir, long step) {
    std::vector<long> steps;
    nlohmann::json norms = nlohmann::json::array();
    std::ifstream in(run_dir / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
        const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (!j.is_object() || !j.contains("sublayer_grad_norms") || !j.contains("step") || !j["step"].is_number_integer())
            continue;
        if (j["step"].get<long>() > step) continue;  // a later checkpoint's
        steps.push_back(j["step"].get<long>());
        norms.push_back(j["sublayer_grad_norms"]);
    }
    return {{"steps", steps}, {"sublayer_grad_norms", norms}};
}

}  // namespace

void add_analyze_command(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "analyze", "depth report of a run's checkpoints: block usefulness, magnitudes, depth attention, as Markdown, PNG and JSON");
    struct Opts {
        std::string path, out, data_dir, which = "all";
        long batches = 4, fit_tokens = 65536;
        int batch_size = 0, seq_len = 0, threads = 2;
        double useful_ratio = 1.1;
        bool no_plots = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("run_dir", o->path, "a run directory, or one checkpoint file")->required()->type_name("RUN_DIR");
    cmd->add_option("--out", o->out, "output folder, one subfolder per checkpoint (default: RUN_DIR/analysis)");
    cmd->add_option("--checkpoints", o->which, "all: every checkpoint in RUN_DIR (kept, rolling, best); latest: the rolling one")
        ->check(CLI::IsMember({"all", "latest"}))
        ->capture_default_str();
    cmd->add_option("--data-dir", o->data_dir, "read val.bin and train.bin from this folder instead of the run's data_dir");
    cmd->add_option("--batches", o->batches, "validation batches per evaluation (0 = all)")
        ->capture_default_str()
        ->check(in_range(0, 1000000));
    cmd->add_option("--batch-size", o->batch_size, "batch size (default: the run's)")->check(at_least(0));
    cmd->add_option("--seq-len", o->seq_len, "tokens per sequence (default: the run's)")->check(at_least(1));
    cmd->add_option("--fit-tokens", o->fit_tokens, "training tokens the linear replacements are fitted on")
        ->capture_default_str()
        ->check(in_range(1, 1e9));
    cmd->add_option("--useful-ratio", o->useful_ratio, "a block is useful when its linear replacement raises the loss by more than this factor")
        ->capture_default_str()
        ->check(in_range(1, 100));
    cmd->add_option("--threads", o->threads, "threads")->capture_default_str()->check(in_range(1, kMaxThreads));
    cmd->add_flag("--no-plots", o->no_plots, "write report.json only (no matplotlib needed)");
    cmd->callback([o] {
        if (dry_run()) return;
        set_threads(o->threads);
        const fs::path given(o->path);
        const std::vector<fs::path> ckpts = checkpoints_of(given, o->which == "all");
        const fs::path run_dir = fs::is_directory(given) ? given : given.parent_path().empty() ? fs::path(".") : given.parent_path();
        const fs::path out = o->out.empty() ? run_dir / "analysis" : fs::path(o->out);
        for (const fs::path& ck : ckpts) {
            LoadedCheckpoint lc = load_checkpoint(ck.string(), /*weights_only=*/true);
            Model<float>& m = *lc.model;
            const auto [B, T] = eval_shape(lc, o->batch_size, o->seq_len);
            const std::string data_dir = eval_data_dir(lc, o->data_dir, ck.string());
            const TokenShard val = TokenShard::open(data_dir + "/val.bin");
            check_prepared_with(data_dir, val, *lc.tok, ck.string());
            const TokenShard fit = TokenShard::open(data_dir + "/train.bin");
            const fs::path dir = out / ck.stem();
            std::fprintf(stderr, "analyzing %s (step %ld) ...\n", ck.string().c_str(), lc.st.step);

            DepthReportOptions ro;
            ro.batch_size = B, ro.seq_len = T, ro.batches = o->batches, ro.progress = true;
            nlohmann::json r = depth_report(m, val, ro, ck.string());
            UsefulnessOptions uo;
            uo.batch_size = B, uo.seq_len = T, uo.batches = o->batches, uo.fit_tokens = o->fit_tokens;
            uo.useful_ratio = o->useful_ratio, uo.progress = true;
            r["usefulness"] = measure_usefulness(m, val, fit, uo);
            r["step"] = lc.st.step;
            r["training"] = training_grad_norms(run_dir, lc.st.step);
            fs::create_directories(dir);
            const std::string json_path = (dir / "report.json").string();
            atomic_write_file(json_path, r.dump(2) + "\n");
            if (!o->no_plots)
                run_python_script("strata analyze", python_interpreter(), kPlotPy, "strata-plot-error: ",
                                  {"--report", json_path, "--out", dir.string()});
            std::printf("%s: %s\n", ck.string().c_str(), (dir / (o->no_plots ? "report.json" : "report.md")).string().c_str());
            std::fflush(stdout);
        }
    });
}

}  // namespace strata::cli
