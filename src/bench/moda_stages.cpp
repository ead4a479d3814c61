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
// Next to them the production op (moda_forward), which reads only each row's own L slots and runs the
// sequence part on tile GEMMs. The paper times forward and backward on an A100 in bf16; these are
// forward only, in fp32.
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
#include "ops/ops.h"

namespace strata::bench {

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Inputs {
    long T, H, Hk, d, L;
    std::vector<float> q, k, v, kd, vd;  // (T, H, d), (T, Hk, d) ×2, (T, L, Hk, d) ×2
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

float dot(const float* x, const float* y, long d) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (long i = 0; i < d; i++) s += x[i] * y[i];
    return s;
}

// naive: per head, S = Q·[K; K^d]ᵀ (T × (T + T·L)), masked, softmaxed, then O = P·[V; V^d].
void stage_naive(const Inputs& in, std::vector<float>& out) {
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
        }
        matmul_forward(O.data(), S.data(), VcT.data(), T, N, d);  // O = P·Vc
        for (long t = 0; t < T; t++)
            for (long i = 0; i < d; i++) out[(t * in.H + h) * d + i] = O[t * d + i];
    }
}

// flat, chunk, group: flash-style forward over the concatenated keys with an online softmax. A task
// owns a tile of BT rows of one kv head; row r of the tile is query (token, head) = rows(r). Its
// columns: the sequence keys up to the tile's last token, then the depth columns [dc0, dc1).
enum class Stage { flat, chunk, group };
void stage_flash(const Inputs& in, std::vector<float>& out, Stage st) {
    constexpr long BT = 64, BK = 64;
    const long T = in.T, d = in.d, G = in.H / in.Hk, L = in.L;
    const float scale = 1.0f / std::sqrt(float(d)), neg = -std::numeric_limits<float>::infinity();
    // rows per kv head: T·G (token-major, head-minor) under group; otherwise per head, T rows
    const long rows = st == Stage::group ? T * G : T, n_units = st == Stage::group ? in.Hk : in.H;
    const long n_tiles = (rows + BT - 1) / BT;
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (long u = 0; u < n_units; u++)
        for (long tile = 0; tile < n_tiles; tile++) {
            const long r0 = tile * BT, r1 = std::min(rows, r0 + BT), kh = st == Stage::group ? u : u / G;
            auto token = [&](long r) { return st == Stage::group ? r / G : r; };
            auto head = [&](long r) { return st == Stage::group ? kh * G + r % G : u; };
            const long t_first = token(r0), t_last = token(r1 - 1);
            const long dc0 = st == Stage::flat ? 0 : t_first * L, dc1 = st == Stage::flat ? T * L : (t_last + 1) * L;
            std::vector<long> cols;  // this tile's columns: sequence keys, then its depth span
            for (long c = 0; c <= t_last; c++) cols.push_back(c);
            for (long c = dc0; c < dc1; c++) cols.push_back(T + c);
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
            for (long r = r0; r < r1; r++)
                for (long i = 0; i < d; i++) out[(token(r) * in.H + head(r)) * d + i] = O[(r - r0) * d + i] / l[r - r0];
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
    Inputs in{o.T, o.G * o.kv_heads, o.kv_heads, o.head_dim, o.L, {}, {}, {}, {}, {}};
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
    const size_t n_out = in.q.size();
    std::vector<float> ref(n_out), lse(size_t(in.H * in.T));
    ModaParams<float> p;
    p.dims = AttnDims{1, in.T, in.T, in.H, in.Hk, in.d, 0, in.T * in.Hk * in.d};
    p.q = in.q.data(), p.k = in.k.data(), p.v = in.v.data(), p.kd = in.kd.data(), p.vd = in.vd.data();
    p.L = in.L, p.out = ref.data(), p.lse = lse.data();
    r.names = {"naive masked concatenation", "flash-compatible (flattened) layout", "chunk-aware", "group-aware",
               "strata's moda_forward"};
    std::vector<std::vector<float>> outs(r.names.size(), std::vector<float>(n_out));
    auto run_stage = [&](size_t s) {
        const double t0 = now();
        switch (s) {
            case 0: stage_naive(in, outs[0]); break;
            case 1: stage_flash(in, outs[1], Stage::flat); break;
            case 2: stage_flash(in, outs[2], Stage::chunk); break;
            case 3: stage_flash(in, outs[3], Stage::group); break;
            default: p.out = outs[4].data(), moda_forward(p); break;
        }
        return now() - t0;
    };
    r.seconds.assign(r.names.size(), {});
    for (size_t s = 0; s < r.names.size(); s++) run_stage(s);  // warm-up, and the outputs to compare
    p.out = ref.data();
    moda_forward(p);
    for (size_t s = 0; s < r.names.size(); s++) r.rel_err.push_back(rel_l2(outs[s], ref));
    for (int rep = 0; rep < o.reps; rep++) {
        for (size_t k = 0; k < r.names.size(); k++) {
            const size_t s = (k + size_t(rep)) % r.names.size();
            r.seconds[s].push_back(run_stage(s));
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
    md << "The MoDA paper's Table 7 stages on the CPU, forward only, fp32: B = 1, T = " << o.T << ", G = " << o.G
       << ", Hk = " << o.kv_heads << ", d = " << o.head_dim << ", L = " << o.L
       << ", query tiles of 64 rows. Each stage is written in `src/bench/moda_stages.cpp` and checked against "
          "`moda_forward` (relative L2 of the output). "
       << o.reps << " repetitions after one warm-up, the stages in an order rotated each repetition; medians with a "
                    "percentile-bootstrap 95 % interval; each speedup is the ratio of the medians.\n\n";
    md << "| stage | time (ms) | speedup over the stage above | paper (A100, bf16, fwd+bwd) | output vs moda_forward |\n";
    md << "|---|---|---|---|---|\n";
    const char* paper[] = {"2128.9 ms", "162.5×", "2.08×", "4.31×", "—"};
    double prev = 0;
    for (size_t s = 0; s < r.names.size(); s++) {
        const MedianCI c = bootstrap_median(r.seconds[s]);
        md << "| " << r.names[s] << " | " << median_ci_str(r.seconds[s], "%.2f", 1e3) << " | "
           << (s == 0 ? std::string("—") : fmt("%.2f", prev / c.median) + "×")
           << " | " << paper[s] << " | " << fmt("%.1e", r.rel_err[s]) << " |\n";
        prev = c.median;
    }
    const double first = bootstrap_median(r.seconds[0]).median, group = bootstrap_median(r.seconds[3]).median;
    md << "\nNaive to group-aware: " << fmt("%.1f", first / group) << "× (the paper: about 1458×).\n";
    return md.str();
}

nlohmann::json moda_stages_json(const ModaStagesResult& r) {
    nlohmann::json st = nlohmann::json::array();
    for (size_t s = 0; s < r.names.size(); s++) {
        st.push_back({{"stage", r.names[s]}, {"seconds", median_ci_json(r.seconds[s])},
                      {"rel_l2_vs_moda_forward", r.rel_err[s]}});
    }
    const ModaStagesOptions& o = r.options;
    return {{"suite", "moda-stages"}, {"date", r.machine.date}, {"command", r.machine.command},
            {"commit", r.machine.commit}, {"machine", machine_json(r.machine)}, {"threads", o.threads},
            {"T", o.T}, {"G", o.G}, {"kv_heads", o.kv_heads}, {"head_dim", o.head_dim}, {"L", o.L}, {"stages", st}};
}

}  // namespace strata::bench
