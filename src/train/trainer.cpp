#include "train/trainer.h"

#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"
#include "train/checkpoint.h"
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
        attention += rc.model.moda_ffn_kv ? " (attention and FFN K/V)" : " (attention K/V)";
    std::fprintf(stderr,
                 "model: %zu parameters, %d layers, d_model %d, norm %s, residual %s, attention %s; batch %d x %d x %d "
                 "accum, %d threads\n",
                 model.num_params(), rc.model.n_layers, rc.model.d_model, to_string(rc.model.norm_placement),
                 residual.c_str(), attention.c_str(), t.batch_size, t.seq_len, t.grad_accum, t.threads);
}

TrainResult train(const RunConfig& rc) {
    const TrainConfig& t = rc.train;
    const Device device = parse_device(t.device, "train.device");
    set_threads(t.threads);
    // Everything a training run holds at once, checked before anything big is allocated.
    check_memory(rc.model.memory_bytes(t.batch_size, t.seq_len, true), "training with batch " +
                 std::to_string(t.batch_size) + " x " + std::to_string(t.seq_len),
                 "the model, its gradients, the AdamW moments and the activations");
    clean_leftovers(t.data_dir);
    clean_leftovers(t.out_dir);
    PreparedCorpus pc = prepare_corpus(rc, true);
    if (pc.tok.vocab_size() != rc.model.vocab_size)
        throw Error("tokenizer " + t.data_dir + "/tokenizer.model has " + std::to_string(pc.tok.vocab_size()) +
                    " pieces but model.vocab_size is " + std::to_string(rc.model.vocab_size));
    TokenShard train_shard = TokenShard::open(pc.data.train_path);
    TokenShard val_shard = TokenShard::open(pc.data.val_path);
    BatchSampler sampler(train_shard, t.batch_size, t.seq_len, t.seed);
    EvalBatches probe(val_shard, t.batch_size, t.seq_len);  // fails now, not at the first eval, if too short

    RunStart rs = start_run(rc, pc, device);
    Model<float>& model = *rs.model;
    AdamW<float>& opt = *rs.opt;
    TrainState& st = rs.st;
    apply_no_decay(model.specs, t.no_decay);
    check_shard_vocab(train_shard, model);
    check_shard_vocab(val_shard, model);
    const NonfiniteFault fault = NonfiniteFault::from_env(model);
    sampler.set_position(st.sampler_position);
    print_model_line(rc, model);

    std::error_code ec;
    std::filesystem::create_directories(t.out_dir, ec);
    if (ec) throw Error("cannot create output directory " + t.out_dir + ": " + ec.message());
    Progress progress(t.steps, st.step, t.log_every);
    MetricsLog metrics(t.out_dir + "/metrics.jsonl", st.step, progress);

    InterruptScope interrupt;
    TrainResult res;
    res.train_loss = st.last_loss;
    std::vector<int32_t> x(size_t(t.batch_size) * t.seq_len), y(x.size());
    const StepConfig sc{t.batch_size, t.seq_len, t.grad_accum, t.grad_clip, x.data(), y.data()};
    const double tokens_per_step = double(t.batch_size) * t.seq_len * t.grad_accum;
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
        save_checkpoint(t.out_dir, rc, model, opt, pc.tok, st);
        rs.saved_step = st.step;
    };
    // A periodic evaluation at step s; false when an interrupt cut it short (nothing is written then).
    auto periodic_eval = [&](long s) {
        const EvalResult er = eval_loop(model, val_shard, t.batch_size, t.seq_len, t.eval_batches, interrupt.flag());
        if (!er.complete) return false;
        metrics.val(s, er.loss);
        char buf[128];
        std::snprintf(buf, sizeof buf, "step %ld: validation loss %.4f", s, er.loss);
        progress.note(buf);
        return true;
    };
    // An interrupt during the evaluation due at the checkpoint's step left it out: do it now, so the
    // metrics equal an uninterrupted run's.
    if (st.step > 0 && st.step < t.steps && st.step % t.eval_every == 0 && !metrics.has_val_at_resume())
        periodic_eval(st.step);
    for (long step = st.step; step < t.steps && !interrupt.requested(); step++) {
        auto t0 = std::chrono::steady_clock::now();
        const double lr = lr_at(step, t.warmup, t.lr_decay_steps > 0 ? t.lr_decay_steps : t.steps, t.lr, t.min_lr);
        StepHooks hooks;
        if (fault.grads_at(step + 1)) hooks.after_backward = [&] { fill_nan(model.grads(), *fault.spec); };
        const StepStats ss =
            compute_gradients(model, sc, [&](int32_t* xb, int32_t* yb) { sampler.next(xb, yb); }, hooks);
        st.step = step + 1;
        st.sampler_position = sampler.position();
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
            apply_update(model, opt, sc, ss.grad_norm, lr);
            if (fault.weights_at(st.step)) fill_nan(model.params(), *fault.spec);
            st.last_loss = ss.loss;
            res.train_loss = ss.loss;
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            metrics.step(st.step, ss.loss, lr, ss.grad_norm, tokens_per_step / dt, dt * 1e3);
            progress.update(step, ss.loss, lr, tokens_per_step / dt);
        }
        // (an interrupt already received skips the evaluation: periodic_eval returns false at once)
        if (st.step % t.eval_every == 0 && st.step != t.steps && !periodic_eval(st.step))
            progress.note("step " + std::to_string(st.step) +
                          ": evaluation interrupted; it runs again when training resumes");
        if (st.step % t.ckpt_every == 0 || st.step == t.steps || interrupt.requested()) save();
    }
    if (interrupt.requested()) {
        if (rs.saved_step != st.step) save();  // interrupted before the first step of this run
        progress.note("interrupted: checkpoint saved at step " + std::to_string(st.step));
        res.interrupted = true;
    } else {
        const EvalResult er = eval_loop(model, val_shard, t.batch_size, t.seq_len, t.eval_batches, interrupt.flag());
        if (er.complete) {
            res.val_loss = er.loss;
        } else {
            progress.note("interrupted during the final evaluation; the checkpoint of step " +
                          std::to_string(st.step) + " is complete");
            res.interrupted = true;
        }
    }
    res.step = st.step;
    return res;
}

}  // namespace strata
