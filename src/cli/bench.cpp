// `strata bench`: benchmark suites. `strata bench train` measures, in one run on one machine and one
// thread count:
//   (a) strata's training throughput on the bench model (one step = zero_grad, forward with targets,
//       backward, grad-norm clip to 1.0, AdamW update), mean ± std of the step time;
//   (b) the OpenBLAS sgemm peak at the same thread count (a square shape and the model's shapes);
//   (c) the PyTorch peer (bench/peer_train.py, eager mode, stock modules) on the same model and step.
// It prints a markdown report (optionally written to a file) and optionally a JSON record.
#include <cblas.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "model/model.h"
#include "ops/ops.h"
#include "train/optimizer.h"
#include "train/step.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace strata::cli {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct BenchTrainOptions {
    int threads = 2;
    int warmup = 2;
    int steps = 10;
    long batch = 8;
    long seq = 256;
    std::string repo;         // repository root; found automatically when empty
    std::string peer_python;  // default <repo>/bench/.venv/bin/python
    bool no_peer = false;
    bool profile = false;
    std::string json_out, markdown_out;
    std::string residual = "standard";  // the bench model's residual rule (docs/attn_res.md)
    int attnres_block_size = 4;
    std::string attention = "causal";  // causal or moda (docs/moda.md)
};

// The bench model: fixed, so results stay comparable across runs and with the peer's defaults.
ModelConfig bench_model_config(long seq, const BenchTrainOptions& o) {
    ModelConfig c;
    c.vocab_size = 4096;
    c.d_model = 384;
    c.n_layers = 8;
    c.n_heads = 6;
    c.n_kv_heads = 2;
    c.head_dim = 64;
    c.ffn_hidden = 1024;
    c.max_seq_len = int(seq);
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

// ---- training FLOPs per step ---------------------------------------------------------------------
// Convention: a multiply-accumulate is 2 FLOPs, the backward costs twice the forward (input and
// weight gradients), so a matmul with P weights over N = B·T tokens costs 2·P·N forward and 6·P·N
// per training step. Causal attention counts half of the T² score terms.
//   matmul weights  P_mm = L·(D·(H+2·Hk)·d + H·d·D + 2·D·F + F·D) + V·D   (V·D: the LM head, tied or
//                   not; the embedding gather counts 0)
//   attention       forward: S = Q·Kᵀ and O = P·V, each B·H·T²·d MACs, halved by the causal mask:
//                   2·B·H·T²·d FLOPs per layer; training 3× that: 6·B·H·T²·d per layer
//   total           F_step = 6·P_mm·B·T + 6·L·B·H·T²·d
// Norms, RoPE, SwiGLU's pointwise part, softmax and the optimizer are left out (they are O(N·D)).
// For the bench model: P_mm = 14,155,776, F_step = 173.95 + 9.66 = 183.61 GFLOP.
struct FlopCount {
    double matmul_params = 0, matmul = 0, attention = 0, total = 0;
};
FlopCount training_flops(const ModelConfig& c, long B, long T) {
    const double D = c.d_model, H = c.n_heads, Hk = c.n_kv_heads, d = c.head_dim, F = c.ffn_hidden,
                 V = c.vocab_size, L = c.n_layers;
    FlopCount f;
    f.matmul_params = L * (D * (H + 2 * Hk) * d + H * d * D + 3 * D * F) + V * D;
    f.matmul = 6.0 * f.matmul_params * double(B) * double(T);
    f.attention = 6.0 * L * double(B) * H * double(T) * double(T) * d;
    f.total = f.matmul + f.attention;
    return f;
}

// ---- statistics ----------------------------------------------------------------------------------
struct Stats {
    double mean = 0, std = 0, min = 0, max = 0;
};
Stats stats_of(const std::vector<double>& x) {
    Stats s;
    if (x.empty()) return s;
    double sum = 0;
    for (double v : x) sum += v;
    s.mean = sum / double(x.size());
    double ss = 0;
    for (double v : x) ss += (v - s.mean) * (v - s.mean);
    s.std = x.size() > 1 ? std::sqrt(ss / double(x.size() - 1)) : 0.0;  // sample std
    s.min = *std::min_element(x.begin(), x.end());
    s.max = *std::max_element(x.begin(), x.end());
    return s;
}

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

// ---- machine facts and CPU contention ----------------------------------------------------------
std::string read_file_or_empty(const std::string& path) {
    std::ifstream in(path);
    if (!in) return {};
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string cpu_model() {
    std::istringstream in(read_file_or_empty("/proc/cpuinfo"));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("model name", 0) == 0) {
            auto p = line.find(':');
            if (p != std::string::npos) {
                std::string s = line.substr(p + 1);
                s.erase(0, s.find_first_not_of(" \t"));
                return s;
            }
        }
    return "unknown CPU";
}

std::string cpu_simd() {
    std::istringstream in(read_file_or_empty("/proc/cpuinfo"));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("flags", 0) == 0) {
            std::string flags = " " + line + " ";
            for (const char* f : {"avx512f", "avx2", "avx", "sse4_2"})
                if (flags.find(std::string(" ") + f + " ") != std::string::npos) return f;
            return "none listed";
        }
    return "unknown";
}

std::string loadavg() {
    std::string s = read_file_or_empty("/proc/loadavg");
    std::istringstream in(s);
    std::string a, b, c;
    in >> a >> b >> c;
    return a.empty() ? "n/a" : a + " " + b + " " + c;
}

std::string command_line() {
    std::string raw = read_file_or_empty("/proc/self/cmdline");
    std::string out;
    for (char ch : raw) out += ch == '\0' ? ' ' : ch;
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out.empty() ? "strata bench train" : out;
}

