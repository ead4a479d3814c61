// The strata command line: builds the CLI11 app with every subcommand and parses argv. With dry_run
// set, the subcommands parse and check their options but do no work (the fuzzer drives this path).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <ostream>
#include <streambuf>

#include "cli/commands.h"
#include "core/error.h"
#include "core/exit_codes.h"
#include "core/precision.h"
#include "model/model.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/level.h"
#include "strata_commit.h"
#include "train/tokenizer.h"

#ifndef STRATA_VERSION
#define STRATA_VERSION "0.1.0"
#endif

namespace strata::cli {

namespace {

bool g_dry_run = false;

// Swallows everything written to it: dry runs print neither help nor error messages.
struct NullBuffer : std::streambuf {
    int overflow(int c) override { return c == traits_type::eof() ? traits_type::not_eof(c) : c; }
    std::streamsize xsputn(const char*, std::streamsize n) override { return n; }
};

// A bound as a person writes it: 1, 4096, 0.5, 1e-09.
std::string number_text(double v) {
    char buf[64];
    if (v == std::floor(v) && std::fabs(v) < 1e15) std::snprintf(buf, sizeof buf, "%.0f", v);
    else std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

// The flag's value as a finite number, or an error message.
std::string parse_number(const std::string& text, double& v) {
    const char* s = text.c_str();
    char* end = nullptr;
    v = std::strtod(s, &end);
    if (text.empty() || end != s + text.size()) return "must be a number, got \"" + text + "\"";
    if (!std::isfinite(v)) return "must be a finite number, got " + text;
    return "";
}

std::string subcommand_names(CLI::App& app) {
    std::string names;
    for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
        if (!names.empty()) names += ", ";
        names += sub->get_name();
    }
    return names;
}

// The version line: the project version and, when the build knew it, the git commit it was built from.
std::string version_text() {
    std::string v = std::string("strata ") + STRATA_VERSION;
    if (std::string(STRATA_GIT_COMMIT) != "") v += " (commit " + std::string(STRATA_GIT_COMMIT) + ")";
    // the build of the engine the loader picked for this CPU (CMakeLists.txt, STRATA_CPU_LEVELS)
    v += "\nengine: " + std::string(engine_cpu_level()) + ", " + std::to_string(engine_vec_bytes()) + "-byte vectors";
    return v;
}

// CLI11 names the flag before a colon ("--max-tokens: must be ≥ 1, got 0"); our validators' messages
// read as one sentence with the flag as its subject.
std::string parse_error_text(const CLI::ParseError& e) {
    std::string msg = e.what();
    const size_t p = msg.find(": must be ");
    if (!msg.empty() && msg[0] == '-' && p != std::string::npos && msg.find(' ') > p) msg.replace(p, 2, " ");
    return msg;
}

}  // namespace

void add_precision_option(CLI::App* cmd, std::string& precision) {
    cmd->add_option("--precision", precision,
                    "fp32, or bf16 (bf16 activations and GEMMs, float weights; docs/precision.md)")
        ->capture_default_str()
        ->check(CLI::Validator(
            [](std::string& v) -> std::string {
                try {
                    parse_precision(v, "--precision");
                } catch (const Error& e) {
                    return e.what();
                }
                return "";
            },
            "fp32|bf16"));
}

void use_precision(Model<float>& model, const std::string& precision) {
    model.set_precision(parse_precision(precision, "--precision"));
    if (model.precision() == Precision::bf16)
        if (const std::string note = bf16_speed_note(); !note.empty()) std::fprintf(stderr, "%s\n", note.c_str());
}

CLI::Validator at_least(double lo) {
    return CLI::Validator(
        [lo](std::string& text) -> std::string {
            double v = 0;
            std::string err = parse_number(text, v);
            if (!err.empty()) return err;
            if (v < lo) return "must be ≥ " + number_text(lo) + ", got " + text;
            return "";
        },
        "≥ " + number_text(lo));
}

CLI::Validator in_range(double lo, double hi) {
    return CLI::Validator(
        [lo, hi](std::string& text) -> std::string {
            double v = 0;
            std::string err = parse_number(text, v);
            if (!err.empty()) return err;
            if (v < lo || v > hi) return "must be in [" + number_text(lo) + ", " + number_text(hi) + "], got " + text;
            return "";
        },
        "in [" + number_text(lo) + ", " + number_text(hi) + "]");
}

CLI::Validator utf8_text() {
    return CLI::Validator(
        [](std::string& text) -> std::string {
            const size_t bad = find_invalid_utf8(text);
            if (bad == std::string::npos) return "";
            return "must be valid UTF-8: invalid byte at offset " + std::to_string(bad);
        },
        "UTF-8");
}

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
    std::ostream& out = dry ? null_stream : std::cout;
    auto error = [&](const std::string& msg, int code) {
        if (!dry) std::fprintf(stderr, "strata: error: %s\n", msg.c_str());
        return code;
    };
    CLI::App app{"strata: train, generate with and evaluate decoder-only Transformers", "strata"};
    app.require_subcommand(1);
    app.set_version_flag("--version", version_text(), "Print the version and exit");
    add_train_command(app);
    add_generate_command(app);
    add_eval_command(app);
    add_bench_command(app);
    add_diagnose_command(app);
    add_plot_command(app);
    add_config_command(app);
    add_export_command(app);
    add_analyze_command(app);
    add_experiment_command(app);

    // Subcommand words first: an unknown one is named with the real list (CLI11 would only say that a
    // subcommand is required), and a command that needs a subcommand but got none prints its help.
    CLI::App* cur = &app;
    std::string parent;  // the words before cur's name, for its usage line
    for (int i = 1;; i++) {
        if (cur->get_subcommands([](CLI::App*) { return true; }).empty()) break;
        if (i >= argc) {
            if (cur->get_require_subcommand_min() == 0) break;
            out << cur->help(parent) << std::flush;
            return kExitUsage;
        }
        const std::string word = argv[i];
        if (!word.empty() && word[0] == '-') {
            // CLI11 would report the missing subcommand rather than the flag it does not know.
            const std::string name = word.substr(0, word.find('='));
            if (cur->get_require_subcommand_min() > 0 && cur->get_option_no_throw(name) == nullptr)
                return error("unknown flag \"" + name + "\"" + (cur == &app ? "" : " of " + cur->get_name()) +
                                 "; the subcommands are: " + subcommand_names(*cur),
                             kExitUsage);
            break;
        }
        CLI::App* next = nullptr;
        for (CLI::App* sub : cur->get_subcommands([](CLI::App*) { return true; }))
            if (sub->check_name(word)) next = sub;
        if (next == nullptr) {
            std::string where = cur == &app ? "" : " of " + cur->get_name();
            return error("unknown subcommand \"" + word + "\"" + where + "; the subcommands are: " +
                             subcommand_names(*cur),
                         kExitUsage);
        }
        parent = parent.empty() ? cur->get_name() : parent + " " + cur->get_name();
        cur = next;
    }

    try {
        check_gemm_environment();
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e, out, out);  // --help, --help-all, --version
        return error(parse_error_text(e), kExitUsage);
    } catch (const strata::Error& e) {
        return error(e.what(), kExitError);
    } catch (const std::exception& e) {
        return error(e.what(), kExitError);
    }
    return kExitOk;
}

}  // namespace strata::cli
