// strata eval: validation loss and perplexity of a checkpoint.
#include <cmath>
#include <cstdio>
#include <unistd.h>

#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace strata::cli {

void add_eval_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("eval", "evaluate a checkpoint: loss and perplexity");
    struct Opts {
        std::string ckpt = "runs/default", text, data_dir;
        long batches = 0;
        int batch_size = 0, threads = 2;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--ckpt", o->ckpt, "checkpoint file or run directory")->capture_default_str();
    cmd->add_option("--text", o->text, "evaluate on this text file or folder instead of the run's validation split");
    cmd->add_option("--data-dir", o->data_dir, "read val.bin from this folder instead of the run's data_dir");
    cmd->add_option("--batches", o->batches, "at most this many batches (0 = all)")->check(at_least(0));
    cmd->add_option("--batch-size", o->batch_size, "batch size (default: the run's)")->check(at_least(0));
    cmd->add_option("--threads", o->threads, "threads")->capture_default_str()->check(in_range(1, kMaxThreads));
    cmd->callback([o] {
        if (dry_run()) return;
        set_threads(o->threads);
        LoadedCheckpoint lc = load_checkpoint(o->ckpt, /*weights_only=*/true);
        const TrainConfig& t = lc.rc.train;
        const int B = o->batch_size > 0 ? o->batch_size : t.batch_size;
        std::string shard_path = (o->data_dir.empty() ? t.data_dir : o->data_dir) + "/val.bin";
        std::string what = "validation split " + shard_path;
        struct TempDir {  // removed however this callback ends
            std::string path;
            ~TempDir() {
                std::error_code ec;
                if (!path.empty()) std::filesystem::remove_all(path, ec);
            }
        } tmp;
        if (!o->text.empty()) {  // tokenize the given text with the checkpoint's tokenizer, evaluate all of it
            tmp.path = (std::filesystem::temp_directory_path() / ("strata-eval-" + std::to_string(::getpid()))).string();
            PreparedData pd = prepare_data(list_corpus_files(o->text), *lc.tok, tmp.path, 0.0);
            what = o->text;
            shard_path = pd.train_path;
        }
        TokenShard shard = TokenShard::open(shard_path);
        const long n_tokens = long(shard.size());
        double loss = 0;
        try {
            loss = evaluate(*lc.model, shard, B, t.seq_len, o->batches);
        } catch (const Error& e) {  // name the --text file, not the scratch shard it was tokenized into
            if (o->text.empty()) throw;
            std::string msg = e.what();
            for (size_t p = msg.find(shard_path); p != std::string::npos; p = msg.find(shard_path, p + o->text.size()))
                msg.replace(p, shard_path.size(), o->text);
            throw Error(msg);
        }
        std::printf("eval on %s (%ld tokens, seq %d): loss %.4f, perplexity %.6g\n", what.c_str(), n_tokens,
                    t.seq_len, loss, std::exp(loss));
    });
}

}  // namespace strata::cli
