#include "bench/train_bench.h"

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include "bench/child.h"
#include "core/error.h"
#include "ops/cpu/gemm.h"
#include "core/precision.h"
#include "core/rng.h"

namespace fs = std::filesystem;

namespace strata::bench {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr double kLr = 3e-4;

// How long the bench waits for a worker: its start (model, warm-up, torch.compile's compilation),
// one repetition, and its last answer.
constexpr double kStartTimeout = 3600, kRepTimeout = 1800, kQuitTimeout = 300;

// VmRSS / VmHWM of this process from /proc/self/status, in bytes (0 when unreadable).
double proc_status_bytes(const char* key) {
    std::ifstream f("/proc/self/status");
    std::string line;
    const std::string want = std::string(key) + ":";
    while (std::getline(f, line))
        if (line.rfind(want, 0) == 0) return std::stod(line.substr(want.size())) * 1024.0;
    return 0;
}

// Ignores SIGPIPE for its lifetime: a worker that dies must not take the bench with it when the
// bench next writes to its stdin.
struct IgnoreSigpipe {
    struct sigaction old {};
    IgnoreSigpipe() {
        struct sigaction sa {};
        sa.sa_handler = SIG_IGN;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGPIPE, &sa, &old);
    }
    ~IgnoreSigpipe() { sigaction(SIGPIPE, &old, nullptr); }
};

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

double TrainBenchResult::precision_peak(const std::string& precision) const {
    double peak = 0;
    for (const auto* set : {&gemm, &gemm_onednn, &gemm_bf16}) {
        if (set->empty()) continue;
        const bool bf = set == &gemm_bf16;
        if (bf != (precision == "bf16")) continue;
        peak = std::max(peak, highest_mean(*set).mean_gflops);
    }
    return peak;
}

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
    c.residual = parse_name<Residual>(o.residual, "--residual");
    c.attnres_block_size = o.attnres_block_size;
    c.attention = parse_name<AttentionKind>(o.attention, "--attention");
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

std::vector<double> ConfigResult::rep_tokens_per_s(double tokens_per_step) const {
    std::vector<double> out;
    for (const auto& r : reps) {
        double s = 0;
        for (double t : r) s += t;
        if (s > 0) out.push_back(tokens_per_step * double(r.size()) / s);
    }
    return out;
}

std::vector<double> ConfigResult::step_seconds() const {
    std::vector<double> out;
    for (const auto& r : reps) out.insert(out.end(), r.begin(), r.end());
    return out;
}

const ConfigResult* TrainBenchResult::find(const std::string& id) const {
    for (const auto& c : configs)
        if (c.id == id) return &c;
    return nullptr;
}

