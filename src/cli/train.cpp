// strata train: train a model from a JSON config plus --set overrides.
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "bench/flops.h"
#include "bench/gemm_peak.h"
#include "cli/commands.h"
#include "core/exit_codes.h"
#include "train/trainer.h"

namespace strata::cli {

// A loss as a perplexity, or "overflow" where exp() leaves the double range.
static std::string perplexity(double loss) {
    const double p = std::exp(loss);
    if (!std::isfinite(p)) return "overflow";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", p);
    return buf;
}

void add_train_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("train", "train a model (resumes from the run directory's checkpoint)");
    auto config = std::make_shared<std::string>();
    auto sets = std::make_shared<std::vector<std::string>>();
    cmd->add_option("-c,--config", *config, "JSON config file with \"model\" and \"train\" sections")
        ->check(CLI::ExistingFile);
    cmd->add_option("--set", *sets, "override a config value, e.g. --set train.steps=100 (repeatable)");
    cmd->callback([config, sets] {
        if (dry_run()) return;
        RunConfig rc = load_run_config(*config, *sets);
        const TrainConfig& t = rc.train;
        TrainOptions opts;
        opts.flops_per_step = bench::training_flops(rc.model, t.batch_size, t.seq_len).total * t.grad_accum;
        if (t.peak_gflops <= 0) {
            set_threads(t.threads);
            opts.peak_gflops = bench::quick_gemm_gflops(parse_precision(t.precision, "train.precision"));
        }
        TrainResult r = train(rc, opts);
        if (r.interrupted) {
            std::printf("interrupted at step %ld; the checkpoint in %s is up to date\n", r.step, t.out_dir.c_str());
            std::exit(kExitInterrupted);
        }
        if (r.stopped_diverged) {
            std::printf("stopped: the loss diverged at step %ld (above %.4g for %ld logged steps); the checkpoint in "
                        "%s is of the last save before it. Lower train.lr, or set train.on_divergence=warn to go on\n",
                        r.diverged_at, r.divergence_threshold, kDivergenceLogs, t.out_dir.c_str());
            std::exit(kExitDiverged);
        }
        if (r.steps_run() == 0) {
            std::string settings;
            for (auto it = r.result_settings.begin(); it != r.result_settings.end(); ++it)
                settings += (settings.empty() ? "" : ", ") + it.key() + "=" + it.value().dump();
            std::printf("nothing left to train: %s is already at step %ld of train.steps=%ld; raise train.steps to "
                        "train on, or choose another train.out_dir for a new run\n",
                        t.out_dir.c_str(), r.step, t.steps);
            if (!settings.empty()) std::printf("its result came from: %s\n", settings.c_str());
            std::printf("validation loss %.4f, perplexity %s (train loss %.4f at its last step)\n", r.val_loss,
                        perplexity(r.val_loss).c_str(), r.train_loss);
        } else {
            std::printf("trained %ld steps (%ld → %ld): train loss %.4f, validation loss %.4f, perplexity %s\n",
                        r.steps_run(), r.start_step, r.step, r.train_loss, r.val_loss, perplexity(r.val_loss).c_str());
        }
        for (const auto& [name, loss] : r.val_loss_by_corpus)
            std::printf("  validation loss on %s: %.4f, perplexity %s\n", name.c_str(), loss, perplexity(loss).c_str());
        if (r.diverged)
            std::printf("warning: the loss diverged at step %ld (above %.4g for %ld logged steps); lower train.lr\n",
                        r.diverged_at, r.divergence_threshold, kDivergenceLogs);
        std::printf("checkpoint: %s/checkpoint.safetensors\n", t.out_dir.c_str());
    });
}

}  // namespace strata::cli
