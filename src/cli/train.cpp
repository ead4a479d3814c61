// strata train: train a model from a JSON config plus --set overrides.
#include <cmath>
#include <cstdio>

#include "cli/commands.h"
#include "train/trainer.h"

namespace strata::cli {

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
        TrainResult r = train(rc);
        if (r.interrupted) {
            std::printf("interrupted at step %ld; the checkpoint in %s is up to date\n", r.step, rc.train.out_dir.c_str());
            std::exit(130);
        }
        std::printf("trained %ld steps: train loss %.4f, validation loss %.4f, perplexity %.6g\n", r.step, r.train_loss,
                    r.val_loss, std::exp(r.val_loss));
        std::printf("checkpoint: %s/checkpoint.safetensors\n", rc.train.out_dir.c_str());
    });
}

}  // namespace strata::cli
