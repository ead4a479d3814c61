// strata generate: sample text from a checkpoint with the KV cache, streaming to stdout.
#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "cli/commands.h"
#include "core/error.h"
#include "infer/generate.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace strata::cli {

namespace {
// Prints the text of a growing token sequence as it grows. Decoding the whole sequence each time and
// printing only the new suffix keeps multi-token characters (byte fallback) intact: a trailing
// incomplete character decodes to U+FFFD and is held back until it completes.
struct StreamPrinter {
    const Tokenizer& tok;
    std::vector<int32_t> ids;
    size_t printed = 0;
    void push(int32_t id) {
        ids.push_back(id);
        std::string s = tok.decode(ids);
        size_t end = s.size();
        static const std::string repl = "\xEF\xBF\xBD";
        while (end >= printed + 3 && s.compare(end - 3, 3, repl) == 0) end -= 3;
        if (end > printed) {
            std::fwrite(s.data() + printed, 1, end - printed, stdout);
            std::fflush(stdout);
            printed = end;
        }
    }
};
}  // namespace

void add_generate_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("generate", "generate text from a checkpoint");
    struct Opts {
        std::string ckpt = "runs/default", prompt;
        SampleOptions s;
        int threads = 2;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--ckpt", o->ckpt, "checkpoint file or run directory")->capture_default_str();
    cmd->add_option("-p,--prompt", o->prompt, "text to continue (empty: start a new document)")->check(utf8_text());
    cmd->add_option("-n,--max-tokens", o->s.max_tokens, "tokens to generate")->capture_default_str()->check(at_least(1));
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
    cmd->callback([o] {
        if (dry_run()) return;
        set_threads(o->threads);
        LoadedCheckpoint lc = load_checkpoint(o->ckpt, /*weights_only=*/true);
        std::vector<int32_t> prompt = lc.tok->encode(o->prompt);
        prompt.insert(prompt.begin(), lc.tok->eos_id());  // documents are separated by eos in training
        SampleOptions s = o->s;
        s.stop_token = lc.tok->eos_id();
        const long room = lc.model->cfg.max_seq_len - long(prompt.size());
        if (room <= 0)
            throw Error("the prompt is " + std::to_string(prompt.size()) + " tokens, longer than the model's max_seq_len " +
                        std::to_string(lc.model->cfg.max_seq_len));
        if (s.max_tokens > room) {
            std::fprintf(stderr, "note: max-tokens capped at %ld by the model's max_seq_len %d\n", room,
                         lc.model->cfg.max_seq_len);
            s.max_tokens = room;
        }
        std::fwrite(o->prompt.data(), 1, o->prompt.size(), stdout);
        StreamPrinter sp{*lc.tok, {}, 0};
        // decode continuation tokens together with the prompt so word boundaries come out right
        std::vector<int32_t> ctx(prompt.begin() + 1, prompt.end());
        sp.ids = ctx;
        sp.printed = lc.tok->decode(ctx).size();
        generate(*lc.model, prompt, s, [&](int32_t t) {
            if (t != s.stop_token) sp.push(t);
        });
        std::printf("\n");
    });
}

}  // namespace strata::cli