// Environment variables that change how the threading runtimes and BLAS behave, as `NAME=value`.
std::string threading_env() {
    std::string out;
    for (char** e = environ; e && *e; e++) {
        std::string kv = *e;
        for (const char* pre : {"OMP_", "GOMP_", "OPENBLAS_", "GOTO_", "MKL_", "KMP_", "LD_LIBRARY_PATH=", "LD_PRELOAD="})
            if (kv.rfind(pre, 0) == 0) {
                out += (out.empty() ? "" : ", ") + ("`" + kv + "`");
                break;
            }
    }
    return out.empty() ? "none of OMP_*, GOMP_*, OPENBLAS_*, GOTO_*, MKL_*, KMP_*, LD_LIBRARY_PATH, LD_PRELOAD set" : out;
}

std::string now_string(const char* format) {
    std::time_t t = std::time(nullptr);
    char buf[64];
    std::strftime(buf, sizeof buf, format, std::localtime(&t));
    return buf;
}

std::string run_capture(const std::string& cmd, int* status = nullptr) {
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) {
        if (status) *status = -1;
        return out;
    }
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int st = pclose(p);
    if (status) *status = st;
    return out;
}

std::string shell_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

// CPU time spent on the whole machine versus by this process (and its waited-for children, i.e.
// the peer), from /proc/stat and /proc/self/stat: whatever else ran during a measurement shows up as
// "others". Steal is time the hypervisor gave to other guests.
struct CpuSnapshot {
    double busy = 0, steal = 0, self = 0;  // seconds
    Clock::time_point t;
};
CpuSnapshot cpu_snapshot() {
    CpuSnapshot s;
    s.t = Clock::now();
    const double hz = double(sysconf(_SC_CLK_TCK));
    {
        std::istringstream in(read_file_or_empty("/proc/stat"));
        std::string cpu;
        double user = 0, nice = 0, sys = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
        in >> cpu >> user >> nice >> sys >> idle >> iowait >> irq >> softirq >> steal;
        s.busy = (user + nice + sys + irq + softirq) / hz;
        s.steal = steal / hz;
    }
    {
        std::string st = read_file_or_empty("/proc/self/stat");
        auto p = st.rfind(')');
        if (p != std::string::npos) {
            std::istringstream in(st.substr(p + 2));
            std::vector<std::string> f;
            std::string tok;
            while (in >> tok) f.push_back(tok);
            // fields after the name start at field 3 (state): utime is field 14, cstime field 17
            if (f.size() > 14) s.self = (std::stod(f[11]) + std::stod(f[12]) + std::stod(f[13]) + std::stod(f[14])) / hz;
        }
    }
    return s;
}
struct CpuUse {
    double wall = 0, self = 0, others = 0, steal = 0;
};
CpuUse cpu_use(const CpuSnapshot& a, const CpuSnapshot& b) {
    CpuUse u;
    u.wall = std::chrono::duration<double>(b.t - a.t).count();
    u.self = b.self - a.self;
    u.others = std::max(0.0, (b.busy - a.busy) - u.self);
    u.steal = b.steal - a.steal;
    return u;
}
std::string cpu_use_str(const CpuUse& u) {
    return fmt("%.2f", u.others) + " core-s others, " + fmt("%.2f", u.steal) + " s steal over " +
           fmt("%.1f", u.wall) + " s";
}
json cpu_use_json(const CpuUse& u) {
    return {{"wall_s", u.wall}, {"self_cpu_s", u.self}, {"others_cpu_s", u.others}, {"steal_s", u.steal}};
}

// ---- repository root -------------------------------------------------------------------------------
fs::path find_repo(const std::string& flag) {
    if (!flag.empty()) {
        fs::path r = fs::absolute(flag);
        if (!fs::exists(r / "bench"))
            throw Error("--repo " + flag + ": no bench/ folder there (expected the strata source tree)");
        return r;
    }
    auto ok = [](const fs::path& r) { return !r.empty() && fs::exists(r / "bench" / "peer_train.py"); };
    // 1. where this file was compiled from (CMake passes absolute source paths)
    fs::path src(__FILE__);
    if (src.is_absolute()) {
        fs::path r = src.parent_path().parent_path().parent_path();
        if (ok(r)) return r;
    }
    // 2. the executable's location: <repo>/build/strata
    std::error_code ec;
    fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        for (fs::path r = exe.parent_path(); !r.empty() && r != r.root_path(); r = r.parent_path())
            if (ok(r)) return r;
    }
    // 3. the working directory
    if (ok(fs::current_path())) return fs::current_path();
    return {};
}

// ---- (b) sgemm peak -------------------------------------------------------------------------------
struct GemmShape {
    const char* what;
    bool ta, tb;
    long M, N, K;
};
struct GemmResult {
    GemmShape s;
    double best_gflops = 0, mean_gflops = 0;
    int reps = 0;
};

std::vector<GemmResult> bench_sgemm(long tokens, const ModelConfig& c) {
    const long D = c.d_model, F = c.ffn_hidden, V = c.vocab_size, QKV = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
    const long Nt = tokens;
    // (M×K)·(K×N). Forward is x·Wᵀ (B transposed), input gradient dY·W (plain), weight gradient dYᵀ·X.
    const std::vector<GemmShape> shapes = {
        {"square 1024³", false, false, 1024, 1024, 1024},
        {"x·W_gateᵀ (2048×384)·(384×1024)", false, true, Nt, F, D},
        {"x·W_qkvᵀ fwd", false, true, Nt, QKV, D},
        {"x·W_guᵀ fwd (fused gate+up)", false, true, Nt, 2 * F, D},
        {"act·W_downᵀ fwd", false, true, Nt, D, F},
        {"x·W_lmᵀ fwd (LM head)", false, true, Nt, V, D},
        {"dY·W_gu (input grad)", false, false, Nt, D, 2 * F},
        {"dYᵀ·X (W_gu weight grad)", true, false, 2 * F, D, Nt},
        {"dYᵀ·X (LM head weight grad)", true, false, V, D, Nt},
    };
    std::vector<GemmResult> out;
    Rng rng(7);
    for (const GemmShape& s : shapes) {
        std::vector<float> A(size_t(s.M * s.K)), Bm(size_t(s.K * s.N)), C(size_t(s.M * s.N));
        for (float& x : A) x = float(rng.uniform() - 0.5);
        for (float& x : Bm) x = float(rng.uniform() - 0.5);
        const long lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
        auto call = [&] {
            cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans, s.M, s.N,
                        s.K, 1.0f, A.data(), lda, Bm.data(), ldb, 0.0f, C.data(), s.N);
        };
        call();  // warm caches and OpenBLAS's thread pool
        const double flops = 2.0 * double(s.M) * double(s.N) * double(s.K);
        std::vector<double> t;
        auto t_all = Clock::now();
        while (t.size() < 5 || (seconds_since(t_all) < 0.4 && t.size() < 1000)) {
            auto t0 = Clock::now();
            call();
            t.push_back(seconds_since(t0));
        }
        Stats st = stats_of(t);
        out.push_back({s, flops / st.min / 1e9, flops / st.mean / 1e9, int(t.size())});
    }
    return out;
}

