#include "bench/train_bench.h"

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/error.h"
#include "core/rng.h"

namespace fs = std::filesystem;

namespace strata::bench {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr double kLr = 3e-4;

// Turns the op profiler on for its lifetime.
struct ProfilerOn {
    ProfilerOn() {
        op_profile::reset();
        op_profile::enable();
    }
    ~ProfilerOn() { op_profile::disable(); }
};
}  // namespace

const std::array<const char*, kPhases> kPhaseNames = {"zero_grad", "forward (with loss)", "backward", "grad-norm clip",
                                                      "AdamW update"};

ModelConfig bench_model_config(const TrainBenchOptions& o) {
    ModelConfig c;
    c.vocab_size = 4096;
    c.d_model = 384;
    c.n_layers = 8;
    c.n_heads = 6;
    c.n_kv_heads = 2;
    c.head_dim = 64;
    c.ffn_hidden = 1024;
    c.max_seq_len = int(o.seq);
    c.norm_placement = NormPlacement::pre;
    c.qk_norm = false;
    c.tie_embeddings = true;
    c.seed = 1337;
    if (o.residual == "standard") c.residual = Residual::standard;
    else if (o.residual == "attnres_full") c.residual = Residual::attnres_full;
    else if (o.residual == "attnres_block") c.residual = Residual::attnres_block;
    else throw Error("--residual must be standard, attnres_full or attnres_block, not \"" + o.residual + "\"");
    c.attnres_block_size = o.attnres_block_size;
    if (o.attention == "causal") c.attention = AttentionKind::causal;
    else if (o.attention == "moda") c.attention = AttentionKind::moda;
    else throw Error("--attention must be causal or moda, not \"" + o.attention + "\"");
    c.validate("bench model");
    return c;
}

void make_batch(long B, long T, long V, std::vector<int32_t>& x, std::vector<int32_t>& y) {
    Rng rng(1337);
    std::vector<int32_t> seq(size_t(B * (T + 1)));
    for (auto& t : seq) t = int32_t(rng.next_u64() % uint64_t(V));
    x.resize(size_t(B * T));
    y.resize(size_t(B * T));
    for (long b = 0; b < B; b++)
        for (long t = 0; t < T; t++) {
            x[b * T + t] = seq[b * (T + 1) + t];
            y[b * T + t] = seq[b * (T + 1) + t + 1];
        }
}

double ProfileResult::families_ms() const {
    double s = 0;
    for (double x : ms) s += x;
    return s;
}

ProfileResult profile_train_steps(Model<float>& model, AdamW<float>& opt, const StepConfig& sc, double lr, int steps) {
    ProfileResult p;
    p.steps = steps;
    double wall = 0;
    op_profile::Totals t;
    {
        ProfilerOn on;
        for (int i = 0; i < steps; i++) {
            const Clock::time_point t0 = Clock::now();
            const StepStats ss = train_step(model, opt, sc, {}, lr);
            wall += seconds_since(t0);
            if (!ss.finite()) throw Error("bench: strata's loss is not finite at profiled step " + std::to_string(i));
        }
        t = op_profile::totals();
    }
    const double n = std::max(1, steps);
    p.step_ms = wall * 1e3 / n;
    for (int f = 0; f < kOpFamilies; f++) {
        p.ms[f] = t.seconds[f] * 1e3 / n;
        p.calls[f] = double(t.calls[f]) / n;
    }
    return p;
}

StrataResult run_strata(const ModelConfig& cfg, const TrainBenchOptions& o) {
    const CpuSnapshot c0 = cpu_snapshot();
    Model<float> model(cfg);
    AdamW<float> opt(model, AdamWConfig{});
    std::vector<int32_t> x, y;
    make_batch(o.batch, o.seq, cfg.vocab_size, x, y);
    StrataResult r;
    r.params = model.num_params();
    std::vector<double> step_s;
    std::array<std::vector<double>, kPhases> ph;
    // The training step of `strata train` (src/train/step.h), on one fixed batch.
    const StepConfig sc{o.batch, o.seq, 1, 1.0, x.data(), y.data()};
    for (int i = 0; i < o.warmup + o.steps; i++) {
        StepTimes tm;
        const StepStats ss = train_step(model, opt, sc, {}, kLr, {}, &tm);
        const double loss = ss.loss;
        const double dt = tm.zero_grad + tm.forward + tm.backward + tm.clip + tm.update;
        if (!ss.finite()) throw Error("bench: strata's loss is not finite at step " + std::to_string(i));
        if (i == 0) r.loss_first = loss;
        r.loss_last = loss;
        std::fprintf(stderr, "strata step %d: %.1f ms loss %.4f%s\n", i, dt * 1e3, loss, i < o.warmup ? " (warm-up)" : "");
        if (i < o.warmup) continue;
        step_s.push_back(dt);
        const double p[kPhases] = {tm.zero_grad, tm.forward, tm.backward, tm.clip, tm.update};
        for (int k = 0; k < kPhases; k++) ph[k].push_back(p[k]);
    }
    r.cpu = cpu_use(c0, cpu_snapshot());
    r.step = stats_of(step_s);
    for (int p = 0; p < kPhases; p++) r.phase[p] = stats_of(ph[p]);
    if (o.profile) {
        const int n = std::max(3, std::min(o.steps, 5));
        std::fprintf(stderr, "profile: %d more steps with the op profiler on...\n", n);
        r.profile = profile_train_steps(model, opt, sc, kLr, n);
    }
    return r;
}

TrainBenchResult run_train_bench(const TrainBenchOptions& o) {
    TrainBenchResult r;
    r.options = o;
    const fs::path repo = find_repo(o.repo);
    const fs::path python = !o.peer_python.empty() ? fs::path(o.peer_python)
                            : repo.empty()         ? fs::path("bench/.venv/bin/python")
                                                   : repo / "bench" / ".venv" / "bin" / "python";
    const fs::path script = repo.empty() ? fs::path("bench/peer_train.py") : repo / "bench" / "peer_train.py";

#ifdef _OPENMP
    omp_set_num_threads(o.threads);
#endif
    openblas_set_num_threads(o.threads);

    r.model = bench_model_config(o);
    check_memory(r.model.memory_bytes(o.batch, o.seq, /*training=*/true), "bench train",
                 "batch " + std::to_string(o.batch) + " x seq " + std::to_string(o.seq));
    r.flops = training_flops(r.model, o.batch, o.seq);
    r.machine = machine_facts(repo);

    std::fprintf(stderr, "sgemm peak, %d threads...\n", o.threads);
    const CpuSnapshot c0 = cpu_snapshot();
    r.gemm = sgemm_peaks(o.batch * o.seq, r.model);
    const CpuSnapshot c1 = cpu_snapshot();
    r.cpu_gemm = cpu_use(c0, c1);

    std::fprintf(stderr, "strata: %d warm-up + %d timed steps, batch %ld × seq %ld...\n", o.warmup, o.steps, o.batch,
                 o.seq);
    r.strata = run_strata(r.model, o);
    const CpuSnapshot c2 = cpu_snapshot();

    if (o.no_peer) {
        r.peer.note = "skipped (--no-peer)";
    } else {
        r.peer = run_peer(python, script, o);
        if (!r.peer.ran) std::fprintf(stderr, "PyTorch peer: %s\n", r.peer.note.c_str());
    }
    const CpuSnapshot c3 = cpu_snapshot();
    r.machine.loadavg_after = loadavg();
    r.cpu_peer = cpu_use(c2, c3);
    return r;
}

}  // namespace strata::bench
