// `strata bench moda --stages`: the MoDA paper's Table 7 ablation, on the CPU. Each stage is a
// forward of the same causal MoDA call (one batch row; each query sees keys 0..t and its own token's
// L depth slots), written only here, as simply as the stage allows, so that the stages differ in what
// they compute and read and in nothing else:
//   naive    the sequence keys and every token's depth slots concatenated into one key set of T + T·L
//            keys, a dense masked score matrix per head (BLAS GEMMs), a softmax, a GEMM with the values;
//   flat     flash-style (key tiles, an online softmax, nothing materialised) over the same
//            concatenated keys: each query tile scans all T·L depth columns and masks all but its own;
//   chunk    the same, but a query tile of C tokens scans only its own tokens' C·L depth columns;
//   group    the G query heads of a kv head folded into the rows (row t·G + g), so a tile of C rows
//            spans C/G tokens and scans (C/G)·L depth columns, shared by the heads of the group.
// Next to them the production op (moda_forward, moda_backward), which reads only each row's own L slots
// and runs the sequence part on tile GEMMs. Each stage has a backward written the same way (the naive
// one on BLAS GEMMs over the concatenated keys, the flash-style ones recomputing each visible score
// from the forward's lse), and is timed forward only and forward plus backward, as the paper times it
// (on an A100 in bf16; these are fp32).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "bench/moda_bench.h"
#include "core/error.h"
#include "core/rng.h"
#include "ops/cpu/vec_math.h"
#include "ops/ops.h"