int serve_strata(const TrainBenchOptions& o) {
    // The protocol's lines go to the original stdout; anything else written there goes to stderr.
    const int proto_fd = ::dup(1);
    ::dup2(2, 1);
    FILE* out = ::fdopen(proto_fd, "w");
    if (out == nullptr) throw Error("bench worker: cannot reopen stdout");
    auto say = [out](const nlohmann::json& j) {
        const std::string s = j.dump() + "\n";
        std::fwrite(s.data(), 1, s.size(), out);
        std::fflush(out);
    };
#ifdef _OPENMP
    omp_set_num_threads(o.threads);
#endif
    openblas_set_num_threads(o.threads);
    const ModelConfig cfg = bench_model_config(o);
    std::vector<int32_t> x, y;
    make_batch(o.batch, o.seq, cfg.vocab_size, x, y);
    const double rss_before = proc_status_bytes("VmRSS");
    Model<float> model(cfg);
    try {
        model.set_precision(parse_precision(o.serve, "--precision"));
    } catch (const std::exception& e) {
        say({{"error", e.what()}});
        return 0;
    }
    AdamW<float> opt(model, AdamWConfig{});
    const StepConfig sc{o.batch, o.seq, 1, 1.0, x.data(), y.data()};
    double loss_first = 0, loss_last = 0;
    long n_steps = 0;
    // One training step of `strata train` (src/train/step.h) on the fixed batch: its time and phases.
    auto step = [&](std::array<double, kPhases>* ph) {
        StepTimes tm;
        const StepStats ss = train_step(model, opt, sc, {}, kLr, {}, &tm);
        if (!ss.finite()) throw Error("strata's loss is not finite at step " + std::to_string(n_steps));
        if (n_steps == 0) loss_first = ss.loss;
        loss_last = ss.loss;
        n_steps++;
        if (ph) *ph = {tm.zero_grad, tm.forward, tm.backward, tm.clip, tm.update};
        return tm.zero_grad + tm.forward + tm.backward + tm.clip + tm.update;
    };
    try {
        for (int i = 0; i < o.warmup; i++) {
            const double dt = step(nullptr);
            std::fprintf(stderr, "strata %s warm-up step %d: %.1f ms loss %.4f\n", o.serve.c_str(), i, dt * 1e3,
                         loss_last);
        }
    } catch (const std::exception& e) {
        say({{"error", std::string("warm-up: ") + e.what()}});
        return 1;
    }
    say({{"ready", true}, {"params", model.num_params()}, {"precision", o.serve}, {"threads", o.threads},
         {"flops_per_step", training_flops(model.cfg, o.batch, o.seq).total},
         {"memory_scope", "this worker process only (VmHWM)"}});
    std::string cmd;
    int rep = 0;
    while (std::getline(std::cin, cmd)) {
        if (cmd == "rep") {
            nlohmann::json times = nlohmann::json::array(), phases = nlohmann::json::array();
            try {
                double sum = 0;
                for (int i = 0; i < o.steps; i++) {
                    std::array<double, kPhases> ph{};
                    const double dt = step(&ph);
                    sum += dt;
                    times.push_back(dt);
                    phases.push_back(ph);
                }
                rep++;
                std::fprintf(stderr, "strata %s rep %d: %.1f ms/step loss %.4f\n", o.serve.c_str(), rep,
                             sum / o.steps * 1e3, loss_last);
            } catch (const std::exception& e) {
                say({{"error", "rep " + std::to_string(rep + 1) + ": " + e.what()}});
                return 1;
            }
            say({{"step_s", times}, {"phase_s", phases}, {"loss", loss_last}});
        } else if (cmd == "quit") {
            say({{"quit", true}, {"loss_first", loss_first}, {"loss_last", loss_last},
                 {"rss_before_model_bytes", rss_before}, {"peak_rss_bytes", proc_status_bytes("VmHWM")},
                 {"rss_bytes", proc_status_bytes("VmRSS")}});
            return 0;
        } else if (!cmd.empty()) {
            say({{"error", "unknown command \"" + cmd + "\" (expected rep or quit)"}});
        }
    }
    return 0;
}

namespace {

// One configuration's worker process as the bench drives it.
struct Worker {
    ConfigResult* r = nullptr;
    ChildProcess proc;
    bool alive = false;

    void fail(const std::string& why) {
        r->measured = false;
        if (r->failure.empty()) r->failure = why;
        if (proc.running()) {
            const std::string how = proc.finish(10);
            if (r->failure.find("exited") == std::string::npos && how.find("status 0") == std::string::npos)
                r->failure += " (the process " + how + ")";
        }
        alive = false;
        std::fprintf(stderr, "%s: failed: %s\n", r->label.c_str(), r->failure.c_str());
    }

    // Reads one JSON answer; on a missing, garbled or error answer marks the configuration failed.
    std::optional<nlohmann::json> answer(double timeout, const std::string& what) {
        std::string why;
        std::optional<std::string> line = proc.read_json_line(timeout, &why);
        if (!line) {
            const std::string how = proc.finish(10);
            fail(what + ": " + why + ", the process " + how + " (its stderr is above)");
            return std::nullopt;
        }
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(*line);
        } catch (const std::exception& e) {
            fail(what + ": could not read its JSON line (" + e.what() + ")");
            return std::nullopt;
        }
        if (j.contains("error")) {
            fail(j["error"].is_string() ? j["error"].get<std::string>() : j["error"].dump());
            return std::nullopt;
        }
        return j;
    }

    void start(const std::vector<std::string>& argv, const std::vector<std::pair<std::string, std::string>>& env) {
        std::string why;
        if (!proc.start(argv, env, &why)) {
            fail("could not start: " + why);
            return;
        }
        alive = true;
        std::optional<nlohmann::json> j = answer(kStartTimeout, "start-up");
        if (!j) return;
        j->erase("ready");
        r->info = *j;
    }