// ---- (a) strata training steps --------------------------------------------------------------------
struct StrataResult {
    std::vector<double> step_s;
    std::array<Stats, 5> phase{};  // zero_grad, forward, backward, clip, adamw (seconds)
    double loss_first = 0, loss_last = 0;
    size_t params = 0;
};
const std::array<const char*, 5> kPhaseNames = {"zero_grad", "forward (with loss)", "backward", "grad-norm clip",
                                                "AdamW update"};

void make_batch(long B, long T, long V, std::vector<int32_t>& x, std::vector<int32_t>& y) {
    // One fixed batch from a fixed seed, the same every step (the peer draws its own the same way).
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

StrataResult bench_strata(const ModelConfig& cfg, const BenchTrainOptions& o) {
    Model<float> model(cfg);
    AdamW<float> opt(model, AdamWConfig{});
    std::vector<int32_t> x, y;
    make_batch(o.batch, o.seq, cfg.vocab_size, x, y);
    StrataResult r;
    r.params = model.num_params();
    std::array<std::vector<double>, 5> ph;
    const double lr = 3e-4;
    // The training step of `strata train` (src/train/step.h), on one fixed batch.
    const StepConfig sc{o.batch, o.seq, 1, 1.0, x.data(), y.data()};
    for (int i = 0; i < o.warmup + o.steps; i++) {
        StepTimes tm;
        const StepStats ss = train_step(model, opt, sc, {}, lr, {}, &tm);
        const double loss = ss.loss;
        const double dt = tm.zero_grad + tm.forward + tm.backward + tm.clip + tm.update;
        if (!ss.finite()) throw Error("bench: strata's loss is not finite at step " + std::to_string(i));
        if (i == 0) r.loss_first = loss;
        r.loss_last = loss;
        std::fprintf(stderr, "strata step %d: %.1f ms loss %.4f%s\n", i, dt * 1e3, loss, i < o.warmup ? " (warm-up)" : "");
        if (i < o.warmup) continue;
        r.step_s.push_back(dt);
        const double p[5] = {tm.zero_grad, tm.forward, tm.backward, tm.clip, tm.update};
        for (int k = 0; k < 5; k++) ph[k].push_back(p[k]);
    }
    for (int p = 0; p < 5; p++) r.phase[p] = stats_of(ph[p]);
    return r;
}

// ---- --profile: the forward and backward replayed op by op ---------------------------------------
// The model's op sequence for the bench configuration (pre-norm, tied, no QK-norm), called through the
// public ops API on buffers of the model's shapes, with a scoped timer around every call. Gives the
// time per op family; the replay's total should be close to the measured forward + backward.
enum Family { kGemmFwd, kGemmBwd, kAttnFwd, kAttnBwd, kNorm, kRope, kSwiglu, kXent, kEmbed, kCopy, kNumFamilies };
const std::array<const char*, kNumFamilies> kFamilyNames = {
    "GEMM forward (matmul_forward)", "GEMM backward (matmul_backward)", "attention forward", "attention backward",
    "RMSNorm fwd+bwd", "RoPE fwd+bwd", "SwiGLU fwd+bwd", "cross-entropy fwd+bwd", "embedding fwd+bwd",
    "copies, memsets, residual adds"};

struct ProfileResult {
    std::array<double, kNumFamilies> ms{};  // per step, mean over the replayed steps
    double total_ms = 0;
    int steps = 0;
};

ProfileResult profile_replay(const ModelConfig& c, long B, long T, int steps) {
    const long D = c.d_model, H = c.n_heads, Hk = c.n_kv_heads, d = c.head_dim, F = c.ffn_hidden, V = c.vocab_size,
               L = c.n_layers, N = B * T, QKV = (H + 2 * Hk) * d;
    Rng rng(99);
    auto randv = [&](size_t n, double stdv) {
        std::vector<float> v(n);
        for (float& x : v) x = float(rng.normal() * stdv);
        return v;
    };
    auto zeros = [](size_t n) { return std::vector<float>(n, 0.0f); };
    struct Layer {
        std::vector<float> wqkv, wo, wgu, wdown, nw1, nw2;              // weights
        std::vector<float> gqkv, go, ggu, gdown, gn1, gn2;              // their gradients
        std::vector<float> n1, r1, qkv, q, k, v, att, lse, f1, h1, n2, r2, gu, act, f2, out;  // activations
    };
    std::vector<Layer> ls(static_cast<size_t>(L));
    for (auto& l : ls) {
        l.wqkv = randv(size_t(QKV * D), 0.02);
        l.wo = randv(size_t(D * H * d), 0.005);
        l.wgu = randv(size_t(2 * F * D), 0.02);
        l.wdown = randv(size_t(D * F), 0.005);
        l.nw1.assign(size_t(D), 1.0f);
        l.nw2.assign(size_t(D), 1.0f);
        l.gqkv = zeros(l.wqkv.size()), l.go = zeros(l.wo.size()), l.ggu = zeros(l.wgu.size());
        l.gdown = zeros(l.wdown.size()), l.gn1 = zeros(size_t(D)), l.gn2 = zeros(size_t(D));
        l.n1 = zeros(size_t(N * D)), l.r1 = zeros(size_t(N)), l.qkv = zeros(size_t(N * QKV));
        l.q = zeros(size_t(N * H * d)), l.k = zeros(size_t(N * Hk * d)), l.v = zeros(size_t(N * Hk * d));
        l.att = zeros(size_t(N * H * d)), l.lse = zeros(size_t(N * H)), l.f1 = zeros(size_t(N * D));
        l.h1 = zeros(size_t(N * D)), l.n2 = zeros(size_t(N * D)), l.r2 = zeros(size_t(N));
        l.gu = zeros(size_t(N * 2 * F)), l.act = zeros(size_t(N * F)), l.f2 = zeros(size_t(N * D));
        l.out = zeros(size_t(N * D));
    }
    std::vector<float> emb = randv(size_t(V * D), 0.02), gemb = zeros(size_t(V * D));
    std::vector<float> fnw(size_t(D), 1.0f), gfnw = zeros(size_t(D));
    std::vector<float> x0 = zeros(size_t(N * D)), lnf = zeros(size_t(N * D)), lnf_r = zeros(size_t(N));
    std::vector<float> logits = zeros(size_t(N * V)), losses = zeros(size_t(N)), lse = zeros(size_t(N));
    std::vector<float> dlogits = zeros(size_t(N * V)), dlnf = zeros(size_t(N * D)), dA = zeros(size_t(N * D)),
                       dB = zeros(size_t(N * D)), dn = zeros(size_t(N * D)), datt = zeros(size_t(N * H * d)),
                       dq = zeros(size_t(N * H * d)), dk = zeros(size_t(N * Hk * d)), dv = zeros(size_t(N * Hk * d)),
                       dqkv = zeros(size_t(N * QKV)), dgu = zeros(size_t(N * 2 * F)), dact = zeros(size_t(N * F));
    std::vector<float> cos_t(size_t(T * d / 2)), sin_t(size_t(T * d / 2));
    rope_table(cos_t.data(), sin_t.data(), T, d, c.rope_theta);
    std::vector<int32_t> tok, tgt, pos(static_cast<size_t>(N));
    make_batch(B, T, V, tok, tgt);
    for (long i = 0; i < N; i++) pos[i] = int32_t(i % T);
    const AttnDims ad{B, T, T, H, Hk, d, 0, T * Hk * d};
    const size_t ND = size_t(N * D) * sizeof(float);

    ProfileResult pr;
    std::array<double, kNumFamilies> acc{};
    auto timed = [&](Family f, const std::function<void()>& fn) {
        auto t0 = Clock::now();
        fn();
        acc[f] += seconds_since(t0);
    };
    auto add = [&](float* out, const float* a, const float* b) {
#pragma omp parallel for schedule(static)
        for (long i = 0; i < N * D; i++) out[i] = a[i] + b[i];
    };
    for (int step = 0; step < steps + 1; step++) {  // step 0 warms up and is not counted
        if (step == 1) acc.fill(0.0);
        // forward
        timed(kEmbed, [&] { embedding_forward(x0.data(), tok.data(), emb.data(), N, D); });
        const float* h = x0.data();
        for (auto& l : ls) {
            timed(kNorm, [&] { rmsnorm_forward(l.n1.data(), l.r1.data(), h, l.nw1.data(), N, D, c.norm_eps); });
            timed(kGemmFwd, [&] { matmul_forward(l.qkv.data(), l.n1.data(), l.wqkv.data(), N, D, QKV); });
            timed(kCopy, [&] {
#pragma omp parallel for schedule(static)
                for (long r = 0; r < N; r++) {
                    const float* row = l.qkv.data() + r * QKV;
                    std::memcpy(l.q.data() + r * H * d, row, size_t(H * d) * sizeof(float));
                    std::memcpy(l.k.data() + r * Hk * d, row + H * d, size_t(Hk * d) * sizeof(float));
                    std::memcpy(l.v.data() + r * Hk * d, row + (H + Hk) * d, size_t(Hk * d) * sizeof(float));
                }
            });
            timed(kRope, [&] {
                rope_forward(l.q.data(), pos.data(), cos_t.data(), sin_t.data(), N, H, d);
                rope_forward(l.k.data(), pos.data(), cos_t.data(), sin_t.data(), N, Hk, d);
            });
            timed(kAttnFwd, [&] { attention_forward(l.att.data(), l.lse.data(), l.q.data(), l.k.data(), l.v.data(), ad); });
            timed(kGemmFwd, [&] { matmul_forward(l.f1.data(), l.att.data(), l.wo.data(), N, H * d, D); });
            timed(kCopy, [&] { add(l.h1.data(), h, l.f1.data()); });
            timed(kNorm, [&] { rmsnorm_forward(l.n2.data(), l.r2.data(), l.h1.data(), l.nw2.data(), N, D, c.norm_eps); });
            timed(kGemmFwd, [&] { matmul_forward(l.gu.data(), l.n2.data(), l.wgu.data(), N, D, 2 * F); });
            timed(kSwiglu, [&] { swiglu_forward(l.act.data(), l.gu.data(), N, F); });
            timed(kGemmFwd, [&] { matmul_forward(l.f2.data(), l.act.data(), l.wdown.data(), N, F, D); });
            timed(kCopy, [&] { add(l.out.data(), l.h1.data(), l.f2.data()); });
            h = l.out.data();
        }
        timed(kNorm, [&] { rmsnorm_forward(lnf.data(), lnf_r.data(), h, fnw.data(), N, D, c.norm_eps); });
        timed(kGemmFwd, [&] { matmul_forward(logits.data(), lnf.data(), emb.data(), N, D, V); });
        timed(kXent, [&] { crossentropy_forward(losses.data(), lse.data(), logits.data(), tgt.data(), N, V); });
        // backward
        timed(kCopy, [&] { std::memset(dlogits.data(), 0, size_t(N * V) * sizeof(float)); });
        timed(kXent, [&] {
            crossentropy_backward(dlogits.data(), logits.data(), lse.data(), tgt.data(), N, V, 1.0f / float(N));
        });
        timed(kCopy, [&] { std::memset(dlnf.data(), 0, ND); });
        timed(kGemmBwd, [&] { matmul_backward(dlnf.data(), gemb.data(), dlogits.data(), lnf.data(), emb.data(), N, D, V); });
        float* dcur = dA.data();
        float* dprev = dB.data();
        timed(kCopy, [&] { std::memset(dcur, 0, ND); });
        timed(kNorm, [&] { rmsnorm_backward(dcur, gfnw.data(), dlnf.data(), h, fnw.data(), lnf_r.data(), N, D); });
        for (long li = L - 1; li >= 0; li--) {
            Layer& l = ls[size_t(li)];
            const float* h_in = li > 0 ? ls[size_t(li - 1)].out.data() : x0.data();
            // MLP sublayer: out = h1 + f(N(h1))
            timed(kCopy, [&] {
                std::memset(dprev, 0, ND);
                for (long i = 0; i < N * D; i++) dprev[i] += dcur[i];
                std::memset(dn.data(), 0, ND);
                std::memset(dact.data(), 0, size_t(N * F) * sizeof(float));
            });
            timed(kGemmBwd, [&] { matmul_backward(dact.data(), l.gdown.data(), dcur, l.act.data(), l.wdown.data(), N, F, D); });
            timed(kCopy, [&] { std::memset(dgu.data(), 0, size_t(N * 2 * F) * sizeof(float)); });
            timed(kSwiglu, [&] { swiglu_backward(dgu.data(), dact.data(), l.gu.data(), N, F); });
            timed(kGemmBwd, [&] { matmul_backward(dn.data(), l.ggu.data(), dgu.data(), l.n2.data(), l.wgu.data(), N, D, 2 * F); });
            timed(kNorm, [&] { rmsnorm_backward(dprev, l.gn2.data(), dn.data(), l.h1.data(), l.nw2.data(), l.r2.data(), N, D); });
            std::swap(dcur, dprev);
            // attention sublayer: h1 = h_in + f(N(h_in))
            timed(kCopy, [&] {
                std::memset(dprev, 0, ND);
                for (long i = 0; i < N * D; i++) dprev[i] += dcur[i];
                std::memset(dn.data(), 0, ND);
                std::memset(datt.data(), 0, size_t(N * H * d) * sizeof(float));
            });
            timed(kGemmBwd, [&] { matmul_backward(datt.data(), l.go.data(), dcur, l.att.data(), l.wo.data(), N, H * d, D); });
            timed(kCopy, [&] {
                std::memset(dq.data(), 0, dq.size() * sizeof(float));
                std::memset(dk.data(), 0, dk.size() * sizeof(float));
                std::memset(dv.data(), 0, dv.size() * sizeof(float));
            });
            timed(kAttnBwd, [&] {
                attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), l.att.data(), l.lse.data(), l.q.data(),
                                   l.k.data(), l.v.data(), ad);
            });
            timed(kRope, [&] {
                rope_backward(dq.data(), pos.data(), cos_t.data(), sin_t.data(), N, H, d);
                rope_backward(dk.data(), pos.data(), cos_t.data(), sin_t.data(), N, Hk, d);
            });
            timed(kCopy, [&] {
#pragma omp parallel for schedule(static)
                for (long r = 0; r < N; r++) {
                    float* row = dqkv.data() + r * QKV;
                    std::memcpy(row, dq.data() + r * H * d, size_t(H * d) * sizeof(float));
                    std::memcpy(row + H * d, dk.data() + r * Hk * d, size_t(Hk * d) * sizeof(float));
                    std::memcpy(row + (H + Hk) * d, dv.data() + r * Hk * d, size_t(Hk * d) * sizeof(float));
                }
            });
            timed(kGemmBwd, [&] { matmul_backward(dn.data(), l.gqkv.data(), dqkv.data(), l.n1.data(), l.wqkv.data(), N, D, QKV); });
            timed(kNorm, [&] { rmsnorm_backward(dprev, l.gn1.data(), dn.data(), h_in, l.nw1.data(), l.r1.data(), N, D); });
            std::swap(dcur, dprev);
        }
        timed(kEmbed, [&] { embedding_backward(gemb.data(), dcur, tok.data(), N, D); });
    }
    pr.steps = steps;
    for (int f = 0; f < kNumFamilies; f++) {
        pr.ms[f] = acc[f] * 1e3 / double(steps);
        pr.total_ms += pr.ms[f];
    }
    return pr;
}

