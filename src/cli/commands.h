// One subcommand per file: each adds itself to the CLI11 app.
#pragma once
#include <CLI/CLI.hpp>

namespace strata::cli {

void add_train_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_bench_command(CLI::App& app);

}  // namespace strata::cli