namespace strata::bench {

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Inputs {
    long T, H, Hk, d, L;
    std::vector<float> q, k, v, kd, vd, dout;  // (T, H, d), (T, Hk, d) ×2, (T, L, Hk, d) ×2, (T, H, d)
    const float* qrow(long t, long h) const { return q.data() + (t * H + h) * d; }
    // column c of the concatenated keys of kv head kh: sequence key c < T, else depth slot c − T
    const float* key(long c, long kh) const {
        return c < T ? k.data() + (c * Hk + kh) * d : kd.data() + ((c - T) * Hk + kh) * d;
    }
    const float* value(long c, long kh) const {
        return c < T ? v.data() + (c * Hk + kh) * d : vd.data() + ((c - T) * Hk + kh) * d;
    }
    // whether query token t sees column c (causal sequence, own-token depth)
    bool visible(long t, long c) const { return c < T ? c <= t : (c - T) / L == t; }
};

float dot(const float* x, const float* y, long d) { return simd::dot(x, y, d); }

// A forward's output and log-sum-exp (H, T), and a backward's gradients.
struct Fwd {
    std::vector<float> out, lse;
};
struct Grads {
    std::vector<float> dq, dk, dv, dkd, dvd;
    void zero(const Inputs& in) {
        dq.assign(in.q.size(), 0.f), dk.assign(in.k.size(), 0.f), dv.assign(in.v.size(), 0.f);
        dkd.assign(in.kd.size(), 0.f), dvd.assign(in.vd.size(), 0.f);
    }
    // column c's key and value gradients of kv head kh, as Inputs::key
    float* dkey(long c, long kh, const Inputs& in) {
        return c < in.T ? dk.data() + (c * in.Hk + kh) * in.d : dkd.data() + ((c - in.T) * in.Hk + kh) * in.d;
    }
    float* dvalue(long c, long kh, const Inputs& in) {
        return c < in.T ? dv.data() + (c * in.Hk + kh) * in.d : dvd.data() + ((c - in.T) * in.Hk + kh) * in.d;
    }
};

// naive: per head, S = Q·[K; K^d]ᵀ (T × (T + T·L)), masked, softmaxed, then O = P·[V; V^d].
void stage_naive(const Inputs& in, Fwd& f) {
    std::vector<float>& out = f.out;
    const long T = in.T, d = in.d, G = in.H / in.Hk, N = T + T * in.L;
    std::vector<float> Kc(N * d), VcT(d * N), Q(T * d), S(T * N), O(T * d);
    for (long h = 0; h < in.H; h++) {
        const long kh = h / G;
        for (long c = 0; c < N; c++) {  // the concatenated keys and the values transposed, for the GEMMs
            const float *kr = in.key(c, kh), *vr = in.value(c, kh);
            for (long i = 0; i < d; i++) Kc[c * d + i] = kr[i], VcT[i * N + c] = vr[i];
        }
        for (long t = 0; t < T; t++)
            for (long i = 0; i < d; i++) Q[t * d + i] = in.qrow(t, h)[i];
        matmul_forward(S.data(), Q.data(), Kc.data(), T, d, N);  // S = Q·Kcᵀ
        const float scale = 1.0f / std::sqrt(float(d));
#pragma omp parallel for schedule(static)
        for (long t = 0; t < T; t++) {
            float* s = S.data() + t * N;
            float mx = -std::numeric_limits<float>::infinity();
            for (long c = 0; c < N; c++) {
                s[c] = in.visible(t, c) ? s[c] * scale : -std::numeric_limits<float>::infinity();
                mx = std::max(mx, s[c]);
            }
            float z = 0;
            for (long c = 0; c < N; c++) z += (s[c] = std::exp(s[c] - mx));
            for (long c = 0; c < N; c++) s[c] /= z;
            f.lse[h * T + t] = mx + std::log(z);
        }
        matmul_forward(O.data(), S.data(), VcT.data(), T, N, d);  // O = P·Vc
        for (long t = 0; t < T; t++)
            for (long i = 0; i < d; i++) out[(t * in.H + h) * d + i] = O[t * d + i];
    }
}

// The naive backward, per head: P again from S, dP = dO·[V; V^d]ᵀ, dS = P ⊙ (dP − D), then
// dQ = s·dS·Kc, dKc = s·dSᵀ·Q and dVc = Pᵀ·dO as BLAS GEMMs over all T + T·L columns, scattered back
// to the sequence and depth gradients of the head's kv head.
void stage_naive_backward(const Inputs& in, const Fwd& f, Grads& gr) {
    const long T = in.T, d = in.d, G = in.H / in.Hk, N = T + T * in.L;
    const float scale = 1.0f / std::sqrt(float(d));
    std::vector<float> Kc(N * d), Vc(N * d), KcT(d * N), Q(T * d), QT(d * T), dO(T * d), dOT(d * T), D(T);
    std::vector<float> S(T * N), dP(T * N), PT(N * T), dST(N * T), dQ(T * d), dKc(N * d), dVc(N * d);
    for (long h = 0; h < in.H; h++) {
        const long kh = h / G;
        for (long c = 0; c < N; c++) {
            const float *kr = in.key(c, kh), *vr = in.value(c, kh);
            for (long i = 0; i < d; i++) Kc[c * d + i] = kr[i], Vc[c * d + i] = vr[i], KcT[i * N + c] = kr[i];
        }
        for (long t = 0; t < T; t++) {
            const float *qr = in.qrow(t, h), *gr_ = in.dout.data() + (t * in.H + h) * d;
            const float* o = f.out.data() + (t * in.H + h) * d;
            D[t] = 0;
            for (long i = 0; i < d; i++) {
                Q[t * d + i] = qr[i], QT[i * T + t] = qr[i], dO[t * d + i] = gr_[i], dOT[i * T + t] = gr_[i];
                D[t] += gr_[i] * o[i];
            }
        }
        matmul_forward(S.data(), Q.data(), Kc.data(), T, d, N);    // S = Q·Kcᵀ
        matmul_forward(dP.data(), dO.data(), Vc.data(), T, d, N);  // dP = dO·Vcᵀ
#pragma omp parallel for schedule(static)
        for (long t = 0; t < T; t++)
            for (long c = 0; c < N; c++) {
                const float p = in.visible(t, c) ? std::exp(S[t * N + c] * scale - f.lse[h * T + t]) : 0.f;
                PT[c * T + t] = p;
                dST[c * T + t] = p * (dP[t * N + c] - D[t]);
            }
        for (long c = 0; c < N; c++)  // dS back to rows for dQ
            for (long t = 0; t < T; t++) dP[t * N + c] = dST[c * T + t];
        matmul_forward(dQ.data(), dP.data(), KcT.data(), T, N, d);    // dQ = dS·Kc
        matmul_forward(dKc.data(), dST.data(), QT.data(), N, T, d);   // dKc = dSᵀ·Q
        matmul_forward(dVc.data(), PT.data(), dOT.data(), N, T, d);   // dVc = Pᵀ·dO
        for (long t = 0; t < T; t++)
            for (long i = 0; i < d; i++) gr.dq[(t * in.H + h) * d + i] = scale * dQ[t * d + i];
        for (long c = 0; c < N; c++) {
            float *gk = gr.dkey(c, kh, in), *gv = gr.dvalue(c, kh, in);
            for (long i = 0; i < d; i++) gk[i] += scale * dKc[c * d + i], gv[i] += dVc[c * d + i];
        }
    }
}

// flat, chunk, group: flash-style forward over the concatenated keys with an online softmax. A task
// owns a tile of BT rows of one kv head; row r of the tile is query (token, head) = rows(r). Its
// columns: the sequence keys up to the tile's last token, then the depth columns [dc0, dc1).
enum class Stage { flat, chunk, group };
constexpr long kStageRows = 64;  // query rows per tile

// The rows of one unit of work: a query head's T rows, or under group a kv head's T·G rows (token-major,
// head-minor); a tile of rows [r0, r1) sees the sequence keys up to its last token and the depth
// columns [dc0, dc1): all T·L under flat, its own tokens' under chunk and group.
struct Tiling {
    Stage st;
    long T, G, L, Hk;
    long rows() const { return st == Stage::group ? T * G : T; }
    long units() const { return st == Stage::group ? Hk : Hk * G; }
    long kv_head(long u) const { return st == Stage::group ? u : u / G; }
    long token(long r) const { return st == Stage::group ? r / G : r; }
    long head(long u, long r) const { return st == Stage::group ? u * G + r % G : u; }
    std::vector<long> columns(long r0, long r1) const {
        const long t_first = token(r0), t_last = token(r1 - 1);
        const long dc0 = st == Stage::flat ? 0 : t_first * L, dc1 = st == Stage::flat ? T * L : (t_last + 1) * L;
        std::vector<long> cols;
        for (long c = 0; c <= t_last; c++) cols.push_back(c);
        for (long c = dc0; c < dc1; c++) cols.push_back(T + c);
        return cols;
    }
};

void stage_flash(const Inputs& in, Fwd& f, Stage st) {
    std::vector<float>& out = f.out;
    constexpr long BT = kStageRows, BK = 64;
    const long T = in.T, d = in.d, G = in.H / in.Hk;
    const float scale = 1.0f / std::sqrt(float(d)), neg = -std::numeric_limits<float>::infinity();
    const Tiling tl{st, T, G, in.L, in.Hk};
    const long n_tiles = (tl.rows() + BT - 1) / BT;
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (long u = 0; u < tl.units(); u++)
        for (long tile = 0; tile < n_tiles; tile++) {
            const long r0 = tile * BT, r1 = std::min(tl.rows(), r0 + BT), kh = tl.kv_head(u);
            auto token = [&](long r) { return tl.token(r); };
            auto head = [&](long r) { return tl.head(u, r); };
            const std::vector<long> cols = tl.columns(r0, r1);  // sequence keys, then the tile's depth span
            std::vector<float> m(BT, neg), l(BT, 0.f), O(BT * d, 0.f), s(BT * BK);
            for (size_t c0 = 0; c0 < cols.size(); c0 += BK) {
                const long nc = std::min<long>(BK, long(cols.size() - c0));
                for (long r = r0; r < r1; r++) {
                    const long t = token(r), h = head(r), ri = r - r0;
                    float* sr = s.data() + ri * BK;
                    float mx = m[ri];
                    for (long j = 0; j < nc; j++) {
                        const long c = cols[c0 + j];
                        sr[j] = in.visible(t, c) ? dot(in.qrow(t, h), in.key(c, kh), d) * scale : neg;
                        mx = std::max(mx, sr[j]);
                    }
                    if (mx == neg) continue;  // nothing visible yet
                    const float corr = std::exp(m[ri] - mx);
                    float* o = O.data() + ri * d;
                    for (long i = 0; i < d; i++) o[i] *= corr;
                    float sum = 0;
                    for (long j = 0; j < nc; j++) {
                        const float p = std::exp(sr[j] - mx);
                        if (p == 0) continue;
                        sum += p;
                        const float* vr = in.value(cols[c0 + j], kh);
                        for (long i = 0; i < d; i++) o[i] += p * vr[i];
                    }
                    l[ri] = l[ri] * corr + sum;
                    m[ri] = mx;
                }
            }
            for (long r = r0; r < r1; r++) {
                for (long i = 0; i < d; i++) out[(token(r) * in.H + head(r)) * d + i] = O[(r - r0) * d + i] / l[r - r0];
                f.lse[head(r) * T + token(r)] = m[r - r0] + std::log(l[r - r0]);
            }
        }
}

// The flash-style backward of a stage: one task per kv head (it alone writes that head's key and
// value gradients), its units and tiles in turn; each row rescans the tile's columns as the forward
// did and, for each visible one, recomputes p = exp(s − lse) and adds ds = p (dO·v − D) to dq, dk and
// p·dO to dv.
void stage_flash_backward(const Inputs& in, const Fwd& f, Grads& gr, Stage st) {
    const long T = in.T, d = in.d, G = in.H / in.Hk;
    const float scale = 1.0f / std::sqrt(float(d));
    const Tiling tl{st, T, G, in.L, in.Hk};
    const long n_tiles = (tl.rows() + kStageRows - 1) / kStageRows;
#pragma omp parallel for schedule(dynamic)
    for (long kh = 0; kh < in.Hk; kh++)
        for (long u = 0; u < tl.units(); u++) {
            if (tl.kv_head(u) != kh) continue;
            for (long tile = 0; tile < n_tiles; tile++) {
                const long r0 = tile * kStageRows, r1 = std::min(tl.rows(), r0 + kStageRows);
                const std::vector<long> cols = tl.columns(r0, r1);
                for (long r = r0; r < r1; r++) {
                    const long t = tl.token(r), h = tl.head(u, r);
                    const float* q = in.qrow(t, h);
                    const float* go = in.dout.data() + (t * in.H + h) * d;
                    const float D = dot(go, f.out.data() + (t * in.H + h) * d, d), lse = f.lse[h * T + t];
                    float* dq = gr.dq.data() + (t * in.H + h) * d;
                    for (const long c : cols) {
                        if (!in.visible(t, c)) continue;
                        const float* kr = in.key(c, kh);
                        const float p = std::exp(dot(q, kr, d) * scale - lse);
                        const float ds = p * (dot(go, in.value(c, kh), d) - D) * scale;
                        float *gk = gr.dkey(c, kh, in), *gv = gr.dvalue(c, kh, in);
                        for (long i = 0; i < d; i++) dq[i] += ds * kr[i], gk[i] += ds * q[i], gv[i] += p * go[i];
                    }
                }
            }
        }
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) num += double(a[i] - b[i]) * (a[i] - b[i]), den += double(b[i]) * b[i];
    return std::sqrt(num / std::max(den, 1e-300));
}
}  // namespace

