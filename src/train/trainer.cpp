#include "train/trainer.h"

#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"
#include "core/version.h"
#include "infer/generate.h"
#include "ops/cpu/gemm.h"
#include "train/checkpoint.h"
#include "train/corpus.h"
#include "train/evaluate.h"
#include "train/faults.h"
#include "train/interrupt.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/progress.h"
#include "train/resume.h"
#include "train/step.h"

namespace strata {

void set_threads(int n) {
    if (n < 1 || n > kMaxThreads)
        throw Error("thread count " + std::to_string(n) + " is outside [1, " + std::to_string(kMaxThreads) + "]");
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

static void clean_leftovers(const std::string& dir) {
    if (int n = remove_stale_temp_files(dir); n > 0)
        std::fprintf(stderr, "removed %d temporary file(s) left in %s by an interrupted run\n", n, dir.c_str());
}

static void print_model_line(const RunConfig& rc, const Model<float>& model) {
    const TrainConfig& t = rc.train;
    std::string residual = to_string(rc.model.residual);
    if (rc.model.residual == Residual::attnres_block)
        residual += " (" + std::to_string(rc.model.attnres_block_size) + " sublayers per block)";
    std::string attention = to_string(rc.model.attention);
    if (rc.model.attention == AttentionKind::moda)
        attention += moda_ffn_kv(rc.model) ? " (attention and FFN K/V)" : " (attention K/V)";
    std::fprintf(stderr,
                 "model: %zu parameters, %d layers, d_model %d, norm %s, residual %s, attention %s; batch %d x %d x %d "
                 "accum, %d threads, %s%s\n",
                 model.num_params(), rc.model.n_layers, rc.model.d_model, to_string(rc.model.norm_placement),
                 residual.c_str(), attention.c_str(), t.batch_size, t.seq_len, t.grad_accum, t.threads,
                 to_string(model.precision()),
                 (std::string(" (GEMMs: ") +
                  (model.precision() == Precision::bf16 ? bf16_gemm_backend() : f32_gemm_backend()) + ")")
                     .c_str());
}

double divergence_threshold(int vocab_size, double first_logged_loss) {
    return std::max(std::log(double(vocab_size)) + 1.0, 1.5 * first_logged_loss);
}

// Keeps the rolling checkpoint's current content under another name too (a hard link: the rolling
// file is replaced by a rename, so the link keeps this version). A copy where links are not possible.
static void keep_copy(const std::string& out_dir, const std::string& name) {
    namespace fs = std::filesystem;
    const fs::path src = checkpoint_path(out_dir), dst = fs::path(out_dir) / name;
    const fs::path tmp = dst.string() + ".tmp." + std::to_string(::getpid());
    std::error_code ec;
    fs::remove(tmp, ec);
    fs::create_hard_link(src, tmp, ec);
    if (ec) {
        ec.clear();
        atomic_write_file(tmp.string(), read_file(src.string()));
    }
    fs::rename(tmp, dst, ec);
    if (ec) throw Error("cannot write " + dst.string() + ": " + ec.message());
}

// The per-sublayer gradient norms (2L values, sublayer j = 2l attention, 2l+1 MLP of layer l).
static void sublayer_grad_norms(const Model<float>& model, std::vector<double>& out) {
    std::fill(out.begin(), out.end(), 0.0);
    for (const ParamSpec& s : model.specs)
        if (s.sublayer >= 0) out[size_t(s.sublayer)] += sum_squares(model.grad_data() + s.offset, long(s.numel));
    for (double& v : out) v = std::sqrt(v);
}

// A short sample from the model (temperature 0.8, top-k 40, seeded by the step) for train.sample_every.
static std::string training_sample(Model<float>& model, const Tokenizer& tok, long step) {
    SampleOptions so;
    so.temperature = 0.8;
    so.top_k = 40;
    so.seed = uint64_t(step);
    so.max_tokens = std::min<long>(32, model.cfg.max_seq_len - 1);
    so.stop_token = tok.eos_id();
    std::vector<int32_t> ids = generate(model, {int32_t(tok.eos_id())}, so);
    if (!ids.empty() && ids.back() == tok.eos_id()) ids.pop_back();
    return tok.decode(ids);
}

static nlohmann::json result_settings(const TrainConfig& t) {
    return {{"steps", t.steps}, {"lr", t.lr}, {"min_lr", t.min_lr}, {"batch_size", t.batch_size},
            {"seq_len", t.seq_len}, {"seed", t.seed}, {"weight_decay", t.weight_decay}};
}

TrainResult train(const RunConfig& rc, const TrainOptions& opts) {
    const TrainConfig& t = rc.train;
    const Device device = parse_device(t.device, "train.device");
    set_threads(t.threads);
    // Everything a training run holds at once, checked before anything big is allocated.
    check_memory(rc.model.memory_bytes(t.batch_size, t.seq_len, true, parse_precision(t.precision, "train.precision")), "training with batch " +
                 std::to_string(t.batch_size) + " x " + std::to_string(t.seq_len),
                 "the model, its gradients, the AdamW moments and the activations");
    clean_leftovers(t.data_dir);
    clean_leftovers(t.out_dir);
    prepare_run_dir(t);
    RunStart rs = start_run(rc, device);
    // A resumed run (or one started from init_from) keeps its checkpoint's tokenizer.
    PreparedCorpus pc = prepare_corpus(rc, true, rs.tok.get());
    if (pc.tok.vocab_size() != rc.model.vocab_size)
        throw Error("tokenizer " + t.data_dir + "/tokenizer.model has " + std::to_string(pc.tok.vocab_size()) +
                    " pieces but model.vocab_size is " + std::to_string(rc.model.vocab_size));
    const CorpusShards shards = open_corpus_shards(pc);
    MixtureSampler sampler = shards.sampler(t.batch_size, t.seq_len, t.seed);
    shards.probe(t.batch_size, t.seq_len);  // fails now, not at the first eval, if too short

    Model<float>& model = *rs.model;
    AdamW<float>& opt = *rs.opt;
    TrainState& st = rs.st;
    model.set_precision(parse_precision(t.precision, "train.precision"));
    if (model.precision() == Precision::bf16)
        if (const std::string note = bf16_speed_note(); !note.empty()) std::fprintf(stderr, "%s\n", note.c_str());
    apply_no_decay(model.specs, t.no_decay);
    shards.check_vocab(model);
    const NonfiniteFault fault = NonfiniteFault::from_env(model);
    sampler.set_position(st.sampler_position);
    const double tokens_per_step = double(t.batch_size) * t.seq_len * t.grad_accum;
    const double peak_gflops = t.peak_gflops > 0 ? t.peak_gflops : opts.peak_gflops;
    std::fprintf(stderr, "config: %s\n", rc.to_json().dump().c_str());
    print_model_line(rc, model);
    if (opts.flops_per_step > 0)
        std::fprintf(stderr, "cost: %.4g FLOPs per token (%.4g GFLOP per step)%s\n", opts.flops_per_step / tokens_per_step,
                     opts.flops_per_step * 1e-9,
                     peak_gflops > 0 ? (", MFU against a peak of " + std::to_string(long(peak_gflops)) + " GFLOP/s" +
                                        (t.peak_gflops > 0 ? " (train.peak_gflops)" : model.precision() == Precision::bf16 ? " (measured bf16 GEMM)" : " (measured sgemm)"))
                                           .c_str()
                                     : "");

    std::error_code ec;
    std::filesystem::create_directories(t.out_dir, ec);
    if (ec) throw Error("cannot create output directory " + t.out_dir + ": " + ec.message());
    {
        nlohmann::json changes = nlohmann::json::array();
        for (const ConfigChange& c : rs.changes) changes.push_back({{"key", c.key}, {"old", c.old_value}, {"new", c.new_value}});
        append_history(t.out_dir, {{"time", utc_timestamp()}, {"version", STRATA_VERSION}, {"start_step", st.step},
                                   {"resumed", rs.resumed}, {"steps", t.steps}, {"changes", changes},
                                   {"init_from", rs.init_from.empty() ? nlohmann::json() : nlohmann::json(rs.init_from)}});
    }
    Progress progress(t.steps, st.step, t.log_every);
    MetricsLog metrics(t.out_dir + "/metrics.jsonl", st.step, progress, opts.on_metrics);

    InterruptScope interrupt;
    TrainResult res;
    res.start_step = st.step;
    res.train_loss = st.last_loss;
    if (st.step >= t.steps && rs.previous) res.result_settings = result_settings(rs.previous->train);
    std::vector<int32_t> x(size_t(t.batch_size) * t.seq_len), y(x.size());
    std::vector<double> sub_norms(size_t(2 * rc.model.n_layers));
    const StepConfig sc{t.batch_size, t.seq_len, t.grad_accum, t.grad_clip, x.data(), y.data()};
    auto save = [&] {
        // Never persist a poisoned state: a NaN that reached the weights or the moments stops the run.
        for (const Buffer* buf : {&model.params(), &opt.m, &opt.v}) {
            std::string bad = first_nonfinite(model, *buf);
            if (!bad.empty())
                throw Error(std::string("non-finite value in the ") +
                            (buf == &model.params() ? "weights" : "AdamW moments") + " of " + bad + " after step " +
                            std::to_string(st.step) + "; not writing a checkpoint from this state" +
                            (rs.saved_step >= 0 ? " (the checkpoint of step " + std::to_string(rs.saved_step) +
                                                      " is kept)"
                                                : ""));
        }
        st.trainer = rs.trainer_state();
        save_checkpoint(t.out_dir, rc, model, opt, pc.tok, st);
        rs.saved_step = st.step;
    };
    // train.keep_best: a validation loss below every earlier one keeps this state as checkpoint-best.
    auto note_val = [&](double vl) {
        if (!t.keep_best || (rs.best_val_loss > 0 && !(vl < rs.best_val_loss))) return;
        rs.best_val_loss = vl;
        save();
        keep_copy(t.out_dir, "checkpoint-best.safetensors");
    };
    // A periodic evaluation at step s; false when an interrupt cut it short (nothing is written then).
    auto periodic_eval = [&](long s) {
        const CorpusEval er = eval_corpora(model, shards, t.batch_size, t.seq_len, t.eval_batches, interrupt.flag());
        if (!er.complete) return false;
        metrics.val_by_corpus(s, er.loss, er.by_corpus);
        char buf[128];
        std::snprintf(buf, sizeof buf, "step %ld: validation loss %.4f", s, er.loss);
        progress.note(buf);
        note_val(er.loss);
        return true;
    };
    // An interrupt during the evaluation due at the checkpoint's step left it out: do it now, so the
    // metrics equal an uninterrupted run's.
    if (st.step > 0 && st.step < t.steps && st.step % t.eval_every == 0 && !metrics.has_val_at_resume())
        periodic_eval(st.step);
    for (long step = st.step; step < t.steps && !interrupt.requested(); step++) {
        auto t0 = std::chrono::steady_clock::now();
        const double lr = rs.schedule.at(step);
        StepHooks hooks;
        if (fault.grads_at(step + 1)) hooks.after_backward = [&] { fill_nan(model.grads(), *fault.spec); };
        const StepStats ss =
            compute_gradients(model, sc, [&](int32_t* xb, int32_t* yb) { sampler.next(xb, yb); }, hooks);
        st.step = step + 1;
        st.sampler_position = sampler.position();
        rs.tokens_seen += tokens_per_step;
        const bool logged = st.step == 1 || st.step % t.log_every == 0;
        if (!ss.finite()) {
            const std::string where = nonfinite_where(model, ss.loss);
            const std::string what = "non-finite value in " + where + " at step " + std::to_string(st.step);
            const std::string kept =
                rs.saved_step >= 0 ? "; the checkpoint of step " + std::to_string(rs.saved_step) + " is kept" : "";
            if (t.on_nonfinite == "stop")
                throw Error(what + "; stopping without writing a checkpoint from this state" + kept);
            if (where.rfind("the weights", 0) == 0)
                throw Error(what + "; skipping the step cannot repair the weights, so stopping without writing "
                                   "a checkpoint from this state" + kept);
            // skip: no update; the weights and moments are those of the step before
            progress.note(what + "; step skipped (no update)");
            metrics.skipped(st.step, where);
        } else {
            if (logged) sublayer_grad_norms(model, sub_norms);  // before clipping scales them
            apply_update(model, opt, sc, ss.grad_norm, lr);
            if (fault.weights_at(st.step)) fill_nan(model.params(), *fault.spec);
            st.last_loss = ss.loss;
            res.train_loss = ss.loss;
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            MetricsLog::Step m;
            m.step = st.step;
            m.loss = ss.loss;
            m.lr = lr;
            m.grad_norm = ss.grad_norm;
            m.tokens_per_s = tokens_per_step / dt;
            m.step_ms = dt * 1e3;
            m.tokens = rs.tokens_seen;
            if (opts.flops_per_step > 0 && peak_gflops > 0) m.mfu = opts.flops_per_step / dt / (peak_gflops * 1e9);
            if (logged) m.sublayer_grad_norms = &sub_norms;
            metrics.step(m);
            progress.update(step, ss.loss, lr, tokens_per_step / dt);
            // Divergence: the loss above the threshold for kDivergenceLogs logged steps in a row.
            if (logged) {
                if (rs.first_logged_loss == 0) rs.first_logged_loss = ss.loss;
                const double thr = divergence_threshold(rc.model.vocab_size, rs.first_logged_loss);
                rs.diverged_logs = ss.loss > thr ? rs.diverged_logs + 1 : 0;
                if (rs.diverged_logs >= kDivergenceLogs && !res.diverged) {
                    res.diverged = true;
                    res.diverged_at = st.step;
                    res.divergence_threshold = thr;
                    char buf[256];
                    std::snprintf(buf, sizeof buf,
                                  "step %ld: the loss has diverged: above %.4g (max(ln V + 1, 1.5 x the first logged "
                                  "loss)) for %ld logged steps%s",
                                  st.step, thr, kDivergenceLogs,
                                  t.on_divergence == "stop" ? "; stopping (train.on_divergence=stop)" : "");
                    progress.note(buf);
                    if (t.on_divergence == "stop") {
                        res.stopped_diverged = true;
                        break;
                    }
                }
            }
            if (t.sample_every > 0 && st.step % t.sample_every == 0)
                progress.note("sample at step " + std::to_string(st.step) + ": " +
                              nlohmann::json(training_sample(model, pc.tok, st.step)).dump());
        }
        // (an interrupt already received skips the evaluation: periodic_eval returns false at once)
        if (st.step % t.eval_every == 0 && st.step != t.steps && !periodic_eval(st.step))
            progress.note("step " + std::to_string(st.step) +
                          ": evaluation interrupted; it runs again when training resumes");
        const bool keep = t.keep_every > 0 && st.step % t.keep_every == 0;
        if ((st.step % t.ckpt_every == 0 || st.step == t.steps || interrupt.requested() || keep) &&
            rs.saved_step != st.step)
            save();
        if (keep) keep_copy(t.out_dir, "checkpoint-" + std::to_string(st.step) + ".safetensors");
    }
    res.step = st.step;
    if (res.stopped_diverged) return res;  // the checkpoint of the last save is kept
    if (interrupt.requested()) {
        if (rs.saved_step != st.step) save();  // interrupted before the first step of this run
        progress.note("interrupted: checkpoint saved at step " + std::to_string(st.step));
        res.interrupted = true;
        return res;
    }
    const CorpusEval er = eval_corpora(model, shards, t.batch_size, t.seq_len, t.eval_batches, interrupt.flag());
    if (er.complete) {
        res.val_loss = er.loss;
        res.val_loss_by_corpus = er.by_corpus;
        if (!(res.steps_run() == 0 && metrics.has_val_at_resume()))
            metrics.val_by_corpus(st.step, er.loss, er.by_corpus, /*final=*/true);
        if (res.steps_run() > 0) note_val(er.loss);
    } else {
        progress.note("interrupted during the final evaluation; the checkpoint of step " + std::to_string(st.step) +
                      " is complete");
        res.interrupted = true;
    }
    return res;
}

}  // namespace strata
