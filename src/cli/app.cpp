// The strata command line: builds the CLI11 app with every subcommand and parses argv. With dry_run
// set, the subcommands parse and check their options but do no work (the fuzzer drives this path).
#include <cstdio>
#include <filesystem>
#include <ostream>
#include <streambuf>

#include "cli/commands.h"
#include "core/error.h"

namespace strata::cli {

namespace {

bool g_dry_run = false;

// Swallows everything written to it: dry runs print neither help nor error messages.
struct NullBuffer : std::streambuf {
    int overflow(int c) override { return c == traits_type::eof() ? traits_type::not_eof(c) : c; }
    std::streamsize xsputn(const char*, std::streamsize n) override { return n; }
};

}  // namespace

bool dry_run() { return g_dry_run; }

std::unique_ptr<AtomicFileWriter> open_output(const std::string& path, const std::string& flag) {
    if (path.find('\0') != std::string::npos) throw Error(flag + ": the path contains a NUL byte");
    std::filesystem::path p(path);
    std::error_code ec;
    if (p.has_parent_path() && !std::filesystem::exists(p.parent_path(), ec))
        std::filesystem::create_directories(p.parent_path(), ec);
    auto w = std::make_unique<AtomicFileWriter>();
    try {
        w->open(path);
    } catch (const Error& e) {
        throw Error(flag + " " + path + ": cannot open for writing (" + e.what() + ")");
    }
    return w;
}

int run_main(int argc, char** argv, bool dry) {
    g_dry_run = dry;
    NullBuffer null_buffer;
    std::ostream null_stream(&null_buffer);
    CLI::App app{"strata: train, generate with and evaluate decoder-only Transformers"};
    app.require_subcommand(1);
    add_train_command(app);
    add_generate_command(app);
    add_eval_command(app);
    add_bench_command(app);
    add_diagnose_command(app);
    add_plot_command(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return dry ? app.exit(e, null_stream, null_stream) : app.exit(e);
    } catch (const strata::Error& e) {
        if (!dry) std::fprintf(stderr, "strata: error: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        if (!dry) std::fprintf(stderr, "strata: error: %s\n", e.what());
        return 1;
    }
    return 0;
}

}  // namespace strata::cli