    void rep(int index, int position, int steps) {
        if (!alive) return;
        if (!proc.send("rep")) {
            fail("rep " + std::to_string(index + 1) + ": the process is gone");
            return;
        }
        std::optional<nlohmann::json> j = answer(kRepTimeout, "rep " + std::to_string(index + 1));
        if (!j) return;
        try {
            std::vector<double> s = j->at("step_s").get<std::vector<double>>();
            if (int(s.size()) != steps) throw Error("expected " + std::to_string(steps) + " step times");
            r->reps.push_back(std::move(s));
            if (j->contains("phase_s")) r->phases.push_back(j->at("phase_s").get<std::vector<std::array<double, kPhases>>>());
            r->order.push_back(position);
        } catch (const std::exception& e) {
            fail("rep " + std::to_string(index + 1) + ": bad answer (" + e.what() + ")");
        }
    }

    void quit() {
        if (!alive) return;
        if (!proc.send("quit")) {
            fail("quit: the process is gone");
            return;
        }
        std::optional<nlohmann::json> j = answer(kQuitTimeout, "quit");
        if (!j) return;
        r->rss_before_model = j->value("rss_before_model_bytes", 0.0);
        r->peak_rss = j->value("peak_rss_bytes", 0.0);
        if ((*j)["loss_first"].is_number()) r->loss_first = (*j)["loss_first"].get<double>();
        if ((*j)["loss_last"].is_number()) r->loss_last = (*j)["loss_last"].get<double>();
        const std::string how = proc.finish(60);
        alive = false;
        r->measured = r->failure.empty();
        if (how != "exited with status 0") std::fprintf(stderr, "%s: the process %s after quit\n", r->label.c_str(), how.c_str());
    }
};

std::string peer_label(const std::string& c) {
    if (c == "eager") return "PyTorch eager fp32";
    if (c == "eager-bf16") return "PyTorch eager + bf16 autocast";
    if (c == "compile") return "PyTorch torch.compile fp32";
    if (c == "compile-bf16") return "PyTorch torch.compile + bf16 autocast";
    return "PyTorch " + c;
}

}  // namespace

