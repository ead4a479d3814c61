// `strata bench`: benchmark suites. `strata bench train` measures, in one run on one machine and one
// thread count:
//   (a) the OpenBLAS sgemm peak at the same thread count (a square shape and the model's shapes);
//   (b) strata's training throughput on the bench model at each --precision (one step = zero_grad,
//       forward with targets, backward, grad-norm clip to 1.0, AdamW update) and the PyTorch peer
//       (bench/peer_train.py) in each --peers configuration, each in its own process, their
//       repetitions interleaved, with medians, paired ratios and bootstrap intervals, and memory;
//   (c) with --profile, the time of the model's own op calls by op family.
// `strata bench generate` measures single-stream greedy decoding (batch 1, KV cache) on the same
// bench model, per precision: prefill time and decode tokens/s.
// It prints a markdown report (optionally written to a file) and optionally a JSON record. The
// measurements and the report live in src/bench/; this file holds the flags and their checks.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "bench/attnres_bench.h"
#include "bench/moda_bench.h"
#include "bench/generate_bench.h"
#include "bench/report.h"
#include "bench/train_bench.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/precision.h"
#include "train/run_config.h"

namespace strata::cli {
namespace {

// A report to stdout, and to the files opened up front (each written atomically).
void emit_report(const std::string& markdown, const nlohmann::json& j, AtomicFileWriter* md_file,
                 AtomicFileWriter* json_file) {
    std::cout << markdown << std::flush;
    if (md_file) {
        md_file->write(markdown);
        md_file->commit();
    }
    if (json_file) {
        json_file->write(j.dump(2) + "\n");
        json_file->commit();
    }
}

void run_bench_train(const bench::TrainBenchOptions& o) {
    const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (o.threads > ncpu)
        std::fprintf(stderr, "warning: --threads %d exceeds the %ld online CPUs; timings will be oversubscribed\n",
                     o.threads, ncpu);
    // Open the outputs first, so a bad path fails before minutes of measuring. Each is written to a
    // temporary file beside it and renamed at the end: a failed or interrupted run keeps the old report.
    std::unique_ptr<AtomicFileWriter> md_file, json_file;
    if (!o.markdown_out.empty()) md_file = open_output(o.markdown_out, "--markdown-out");
    if (!o.json_out.empty()) json_file = open_output(o.json_out, "--json-out");

    const bench::TrainBenchResult r = bench::run_train_bench(o);

    emit_report(bench::to_markdown(r), bench::to_json(r), md_file.get(), json_file.get());
}

std::string join_names(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
    return s;
}

std::vector<std::string> split_names(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    for (;;) {
        const size_t comma = s.find(',', start);
        out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
        if (comma == std::string::npos) return out;
        start = comma + 1;
    }
}

// A comma-separated list of names from `allowed`, each at most once.
CLI::Validator name_list(const std::vector<std::string>& allowed) {
    std::string all;
    for (const auto& a : allowed) all += (all.empty() ? "" : ", ") + a;
    return CLI::Validator(
        [allowed, all](std::string& text) -> std::string {
            std::vector<std::string> seen;
            for (const auto& name : split_names(text)) {
                if (name.empty()) return "must be a comma list of " + all + " without empty names, got \"" + text + "\"";
                if (std::find(allowed.begin(), allowed.end(), name) == allowed.end())
                    return "must be a comma list of " + all + ", not \"" + name + "\"";
                if (std::find(seen.begin(), seen.end(), name) != seen.end()) return "must be a comma list naming each once, got \"" + name + "\" twice";
                seen.push_back(name);
            }
            return "";
        },
        "a comma list of " + all);
}

void run_bench_generate(const bench::GenerateBenchOptions& o) {
    const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (o.threads > ncpu)
        std::fprintf(stderr, "warning: --threads %d exceeds the %ld online CPUs; timings will be oversubscribed\n",
                     o.threads, ncpu);
    std::unique_ptr<AtomicFileWriter> md_file, json_file;
    if (!o.markdown_out.empty()) md_file = open_output(o.markdown_out, "--markdown-out");
    if (!o.json_out.empty()) json_file = open_output(o.json_out, "--json-out");

    bench::GenerateBenchResult r;
    try {
        r = bench::run_generate_bench(o);
    } catch (const bench::LengthError& e) {  // prompt + new tokens against a checkpoint's context
        throw CLI::ValidationError(e.what());
    }

    emit_report(bench::generate_markdown(r), bench::generate_json(r), md_file.get(), json_file.get());
}

// `strata bench generate`: its flags and their checks.
void add_bench_generate(CLI::App& bench) {
    auto o = std::make_shared<bench::GenerateBenchOptions>();
    CLI::App* gen = bench.add_subcommand(
        "generate", "Single-stream decode throughput (batch 1, greedy, KV cache) on the bench model, per precision");
    gen->add_option("--threads", o->threads, "Threads for OpenMP and OpenBLAS")
        ->capture_default_str()
        ->check(in_range(1, kMaxThreads));
    gen->add_option("--prompt-tokens", o->prompt_tokens, "Prompt length (fixed token ids from a fixed seed)")
        ->capture_default_str()
        ->check(at_least(1));
    gen->add_option("--new-tokens", o->new_tokens, "Tokens to decode after the prompt")
        ->capture_default_str()
        ->check(at_least(1));
    gen->add_option("--reps", o->reps, "Timed repetitions per configuration (after one warm-up each)")
        ->capture_default_str()
        ->check(at_least(1));
    gen->add_option("--precision", o->precision, "Comma list of precisions to measure: fp32, bf16")
        ->capture_default_str();
    gen->add_option("--ckpt", o->ckpt, "Time this checkpoint (file or run directory) instead of the bench model");
    gen->add_option("--residual", o->residual, "Residual rule of the bench model: " + allowed_names<Residual>())
        ->capture_default_str();
    gen->add_option("--attnres-block-size", o->attnres_block_size, "Sublayers per block for attnres_block")
        ->capture_default_str();
    gen->add_option("--attention", o->attention, "Attention kind of the bench model: " + allowed_names<AttentionKind>())
        ->capture_default_str();
    gen->add_option("--json-out", o->json_out, "Also write the results as JSON to this file");
    gen->add_option("--markdown-out", o->markdown_out, "Also write the markdown report to this file");
    gen->callback([o] {
        try {
            bench::parse_precision_list(o->precision);
            bench::TrainBenchOptions m;
            m.residual = o->residual;
            m.attnres_block_size = o->attnres_block_size;
            m.attention = o->attention;
            const bool model_flags = o->residual != "standard" || o->attention != "causal";
            if (!o->ckpt.empty() && model_flags)
                throw Error("--residual and --attention choose the bench model; a --ckpt brings its own");
            if (o->ckpt.empty()) bench::check_lengths(bench::bench_model_config(m), o->prompt_tokens, o->new_tokens);
        } catch (const Error& e) {
            throw CLI::ValidationError(e.what());
        }
        if (dry_run()) return;
        run_bench_generate(*o);
    });
}

// `strata bench attnres`: the AttnRes op's bandwidth against memcpy's.
void add_bench_attnres(CLI::App& bench) {
    auto o = std::make_shared<bench::AttnResBenchOptions>();
    CLI::App* a = bench.add_subcommand(
        "attnres", "The AttnRes op's memory bandwidth against the machine's copy bandwidth, in one run");
    a->add_option("--threads", o->threads, "OpenMP threads")->capture_default_str()->check(in_range(1, kMaxThreads));
    a->add_option("--sources", o->sources, "Sources n the op mixes")->capture_default_str()->check(in_range(1, 64));
    a->add_option("--d-model", o->d_model, "Row width D")->capture_default_str()->check(in_range(1, 65536));
    a->add_option("--rows", o->rows, "Rows N (0: the sources total at least 4x the last-level cache)")
        ->capture_default_str()
        ->check(in_range(0, 1 << 24));
    a->add_option("--reps", o->reps, "Repetitions, interleaved")->capture_default_str()->check(in_range(2, 100000));
    a->add_option("--json-out", o->json_out, "Also write the results as JSON to this file");
    a->add_option("--markdown-out", o->markdown_out, "Also write the markdown report to this file");
    a->callback([o] {
        if (dry_run()) return;
        std::unique_ptr<AtomicFileWriter> md_file, json_file;
        if (!o->markdown_out.empty()) md_file = open_output(o->markdown_out, "--markdown-out");
        if (!o->json_out.empty()) json_file = open_output(o->json_out, "--json-out");
        const bench::AttnResBenchResult r = bench::run_attnres_bench(*o);
        emit_report(bench::attnres_markdown(r), bench::attnres_json(r), md_file.get(), json_file.get());
    });
}

// `strata bench moda`: the depth slots' extra time over plain attention, against its ideal.
void add_bench_moda(CLI::App& bench) {
    auto o = std::make_shared<bench::ModaBenchOptions>();
    CLI::App* a = bench.add_subcommand(
        "moda", "MoDA's extra time over plain attention (the same op at L = 0) against its ideal, in one run");
    a->add_option("--threads", o->threads, "OpenMP threads")->capture_default_str()->check(in_range(1, kMaxThreads));
    a->add_option("--seq", o->seq, "Sequence lengths T")->delimiter(',')->capture_default_str();
    a->add_option("--groups", o->groups, "Query heads per kv head G")->delimiter(',')->capture_default_str();
    a->add_option("--slots", o->slots, "Depth slots per token L")->delimiter(',')->capture_default_str();
    a->add_option("--kv-heads", o->kv_heads, "kv heads Hk")->capture_default_str()->check(in_range(1, 64));
    a->add_option("--head-dim", o->head_dim, "Head size d")->capture_default_str()->check(in_range(1, 1024));
    a->add_option("--batch", o->batch, "Batch B")->capture_default_str()->check(in_range(1, 1024));
    a->add_option("--reps", o->reps, "Repetitions, interleaved")->capture_default_str()->check(in_range(2, 100000));
    a->add_option("--json-out", o->json_out, "Also write the results as JSON to this file");
    a->add_option("--markdown-out", o->markdown_out, "Also write the markdown report to this file");
    auto stages = std::make_shared<bool>(false);
    a->add_flag("--stages", *stages,
                "Instead, the paper's Table 7 stages (naive, flattened, chunk-aware, group-aware) at the first T, G "
                "and L given (e.g. --seq 512 --groups 8 --slots 32), forward only and forward plus backward");
    a->callback([o, stages, a] {
        if (dry_run()) return;
        std::unique_ptr<AtomicFileWriter> md_file, json_file;
        if (!o->markdown_out.empty()) md_file = open_output(o->markdown_out, "--markdown-out");
        if (!o->json_out.empty()) json_file = open_output(o->json_out, "--json-out");
        if (*stages) {
            bench::ModaStagesOptions so;
            so.threads = o->threads, so.reps = o->reps, so.kv_heads = o->kv_heads, so.head_dim = o->head_dim;
            if (a->count("--seq")) so.T = o->seq.at(0);
            if (a->count("--groups")) so.G = o->groups.at(0);
            if (a->count("--slots")) so.L = o->slots.at(0);
            const bench::ModaStagesResult r = bench::run_moda_stages(so);
            emit_report(bench::moda_stages_markdown(r), bench::moda_stages_json(r), md_file.get(), json_file.get());
            return;
        }
        const bench::ModaBenchResult r = bench::run_moda_bench(*o);
        emit_report(bench::moda_markdown(r), bench::moda_json(r), md_file.get(), json_file.get());
    });
}

}  // namespace

void add_bench_command(CLI::App& app) {
    CLI::App* bench = app.add_subcommand(
        "bench", "Benchmark suites (run one: `strata bench train`, `strata bench generate`, `strata bench attnres` or `strata bench moda`)");
    bench->require_subcommand(1);

    auto o = std::make_shared<bench::TrainBenchOptions>();
    CLI::App* train = bench->add_subcommand(
        "train", "Training throughput on the bench model vs the sgemm peak and a PyTorch peer, in one run");
    train->add_option("--threads", o->threads, "Threads for OpenMP, OpenBLAS and the peer")
        ->capture_default_str()
        ->check(in_range(1, kMaxThreads));
    train->add_option("--warmup", o->warmup, "Untimed warm-up steps")->capture_default_str()->check(at_least(0));
    train->add_option("--steps", o->steps, "Timed steps in one repetition")->capture_default_str()->check(at_least(1));
    train->add_option("--gemm-seconds", o->gemm_seconds,
                      "How long each shape of the GEMM peaks is timed (at least 5 calls each)")
        ->capture_default_str()
        ->check(in_range(0.001, 60));
    train->add_option("--reps", o->reps, "Repetitions of each configuration, interleaved (the protocol asks for ≥ 10)")
        ->capture_default_str()
        ->check(at_least(1));
    auto precisions = std::make_shared<std::string>(join_names(o->precisions));
    auto peers = std::make_shared<std::string>(join_names(o->peers));
    train->add_option("--precision", *precisions, "strata's configurations: a comma list of fp32, bf16")
        ->capture_default_str()
        ->check(name_list(precision_names()));
    train->add_option("--peers", *peers,
                      "PyTorch's configurations: a comma list of eager, eager-bf16, compile, compile-bf16")
        ->capture_default_str()
        ->check(name_list(bench::peer_config_names()));
    // --batch and --seq: the earlier spellings, kept as aliases.
    train->add_option("--batch-size,--batch", o->batch, "Batch size")->capture_default_str()->check(at_least(1));
    train->add_option("--seq-len,--seq", o->seq, "Sequence length")->capture_default_str()->check(at_least(1));
    train->add_option("--residual", o->residual,
                      "Residual rule of the bench model: " + allowed_names<Residual>() +
                          " (the PyTorch peer builds the first three; time the others with --no-peer)")
        ->capture_default_str();
    train->add_option("--attnres-block-size", o->attnres_block_size, "Sublayers per block for attnres_block")
        ->capture_default_str();
    train->add_option("--attention", o->attention, "Attention kind of the bench model: causal, moda")
        ->capture_default_str();
    train->add_option("--repo", o->repo, "strata source tree (default: found from the build)");
    train->add_option("--peer-python", o->peer_python,
                      "Python with PyTorch for the peer (default: <repo>/bench/.venv/bin/python)");
    train->add_flag("--no-peer", o->no_peer, "Skip the PyTorch peer");
    train->add_flag("--profile", o->profile,
                    "Also run a few training steps with the op profiler on and report the time by op family");
    train->add_option("--json-out", o->json_out, "Also write the results as JSON to this file");
    train->add_option("--markdown-out", o->markdown_out, "Also write the markdown report to this file");
    // The worker process of one strata configuration (the bench starts it; not for direct use).
    train->add_option("--serve", o->serve)->group("")->check(name_list(precision_names()));
    train->callback([o, precisions, peers] {
        o->precisions = split_names(*precisions);
        o->peers = split_names(*peers);
        if (dry_run()) return;
        if (!o->serve.empty()) {
            const int rc = bench::serve_strata(*o);
            if (rc != 0) throw Error("bench worker " + o->serve + " failed");
            return;
        }
        run_bench_train(*o);
    });

    add_bench_generate(*bench);
    add_bench_attnres(*bench);
    add_bench_moda(*bench);
}

}  // namespace strata::cli
