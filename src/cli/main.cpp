// strata — train, run and inspect decoder-only Transformers.
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
    CLI::App app{"strata: train, generate with and evaluate decoder-only Transformers"};
    app.require_subcommand(1);
    strata::cli::add_train_command(app);
    strata::cli::add_generate_command(app);
    strata::cli::add_eval_command(app);
    strata::cli::add_bench_command(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const strata::Error& e) {
        std::fprintf(stderr, "strata: error: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "strata: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
