// strata generate: sample text from a checkpoint with the KV cache, streaming to stdout piece by piece
// (infer/text_stream.h). Past the model's context the last max_seq_len/2 tokens are prefilled again
// and sampling goes on (see infer/generate.h). stdout carries only the text; the timing line goes to
// stderr.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cli/commands.h"
#include "core/error.h"
#include "infer/generate.h"
#include "infer/text_stream.h"
#include "train/checkpoint.h"
#include "train/tokenizer.h"
#include "train/trainer.h"

namespace strata::cli {

namespace {
void print(const std::string& piece) {
    if (piece.empty()) return;
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
}

// The prompt text of --prompt-file: a file, or standard input for "-". Errors name the flag and file.
std::string read_prompt_file(const std::string& path) {
    std::string text;
    if (path == "-") {
        char buf[65536];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, stdin)) > 0) text.append(buf, n);
        if (std::ferror(stdin)) throw Error("--prompt-file -: cannot read standard input (" + std::string(std::strerror(errno)) + ")");
    } else {
        try {
            text = read_file(path);
        } catch (const Error& e) {
            throw Error("--prompt-file " + path + ": " + e.what());
        }
    }
    size_t bad = find_invalid_utf8(text);
    if (bad != std::string::npos)
        throw Error("--prompt-file " + (path == "-" ? std::string("- (standard input)") : path) +
                    ": not UTF-8 text (invalid UTF-8 at byte offset " + std::to_string(bad) + ")");
    return text;
}
}  // namespace

void add_generate_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("generate", "generate text from a checkpoint");
    struct Opts {
        std::string ckpt = "runs/default", prompt, prompt_file, precision = "fp32";
        std::vector<std::string> stops;
        long num_samples = 1;
        SampleOptions s;
        int threads = 2;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--ckpt", o->ckpt, "checkpoint file or run directory")->capture_default_str();
    auto* prompt = cmd->add_option("-p,--prompt", o->prompt, "text to continue (empty: start a new document)")->check(utf8_text());
    cmd->add_option("--prompt-file", o->prompt_file, "read the prompt from this file (- = standard input), byte for byte")
        ->excludes(prompt);
    cmd->add_option("-n,--max-tokens", o->s.max_tokens, "tokens to generate per sample (past the context the last half is kept)")
        ->capture_default_str()->check(at_least(1));
    cmd->add_option("--num-samples", o->num_samples, "samples to draw; sample i uses seed + i; a line --- separates them")
        ->capture_default_str()->check(in_range(1, 1000000));
    cmd->add_option("--stop", o->stops, "end a sample when its text contains this string (not printed); repeatable")
        ->check(CLI::Validator([](std::string& v) { return v.empty() ? std::string("must not be empty") : std::string(); },
                               "TEXT"));
    cmd->add_option("-t,--temperature", o->s.temperature, "sampling temperature, 0 = greedy")->capture_default_str()->check(at_least(0));
    cmd->add_option("--top-k", o->s.top_k, "keep the k most likely tokens (0 = all)")->capture_default_str()->check(in_range(0, 2147483647));
    cmd->add_option("--top-p", o->s.top_p, "nucleus sampling mass in (0, 1]")->capture_default_str()->check(in_range(1e-9, 1.0));
    // CLI11 would wrap "-1" or 2^64 into a valid u64; check the text before it converts.
    const CLI::Validator u64([](std::string& v) -> std::string {
        errno = 0;
        char* end = nullptr;
        if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos)
            return "must be an integer in [0, 2^64), got \"" + v + "\"";
        std::strtoull(v.c_str(), &end, 10);
        return errno == ERANGE ? "must be an integer in [0, 2^64), got " + v : "";
    }, "UINT64");
    cmd->add_option("--seed", o->s.seed, "sampling seed")->capture_default_str()->check(u64);
    cmd->add_option("--threads", o->threads, "threads")->capture_default_str()->check(in_range(1, kMaxThreads));
    add_precision_option(cmd, o->precision);
    cmd->callback([o] {
        if (dry_run()) return;
        for (const std::string& st : o->stops)
            if (find_invalid_utf8(st) != std::string::npos) throw Error("--stop: the string is not valid UTF-8");
        const std::string text = o->prompt_file.empty() ? o->prompt : read_prompt_file(o->prompt_file);
        set_threads(o->threads);
        LoadedCheckpoint lc = load_checkpoint(o->ckpt, /*weights_only=*/true);
        use_precision(*lc.model, o->precision);
        std::vector<int32_t> prompt = lc.tok->encode(text);
        prompt.insert(prompt.begin(), lc.tok->eos_id());  // documents are separated by eos in training
        const int max_T = lc.model->cfg.max_seq_len;
        if (long(prompt.size()) > max_T)
            throw Error("the prompt is " + std::to_string(prompt.size()) + " tokens, longer than the model's max_seq_len " +
                        std::to_string(max_T));
        SampleOptions s = o->s;
        s.stop_token = lc.tok->eos_id();
        long generated = 0, crops = 0;
        const auto t0 = std::chrono::steady_clock::now();
        for (long i = 0; i < o->num_samples; i++) {
            if (i > 0) std::fputs("---\n", stdout);
            s.seed = o->s.seed + uint64_t(i);  // wraps modulo 2^64
            std::fwrite(text.data(), 1, text.size(), stdout);
            TextStream ts(*lc.tok, o->stops, std::vector<int32_t>(prompt.begin() + 1, prompt.end()));
            GenerateStats st;
            std::vector<int32_t> out = generate(*lc.model, prompt, s, [&](int32_t t) {
                if (t == s.stop_token) return true;  // generate() ends after it
                print(ts.push(t));
                return !ts.stopped();
            }, &st);
            if (!ts.stopped()) print(ts.finish());
            std::fputs("\n", stdout);
            std::fflush(stdout);
            generated += long(out.size());
            crops += st.crops;
        }
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::string extra;
        if (o->num_samples > 1) extra += ", " + std::to_string(o->num_samples) + " samples";
        if (crops > 0) extra += ", " + std::to_string(crops) + " context crop" + (crops > 1 ? "s" : "");
        std::fprintf(stderr, "generated %ld tokens in %.2f s (%.0f tokens/s; prefill %zu tokens%s%s)\n", generated, secs,
                     secs > 0 ? double(generated) / secs : 0.0, prompt.size(), o->num_samples > 1 ? " each" : "",
                     extra.c_str());
    });
}

}  // namespace strata::cli