// ---- (c) the PyTorch peer -------------------------------------------------------------------------
struct PeerResult {
    bool ran = false;
    std::string note;  // why it did not run, or what went wrong
    json j;
};

PeerResult run_peer(const fs::path& python, const fs::path& script, const BenchTrainOptions& o) {
    PeerResult r;
    if (!fs::exists(python)) {
        r.note = "peer python " + python.string() + " not found; create it with `bash bench/setup.sh` (or pass --peer-python)";
        return r;
    }
    if (!fs::exists(script)) {
        r.note = "peer script " + script.string() + " not found";
        return r;
    }
    std::string cmd = shell_quote(python.string()) + " " + shell_quote(script.string()) +
                      " --threads " + std::to_string(o.threads) + " --warmup " + std::to_string(o.warmup) +
                      " --steps " + std::to_string(o.steps) + " --batch " + std::to_string(o.batch) +
                      " --seq " + std::to_string(o.seq) + " --residual " + o.residual + " --block-size " +
                      std::to_string(o.attnres_block_size) + " --attention " + o.attention;
    std::fprintf(stderr, "running the PyTorch peer: %s\n", cmd.c_str());
    int status = 0;
    std::string out = run_capture(cmd, &status);
    if (status != 0) {
        r.note = "peer exited with status " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : status) +
                 " (its stderr is above)";
        return r;
    }
    std::istringstream in(out);
    std::string line, last;
    while (std::getline(in, line))
        if (!line.empty() && line[0] == '{') last = line;
    try {
        r.j = json::parse(last);
        (void)r.j.at("tokens_per_s").get<double>();
        r.ran = true;
    } catch (const std::exception& e) {
        r.note = std::string("could not read the peer's JSON line: ") + e.what();
    }
    return r;
}

