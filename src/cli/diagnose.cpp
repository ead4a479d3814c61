// strata diagnose: which sublayers matter and how the depth behaves (docs/diagnostics.md). On a
// checkpoint's validation batches it reports, per sublayer, the RMS of its input, output and running
// state, the loss increase when the sublayer is skipped (its output set to zero; under AttnRes an
// emptied source is also dropped from the mixes), and under AttnRes the mean depth-attention weights.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "analysis/depth_report.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/fileio.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/trainer.h"

namespace strata::cli {

std::string eval_data_dir(const LoadedCheckpoint& lc, const std::string& data_dir, const std::string& ckpt) {
    const TrainConfig& t = lc.rc.train;
    // A mixture's sources have a split each (DATA_DIR/corpus<i>): the user picks one.
    if (data_dir.empty() && !t.corpora.empty())
        throw Error("checkpoint " + ckpt + " was trained on a list of " + std::to_string(t.corpora.size()) +
                    " corpora, each with its own validation split: pass --data-dir " + t.data_dir +
                    "/corpus<i> (i = 0 … " + std::to_string(t.corpora.size() - 1) + ") to evaluate one");
    return data_dir.empty() ? t.data_dir : data_dir;
}

EvalShape eval_shape(const LoadedCheckpoint& lc, int batch_size, int seq_len) {
    const EvalShape e{batch_size > 0 ? batch_size : lc.rc.train.batch_size, seq_len > 0 ? seq_len : lc.rc.train.seq_len};
    if (e.T > lc.model->cfg.max_seq_len)
        throw Error("--seq-len " + std::to_string(e.T) + " exceeds the model's max_seq_len (" +
                    std::to_string(lc.model->cfg.max_seq_len) + ")");
    return e;
}

void add_diagnose_command(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "diagnose", "depth diagnostics of a checkpoint: per-sublayer norms, skip ablation, AttnRes weights, MoDA depth and sink mass");
    struct Opts {
        std::string ckpt = "runs/default", data_dir, json_out, precision = "fp32";
        long batches = 4;
        int batch_size = 0, seq_len = 0, threads = 2;
        bool no_skip = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--ckpt", o->ckpt, "checkpoint file or run directory")->capture_default_str();
    cmd->add_option("--data-dir", o->data_dir, "read val.bin from this folder instead of the run's data_dir");
    cmd->add_option("--batches", o->batches, "validation batches per measurement (0 = all)")
        ->capture_default_str()
        ->check(in_range(0, 1000000));
    cmd->add_option("--batch-size", o->batch_size, "batch size (default: the run's)")->check(at_least(0));
    cmd->add_option("--seq-len", o->seq_len, "tokens per sequence, at most the model's max_seq_len (default: the run's)")
        ->check(at_least(1));
    cmd->add_option("--threads", o->threads, "threads")->capture_default_str()->check(in_range(1, kMaxThreads));
    add_precision_option(cmd, o->precision);
    cmd->add_flag("--no-skip", o->no_skip, "leave out the skip ablation (one evaluation per sublayer)");
    cmd->add_option("--json-out", o->json_out, "also write the results as JSON to this file");
    cmd->callback([o] {
        if (dry_run()) return;
        std::unique_ptr<AtomicFileWriter> json_file;
        if (!o->json_out.empty()) json_file = open_output(o->json_out, "--json-out");
        set_threads(o->threads);
        LoadedCheckpoint lc = load_checkpoint(o->ckpt, /*weights_only=*/true);
        Model<float>& m = *lc.model;
        use_precision(m, o->precision);
        const auto [B, T] = eval_shape(lc, o->batch_size, o->seq_len);
        const std::string data_dir = eval_data_dir(lc, o->data_dir, o->ckpt);
        const TokenShard shard = TokenShard::open(data_dir + "/val.bin");
        check_prepared_with(data_dir, shard, *lc.tok, o->ckpt);
        DepthReportOptions ro;
        ro.batch_size = B, ro.seq_len = T, ro.batches = o->batches, ro.skip = !o->no_skip, ro.progress = true;
        const nlohmann::json js = depth_report(m, shard, ro, o->ckpt);
        print_depth_report(js, stdout);
        if (json_file) {
            json_file->write(js.dump(2) + "\n");
            json_file->commit();
        }
    });
}

}  // namespace strata::cli