ModaStagesResult run_moda_stages(const ModaStagesOptions& o) {
    if (o.reps < 2) throw Error("--reps must be at least 2");
    if (o.T < 1 || o.G < 1 || o.kv_heads < 1 || o.head_dim < 1 || o.L < 1)
        throw Error("bench moda --stages: T, G, Hk, d and L must be positive");
    ModaStagesResult r;
    r.options = o;
    r.machine = machine_facts(find_repo(""));
    omp_set_num_threads(o.threads);
    Inputs in{o.T, o.G * o.kv_heads, o.kv_heads, o.head_dim, o.L, {}, {}, {}, {}, {}, {}};
    Rng rng(5);
    auto fill = [&](std::vector<float>& x, size_t n) {
        x.resize(n);
        for (auto& v : x) v = float(rng.normal());
    };
    fill(in.q, size_t(in.T * in.H * in.d));
    fill(in.k, size_t(in.T * in.Hk * in.d));
    fill(in.v, in.k.size());
    fill(in.kd, size_t(in.T * in.L * in.Hk * in.d));
    fill(in.vd, in.kd.size());
    fill(in.dout, in.q.size());
    r.names = {"naive masked concatenation", "flash-compatible (flattened) layout", "chunk-aware", "group-aware",
               "strata's moda_forward / moda_backward"};
    const size_t n_stages = r.names.size();
    std::vector<Fwd> fwd(n_stages, Fwd{std::vector<float>(in.q.size()), std::vector<float>(size_t(in.H * in.T))});
    std::vector<Grads> grads(n_stages);
    ModaParams<float> p;
    p.dims = AttnDims{1, in.T, in.T, in.H, in.Hk, in.d, 0, in.T * in.Hk * in.d};
    p.q = in.q.data(), p.k = in.k.data(), p.v = in.v.data(), p.kd = in.kd.data(), p.vd = in.vd.data();
    p.L = in.L;
    auto forward = [&](size_t s) {
        Fwd& f = fwd[s];
        switch (s) {
            case 0: stage_naive(in, f); break;
            case 1: stage_flash(in, f, Stage::flat); break;
            case 2: stage_flash(in, f, Stage::chunk); break;
            case 3: stage_flash(in, f, Stage::group); break;
            default: p.out = f.out.data(), p.lse = f.lse.data(), moda_forward(p); break;
        }
    };
    auto backward = [&](size_t s) {
        Grads& g = grads[s];
        g.zero(in);  // inside the timing: moda_backward accumulates into zeroed gradients too
        switch (s) {
            case 0: stage_naive_backward(in, fwd[s], g); break;
            case 1: stage_flash_backward(in, fwd[s], g, Stage::flat); break;
            case 2: stage_flash_backward(in, fwd[s], g, Stage::chunk); break;
            case 3: stage_flash_backward(in, fwd[s], g, Stage::group); break;
            default:
                p.out = fwd[s].out.data(), p.lse = fwd[s].lse.data();
                moda_backward(p, ModaGrads<float>{g.dq.data(), g.dk.data(), g.dv.data(), g.dkd.data(), g.dvd.data(),
                                                  in.dout.data()});
                break;
        }
    };
    auto timed = [&](size_t s, bool with_backward) {
        const double t0 = now();
        forward(s);
        if (with_backward) backward(s);
        return now() - t0;
    };
    r.seconds.assign(n_stages, {});
    r.seconds_fb.assign(n_stages, {});
    for (size_t s = 0; s < n_stages; s++) timed(s, true);  // warm-up, and the results to compare
    auto all_grads = [](const Grads& g) {
        std::vector<float> x;
        for (const auto* v : {&g.dq, &g.dk, &g.dv, &g.dkd, &g.dvd}) x.insert(x.end(), v->begin(), v->end());
        return x;
    };
    const std::vector<float> ref_grads = all_grads(grads.back());
    for (size_t s = 0; s < n_stages; s++) {
        r.rel_err.push_back(rel_l2(fwd[s].out, fwd.back().out));
        r.rel_err_grad.push_back(rel_l2(all_grads(grads[s]), ref_grads));
    }
    for (int rep = 0; rep < o.reps; rep++) {
        for (size_t k = 0; k < n_stages; k++) {
            const size_t s = (k + size_t(rep)) % n_stages;
            r.seconds[s].push_back(timed(s, false));
            r.seconds_fb[s].push_back(timed(s, true));
        }
        std::fprintf(stderr, "stages rep %d/%d done\n", rep + 1, o.reps);
    }
    r.machine.loadavg_after = loadavg();
    return r;
}

