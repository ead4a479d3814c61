// The op table's dtype axis: every op that stores bf16 under mixed precision, forward and backward,
// judged by FlashAttention's rule. On inputs that are exact in bf16, three results are compared:
//   truth  — the op in float64 (checked against finite differences in tests/op/test_ops.cpp);
//   strata — the op with bf16 storage (float compute, float statistics and gradients);
//   naive  — the same formula written here with every input, output and stored intermediate rounded
//            to bf16 and float arithmetic: what a framework running the op eagerly in bf16 computes.
// strata's relative L2 error against the truth must be at most 2× the naive one. Every row runs on
// both bf16 GEMM paths: the native one (oneDNN, where the CPU has bf16) and the emulation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ops/cpu/gemm.h"
#include "ops/ops.h"
#include "../test_util.h"

using namespace strata;
using Vec = std::vector<double>;

namespace {

float Q(double x) { return round_bf16(float(x)); }  // what storing x as bf16 keeps

std::vector<bf16> to_bf16(const Vec& v) {
    std::vector<bf16> r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = bf16(float(v[i]));
    return r;
}
template <typename S>
Vec widen(const std::vector<S>& v) {
    Vec r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = to_double(v[i]);
    return r;
}
// Normal draws, rounded to bf16 so every path sees the same exact inputs.
Vec randq(size_t n, std::mt19937_64& g, double scale = 1.0) {
    std::normal_distribution<double> d(0.0, scale);
    Vec v(n);
    for (auto& x : v) x = Q(d(g));
    return v;
}
double rel_l2(const Vec& a, const Vec& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

// One output (or gradient) of one op: strata's error must be within 2× the naive error.
void expect_rule(const std::string& what, const Vec& strata, const Vec& naive, const Vec& truth) {
    ASSERT_EQ(strata.size(), truth.size()) << what;
    ASSERT_EQ(naive.size(), truth.size()) << what;
    const double es = rel_l2(strata, truth), en = rel_l2(naive, truth);
    if (std::getenv("STRATA_TEST_VERBOSE")) std::printf("%-40s strata %.3g naive %.3g ratio %.2f\n", what.c_str(), es, en, es / en);
    EXPECT_LE(es, 2 * en + 1e-12) << what << ": strata bf16 error " << es << ", naive bf16 error " << en;
    EXPECT_GT(en, 0) << what << ": the naive bf16 result is exact, so the row cannot tell anything";
}

class Bf16Ops : public ::testing::TestWithParam<bool> {
protected:
    void SetUp() override { set_bf16_native(GetParam()); }
    void TearDown() override { set_bf16_native(true); }
    std::mt19937_64 g{2024};
};

// ---- matmul ---------------------------------------------------------------------------------------
TEST_P(Bf16Ops, Matmul) {
    const long N = 37, IC = 72, OC = 53;
    const Vec x = randq(N * IC, g), w = randq(OC * IC, g, 0.2), dy = randq(N * OC, g);
    auto xb = to_bf16(x), wb = to_bf16(w), dyb = to_bf16(dy);
    Vec y64(N * OC), dx64(N * IC, 0), dw64(OC * IC, 0);
    matmul_forward(y64.data(), x.data(), w.data(), N, IC, OC);
    matmul_backward(dx64.data(), dw64.data(), dy.data(), x.data(), w.data(), N, IC, OC);
    Vec yn(N * OC), dxn(N * IC), dwn(OC * IC);
    for (long r = 0; r < N; r++)
        for (long o = 0; o < OC; o++) {
            float s = 0;
            for (long i = 0; i < IC; i++) s += float(x[r * IC + i]) * float(w[o * IC + i]);
            yn[r * OC + o] = Q(s);
        }
    for (long r = 0; r < N; r++)
        for (long i = 0; i < IC; i++) {
            float s = 0;
            for (long o = 0; o < OC; o++) s += float(dy[r * OC + o]) * float(w[o * IC + i]);
            dxn[r * IC + i] = Q(s);
        }
    for (long o = 0; o < OC; o++)
        for (long i = 0; i < IC; i++) {
            float s = 0;
            for (long r = 0; r < N; r++) s += float(dy[r * OC + o]) * float(x[r * IC + i]);
            dwn[o * IC + i] = Q(s);
        }
    std::vector<bf16> yb(N * OC);
    std::vector<float> yf(N * OC), dx(N * IC, 0.f), dw(OC * IC, 0.f);
    matmul_forward(yb.data(), xb.data(), wb.data(), N, IC, OC);
    matmul_forward(yf.data(), xb.data(), wb.data(), N, IC, OC);
    matmul_backward(dx.data(), dw.data(), dyb.data(), xb.data(), wb.data(), N, IC, OC);
    expect_rule("matmul out bf16", widen(yb), yn, y64);
    expect_rule("matmul out float", widen(yf), yn, y64);
    expect_rule("matmul dinp", widen(dx), dxn, dx64);
    expect_rule("matmul dw", widen(dw), dwn, dw64);
}

// ---- RMSNorm (a float stream into bf16, and bf16 into bf16 as QK-norm does) ------------------------
TEST_P(Bf16Ops, RmsNorm) {
    const long N = 41, C = 96;
    const double eps = 1e-5;
    const Vec x = randq(N * C, g, 3.0), w = randq(C, g, 0.5), dy = randq(N * C, g);
    for (double wc : w) ASSERT_TRUE(std::isfinite(wc));
    Vec y64(N * C), r64(N), dx64(N * C, 0), dw64(C, 0);
    rmsnorm_forward(y64.data(), r64.data(), x.data(), w.data(), N, C, eps);
    rmsnorm_backward(dx64.data(), dw64.data(), dy.data(), x.data(), w.data(), r64.data(), N, C);
    // naive: rstd stored in bf16, the output in bf16; backward rounding its outputs and g = dy·w
    Vec yn(N * C), dxn(N * C), dwn(C);
    std::vector<float> rn(N);
    for (long r = 0; r < N; r++) {
        float ss = 0;
        for (long c = 0; c < C; c++) ss += float(x[r * C + c]) * float(x[r * C + c]);
        rn[r] = Q(1.0f / std::sqrt(ss / float(C) + float(eps)));
        for (long c = 0; c < C; c++) yn[r * C + c] = Q(float(x[r * C + c]) * rn[r] * float(w[c]));
    }
    std::vector<float> dwacc(C, 0.f);
    for (long r = 0; r < N; r++) {
        float gx = 0;
        for (long c = 0; c < C; c++) gx += Q(float(dy[r * C + c]) * float(w[c])) * float(x[r * C + c]);
        const float s = rn[r], k = s * s * s * gx / float(C);
        for (long c = 0; c < C; c++) dxn[r * C + c] = Q(s * Q(float(dy[r * C + c]) * float(w[c])) - k * float(x[r * C + c]));
        for (long c = 0; c < C; c++) dwacc[c] += float(dy[r * C + c]) * Q(float(x[r * C + c]) * s);
    }
    for (long c = 0; c < C; c++) dwn[c] = Q(dwacc[c]);
    std::vector<float> xf(x.begin(), x.end()), wf(w.begin(), w.end()), dyf(dy.begin(), dy.end());
    std::vector<bf16> yb(N * C), xb = to_bf16(x);
    std::vector<float> rs(N), dx(N * C, 0.f), dw(C, 0.f);
    rmsnorm_forward(yb.data(), rs.data(), xf.data(), wf.data(), N, C, eps);  // float stream → bf16
    expect_rule("rmsnorm float→bf16", widen(yb), yn, y64);
    rmsnorm_forward(yb.data(), rs.data(), xb.data(), wf.data(), N, C, eps);  // bf16 → bf16 (QK-norm)
    expect_rule("rmsnorm bf16→bf16", widen(yb), yn, y64);
    std::vector<float> yf(N * C);
    rmsnorm_forward(yf.data(), rs.data(), xb.data(), wf.data(), N, C, eps);  // bf16 → float (reordered)
    expect_rule("rmsnorm bf16→float", widen(yf), yn, y64);
    rmsnorm_backward(dx.data(), dw.data(), dyf.data(), xb.data(), wf.data(), rs.data(), N, C);
    expect_rule("rmsnorm dinp", widen(dx), dxn, dx64);
    expect_rule("rmsnorm dw", widen(dw), dwn, dw64);
}

// ---- RoPE in place on bf16 -------------------------------------------------------------------------
TEST_P(Bf16Ops, Rope) {
    const long rows = 29, H = 3, d = 16, P = 64;
    Vec x = randq(rows * H * d, g);
    std::vector<int32_t> pos(rows);
    for (long r = 0; r < rows; r++) pos[r] = int32_t((r * 7) % P);
    Vec c64(P * d / 2), s64(P * d / 2);
    rope_table(c64.data(), s64.data(), P, d, 10000.0);
    std::vector<float> cf(c64.begin(), c64.end()), sf(s64.begin(), s64.end());
    Vec y64 = x;
    rope_forward(y64.data(), pos.data(), c64.data(), s64.data(), rows, H, d);
    Vec yn(x.size());  // naive: the cos/sin tables stored in bf16 too
    for (long r = 0; r < rows; r++)
        for (long h = 0; h < H; h++)
            for (long i = 0; i < d / 2; i++) {
                const long o = (r * H + h) * d;
                const float c = Q(cf[pos[r] * d / 2 + i]), s = Q(sf[pos[r] * d / 2 + i]);
                const float a = float(x[o + i]), b = float(x[o + i + d / 2]);
                yn[o + i] = Q(a * c - b * s);
                yn[o + i + d / 2] = Q(a * s + b * c);
            }
    auto xb = to_bf16(x);
    rope_forward(xb.data(), pos.data(), cf.data(), sf.data(), rows, H, d);
    expect_rule("rope bf16", widen(xb), yn, y64);
}

// ---- SwiGLU --------------------------------------------------------------------------------------
TEST_P(Bf16Ops, SwiGLU) {
    const long N = 23, F = 80;
    const Vec gu = randq(N * 2 * F, g, 2.0), dy = randq(N * F, g);
    Vec y64(N * F), dgu64(N * 2 * F, 0);
    swiglu_forward(y64.data(), gu.data(), N, F);
    swiglu_backward(dgu64.data(), dy.data(), gu.data(), N, F);
    Vec yn(N * F), dgun(N * 2 * F);
    for (long r = 0; r < N; r++)
        for (long i = 0; i < F; i++) {
            const float z = float(gu[r * 2 * F + i]), u = float(gu[r * 2 * F + F + i]), gy = float(dy[r * F + i]);
            const float sg = Q(1.0f / (1.0f + std::exp(-z)));  // the sigmoid, stored
            const float silu = Q(z * sg);
            yn[r * F + i] = Q(silu * u);
            dgun[r * 2 * F + F + i] = Q(gy * silu);
            dgun[r * 2 * F + i] = Q(Q(gy * u) * Q(sg * (1.0f + z * (1.0f - sg))));
        }
    auto gub = to_bf16(gu);
    std::vector<float> dyf(dy.begin(), dy.end()), dgf(N * 2 * F, 0.f);
    std::vector<bf16> yb(N * F), dgb(N * 2 * F);
    swiglu_forward(yb.data(), gub.data(), N, F);
    swiglu_backward(dgb.data(), dyf.data(), gub.data(), N, F);
    swiglu_backward(dgf.data(), dyf.data(), gub.data(), N, F);
    expect_rule("swiglu out", widen(yb), yn, y64);
    expect_rule("swiglu dgu bf16", widen(dgb), dgun, dgu64);
    expect_rule("swiglu dgu float", widen(dgf), dgun, dgu64);
}

// ---- cross-entropy on bf16 logits ------------------------------------------------------------------
TEST_P(Bf16Ops, CrossEntropy) {
    const long N = 19, V = 301;
    const Vec z = randq(N * V, g, 3.0);
    std::vector<int32_t> tgt(N);
    for (long r = 0; r < N; r++) tgt[r] = r == 4 ? -1 : int32_t((r * 37) % V);
    Vec l64(N), lse64(N), dz64(N * V, 0);
    crossentropy_forward(l64.data(), lse64.data(), z.data(), tgt.data(), N, V);
    crossentropy_backward(dz64.data(), z.data(), lse64.data(), tgt.data(), N, V, 1.0 / 18);
    Vec ln(N), dzn(N * V, 0);  // naive: log-softmax stored in bf16 (as a bf16 framework keeps it)
    for (long r = 0; r < N; r++) {
        float m = -1e30f, s = 0;
        for (long i = 0; i < V; i++) m = std::max(m, float(z[r * V + i]));
        for (long i = 0; i < V; i++) s += std::exp(float(z[r * V + i]) - m);
        const float lse = m + std::log(s);
        ln[r] = tgt[r] < 0 ? 0.0 : Q(-Q(float(z[r * V + tgt[r]]) - lse));
        if (tgt[r] < 0) continue;
        for (long i = 0; i < V; i++) {
            const float p = Q(std::exp(Q(float(z[r * V + i]) - lse)));
            dzn[r * V + i] = Q((p - (i == tgt[r] ? 1.0f : 0.0f)) / 18.0f);
        }
    }
    auto zb = to_bf16(z);
    std::vector<float> l(N), lse(N);
    std::vector<bf16> dzb(N * V);
    crossentropy_forward(l.data(), lse.data(), zb.data(), tgt.data(), N, V);
    crossentropy_backward(dzb.data(), zb.data(), lse.data(), tgt.data(), N, V, 1.0f / 18);
    expect_rule("cross-entropy losses", widen(l), ln, l64);
    expect_rule("cross-entropy dlogits bf16", widen(dzb), dzn, dz64);
}

// ---- attention and MoDA ----------------------------------------------------------------------------
// Naive attention in bf16: the scores, the probabilities and the output are stored in bf16 (a
// materialised T×T matrix, as eager bf16 attention keeps them); the softmax itself in float. The depth
// slots of MoDA join each row's softmax.
struct AttnIO {
    Vec out, dq, dk, dv, dkd, dvd;
};
// MoDA's modes (ops.h, ModaParams): the sequence mask, the depth visibility with its chunk, the window.
struct Mode {
    SeqMask mask = SeqMask::causal;
    DepthVisibility vis = DepthVisibility::own;
    long chunk = 0, window = 0;
};

AttnIO naive_attention(const Vec& q, const Vec& k, const Vec& v, const Vec& kd, const Vec& vd, const Vec& dout,
                       const AttnDims& a, long L, long L_max, const Mode& md = {}) {
    const long G = a.H / a.Hk, d = a.d;
    const float scale = 1.0f / std::sqrt(float(d));
    AttnIO r{Vec(q.size(), 0), Vec(q.size(), 0), Vec(k.size(), 0), Vec(v.size(), 0), Vec(kd.size(), 0),
             Vec(vd.size(), 0)};
    auto Qi = [&](long b, long t, long h) { return ((b * a.Tq + t) * a.H + h) * d; };
    auto Ki = [&](long b, long s, long kh) { return b * a.kv_bstride + (s * a.Hk + kh) * d; };
    auto Di = [&](long b, long t, long i, long kh) { return (((b * a.Tq + t) * L_max + i) * a.Hk + kh) * d; };
    std::vector<float> dkacc(k.size(), 0.f), dvacc(v.size(), 0.f), dkdacc(kd.size(), 0.f), dvdacc(vd.size(), 0.f);
    const long C = md.chunk > 0 ? md.chunk : std::max(1L, 64 / G), lo = md.window ? std::max(0L, L - md.window) : 0;
    struct Key {  // one key the row sees: its K and V rows and where their gradients go
        const double *k, *v;
        float *gk, *gv;
    };
    for (long b = 0; b < a.B; b++)
        for (long h = 0; h < a.H; h++) {
            const long kh = h / G;
            for (long t = 0; t < a.Tq; t++) {
                const long p = a.q_pos0 + t;
                std::vector<Key> keys;
                const long nk = md.mask == SeqMask::causal ? p + 1 : md.mask == SeqMask::noncausal ? a.Tk : 0;
                for (long j = 0; j < nk; j++)
                    keys.push_back({&k[Ki(b, j, kh)], &v[Ki(b, j, kh)], &dkacc[Ki(b, j, kh)], &dvacc[Ki(b, j, kh)]});
                for (long u = md.vis == DepthVisibility::chunk ? t / C * C : t; u <= t; u++)
                    for (long i = lo; i < L; i++)
                        keys.push_back({&kd[Di(b, u, i, kh)], &vd[Di(b, u, i, kh)], &dkdacc[Di(b, u, i, kh)],
                                        &dvdacc[Di(b, u, i, kh)]});
                const long n = long(keys.size());
                if (n == 0) continue;  // sees nothing: out and gradients 0
                std::vector<float> S(n), P(n), dP(n), dS(n);
                for (long j = 0; j < n; j++) {
                    float s = 0;
                    for (long c = 0; c < d; c++) s += float(q[Qi(b, t, h) + c]) * float(keys[j].k[c]);
                    S[j] = Q(s * scale);
                }
                float m = -1e30f, sum = 0;
                for (long j = 0; j < n; j++) m = std::max(m, S[j]);
                for (long j = 0; j < n; j++) sum += std::exp(S[j] - m);
                for (long j = 0; j < n; j++) P[j] = Q(std::exp(S[j] - m) / sum);
                for (long c = 0; c < d; c++) {
                    float o = 0;
                    for (long j = 0; j < n; j++) o += P[j] * float(keys[j].v[c]);
                    r.out[Qi(b, t, h) + c] = Q(o);
                }
                // backward: dP = dO·Vᵀ, dS = P ⊙ (dP − Σ P⊙dP), each stored in bf16
                float pd = 0;
                for (long j = 0; j < n; j++) {
                    float s = 0;
                    for (long c = 0; c < d; c++) s += float(dout[Qi(b, t, h) + c]) * float(keys[j].v[c]);
                    dP[j] = Q(s);
                    pd += P[j] * dP[j];
                }
                for (long j = 0; j < n; j++) dS[j] = Q(P[j] * (dP[j] - pd));
                for (long c = 0; c < d; c++) {
                    float gq = 0;
                    for (long j = 0; j < n; j++) gq += dS[j] * float(keys[j].k[c]);
                    r.dq[Qi(b, t, h) + c] = Q(gq * scale);
                }
                for (long j = 0; j < n; j++)
                    for (long c = 0; c < d; c++) {
                        keys[j].gk[c] += dS[j] * float(q[Qi(b, t, h) + c]) * scale;
                        keys[j].gv[c] += P[j] * float(dout[Qi(b, t, h) + c]);
                    }
            }
        }
    for (size_t i = 0; i < k.size(); i++) r.dk[i] = Q(dkacc[i]), r.dv[i] = Q(dvacc[i]);
    for (size_t i = 0; i < kd.size(); i++) r.dkd[i] = Q(dkdacc[i]), r.dvd[i] = Q(dvdacc[i]);
    return r;
}

void check_attention(long B, long T, long H, long Hk, long d, long L, long L_max, std::mt19937_64& g,
                     const Mode& md = {}) {
    const std::string name = "attention B=" + std::to_string(B) + " T=" + std::to_string(T) + " G=" +
                             std::to_string(H / Hk) + " L=" + std::to_string(L) + " " + to_string(md.mask) + " " +
                             to_string(md.vis) + " W=" + std::to_string(md.window);
    AttnDims a{B, T, T, H, Hk, d, 0, T * Hk * d};
    const Vec q = randq(B * T * H * d, g), k = randq(B * T * Hk * d, g), v = randq(B * T * Hk * d, g);
    const Vec kd = randq(std::max(1L, B * T * L_max * Hk * d), g), vd = randq(kd.size(), g);
    const Vec dout = randq(q.size(), g);
    const bool moda = L_max > 0 || md.mask != SeqMask::causal;
    auto args = [&](auto* o, auto* lse, const auto* q_, const auto* k_, const auto* v_, const auto* kd_, const auto* vd_) {
        auto p = strata::testing::moda_args(o, lse, q_, k_, v_, kd_, vd_, L, std::max(1L, L_max), a);
        p.mask = md.mask, p.visibility = md.vis, p.chunk = md.chunk, p.window = md.window;
        return p;
    };
    // truth
    Vec o64(q.size()), lse64(B * H * T), dq64(q.size(), 0), dk64(k.size(), 0), dv64(v.size(), 0), dkd64(kd.size(), 0),
        dvd64(vd.size(), 0);
    if (moda) {
        const auto p = args(o64.data(), lse64.data(), q.data(), k.data(), v.data(), kd.data(), vd.data());
        moda_forward(p);
        moda_backward(p, ModaGrads<double>{dq64.data(), dk64.data(), dv64.data(), dkd64.data(), dvd64.data(), dout.data()});
    } else {
        attention_forward(o64.data(), lse64.data(), q.data(), k.data(), v.data(), a);
        attention_backward(dq64.data(), dk64.data(), dv64.data(), dout.data(), o64.data(), lse64.data(), q.data(),
                           k.data(), v.data(), a);
    }
    const AttnIO n = naive_attention(q, k, v, kd, vd, dout, a, moda ? L : 0, std::max(1L, L_max), md);
    // strata bf16
    auto qb = to_bf16(q), kb = to_bf16(k), vb = to_bf16(v), kdb = to_bf16(kd), vdb = to_bf16(vd);
    std::vector<bf16> ob(q.size());
    std::vector<float> lse(B * H * T), doutf(dout.begin(), dout.end()), dq(q.size(), 0.f), dk(k.size(), 0.f),
        dv(v.size(), 0.f), dkd(kd.size(), 0.f), dvd(vd.size(), 0.f);
    if (moda) {
        const auto p = args(ob.data(), lse.data(), qb.data(), kb.data(), vb.data(), kdb.data(), vdb.data());
        moda_forward(p);
        moda_backward(p, ModaGrads<bf16>{dq.data(), dk.data(), dv.data(), dkd.data(), dvd.data(), doutf.data()});
    } else {
        attention_forward(ob.data(), lse.data(), qb.data(), kb.data(), vb.data(), a);
        attention_backward(dq.data(), dk.data(), dv.data(), doutf.data(), ob.data(), lse.data(), qb.data(), kb.data(),
                           vb.data(), a);
    }
    expect_rule(name + " out", widen(ob), n.out, o64);
    expect_rule(name + " dq", widen(dq), n.dq, dq64);
    if (md.mask != SeqMask::none) {  // no sequence keys: no gradient
        expect_rule(name + " dk", widen(dk), n.dk, dk64);
        expect_rule(name + " dv", widen(dv), n.dv, dv64);
    }
    if (moda && L > 0) {
        // only the slots in use carry gradient
        Vec s_dkd, s_dvd, n_dkd, n_dvd, t_dkd, t_dvd;
        for (long bt = 0; bt < B * T; bt++)
            for (long i = md.window ? std::max(0L, L - md.window) : 0; i < L; i++)
                for (long c = 0; c < Hk * d; c++) {
                    const long o = (bt * L_max + i) * Hk * d + c;
                    s_dkd.push_back(dkd[o]), s_dvd.push_back(dvd[o]);
                    n_dkd.push_back(n.dkd[o]), n_dvd.push_back(n.dvd[o]);
                    t_dkd.push_back(dkd64[o]), t_dvd.push_back(dvd64[o]);
                }
        expect_rule(name + " dkd", s_dkd, n_dkd, t_dkd);
        expect_rule(name + " dvd", s_dvd, n_dvd, t_dvd);
    }
}

TEST_P(Bf16Ops, Attention) {
    check_attention(2, 37, 4, 4, 16, 0, 0, g);   // G = 1
    check_attention(1, 71, 4, 2, 16, 0, 0, g);   // G = 2, two key tiles' worth of rows
    check_attention(2, 13, 8, 2, 32, 0, 0, g);   // G = 4
    check_attention(1, 203, 6, 2, 64, 0, 0, g);  // the bench model's heads: two key tiles, an odd tail
    check_attention(2, 21, 2, 1, 9, 0, 0, g);    // an odd head size below one vector
}

TEST_P(Bf16Ops, MoDA) {
    check_attention(2, 19, 4, 2, 16, 3, 4, g);
    check_attention(1, 9, 8, 1, 16, 1, 2, g);
    check_attention(1, 150, 4, 2, 64, 5, 6, g);
    check_attention(1, 23, 16, 2, 64, 13, 16, g);  // G = 8, whole register blocks in the depth GEMMs
}

// Every sequence mask with each depth visibility, a window, and tiles enough for the GEMM bounds.
TEST_P(Bf16Ops, MoDAModes) {
    for (SeqMask mask : {SeqMask::causal, SeqMask::noncausal, SeqMask::none})
        for (DepthVisibility vis : {DepthVisibility::own, DepthVisibility::chunk}) {
            check_attention(1, 150, 4, 2, 64, 5, 6, g, {mask, vis, 0, 0});  // two key tiles, chunks of 32
            check_attention(2, 19, 8, 2, 16, 4, 4, g, {mask, vis, 3, 2});   // G = 4, chunks of 3, 2 slots
        }
}

INSTANTIATE_TEST_SUITE_P(Paths, Bf16Ops, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "native" : "emulated"; });

// Both paths round the same float sums: their results agree to bf16 rounding of the output, and
// `bf16_native()` honours the switch.
TEST(Bf16Gemm, SwitchSelectsThePath) {
    set_bf16_native(false);
    EXPECT_FALSE(bf16_native());
    EXPECT_NE(std::string(bf16_gemm_backend()).find("emulated"), std::string::npos);
    set_bf16_native(true);
    EXPECT_EQ(bf16_native(), cpu_has_native_bf16());
    if (cpu_prefers_native_bf16()) EXPECT_TRUE(cpu_has_native_bf16());  // preferring needs having
}

TEST(Bf16, RoundsToNearestEvenAndKeepsSpecials) {
    EXPECT_EQ(float(bf16(1.0f)), 1.0f);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1)
    EXPECT_EQ(float(bf16(1.0f + 1.0f / 256)), 1.0f);
    EXPECT_EQ(float(bf16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
    EXPECT_TRUE(std::isnan(float(bf16(std::nanf("")))));
    EXPECT_TRUE(std::isinf(float(bf16(INFINITY))));
    EXPECT_EQ(float(bf16(-0.0f)), -0.0f);
    EXPECT_TRUE(std::signbit(float(bf16(-0.0f))));
}

}  // namespace

namespace {
// The fused residual add + RMSNorm of the mixed-precision model (float stream, bf16 sublayer output,
// bf16 normed output) equals the two ops in sequence, bit for bit.
TEST(Bf16Fused, ResidualRmsNormIsTheTwoOps) {
    std::mt19937_64 g(5);
    const long N = 29, C = 96;
    const Vec av = randq(N * C, g), bv = randq(N * C, g), wv = randq(C, g, 0.3);
    std::vector<float> a(av.begin(), av.end()), w(wv.begin(), wv.end());
    const std::vector<bf16> b = to_bf16(bv);
    std::vector<float> out1(N * C), r1(N), out2(N * C), r2(N);
    std::vector<bf16> y1(N * C), y2(N * C);
    residual_forward(out1.data(), a.data(), b.data(), N * C);
    rmsnorm_forward(y1.data(), r1.data(), out1.data(), w.data(), N, C, 1e-5);
    residual_rmsnorm_forward(out2.data(), y2.data(), r2.data(), a.data(), b.data(), w.data(), N, C, 1e-5);
    EXPECT_EQ(out1, out2);
    EXPECT_EQ(r1, r2);
    for (long i = 0; i < N * C; i++) ASSERT_EQ(y1[i].bits, y2[i].bits) << i;
}
}  // namespace