// ---- the whole suite -------------------------------------------------------------------------------
void run_bench_train(const BenchTrainOptions& o) {
    if (o.threads < 1) throw Error("--threads must be at least 1");
    if (o.steps < 1) throw Error("--steps must be at least 1");
    if (o.warmup < 0) throw Error("--warmup must be non-negative");
    if (o.batch < 1 || o.seq < 1) throw Error("--batch and --seq must be positive");
    const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (o.threads > ncpu)
        std::fprintf(stderr, "warning: --threads %d exceeds the %ld online CPUs; timings will be oversubscribed\n",
                     o.threads, ncpu);
    // Open the outputs first, so a bad path fails before minutes of measuring. Each is written to a
    // temporary file beside it and renamed at the end: a failed or interrupted run keeps the old report.
    std::unique_ptr<AtomicFileWriter> md_file, json_file;
    if (!o.markdown_out.empty()) md_file = open_output(o.markdown_out, "--markdown-out");
    if (!o.json_out.empty()) json_file = open_output(o.json_out, "--json-out");

    fs::path repo = find_repo(o.repo);
    fs::path python = !o.peer_python.empty() ? fs::path(o.peer_python)
                      : repo.empty()         ? fs::path("bench/.venv/bin/python")
                                             : repo / "bench" / ".venv" / "bin" / "python";
    fs::path script = repo.empty() ? fs::path("bench/peer_train.py") : repo / "bench" / "peer_train.py";

#ifdef _OPENMP
    omp_set_num_threads(o.threads);
#endif
    openblas_set_num_threads(o.threads);

    const ModelConfig cfg = bench_model_config(o.seq, o);
    if (o.profile && (cfg.residual != Residual::standard || cfg.attention != AttentionKind::causal))
        throw Error("--profile replays the standard residual's and causal attention's ops only; leave it out with "
                    "--residual " + o.residual + " --attention " + o.attention);
    check_memory(cfg.memory_bytes(o.batch, o.seq, /*training=*/true), "bench train",
                 "batch " + std::to_string(o.batch) + " x seq " + std::to_string(o.seq));
    const FlopCount fl = training_flops(cfg, o.batch, o.seq);
    const std::string date = now_string("%Y-%m-%d %H:%M:%S %Z");
    const std::string load_before = loadavg();
    std::string commit = run_capture(repo.empty() ? "true" : "git -C " + shell_quote(repo.string()) +
                                                                 " rev-parse --short HEAD 2>/dev/null");
    while (!commit.empty() && (commit.back() == '\n' || commit.back() == ' ')) commit.pop_back();
    if (commit.empty()) commit = "unknown";
    else if (!run_capture("git -C " + shell_quote(repo.string()) + " status --porcelain --untracked-files=no 2>/dev/null").empty())
        commit += " (working tree has uncommitted changes)";
    std::string blas_config = openblas_get_config();
    while (!blas_config.empty() && blas_config.back() == ' ') blas_config.pop_back();
    const std::string blas_core = openblas_get_corename();

    // (b) sgemm
    std::fprintf(stderr, "sgemm peak, %d threads...\n", o.threads);
    CpuSnapshot c0 = cpu_snapshot();
    std::vector<GemmResult> gemm = bench_sgemm(o.batch * o.seq, cfg);
    CpuSnapshot c1 = cpu_snapshot();
    const GemmResult* best = &gemm[0];
    for (const auto& g : gemm)
        if (g.best_gflops > best->best_gflops) best = &g;
    const double peak = best->best_gflops;

    // (a) strata
    std::fprintf(stderr, "strata: %d warm-up + %d timed steps, batch %ld × seq %ld...\n", o.warmup, o.steps, o.batch, o.seq);
    StrataResult sr = bench_strata(cfg, o);
    CpuSnapshot c2 = cpu_snapshot();
    const Stats st = stats_of(sr.step_s);
    const double tokens = double(o.batch * o.seq);
    const double strata_tps = tokens / st.mean;
    const double strata_gflops = fl.total / st.mean / 1e9;

    ProfileResult prof;
    if (o.profile) {
        std::fprintf(stderr, "profile: replaying the forward and backward op by op...\n");
        prof = profile_replay(cfg, o.batch, o.seq, std::max(3, std::min(o.steps, 5)));
    }
    CpuSnapshot c3 = cpu_snapshot();

    // (c) the peer
    PeerResult peer;
    if (o.no_peer) {
        peer.note = "skipped (--no-peer)";
    } else {
        peer = run_peer(python, script, o);
        if (!peer.ran) std::fprintf(stderr, "PyTorch peer: %s\n", peer.note.c_str());
    }
    CpuSnapshot c4 = cpu_snapshot();
    const std::string load_after = loadavg();
    const CpuUse u_gemm = cpu_use(c0, c1), u_strata = cpu_use(c1, c2), u_peer = cpu_use(c3, c4);

    // ---- report ----
    std::ostringstream md;
    md << "# strata bench train — " << date << "\n\n";
    md << "| | |\n|---|---|\n";
    md << "| machine | " << cpu_model() << ", " << ncpu << " online CPUs, widest SIMD " << cpu_simd() << " |\n";
    md << "| date | " << date << " |\n";
    md << "| command | `" << command_line() << "` |\n";
    md << "| strata commit | " << commit << " |\n";
    md << "| BLAS | OpenBLAS (" << blas_config << "), kernel " << blas_core << " |\n";
    md << "| environment | " << threading_env() << " |\n";
    md << "| threads | " << o.threads << " (OpenMP and OpenBLAS; the peer: torch.set_num_threads) |\n";
    md << "| load average before → after | " << load_before << " → " << load_after << " |\n";
    md << "| CPU used by other processes | sgemm: " << cpu_use_str(u_gemm) << "; strata: " << cpu_use_str(u_strata);
    if (peer.ran) md << "; peer: " << cpu_use_str(u_peer);
    md << " |\n\n";

    md << "Bench model: vocab " << cfg.vocab_size << ", d_model " << cfg.d_model << ", " << cfg.n_layers << " blocks, "
       << cfg.n_heads << " query / " << cfg.n_kv_heads << " kv heads × " << cfg.head_dim << ", SwiGLU hidden "
       << cfg.ffn_hidden << ", pre-norm, residual " << to_string(cfg.residual)
       << (cfg.residual == Residual::attnres_block ? " (" + std::to_string(cfg.attnres_block_size) + " sublayers per block)"
                                                   : std::string())
       << ", attention " << to_string(cfg.attention)
       << (cfg.attention == AttentionKind::moda ? " (depth K/V of every earlier attention and FFN)" : "")
       << ", tied embeddings, fp32; batch " << o.batch << " × seq " << o.seq << " = "
       << long(tokens) << " tokens/step; " << sr.params << " parameters. Step: zero_grad, forward with targets, "
       << "backward, grad-norm clip to 1.0, AdamW. " << o.warmup << " warm-up + " << o.steps << " timed steps.\n\n";
    md << "Training FLOPs per step (2 per MAC, backward = 2× forward, causal attention half of T²): "
       << "6·P_mm·B·T + 6·L·B·H·T²·d = " << fmt("%.2f", fl.matmul / 1e9) << " (matmuls, P_mm = "
       << long(fl.matmul_params) << ") + " << fmt("%.2f", fl.attention / 1e9) << " (attention) = "
       << fmt("%.2f", fl.total / 1e9) << " GFLOP"
       << (cfg.residual != Residual::standard ? " (the AttnRes mixes, O(sources·D) per token, are not counted)" : "")
       << (cfg.attention == AttentionKind::moda ? " (MoDA's FFN K/V projections and depth scores are not counted)" : "")
       << ".\n\n";

    md << "## Results\n\n| measurement | value |\n|---|---|\n";
    md << "| strata step time | " << fmt("%.1f", st.mean * 1e3) << " ± " << fmt("%.1f", st.std * 1e3) << " ms (min "
       << fmt("%.1f", st.min * 1e3) << ", max " << fmt("%.1f", st.max * 1e3) << ") |\n";
    md << "| strata tokens/s | " << fmt("%.0f", strata_tps) << " |\n";
    md << "| strata achieved | " << fmt("%.1f", strata_gflops) << " GFLOP/s |\n";
    md << "| sgemm peak (best shape: " << best->s.what << ") | " << fmt("%.1f", peak) << " GFLOP/s |\n";
    md << "| **strata ÷ sgemm peak** | **" << fmt("%.1f", 100.0 * strata_gflops / peak) << " %** |\n";
    if (peer.ran) {
        const double ptps = peer.j["tokens_per_s"].get<double>();
        md << "| peer step time (PyTorch " << peer.j.value("torch", std::string("?")) << ", "
           << peer.j.value("threads", 0) << " threads) | " << fmt("%.1f", peer.j["step_ms_mean"].get<double>()) << " ± "
           << fmt("%.1f", peer.j["step_ms_std"].get<double>()) << " ms |\n";
        md << "| peer tokens/s | " << fmt("%.0f", ptps) << " |\n";
        md << "| peer achieved (same FLOP count) | " << fmt("%.1f", fl.total / (peer.j["step_ms_mean"].get<double>() / 1e3) / 1e9)
           << " GFLOP/s |\n";
        md << "| **strata ÷ peer tokens/s** | **" << fmt("%.2f", strata_tps / ptps) << "×** |\n";
    } else {
        md << "| peer | not run: " << peer.note << " |\n";
    }
    md << "| loss, first → last step (one repeated batch; ln V = " << fmt("%.3f", std::log(double(cfg.vocab_size)))
       << ") | strata " << fmt("%.4f", sr.loss_first) << " → " << fmt("%.4f", sr.loss_last);
    if (peer.ran)
        md << "; peer " << fmt("%.4f", peer.j.value("loss_first", 0.0)) << " → " << fmt("%.4f", peer.j.value("loss_last", 0.0));
    md << " |\n\n";

    md << "## strata step phases\n\n| phase | ms (mean ± std) | share |\n|---|---|---|\n";
    for (int p = 0; p < 5; p++)
        md << "| " << kPhaseNames[p] << " | " << fmt("%.1f", sr.phase[p].mean * 1e3) << " ± "
           << fmt("%.1f", sr.phase[p].std * 1e3) << " | " << fmt("%.1f", 100.0 * sr.phase[p].mean / st.mean) << " % |\n";
    md << "\n";

    if (o.profile) {
        const double fb_ms = (sr.phase[1].mean + sr.phase[2].mean) * 1e3;
        md << "## Profile: forward + backward by op family (replayed op by op, mean of " << prof.steps << " steps)\n\n";
        md << "| op family | ms/step | share of replay | GFLOP/s |\n|---|---|---|---|\n";
        for (int f = 0; f < kNumFamilies; f++) {
            std::string rate = "";
            if (f == kGemmFwd) rate = fmt("%.1f", fl.matmul / 3.0 / (prof.ms[f] / 1e3) / 1e9);
            if (f == kGemmBwd) rate = fmt("%.1f", fl.matmul * 2.0 / 3.0 / (prof.ms[f] / 1e3) / 1e9);
            if (f == kAttnFwd) rate = fmt("%.1f", fl.attention / 3.0 / (prof.ms[f] / 1e3) / 1e9);
            if (f == kAttnBwd) rate = fmt("%.1f", fl.attention * 2.0 / 3.0 / (prof.ms[f] / 1e3) / 1e9);
            md << "| " << kFamilyNames[f] << " | " << fmt("%.1f", prof.ms[f]) << " | "
               << fmt("%.1f", 100.0 * prof.ms[f] / prof.total_ms) << " % | " << rate << " |\n";
        }
        md << "| replay total (measured forward + backward: " << fmt("%.1f", fb_ms) << ") | "
           << fmt("%.1f", prof.total_ms) << " | | |\n\n";
        md << "GFLOP/s columns use the convention's FLOPs (attention backward does more real work: it recomputes "
              "the scores).\n\n";
    }

    md << "## sgemm (cblas_sgemm, " << o.threads << " threads, row-major, best and mean of repeated calls)\n\n";
    md << "| shape (M×K)·(K×N) | M, N, K | best GFLOP/s | mean GFLOP/s | calls |\n|---|---|---|---|---|\n";
    for (const auto& g : gemm)
        md << "| " << g.s.what << " | " << g.s.M << ", " << g.s.N << ", " << g.s.K << " | " << fmt("%.1f", g.best_gflops)
           << " | " << fmt("%.1f", g.mean_gflops) << " | " << g.reps << " |\n";
    md << "\n";
    if (u_strata.others > 0.05 * u_strata.wall * o.threads || u_peer.others > 0.05 * u_peer.wall * o.threads)
        md << "**Warning:** other processes used more than 5 % of the CPU time during a measurement; the numbers "
              "may be noisy. Rerun on an idle machine.\n\n";

    const std::string report = md.str();
    std::cout << report << std::flush;
    if (md_file) {
        md_file->write(report);
        md_file->commit();
    }
    if (json_file) {
        json j;
        j["suite"] = "train";
        j["date"] = date;
        j["command"] = command_line();
        j["commit"] = commit;
        j["machine"] = {{"cpu", cpu_model()}, {"online_cpus", ncpu}, {"simd", cpu_simd()},
                        {"openblas_config", blas_config}, {"openblas_core", blas_core},
                        {"environment", threading_env()}, {"loadavg_before", load_before}, {"loadavg_after", load_after}};
        j["threads"] = o.threads;
        j["model"] = cfg.to_json();
        j["batch"] = o.batch;
        j["seq"] = o.seq;
        j["flops_per_step"] = {{"matmul", fl.matmul}, {"attention", fl.attention}, {"total", fl.total},
                               {"matmul_params", fl.matmul_params}};
        json phases = json::object();
        for (int p = 0; p < 5; p++) phases[kPhaseNames[p]] = {{"ms_mean", sr.phase[p].mean * 1e3}, {"ms_std", sr.phase[p].std * 1e3}};
        j["strata"] = {{"step_ms_mean", st.mean * 1e3}, {"step_ms_std", st.std * 1e3}, {"step_ms_min", st.min * 1e3},
                       {"step_ms_max", st.max * 1e3}, {"tokens_per_s", strata_tps}, {"gflops", strata_gflops},
                       {"warmup", o.warmup}, {"steps", o.steps}, {"loss_first", sr.loss_first},
                       {"loss_last", sr.loss_last}, {"params", sr.params}, {"phases", phases},
                       {"cpu", cpu_use_json(u_strata)}};
        json gj = json::array();
        for (const auto& g : gemm)
            gj.push_back({{"shape", g.s.what}, {"M", g.s.M}, {"N", g.s.N}, {"K", g.s.K}, {"trans_a", g.s.ta},
                          {"trans_b", g.s.tb}, {"best_gflops", g.best_gflops}, {"mean_gflops", g.mean_gflops}});
        j["sgemm"] = {{"peak_gflops", peak}, {"peak_shape", best->s.what}, {"shapes", gj}, {"cpu", cpu_use_json(u_gemm)}};
        j["strata_over_sgemm_peak"] = strata_gflops / peak;
        if (peer.ran) {
            j["peer"] = peer.j;
            j["peer"]["cpu"] = cpu_use_json(u_peer);
            j["strata_over_peer_tokens_per_s"] = strata_tps / peer.j["tokens_per_s"].get<double>();
        } else {
            j["peer"] = {{"skipped", peer.note}};
        }
        if (o.profile) {
            json pj = json::object();
            for (int f = 0; f < kNumFamilies; f++) pj[kFamilyNames[f]] = prof.ms[f];
            j["profile_ms_per_step"] = pj;
        }
        json_file->write(j.dump(2) + "\n");
        json_file->commit();
    }
}

}  // namespace

