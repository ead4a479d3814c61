#include "train/trainer.h"

#include <cblas.h>
#include <omp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>

#include "core/error.h"
#include "core/fileio.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/progress.h"
#include "train/step.h"

namespace strata {

void set_threads(int n) {
    if (n < 1 || n > kMaxThreads)
        throw Error("thread count " + std::to_string(n) + " is outside [1, " + std::to_string(kMaxThreads) + "]");
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

// ---- SIGINT: the first one asks for a checkpoint and a clean exit, a second one exits at once ------

static std::atomic<int> g_sigint{0};
static void on_sigint(int) {
    // Only async-signal-safe calls here: write(2) and _Exit.
    if (g_sigint.fetch_add(1) >= 1) {
        static const char bye[] = "\nstrata: second interrupt: exiting now; the last complete checkpoint is kept\n";
        ssize_t r = ::write(STDERR_FILENO, bye, sizeof bye - 1);
        (void)r;
        std::_Exit(130);  // the checkpoint on disk is whole: writes are atomic
    }
    static const char msg[] =
        "\nstrata: interrupt: finishing the current step, then saving a checkpoint (interrupt again to quit at once)\n";
    ssize_t r = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)r;
}

// ---- evaluation ---------------------------------------------------------------------------------

// A shard made with a larger vocabulary would feed the embedding ids it does not have.
static void check_shard_vocab(const TokenShard& shard, const Model<float>& model) {
    if (shard.vocab_size() > model.cfg.vocab_size)
        throw Error("token shard " + shard.path() + " was made with a " + std::to_string(shard.vocab_size()) +
                    "-token vocabulary, larger than the model's " + std::to_string(model.cfg.vocab_size) +
                    " (another tokenizer?)");
}

// Mean loss over the batches into `out`; stops early, returning false, once *stop is non-zero.
static bool eval_loop(Model<float>& model, const TokenShard& shard, int B, int T, long max_batches,
                      const std::atomic<int>* stop, double& out, const std::function<void()>& after_batch = {}) {
    EvalBatches it(shard, B, T);
    std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
    double sum = 0;
    long count = 0, batches = 0;
    while (max_batches <= 0 || batches < max_batches) {
        if (stop && stop->load() > 0) return false;
        if (it.next(x.data(), y.data()) == 0) break;
        double loss = model.forward(x.data(), y.data(), B, T);
        if (after_batch) after_batch();
        sum += loss * double(model.last_count());
        count += model.last_count();
        batches++;
    }
    out = count > 0 ? sum / double(count) : 0.0;
    return true;
}

double evaluate(Model<float>& model, const TokenShard& shard, int B, int T, long max_batches,
                const std::function<void()>& after_batch) {
    check_memory(model.cfg.memory_bytes(B, T, false),
                 "evaluation with batch " + std::to_string(B) + " x " + std::to_string(T),
                 "the model and its activations");
    check_shard_vocab(shard, model);
    double loss = 0;
    eval_loop(model, shard, B, T, max_batches, nullptr, loss, after_batch);
    return loss;
}

// ---- leftovers of killed runs ---------------------------------------------------------------------

// AtomicFileWriter writes NAME.tmp.PID and renames it over NAME; a process killed mid-write leaves the
// temporary file behind (NAME itself stays whole). Removes such files whose writer is gone.
static void remove_stale_temp_files(const std::string& dir) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) return;
    int removed = 0;
    for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        const size_t at = name.rfind(".tmp.");
        if (at == std::string::npos || at == 0) continue;
        const std::string pid_text = name.substr(at + 5);
        if (pid_text.empty() || pid_text.size() > 9 ||
            pid_text.find_first_not_of("0123456789") != std::string::npos)
            continue;
        const pid_t pid = pid_t(std::stol(pid_text));
        if (pid == ::getpid()) continue;
        if (pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM)) continue;  // its writer may still be running
        std::error_code rec;
        if (it->is_regular_file(rec) && std::filesystem::remove(it->path(), rec)) removed++;
    }
    if (removed > 0)
        std::fprintf(stderr, "removed %d temporary file(s) left in %s by an interrupted run\n", removed, dir.c_str());
}

