// strata eval: validation loss and perplexity of a checkpoint.
#include <cmath>
#include <cstdio>
#include <unistd.h>

#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "model/config.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/evaluate.h"
#include "train/trainer.h"

namespace strata::cli {

void add_eval_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("eval", "evaluate a checkpoint: loss and perplexity");
    struct Opts {
        std::string ckpt = "runs/default", text, data_dir, precision = "fp32";
        long batches = 0;
        int batch_size = 0, seq_len = 0, threads = 2;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--ckpt", o->ckpt, "checkpoint file or run directory (its checkpoint.safetensors)")
        ->capture_default_str();
    cmd->add_option("--text", o->text, "evaluate on this text file or folder instead of the run's validation split");
    cmd->add_option("--data-dir", o->data_dir, "read val.bin from this folder instead of the run's data_dir");
    cmd->add_option("--batches", o->batches, "at most this many batches (0 = all)")->check(at_least(0));
    cmd->add_option("--batch-size", o->batch_size, "batch size (default: the run's)")->check(at_least(0));
    cmd->add_option("--seq-len", o->seq_len, "tokens per sequence, at most the model's max_seq_len (default: the run's)")
        ->check(at_least(1));
    cmd->add_option("--threads", o->threads, "threads")->capture_default_str()->check(in_range(1, kMaxThreads));
    add_precision_option(cmd, o->precision);
    cmd->callback([o] {
        if (dry_run()) return;
        set_threads(o->threads);
        LoadedCheckpoint lc = load_checkpoint(o->ckpt, /*weights_only=*/true);
        Model<float>& model = *lc.model;
        use_precision(model, o->precision);
        const TrainConfig& t = lc.rc.train;
        const auto [B, T] = eval_shape(lc, o->batch_size, o->seq_len);
        // A mixture's sources have a split each (DATA_DIR/corpus<i>): the user picks one.
        if (o->data_dir.empty() && !t.corpora.empty() && o->text.empty())
            throw Error("checkpoint " + o->ckpt + " was trained on a list of " + std::to_string(t.corpora.size()) +
                        " corpora, each with its own validation split: pass --data-dir " + t.data_dir +
                        "/corpus<i> (i = 0 … " + std::to_string(t.corpora.size() - 1) + ") to evaluate one, or --text FILE");
        const std::string data_dir = o->data_dir.empty() ? t.data_dir : o->data_dir;
        std::string shard_path = data_dir + "/val.bin";
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
        // A prepared shard must come from this checkpoint's tokenizer; text is tokenized here with it.
        if (o->text.empty())
            check_prepared_with(data_dir, shard, *lc.tok, o->ckpt, ", or pass --text FILE to evaluate on raw text");
        if (shard.vocab_size() > model.cfg.vocab_size)
            throw Error("token shard " + shard.path() + " was made with a " + std::to_string(shard.vocab_size()) +
                        "-token vocabulary, larger than the model's " + std::to_string(model.cfg.vocab_size) +
                        " (another tokenizer?)");
        if (shard.size() < size_t(T) + 1)
            throw Error(what + " has " + std::to_string(shard.size()) + " tokens, fewer than one sequence of T+1 = " +
                        std::to_string(T + 1) + " (a shorter --seq-len fits it)");
        check_memory(model.cfg.memory_bytes(B, T, false, model.precision()),
                     "evaluation with batch " + std::to_string(B) + " x " + std::to_string(T),
                     "the model and its activations");
        // The loss is the mean over the targets actually scored: windows of T inputs, the last batch
        // possibly partial, the tail of the shard shorter than a window left out.
        EvalBatches it(shard, B, T);
        std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
        double sum = 0;
        long scored = 0, batches = 0;
        while (o->batches <= 0 || batches < o->batches) {
            if (it.next(x.data(), y.data()) == 0) break;
            const double loss = model.forward(x.data(), y.data(), B, T);
            sum += loss * double(model.last_count());
            scored += model.last_count();
            batches++;
        }
        const double loss = scored > 0 ? sum / double(scored) : 0.0;
        std::printf("eval on %s: %ld tokens scored (of %zu in the shard; seq %d): loss %.4f, perplexity %.6g\n",
                    what.c_str(), scored, shard.size(), T, loss, std::exp(loss));
    });
}

}  // namespace strata::cli