void add_bench_command(CLI::App& app) {
    CLI::App* bench = app.add_subcommand("bench", "Benchmark suites (run one: `strata bench train`)");
    bench->require_subcommand(1);

    auto o = std::make_shared<BenchTrainOptions>();
    CLI::App* train = bench->add_subcommand(
        "train", "Training throughput on the bench model vs the sgemm peak and a PyTorch peer, in one run");
    train->add_option("--threads", o->threads, "Threads for OpenMP, OpenBLAS and the peer")->capture_default_str();
    train->add_option("--warmup", o->warmup, "Untimed warm-up steps")->capture_default_str();
    train->add_option("--steps", o->steps, "Timed steps")->capture_default_str();
    train->add_option("--batch", o->batch, "Batch size")->capture_default_str();
    train->add_option("--seq", o->seq, "Sequence length")->capture_default_str();
    train->add_option("--residual", o->residual, "Residual rule of the bench model: standard, attnres_full, attnres_block")
        ->capture_default_str();
    train->add_option("--attnres-block-size", o->attnres_block_size, "Sublayers per block for attnres_block")
        ->capture_default_str();
    train->add_option("--attention", o->attention, "Attention kind of the bench model: causal, moda")
        ->capture_default_str();
    train->add_option("--repo", o->repo, "strata source tree (default: found from the build)");
    train->add_option("--peer-python", o->peer_python,
                      "Python with PyTorch for the peer (default: <repo>/bench/.venv/bin/python)");
    train->add_flag("--no-peer", o->no_peer, "Skip the PyTorch peer");
    train->add_flag("--profile", o->profile, "Also time forward + backward by op family (replayed op by op)");
    train->add_option("--json-out", o->json_out, "Also write the results as JSON to this file");
    train->add_option("--markdown-out", o->markdown_out, "Also write the markdown report to this file");
    train->callback([o] {
        if (dry_run()) return;
        run_bench_train(*o);
    });
}

}  // namespace strata::cli