// On resume, metrics.jsonl may hold lines for steps after the checkpoint (the killed or interrupted
// run got further before it stopped). They are dropped, atomically, so the resumed run appends the
// same lines an uninterrupted run would have written. Returns whether a validation line for
// `step` survived.
static bool truncate_metrics(const std::string& path, long step, Progress& progress) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return false;
    const std::string text = read_file(path);
    std::string kept;
    long dropped = 0;
    bool has_val = false;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        const bool complete = nl != std::string::npos;
        const std::string line = text.substr(pos, complete ? nl - pos : std::string::npos);
        pos = complete ? nl + 1 : text.size();
        if (line.empty()) continue;
        bool keep = false;
        if (complete) {  // a line without its newline was cut short by a kill
            try {
                const nlohmann::json j = nlohmann::json::parse(line);
                if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
                    j["step"].get<long>() <= step) {
                    keep = true;
                    if (j["step"].get<long>() == step && j.contains("val_loss")) has_val = true;
                }
            } catch (const nlohmann::json::exception&) {
            }
        }
        if (keep) kept += line + "\n";
        else dropped++;
    }
    if (dropped > 0) {
        atomic_write_file(path, kept);
        progress.note("metrics.jsonl: dropped " + std::to_string(dropped) + " line(s) written after step " +
                      std::to_string(step) + " by the interrupted run");
    }
    return has_val;
}

// ---- numerical faults -------------------------------------------------------------------------------

// The first tensor of a parameter-shaped buffer holding a NaN or an infinity, or "" when all are finite.
static std::string first_nonfinite(const Model<float>& m, const Buffer& buf) {
    for (const ParamSpec& s : m.specs)
        if (nonfinite_count(buf.data<float>() + s.offset, long(s.numel)) > 0) return s.name;
    return "";
}

// Test hook STRATA_FAULT_NONFINITE=STEP[:PARAM] | STEP:weights[:PARAM]: at the 1-based step STEP,
// after the backward pass, fill PARAM's gradient with NaN (default: the first parameter); with
// "weights", fill PARAM's values with NaN after that step's update instead, so the next step's loss
// is NaN.
struct NonfiniteFault {
    long step = 0;  // 0: no fault
    bool weights = false;
    const ParamSpec* spec = nullptr;
};

static NonfiniteFault nonfinite_fault(const Model<float>& model) {
    NonfiniteFault f;
    const char* v = std::getenv("STRATA_FAULT_NONFINITE");
    if (!v || !*v) return f;
    const std::string text = v;
    auto bad = [&](const std::string& why) {
        return Error("STRATA_FAULT_NONFINITE must be STEP[:PARAM] or STEP:weights[:PARAM], got '" + text + "': " + why);
    };
    const size_t colon = text.find(':');
    const std::string step_text = text.substr(0, colon);
    if (step_text.empty() || step_text.size() > 12 || step_text.find_first_not_of("0123456789") != std::string::npos)
        throw bad("STEP is not a positive integer");
    f.step = std::stol(step_text);
    if (f.step <= 0) throw bad("STEP is not a positive integer");
    std::string name = colon == std::string::npos ? "" : text.substr(colon + 1);
    if (name == "weights" || name.rfind("weights:", 0) == 0) {
        f.weights = true;
        name = name.size() > 8 ? name.substr(8) : "";
    }
    if (name.empty()) {
        f.spec = &model.specs.front();
    } else {
        for (const ParamSpec& s : model.specs)
            if (s.name == name) f.spec = &s;
        if (!f.spec) throw bad("the model has no parameter named \"" + name + "\"");
    }
    return f;
}

static void fill_nan(Buffer& buf, const ParamSpec& s) {
    const std::vector<float> nan(s.numel, std::numeric_limits<float>::quiet_NaN());
    buf.from_host(nan.data(), s.offset, s.numel);
}

// ---- training -----------------------------------------------------------------------------------