std::string moda_stages_markdown(const ModaStagesResult& r) {
    const ModaStagesOptions& o = r.options;
    const MachineFacts& m = r.machine;
    std::ostringstream md;
    md << op_report_header("strata bench moda --stages", m, o.threads);
    md << "The MoDA paper's Table 7 stages on the CPU, fp32: B = 1, T = " << o.T << ", G = " << o.G
       << ", Hk = " << o.kv_heads << ", d = " << o.head_dim << ", L = " << o.L
       << ", query tiles of 64 rows. Each stage's forward and backward are written in `src/bench/moda_stages.cpp` "
          "and checked against `moda_forward` and `moda_backward` (relative L2 of the output, and of dq, dk, dv, "
          "dK^d and dV^d together). "
       << o.reps
       << " repetitions after one warm-up, the stages in an order rotated each repetition, each stage timed forward "
          "only and then forward plus backward; medians with a percentile-bootstrap 95 % interval; each speedup "
          "is the ratio of the medians. The paper's column is its A100 bf16 forward plus backward at T = 1K, "
          "L = 64.\n\n";
    md << "| stage | forward (ms) | speedup | forward + backward (ms) | speedup | paper | output, gradients vs strata |\n";
    md << "|---|---|---|---|---|---|---|\n";
    const char* paper[] = {"2128.9 ms", "162.5×", "2.08×", "4.31×", "—"};
    double prev = 0, prev_fb = 0;
    for (size_t s = 0; s < r.names.size(); s++) {
        const double med = bootstrap_median(r.seconds[s]).median, med_fb = bootstrap_median(r.seconds_fb[s]).median;
        md << "| " << r.names[s] << " | " << median_ci_str(r.seconds[s], "%.2f", 1e3) << " | "
           << (s == 0 ? std::string("—") : fmt("%.2f", prev / med) + "×") << " | "
           << median_ci_str(r.seconds_fb[s], "%.2f", 1e3) << " | "
           << (s == 0 ? std::string("—") : fmt("%.2f", prev_fb / med_fb) + "×") << " | " << paper[s] << " | "
           << fmt("%.1e", r.rel_err[s]) << ", " << fmt("%.1e", r.rel_err_grad[s]) << " |\n";
        prev = med, prev_fb = med_fb;
    }
    const double first = bootstrap_median(r.seconds_fb[0]).median, group = bootstrap_median(r.seconds_fb[3]).median;
    md << "\nNaive to group-aware, forward plus backward: " << fmt("%.1f", first / group)
       << "× (the paper: about 1458×).\n";
    return md.str();
}

nlohmann::json moda_stages_json(const ModaStagesResult& r) {
    nlohmann::json st = nlohmann::json::array();
    for (size_t s = 0; s < r.names.size(); s++) {
        st.push_back({{"stage", r.names[s]}, {"forward_seconds", median_ci_json(r.seconds[s])},
                      {"forward_backward_seconds", median_ci_json(r.seconds_fb[s])},
                      {"rel_l2_vs_moda_forward", r.rel_err[s]}, {"grad_rel_l2_vs_moda_backward", r.rel_err_grad[s]}});
    }
    const ModaStagesOptions& o = r.options;
    return {{"suite", "moda-stages"}, {"date", r.machine.date}, {"command", r.machine.command},
            {"commit", r.machine.commit}, {"machine", machine_json(r.machine)}, {"threads", o.threads},
            {"T", o.T}, {"G", o.G}, {"kv_heads", o.kv_heads}, {"head_dim", o.head_dim}, {"L", o.L}, {"stages", st}};
}

}  // namespace strata::bench