TrainBenchResult run_train_bench(const TrainBenchOptions& o) {
    TrainBenchResult r;
    r.options = o;
    const fs::path repo = find_repo(o.repo);
    const fs::path python = !o.peer_python.empty() ? fs::path(o.peer_python)
                            : repo.empty()         ? fs::path("bench/.venv/bin/python")
                                                   : repo / "bench" / ".venv" / "bin" / "python";
    const fs::path script = repo.empty() ? fs::path("bench/peer_train.py") : repo / "bench" / "peer_train.py";
    r.peer_python = python.string();

#ifdef _OPENMP
    omp_set_num_threads(o.threads);
#endif
    openblas_set_num_threads(o.threads);

    r.model = bench_model_config(o);
    if (!o.no_peer && r.model.residual != Residual::standard && !is_attnres(r.model))
        throw Error(std::string("bench train: the PyTorch peer builds the standard and AttnRes models only, not "
                                "--residual ") +
                    to_string(r.model.residual) + "; pass --no-peer to time strata alone");
    check_memory(r.model.memory_bytes(o.batch, o.seq, /*training=*/true), "bench train",
                 "batch " + std::to_string(o.batch) + " x seq " + std::to_string(o.seq));
    r.flops = training_flops(r.model, o.batch, o.seq);
    r.machine = machine_facts(repo);
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (ec) throw Error("bench train: cannot find this executable (/proc/self/exe): " + ec.message());

    std::fprintf(stderr, "sgemm peak, %d threads...\n", o.threads);
    const CpuSnapshot c0 = cpu_snapshot();
    r.gemm = sgemm_peaks(o.batch * o.seq, r.model, o.gemm_seconds);
    std::fprintf(stderr, "oneDNN f32 peak...\n");
    r.gemm_onednn = gemm_peaks(o.batch * o.seq, r.model, Precision::fp32, GemmLib::onednn, o.gemm_seconds);
    if (std::find(o.precisions.begin(), o.precisions.end(), "bf16") != o.precisions.end()) {
        r.bf16_backend = bf16_gemm_backend();
        std::fprintf(stderr, "bf16 GEMM peak (%s)...\n", r.bf16_backend.c_str());
        r.gemm_bf16 = gemm_peaks(o.batch * o.seq, r.model, Precision::bf16, GemmLib::onednn, o.gemm_seconds);
        if (cpu_has_native_bf16()) {  // the other path, for comparison; then back to the one in use
            const bool native = bf16_native();
            set_bf16_native(!native);
            r.bf16_other_backend = bf16_gemm_backend();
            std::fprintf(stderr, "bf16 GEMM, the path not taken (%s)...\n", r.bf16_other_backend.c_str());
            r.gemm_bf16_other = gemm_peaks(o.batch * o.seq, r.model, Precision::bf16, GemmLib::onednn, o.gemm_seconds);
            set_bf16_native(native);
        }
    }
    const CpuSnapshot c1 = cpu_snapshot();
    r.cpu_gemm = cpu_use(c0, c1);

    // The configurations, strata's first.
    for (const auto& p : o.precisions) {
        ConfigResult c;
        c.id = "strata-" + p;
        c.kind = "strata";
        c.which = p;
        c.label = "strata " + p;
        r.configs.push_back(c);
    }
    const std::string missing = o.no_peer ? std::string() : peer_missing(python, script);
    if (!o.no_peer)
        for (const auto& p : o.peers) {
            ConfigResult c;
            c.id = "pytorch-" + p;
            c.kind = "pytorch";
            c.which = p;
            c.label = peer_label(p);
            r.configs.push_back(c);
        }

    IgnoreSigpipe no_sigpipe;
    std::vector<std::unique_ptr<Worker>> workers;
    for (auto& c : r.configs) {
        auto w = std::make_unique<Worker>();
        w->r = &c;
        workers.push_back(std::move(w));
    }
    // Start and warm up one at a time, so a compilation never overlaps another's timed steps.
    for (auto& w : workers) {
        const ConfigResult& c = *w->r;
        std::fprintf(stderr, "%s: starting (build, %d warm-up steps%s)...\n", c.label.c_str(), o.warmup,
                     c.which.rfind("compile", 0) == 0 ? ", torch.compile" : "");
        if (c.kind == "strata") {
            w->start({self.string(), "bench", "train", "--serve", c.which, "--threads", std::to_string(o.threads),
                      "--warmup", std::to_string(o.warmup), "--steps", std::to_string(o.steps), "--batch",
                      std::to_string(o.batch), "--seq", std::to_string(o.seq), "--residual", o.residual,
                      "--attnres-block-size", std::to_string(o.attnres_block_size), "--attention", o.attention},
                     {});
        } else if (!missing.empty()) {
            w->fail(missing);
        } else {
            w->start(peer_argv(python, script, o, c.which), peer_env());
        }
    }
    // Interleaved: repetition i of every configuration before repetition i + 1 of any.
    int position = 0;
    for (int i = 0; i < o.reps; i++) {
        std::fprintf(stderr, "round %d of %d\n", i + 1, o.reps);
        for (auto& w : workers) {
            if (!w->alive) continue;
            w->rep(i, position, o.steps);
            if (!w->r->order.empty() && w->r->order.back() == position) {
                r.schedule.push_back(w->r->id);
                position++;
            }
        }
    }
    for (auto& w : workers) w->quit();
    workers.clear();
    const CpuSnapshot c2 = cpu_snapshot();
    r.cpu_configs = cpu_use(c1, c2);
    for (const auto& c : r.configs)
        if (c.kind == "strata" && c.info.contains("params") && r.params == 0) r.params = c.info["params"].get<size_t>();

    for (const auto& prec : o.profile ? o.precisions : std::vector<std::string>{}) {
        const int n = std::max(3, std::min(o.steps, 5));
        std::fprintf(stderr, "profile: 1 warm-up and %d more %s steps with the op profiler on...\n", n, prec.c_str());
        Model<float> model(r.model);
        model.set_precision(parse_precision(prec, "--precision"));
        AdamW<float> opt(model, AdamWConfig{});
        std::vector<int32_t> x, y;
        make_batch(o.batch, o.seq, r.model.vocab_size, x, y);
        const StepConfig sc{o.batch, o.seq, 1, 1.0, x.data(), y.data()};
        (void)train_step(model, opt, sc, {}, kLr);
        r.profiles.push_back(profile_train_steps(model, opt, sc, kLr, n));
        r.profiles.back().precision = prec;
        if (r.params == 0) r.params = model.num_params();
    }
    r.machine.loadavg_after = loadavg();
    return r;
}

}  // namespace strata::bench