TrainResult train(const RunConfig& rc) {
    const TrainConfig& t = rc.train;
    const Device device = parse_device(t.device, "train.device");
    set_threads(t.threads);
    // Everything a training run holds at once, checked before anything big is allocated.
    check_memory(rc.model.memory_bytes(t.batch_size, t.seq_len, true), "training with batch " +
                 std::to_string(t.batch_size) + " x " + std::to_string(t.seq_len),
                 "the model, its gradients, the AdamW moments and the activations");
    remove_stale_temp_files(t.data_dir);
    remove_stale_temp_files(t.out_dir);
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
    long saved_step = -1;  // the step of the checkpoint on disk, -1 when there is none yet
    const std::string ckpt = checkpoint_path(t.out_dir);
    if (t.resume && std::filesystem::exists(ckpt)) {
        LoadedCheckpoint lc = load_checkpoint(ckpt, false, device);
        if (lc.rc.model.to_json() != rc.model.to_json())
            throw Error("checkpoint " + ckpt +
                        " was made with a different model config; choose another train.out_dir or set "
                        "train.resume=false to start over");
        if (lc.tok->to_bytes() != pc.tok.to_bytes())
            throw Error("checkpoint " + ckpt + " was trained with a different tokenizer than " + t.data_dir +
                        "/tokenizer.model");
        model = std::move(lc.model);
        STRATA_CHECK(&model->backend() == &backend_for(device), "the checkpoint's model is on another backend");
        opt = std::move(lc.opt);
        opt->cfg = AdamWConfig{t.beta1, t.beta2, t.eps, t.weight_decay};
        st = lc.st;
        // A loadable file can still hold a state no run could have written: refuse to train from it.
        if (st.step < 0 || opt->step < 0 || opt->step > st.step)
            throw Error("checkpoint " + ckpt + " has inconsistent step counters (step " + std::to_string(st.step) +
                        ", adamw_step " + std::to_string(opt->step) + ")");
        for (const Buffer* buf : {&model->params(), &opt->m, &opt->v}) {
            std::string bad = first_nonfinite(*model, *buf);
            if (!bad.empty())
                throw Error("checkpoint " + ckpt + " holds non-finite values in the " +
                            (buf == &model->params() ? "weights" : "AdamW moments") + " of " + bad +
                            "; it cannot be trained from");
        }
        saved_step = st.step;
        std::fprintf(stderr, "resuming from %s at step %ld\n", ckpt.c_str(), st.step);
    } else {
        model = std::make_unique<Model<float>>(rc.model, device);
        opt = std::make_unique<AdamW<float>>(*model, AdamWConfig{t.beta1, t.beta2, t.eps, t.weight_decay});
    }
    apply_no_decay(model->specs, t.no_decay);
    check_shard_vocab(train_shard, *model);
    check_shard_vocab(val_shard, *model);
    const NonfiniteFault fault = nonfinite_fault(*model);
    sampler.set_position(st.sampler_position);
    std::string residual = to_string(rc.model.residual);
    if (rc.model.residual == Residual::attnres_block)
        residual += " (" + std::to_string(rc.model.attnres_block_size) + " sublayers per block)";
    std::string attention = to_string(rc.model.attention);
    if (rc.model.attention == AttentionKind::moda) attention += rc.model.moda_ffn_kv ? " (attention and FFN K/V)" : " (attention K/V)";
    std::fprintf(stderr,
                 "model: %zu parameters, %d layers, d_model %d, norm %s, residual %s, attention %s; batch %d x %d x %d "
                 "accum, %d threads\n",
                 model->num_params(), rc.model.n_layers, rc.model.d_model, to_string(rc.model.norm_placement),
                 residual.c_str(), attention.c_str(), t.batch_size, t.seq_len, t.grad_accum, t.threads);

    std::error_code ec;
    std::filesystem::create_directories(t.out_dir, ec);
    if (ec) throw Error("cannot create output directory " + t.out_dir + ": " + ec.message());
    const std::string metrics_path = t.out_dir + "/metrics.jsonl";
    Progress progress(t.steps, st.step, t.log_every);
    const bool has_val = st.step > 0 && truncate_metrics(metrics_path, st.step, progress);
    FILE* metrics = std::fopen(metrics_path.c_str(), st.step > 0 ? "a" : "w");
    if (!metrics) throw Error("cannot open " + metrics_path + " for writing");

    g_sigint = 0;
    struct sigaction sa {}, old_sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGINT, &sa, &old_sa);
    TrainResult res;
    res.train_loss = st.last_loss;
    std::vector<int32_t> x(size_t(t.batch_size) * t.seq_len), y(x.size());
    const StepConfig sc{t.batch_size, t.seq_len, t.grad_accum, t.grad_clip, x.data(), y.data()};
    const double tokens_per_step = double(t.batch_size) * t.seq_len * t.grad_accum;
    auto save = [&] {
        // Never persist a poisoned state: a NaN that reached the weights or the moments stops the run.
        for (const Buffer* buf : {&model->params(), &opt->m, &opt->v}) {
            std::string bad = first_nonfinite(*model, *buf);
            if (!bad.empty())
                throw Error(std::string("non-finite value in the ") +
                            (buf == &model->params() ? "weights" : "AdamW moments") + " of " + bad + " after step " +
                            std::to_string(st.step) + "; not writing a checkpoint from this state" +
                            (saved_step >= 0 ? " (the checkpoint of step " + std::to_string(saved_step) + " is kept)"
                                             : ""));
        }
        save_checkpoint(t.out_dir, rc, *model, *opt, pc.tok, st);
        saved_step = st.step;
    };
    // A periodic evaluation at step s; false when an interrupt cut it short (nothing is written then).
    auto periodic_eval = [&](long s) {
        double vl = 0;
        if (!eval_loop(*model, val_shard, t.batch_size, t.seq_len, t.eval_batches, &g_sigint, vl)) return false;
        std::fprintf(metrics, "{\"step\": %ld, \"val_loss\": %.17g}\n", s, vl);
        std::fflush(metrics);
        char buf[128];
        std::snprintf(buf, sizeof buf, "step %ld: validation loss %.4f", s, vl);
        progress.note(buf);
        return true;
    };
    auto cleanup = [&] {
        std::fclose(metrics);
        ::sigaction(SIGINT, &old_sa, nullptr);
    };
    try {
        // An interrupt during the evaluation due at the checkpoint's step left it out: do it now, so the
        // metrics equal an uninterrupted run's.
        if (st.step > 0 && st.step < t.steps && st.step % t.eval_every == 0 && !has_val) periodic_eval(st.step);
        for (long step = st.step; step < t.steps && g_sigint == 0; step++) {
            auto t0 = std::chrono::steady_clock::now();
            const double lr = lr_at(step, t.warmup, t.lr_decay_steps > 0 ? t.lr_decay_steps : t.steps, t.lr, t.min_lr);
            StepHooks hooks;
            if (fault.step == step + 1 && !fault.weights) hooks.after_backward = [&] { fill_nan(model->grads(), *fault.spec); };
            const StepStats ss = compute_gradients(*model, sc, [&](int32_t* xb, int32_t* yb) { sampler.next(xb, yb); }, hooks);
            const double loss = ss.loss, gn = ss.grad_norm;
            st.step = step + 1;
            st.sampler_position = sampler.position();
            if (!std::isfinite(loss) || !std::isfinite(gn)) {
                const std::string bad_w = first_nonfinite(*model, model->params());
                const std::string bad_g = first_nonfinite(*model, model->grads());
                std::string where = !bad_w.empty()                ? "the weights of " + bad_w
                                    : !std::isfinite(loss)        ? std::string("the loss")
                                                                  : "the gradient of " + bad_g;
                if (bad_w.empty() && !std::isfinite(loss) && !bad_g.empty()) where += " (and the gradient of " + bad_g + ")";
                const std::string what = "non-finite value in " + where + " at step " + std::to_string(st.step);
                const std::string kept = saved_step >= 0 ? "; the checkpoint of step " + std::to_string(saved_step) +
                                                               " is kept"
                                                         : "";
                if (t.on_nonfinite == "stop")
                    throw Error(what + "; stopping without writing a checkpoint from this state" + kept);
                if (!bad_w.empty())
                    throw Error(what + "; skipping the step cannot repair the weights, so stopping without writing "
                                       "a checkpoint from this state" + kept);
                // skip: no update; the weights and moments are those of the step before
                progress.note(what + "; step skipped (no update)");
                std::fprintf(metrics, "{\"step\": %ld, \"skipped\": true, \"nonfinite\": \"%s\"}\n", st.step,
                             where.c_str());
                std::fflush(metrics);
            } else {
                apply_update(*model, *opt, sc, gn, lr);
                if (fault.step == st.step && fault.weights) fill_nan(model->params(), *fault.spec);
                st.last_loss = loss;
                res.train_loss = loss;
                const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                std::fprintf(metrics, "{\"step\": %ld, \"loss\": %.17g, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, \"step_ms\": %.2f}\n",
                             st.step, loss, lr, gn, tokens_per_step / dt, dt * 1e3);
                std::fflush(metrics);
                progress.update(step, loss, lr, tokens_per_step / dt);
            }
            // (an interrupt already received skips the evaluation: periodic_eval returns false at once)
            if (st.step % t.eval_every == 0 && st.step != t.steps && !periodic_eval(st.step))
                progress.note("step " + std::to_string(st.step) +
                              ": evaluation interrupted; it runs again when training resumes");
            if (st.step % t.ckpt_every == 0 || st.step == t.steps || g_sigint > 0) save();
        }
        if (g_sigint > 0) {
            if (saved_step != st.step) save();  // interrupted before the first step of this run
            progress.note("interrupted: checkpoint saved at step " + std::to_string(st.step));
            res.interrupted = true;
        } else {
            double vl = 0;
            if (eval_loop(*model, val_shard, t.batch_size, t.seq_len, t.eval_batches, &g_sigint, vl)) {
                res.val_loss = vl;
            } else {
                progress.note("interrupted during the final evaluation; the checkpoint of step " +
                              std::to_string(st.step) + " is complete");
                res.interrupted = true;
            }
        }
    } catch (...) {
        cleanup();
        throw;
    }
    cleanup();
    res.step = st.step;
    return res;
}

}  // namespace strata
