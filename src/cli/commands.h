// One subcommand per file: each adds itself to the CLI11 app.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "core/fileio.h"

namespace strata {
template <typename T>
class Model;
struct LoadedCheckpoint;
}

namespace strata::cli {

void add_train_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_diagnose_command(CLI::App& app);
void add_plot_command(CLI::App& app);
void add_config_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_analyze_command(CLI::App& app);
void add_experiment_command(CLI::App& app);

// Builds the app and parses argv; returns the process exit status. Errors (bad flags, strata::Error
// from a subcommand) are reported on stderr and give a non-zero status. With dry_run, the
// subcommands only parse and check their options (callbacks return at once) and nothing is printed.
int run_main(int argc, char** argv, bool dry_run);
// True inside run_main(..., dry_run = true): each subcommand's callback returns before doing work.
bool dry_run();

// Range checks for numeric flags that state the bounds as written, e.g. "--max-tokens must be ≥ 1,
// got 0" (CLI11's own ranges print the type's full extent). The value must be a finite number; an
// integer flag's own conversion still refuses a fraction or a value beyond its type afterwards.
CLI::Validator at_least(double lo);
CLI::Validator in_range(double lo, double hi);
// Checks that a text flag (e.g. --prompt) is valid UTF-8, naming the first bad byte's offset.
CLI::Validator utf8_text();

// --precision fp32|bf16 on a command that runs a model (default fp32, whatever the run trained in);
// use_precision sets it on the model and prints the note where bf16 is emulated here.
void add_precision_option(CLI::App* cmd, std::string& precision);
void use_precision(Model<float>& model, const std::string& precision);

// Opens a report file named by `flag` (e.g. --json-out) up front, so a bad path fails before any work;
// missing parent folders are created. The caller writes and commits it at the end (atomically).
std::unique_ptr<AtomicFileWriter> open_output(const std::string& path, const std::string& flag);

// The folder whose val.bin evaluates a checkpoint: --data-dir when given, else the run's data_dir; a run
// trained on a list of corpora must name one of their splits (diagnose.cpp).
std::string eval_data_dir(const LoadedCheckpoint& lc, const std::string& data_dir, const std::string& ckpt);
// The batch size and sequence length of an evaluation: the flags when > 0, else the run's; a sequence
// longer than the model's max_seq_len is refused, naming --seq-len.
struct EvalShape {
    int B, T;
};
EvalShape eval_shape(const LoadedCheckpoint& lc, int batch_size, int seq_len);

}  // namespace strata::cli
