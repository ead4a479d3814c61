#include "train/trainer.h"

#include <cblas.h>
#include <omp.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/progress.h"

namespace strata {

void set_threads(int n) {
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

// ---- corpus -------------------------------------------------------------------------------------

// What the tokenizer was trained from: the inputs' paths, sizes and mtimes, and the vocabulary size.
static nlohmann::json tokenizer_signature(const std::vector<std::string>& files, int vocab) {
    nlohmann::json j = {{"vocab_size", vocab}, {"files", nlohmann::json::array()}};
    for (const auto& f : files) {
        struct stat sb;
        if (::stat(f.c_str(), &sb) != 0) throw Error("cannot read corpus file " + f);
        j["files"].push_back({{"path", f}, {"size", (long long)sb.st_size}, {"mtime", (long long)sb.st_mtime}});
    }
    return j;
}

PreparedCorpus prepare_corpus(const RunConfig& rc, bool verbose) {
    const TrainConfig& t = rc.train;
    std::vector<std::string> files = list_corpus_files(t.corpus);
    std::error_code ec;
    std::filesystem::create_directories(t.data_dir, ec);
    if (ec) throw Error("cannot create data directory " + t.data_dir + ": " + ec.message());
    const std::string tok_path = t.data_dir + "/tokenizer.model", sig_path = t.data_dir + "/tokenizer.json";
    const nlohmann::json sig = tokenizer_signature(files, rc.model.vocab_size);
    bool fresh = false;
    if (std::filesystem::exists(tok_path) && std::filesystem::exists(sig_path)) {
        try {
            fresh = nlohmann::json::parse(read_file(sig_path)) == sig;
        } catch (const nlohmann::json::exception&) {
            fresh = false;  // a damaged record only costs a retrain
        }
    }
    if (!fresh) {
        if (verbose)
            std::fprintf(stderr, "training a %d-token SentencePiece tokenizer on %zu file(s) under %s ...\n",
                         rc.model.vocab_size, files.size(), t.corpus.c_str());
        Tokenizer::train(files, tok_path, rc.model.vocab_size, t.threads);
        atomic_write_file(sig_path, sig.dump(2) + "\n");
    }
    PreparedCorpus pc{Tokenizer::load(tok_path), {}};
    if (verbose && !fresh) std::fprintf(stderr, "tokenizing the corpus into %s ...\n", t.data_dir.c_str());
    pc.data = prepare_data(files, pc.tok, t.data_dir, t.val_fraction);
    if (verbose)
        std::fprintf(stderr, "corpus: %zu train / %zu validation tokens (%s)\n", pc.data.n_train, pc.data.n_val,
                     pc.data.reused ? "prepared earlier" : "prepared now");
    return pc;
}

// ---- evaluation ---------------------------------------------------------------------------------

double evaluate(Model<float>& model, const TokenShard& shard, int B, int T, long max_batches) {
    EvalBatches it(shard, B, T);
    std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
    double sum = 0;
    long count = 0, batches = 0;
    while ((max_batches <= 0 || batches < max_batches) && it.next(x.data(), y.data()) > 0) {
        double loss = model.forward(x.data(), y.data(), B, T);
        sum += loss * double(model.last_count());
        count += model.last_count();
        batches++;
    }
    return count > 0 ? sum / double(count) : 0.0;
}

// ---- SIGINT: the first one asks for a checkpoint and a clean exit, a second one exits at once ------

static std::atomic<int> g_sigint{0};
static void on_sigint(int) {
    if (g_sigint.fetch_add(1) >= 1) std::_Exit(130);  // the checkpoint on disk is whole: writes are atomic
}

// ---- training -----------------------------------------------------------------------------------

static std::string first_nonfinite(const Model<float>& m) {
    for (const ParamSpec& s : m.specs)
        for (size_t i = 0; i < s.numel; i++)
            if (!std::isfinite(m.grads[s.offset + i])) return s.name;
    return "";
}

TrainResult train(const RunConfig& rc) {
    const TrainConfig& t = rc.train;
    set_threads(t.threads);
    PreparedCorpus pc = prepare_corpus(rc, true);
    if (pc.tok.vocab_size() != rc.model.vocab_size)
        throw Error("tokenizer " + t.data_dir + "/tokenizer.model has " + std::to_string(pc.tok.vocab_size()) +
                    " pieces but model.vocab_size is " + std::to_string(rc.model.vocab_size));
    TokenShard train_shard = TokenShard::open(pc.data.train_path);
    TokenShard val_shard = TokenShard::open(pc.data.val_path);
    BatchSampler sampler(train_shard, t.batch_size, t.seq_len, t.seed);
    EvalBatches probe(val_shard, t.batch_size, t.seq_len);  // fails now, not at the first eval, if too short

    std::unique_ptr<Model<float>> model;
    std::unique_ptr<AdamW<float>> opt;
    TrainState st;
    const std::string ckpt = checkpoint_path(t.out_dir);
    if (t.resume && std::filesystem::exists(ckpt)) {
        LoadedCheckpoint lc = load_checkpoint(ckpt);
        if (lc.rc.model.to_json() != rc.model.to_json())
            throw Error("checkpoint " + ckpt +
                        " was made with a different model config; choose another train.out_dir or set "
                        "train.resume=false to start over");
        if (lc.tok->to_bytes() != pc.tok.to_bytes())
            throw Error("checkpoint " + ckpt + " was trained with a different tokenizer than " + t.data_dir +
                        "/tokenizer.model");
        model = std::move(lc.model);
        opt = std::move(lc.opt);
        opt->cfg = AdamWConfig{t.beta1, t.beta2, t.eps, t.weight_decay};
        st = lc.st;
        std::fprintf(stderr, "resuming from %s at step %ld\n", ckpt.c_str(), st.step);
    } else {
        model = std::make_unique<Model<float>>(rc.model);
        opt = std::make_unique<AdamW<float>>(model->params.size(),
                                             AdamWConfig{t.beta1, t.beta2, t.eps, t.weight_decay});
    }
    for (ParamSpec& s : model->specs) {
        s.decay = true;
        for (const auto& pat : t.no_decay)
            if (s.name.find(pat) != std::string::npos) s.decay = false;
    }
    sampler.set_position(st.sampler_position);
    std::fprintf(stderr, "model: %zu parameters, %d layers, d_model %d, norm %s; batch %d x %d x %d accum, %d threads\n",
                 model->num_params(), rc.model.n_layers, rc.model.d_model, to_string(rc.model.norm_placement),
                 t.batch_size, t.seq_len, t.grad_accum, t.threads);

    std::error_code ec;
    std::filesystem::create_directories(t.out_dir, ec);
    if (ec) throw Error("cannot create output directory " + t.out_dir + ": " + ec.message());
    const std::string metrics_path = t.out_dir + "/metrics.jsonl";
    FILE* metrics = std::fopen(metrics_path.c_str(), st.step > 0 ? "a" : "w");
    if (!metrics) throw Error("cannot open " + metrics_path + " for writing");

    g_sigint = 0;
    auto old_handler = std::signal(SIGINT, on_sigint);
    TrainResult res;
    res.train_loss = st.last_loss;
    Progress progress(t.steps, st.step, t.log_every);
    std::vector<int32_t> x(size_t(t.batch_size) * t.seq_len), y(x.size());
    const double tokens_per_step = double(t.batch_size) * t.seq_len * t.grad_accum;
    auto save = [&] { save_checkpoint(t.out_dir, rc, *model, *opt, pc.tok, st); };
    try {
        for (long step = st.step; step < t.steps; step++) {
            auto t0 = std::chrono::steady_clock::now();
            const double lr = lr_at(step, t.warmup, t.lr_decay_steps > 0 ? t.lr_decay_steps : t.steps, t.lr, t.min_lr);
            model->zero_grad();
            double loss = 0;
            for (int micro = 0; micro < t.grad_accum; micro++) {
                sampler.next(x.data(), y.data());
                loss += model->forward(x.data(), y.data(), t.batch_size, t.seq_len);
                model->backward();
            }
            loss /= t.grad_accum;
            if (t.grad_accum > 1) scale_grads(model->grads, 1.0 / t.grad_accum);
            double gn = grad_norm(model->grads);
            if (!std::isfinite(loss) || !std::isfinite(gn)) {
                std::string where = !std::isfinite(loss) ? "the loss" : "the gradient of " + first_nonfinite(*model);
                if (t.on_nonfinite == "stop")
                    throw Error("non-finite value in " + where + " at step " + std::to_string(step + 1) +
                                "; stopping without writing a checkpoint from this state");
                progress.note("step " + std::to_string(step + 1) + ": non-finite value in " + where + ", step skipped");
                st.step = step + 1;
                st.sampler_position = sampler.position();
                continue;
            }
            if (t.grad_clip > 0 && gn > t.grad_clip) scale_grads(model->grads, t.grad_clip / gn);
            opt->update(model->params, model->grads, model->specs, lr);
            st.step = step + 1;
            st.sampler_position = sampler.position();
            st.last_loss = loss;
            res.train_loss = loss;
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            std::fprintf(metrics, "{\"step\": %ld, \"loss\": %.17g, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, \"step_ms\": %.2f}\n",
                         st.step, loss, lr, gn, tokens_per_step / dt, dt * 1e3);
            std::fflush(metrics);
            progress.update(step, loss, lr, tokens_per_step / dt);
            if (st.step % t.eval_every == 0 && st.step != t.steps) {
                double vl = evaluate(*model, val_shard, t.batch_size, t.seq_len, t.eval_batches);
                std::fprintf(metrics, "{\"step\": %ld, \"val_loss\": %.17g}\n", st.step, vl);
                std::fflush(metrics);
                char buf[128];
                std::snprintf(buf, sizeof buf, "step %ld: validation loss %.4f", st.step, vl);
                progress.note(buf);
            }
            if (st.step % t.ckpt_every == 0 || st.step == t.steps) save();
            if (g_sigint > 0) {
                if (st.step % t.ckpt_every != 0 && st.step != t.steps) save();
                progress.note("interrupted: checkpoint saved at step " + std::to_string(st.step));
                res.interrupted = true;
                break;
            }
        }
    } catch (...) {
        std::fclose(metrics);
        std::signal(SIGINT, old_handler);
        throw;
    }
    std::fclose(metrics);
    std::signal(SIGINT, old_handler);
    res.step = st.step;
    if (!res.interrupted) res.val_loss = evaluate(*model, val_shard, t.batch_size, t.seq_len, t.eval_batches);
    return res;
}

}  // namespace strata
