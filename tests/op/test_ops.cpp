// The op table, in the spirit of ggml's test-backend-ops: every op × several shapes, checked in three
// modes:
//   fwd    — the float32 and float64 forwards against a naive float64 reference written here
//            (relative L2 ≤ 1e-6 and ≤ 1e-12);
//   grad   — the float64 backward against float64 central finite differences of the float64 forward,
//            along random directions (relative error ≤ 1e-6);
//   bwd32  — the float32 backward, on the inputs and dout rounded to float, against the float64
//            backward: every input gradient within relative L2 bwd32_tol (1e-5; 1e-4 for attention
//            and MoDA); a gradient that is zero in exact arithmetic, in norm against ‖dout‖.
// The glue ops with a backward (residual add, qkv split, depth slot) are rows too; those without one
// (zero fill, KV append, scaling, the reductions, AdamW) get TESTs below against naive loops.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <omp.h>

#include "ops/cpu/level.h"
#include "ops/ops.h"
#include "../test_util.h"

using namespace strata;
using Vec = std::vector<double>;

namespace {

template <typename T>
std::vector<T> cast(const Vec& v) {
    return std::vector<T>(v.begin(), v.end());
}
template <typename T>
Vec dbl(const std::vector<T>& v) {
    return Vec(v.begin(), v.end());
}

double rel_l2(const Vec& a, const Vec& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

double dot(const Vec& a, const Vec& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

Vec randn(size_t n, std::mt19937_64& g, double scale = 1.0) {
    std::normal_distribution<double> d(0.0, scale);
    Vec v(n);
    for (auto& x : v) x = d(g);
    return v;
}

// One row of the table. Inputs are float64; `fwd32`/`fwd64` run the op at that precision, `bwd32`/
// `bwd64` return the gradient of <dout, out> w.r.t. every differentiable input, `ref` is the naive truth.
struct OpCase {
    std::string name;
    std::vector<Vec> inputs;
    std::vector<bool> differentiable;
    std::function<Vec(const std::vector<Vec>&)> fwd32, fwd64, ref;
    std::function<std::vector<Vec>(const std::vector<Vec>&, const Vec& dout)> bwd32, bwd64;
    double bwd32_tol = 1e-5;
};

// A builder writes its forward f(T(0), in) and backward b(T(0), in, dout) once, generic over the
// scalar type T (inputs and dout rounded to T, results widened back); this instantiates both.
template <typename F, typename B>
void set_ops(OpCase& c, F f, B b) {
    c.fwd32 = [=](const std::vector<Vec>& in) { return f(0.f, in); };
    c.fwd64 = [=](const std::vector<Vec>& in) { return f(0.0, in); };
    c.bwd32 = [=](const std::vector<Vec>& in, const Vec& dy) { return b(0.f, in, dy); };
    c.bwd64 = [=](const std::vector<Vec>& in, const Vec& dy) { return b(0.0, in, dy); };
}

void run_case(const OpCase& c) {
    SCOPED_TRACE(c.name);
    Vec want = c.ref(c.inputs);
    Vec got32 = c.fwd32(c.inputs);
    ASSERT_EQ(got32.size(), want.size());
    EXPECT_LE(rel_l2(got32, want), 1e-6) << "fwd fp32 vs fp64 reference: " << c.name;
    Vec got64 = c.fwd64(c.inputs);
    EXPECT_LE(rel_l2(got64, want), 1e-12) << "fwd fp64 vs fp64 reference: " << c.name;

    std::mt19937_64 g(1234);
    Vec dout = randn(want.size(), g);
    auto grads = c.bwd64(c.inputs, dout);
    auto grads32 = c.bwd32(c.inputs, dout);
    ASSERT_EQ(grads32.size(), grads.size());
    const double dnorm = std::sqrt(dot(dout, dout));
    for (size_t i = 0; i < grads.size(); i++) {
        ASSERT_EQ(grads32[i].size(), grads[i].size());
        // A gradient that is zero in exact arithmetic (dq and dk when every query sees one key) is
        // fp64 roundoff, with no relative error to speak of: then hold the fp32 one against ‖dout‖.
        const bool zero = std::sqrt(dot(grads[i], grads[i])) <= 1e-12 * dnorm;
        const double e = zero ? std::sqrt(dot(grads32[i], grads32[i])) / dnorm : rel_l2(grads32[i], grads[i]);
        EXPECT_LE(e, c.bwd32_tol) << "bwd fp32 vs fp64: " << c.name << ", gradient " << i << (zero ? " (zero)" : "");
    }
    auto loss = [&](const std::vector<Vec>& in) {
        Vec y = c.fwd64(in);
        double s = 0;
        for (size_t i = 0; i < y.size(); i++) s += y[i] * dout[i];
        return s;
    };
    size_t gi = 0;
    for (size_t i = 0; i < c.inputs.size(); i++) {
        if (!c.differentiable[i]) continue;
        const Vec& gr = grads[gi++];
        for (int dir = 0; dir < 3; dir++) {
            Vec u = randn(c.inputs[i].size(), g);
            const double eps = 1e-5;
            auto plus = c.inputs, minus = c.inputs;
            for (size_t j = 0; j < u.size(); j++) plus[i][j] += eps * u[j], minus[i][j] -= eps * u[j];
            double fd = (loss(plus) - loss(minus)) / (2 * eps);
            double an = 0;
            for (size_t j = 0; j < u.size(); j++) an += gr[j] * u[j];
            EXPECT_LE(std::abs(fd - an) / std::max(std::abs(fd), 1e-8), 1e-6)
                << c.name << ": input " << i << " direction " << dir << " fd=" << fd << " analytic=" << an;
        }
    }
}

// ---- case builders ------------------------------------------------------------------------------
OpCase matmul_case(long N, long IC, long OC, std::mt19937_64& g) {
    OpCase c;
    c.name = "matmul N=" + std::to_string(N) + " IC=" + std::to_string(IC) + " OC=" + std::to_string(OC);
    c.inputs = {randn(N * IC, g), randn(OC * IC, g, 0.2)};
    c.differentiable = {true, true};
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto x = cast<T>(in[0]), w = cast<T>(in[1]);
        std::vector<T> y(N * OC);
        matmul_forward(y.data(), x.data(), w.data(), N, IC, OC);
        return Vec(y.begin(), y.end());
    };
    c.ref = [=](auto& in) {
        Vec y(N * OC, 0.0);
        for (long n = 0; n < N; n++)
            for (long o = 0; o < OC; o++)
                for (long i = 0; i < IC; i++) y[n * OC + o] += in[0][n * IC + i] * in[1][o * IC + i];
        return y;
    };
    auto b = [=](auto zero, const std::vector<Vec>& in, const Vec& dout) {
        using T = decltype(zero);
        auto x = cast<T>(in[0]), w = cast<T>(in[1]), dy = cast<T>(dout);
        std::vector<T> dx(N * IC, T(0)), dw(OC * IC, T(0));
        matmul_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), N, IC, OC);
        return std::vector<Vec>{dbl(dx), dbl(dw)};
    };
    set_ops(c, f, b);
    return c;
}

// scale ≠ 1: LayerNorm-Scaling's constant factor on the output (y = x·rstd·w·scale).
OpCase rmsnorm_case(long N, long C, std::mt19937_64& g, double scale = 1.0) {
    OpCase c;
    c.name = "rmsnorm N=" + std::to_string(N) + " C=" + std::to_string(C) +
             (scale != 1.0 ? " scale=" + std::to_string(scale) : "");
    Vec w = randn(C, g, 0.3);
    for (auto& x : w) x += 1.0;
    c.inputs = {randn(N * C, g), w};
    c.differentiable = {true, true};
    const double eps = 1e-5;
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto x = cast<T>(in[0]), wt = cast<T>(in[1]);
        std::vector<T> y(N * C), r(N);
        rmsnorm_forward(y.data(), r.data(), x.data(), wt.data(), N, C, eps, scale);
        return Vec(y.begin(), y.end());
    };
    c.ref = [=](auto& in) {
        Vec y(N * C);
        for (long n = 0; n < N; n++) {
            double ms = 0;
            for (long i = 0; i < C; i++) ms += in[0][n * C + i] * in[0][n * C + i] / C;
            for (long i = 0; i < C; i++) y[n * C + i] = in[0][n * C + i] / std::sqrt(ms + eps) * in[1][i] * scale;
        }
        return y;
    };
    auto b = [=](auto zero, const std::vector<Vec>& in, const Vec& dout) {
        using T = decltype(zero);
        auto x = cast<T>(in[0]), wt = cast<T>(in[1]), dy = cast<T>(dout);
        std::vector<T> y(N * C), r(N), dx(N * C, T(0)), dw(C, T(0));
        rmsnorm_forward(y.data(), r.data(), x.data(), wt.data(), N, C, eps, scale);
        rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), wt.data(), r.data(), N, C, scale);
        return std::vector<Vec>{dbl(dx), dbl(dw)};
    };
    set_ops(c, f, b);
    return c;
}

OpCase rope_case(long B, long T, long H, long d, std::mt19937_64& g) {
    OpCase c;
    c.name = "rope B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) + " d=" +
             std::to_string(d);
    c.inputs = {randn(B * T * H * d, g)};
    c.differentiable = {true};
    const double theta = 10000.0;
    std::vector<int32_t> pos(B * T);
    for (long i = 0; i < B * T; i++) pos[i] = int32_t(i % T);
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T_ = decltype(zero);
        std::vector<T_> cs(T * d / 2), sn(T * d / 2);
        rope_table(cs.data(), sn.data(), T, d, theta);
        auto x = cast<T_>(in[0]);
        rope_forward(x.data(), pos.data(), cs.data(), sn.data(), B * T, H, d);
        return Vec(x.begin(), x.end());
    };
    c.ref = [=](auto& in) {
        Vec y = in[0];
        for (long r = 0; r < B * T; r++)
            for (long h = 0; h < H; h++)
                for (long i = 0; i < d / 2; i++) {
                    double a = pos[r] * std::pow(theta, -2.0 * i / d);
                    double x1 = in[0][(r * H + h) * d + i], x2 = in[0][(r * H + h) * d + i + d / 2];
                    y[(r * H + h) * d + i] = x1 * std::cos(a) - x2 * std::sin(a);
                    y[(r * H + h) * d + i + d / 2] = x1 * std::sin(a) + x2 * std::cos(a);
                }
        return y;
    };
    auto b = [=](auto zero, const std::vector<Vec>&, const Vec& dout) {
        using T_ = decltype(zero);
        std::vector<T_> cs(T * d / 2), sn(T * d / 2);
        rope_table(cs.data(), sn.data(), T, d, theta);
        auto dx = cast<T_>(dout);
        rope_backward(dx.data(), pos.data(), cs.data(), sn.data(), B * T, H, d);
        return std::vector<Vec>{dbl(dx)};
    };
    set_ops(c, f, b);
    return c;
}

OpCase swiglu_case(long N, long F, std::mt19937_64& g) {
    OpCase c;
    c.name = "swiglu N=" + std::to_string(N) + " F=" + std::to_string(F);
    c.inputs = {randn(N * 2 * F, g, 2.0)};
    c.differentiable = {true};
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto gu = cast<T>(in[0]);
        std::vector<T> y(N * F);
        swiglu_forward(y.data(), gu.data(), N, F);
        return Vec(y.begin(), y.end());
    };
    c.ref = [=](auto& in) {
        Vec y(N * F);
        for (long n = 0; n < N; n++)
            for (long i = 0; i < F; i++) {
                double gt = in[0][n * 2 * F + i], u = in[0][n * 2 * F + F + i];
                y[n * F + i] = gt / (1 + std::exp(-gt)) * u;
            }
        return y;
    };
    auto b = [=](auto zero, const std::vector<Vec>& in, const Vec& dout) {
        using T = decltype(zero);
        auto gu = cast<T>(in[0]), dy = cast<T>(dout);
        std::vector<T> dgu(N * 2 * F, T(0));
        swiglu_backward(dgu.data(), dy.data(), gu.data(), N, F);
        return std::vector<Vec>{dbl(dgu)};
    };
    set_ops(c, f, b);
    return c;
}

OpCase attention_case(long B, long T, long H, long Hk, long d, std::mt19937_64& g) {
    OpCase c;
    c.name = "attention B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
             " Hk=" + std::to_string(Hk) + " d=" + std::to_string(d);
    c.inputs = {randn(B * T * H * d, g), randn(B * T * Hk * d, g), randn(B * T * Hk * d, g)};
    c.differentiable = {true, true, true};
    AttnDims a{B, T, T, H, Hk, d, 0, T * Hk * d};
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T_ = decltype(zero);
        auto q = cast<T_>(in[0]), k = cast<T_>(in[1]), v = cast<T_>(in[2]);
        std::vector<T_> o(B * T * H * d), lse(B * H * T);
        attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), a);
        return Vec(o.begin(), o.end());
    };
    c.ref = [=](auto& in) {  // materialise the masked T×T scores: this is the naive truth
        Vec o(B * T * H * d, 0.0);
        for (long b = 0; b < B; b++)
            for (long h = 0; h < H; h++) {
                long kh = h / (H / Hk);
                for (long t = 0; t < T; t++) {
                    Vec s(t + 1);
                    double mx = -1e300;
                    for (long u = 0; u <= t; u++) {
                        double acc = 0;
                        for (long i = 0; i < d; i++)
                            acc += in[0][((b * T + t) * H + h) * d + i] * in[1][((b * T + u) * Hk + kh) * d + i];
                        s[u] = acc / std::sqrt(double(d));
                        mx = std::max(mx, s[u]);
                    }
                    double z = 0;
                    for (auto& x : s) z += (x = std::exp(x - mx));
                    for (long u = 0; u <= t; u++)
                        for (long i = 0; i < d; i++)
                            o[((b * T + t) * H + h) * d + i] += s[u] / z * in[2][((b * T + u) * Hk + kh) * d + i];
                }
            }
        return o;
    };
    auto b = [=](auto zero, const std::vector<Vec>& in, const Vec& dout) {
        using T_ = decltype(zero);
        auto q = cast<T_>(in[0]), k = cast<T_>(in[1]), v = cast<T_>(in[2]), dy = cast<T_>(dout);
        std::vector<T_> o(B * T * H * d), lse(B * H * T), dq(q.size(), T_(0)), dk(k.size(), T_(0)),
            dv(v.size(), T_(0));
        attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), a);
        attention_backward(dq.data(), dk.data(), dv.data(), dy.data(), o.data(), lse.data(), q.data(), k.data(),
                           v.data(), a);
        return std::vector<Vec>{dbl(dq), dbl(dk), dbl(dv)};
    };
    set_ops(c, f, b);
    c.bwd32_tol = 1e-4;
    return c;
}

// MoDA: the attention above plus depth keys/values (slots of a (B, T, L_max, Hk, d) buffer) inside the
// same softmax, under each sequence mask (causal, noncausal, none = depth only) and depth visibility
// (the own token, or the tokens of its chunk up to itself), reading the `window` most recent slots.
struct ModaMode {
    SeqMask mask = SeqMask::causal;
    DepthVisibility vis = DepthVisibility::own;
    long chunk = 0, window = 0;
    double scale = 0;
};
OpCase moda_case(long B, long T, long H, long Hk, long d, long L, long L_max, std::mt19937_64& g, ModaMode m = {}) {
    OpCase c;
    c.name = "moda B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) + " Hk=" +
             std::to_string(Hk) + " d=" + std::to_string(d) + " L=" + std::to_string(L) + "/" + std::to_string(L_max) +
             " " + to_string(m.mask) + " " + to_string(m.vis) + (m.chunk ? " C=" + std::to_string(m.chunk) : "") +
             (m.window ? " W=" + std::to_string(m.window) : "") + (m.scale ? " scale" : "");
    const long nd = B * T * L_max * Hk * d;
    c.inputs = {randn(B * T * H * d, g), randn(B * T * Hk * d, g), randn(B * T * Hk * d, g), randn(nd, g),
                randn(nd, g)};
    c.differentiable = {true, true, true, true, true};
    AttnDims a{B, T, T, H, Hk, d, 0, T * Hk * d};
    auto params = [=](auto* o, auto* lse, const auto* q, const auto* k, const auto* v, const auto* kd, const auto* vd) {
        auto p = strata::testing::moda_args(o, lse, q, k, v, kd, vd, L, L_max, a);
        p.mask = m.mask, p.visibility = m.vis, p.chunk = m.chunk, p.window = m.window, p.scale = m.scale;
        return p;
    };
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T_ = decltype(zero);
        auto q = cast<T_>(in[0]), k = cast<T_>(in[1]), v = cast<T_>(in[2]), kd = cast<T_>(in[3]), vd = cast<T_>(in[4]);
        std::vector<T_> o(B * T * H * d), lse(B * H * T);
        moda_forward(params(o.data(), lse.data(), q.data(), k.data(), v.data(), kd.data(), vd.data()));
        return Vec(o.begin(), o.end());
    };
    // one explicit softmax over the visible sequence keys and depth slots; a row that sees nothing is 0
    const long G = H / Hk, C = m.chunk > 0 ? m.chunk : std::max(1L, 64 / G), lo = m.window ? std::max(0L, L - m.window) : 0;
    const double scale = m.scale > 0 ? m.scale : 1 / std::sqrt(double(d));
    c.ref = [=](auto& in) {
        Vec o(B * T * H * d, 0.0);
        for (long b = 0; b < B; b++)
            for (long h = 0; h < H; h++) {
                const long kh = h / G;
                for (long t = 0; t < T; t++) {
                    const double* q = &in[0][((b * T + t) * H + h) * d];
                    std::vector<const double*> keys, vals;
                    const long seq_end = m.mask == SeqMask::causal ? t + 1 : m.mask == SeqMask::noncausal ? T : 0;
                    for (long u = 0; u < seq_end; u++) {
                        keys.push_back(&in[1][((b * T + u) * Hk + kh) * d]);
                        vals.push_back(&in[2][((b * T + u) * Hk + kh) * d]);
                    }
                    for (long u = m.vis == DepthVisibility::chunk ? t / C * C : t; u <= t; u++)
                        for (long i = lo; i < L; i++) {
                            keys.push_back(&in[3][(((b * T + u) * L_max + i) * Hk + kh) * d]);
                            vals.push_back(&in[4][(((b * T + u) * L_max + i) * Hk + kh) * d]);
                        }
                    Vec s(keys.size());
                    double mx = -1e300, z = 0;
                    for (size_t j = 0; j < keys.size(); j++) {
                        double acc = 0;
                        for (long i = 0; i < d; i++) acc += q[i] * keys[j][i];
                        mx = std::max(mx, s[j] = acc * scale);
                    }
                    for (auto& x : s) z += (x = std::exp(x - mx));
                    for (size_t j = 0; j < keys.size(); j++)
                        for (long i = 0; i < d; i++) o[((b * T + t) * H + h) * d + i] += s[j] / z * vals[j][i];
                }
            }
        return o;
    };
    auto b = [=](auto zero, const std::vector<Vec>& in, const Vec& dout) {
        using T_ = decltype(zero);
        auto q = cast<T_>(in[0]), k = cast<T_>(in[1]), v = cast<T_>(in[2]), kd = cast<T_>(in[3]), vd = cast<T_>(in[4]),
             dy = cast<T_>(dout);
        std::vector<T_> o(B * T * H * d), lse(B * H * T), dq(q.size(), T_(0)), dk(k.size(), T_(0)),
            dv(v.size(), T_(0)), dkd(nd, T_(0)), dvd(nd, T_(0));
        const auto p = params(o.data(), lse.data(), q.data(), k.data(), v.data(), kd.data(), vd.data());
        moda_forward(p);
        moda_backward(p, ModaGrads<T_>{dq.data(), dk.data(), dv.data(), dkd.data(), dvd.data(), dy.data()});
        return std::vector<Vec>{dbl(dq), dbl(dk), dbl(dv), dbl(dkd), dbl(dvd)};
    };
    set_ops(c, f, b);
    c.bwd32_tol = 1e-4;
    return c;
}

OpCase crossentropy_case(long N, long V, std::mt19937_64& g) {
    OpCase c;
    c.name = "crossentropy N=" + std::to_string(N) + " V=" + std::to_string(V);
    c.inputs = {randn(N * V, g, 3.0)};
    c.differentiable = {true};
    std::vector<int32_t> tg(N);
    for (long i = 0; i < N; i++) tg[i] = (i % 5 == 4) ? -1 : int32_t(g() % V);  // some ignored rows
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto z = cast<T>(in[0]);
        std::vector<T> loss(N), lse(N);
        crossentropy_forward(loss.data(), lse.data(), z.data(), tg.data(), N, V);
        return Vec(loss.begin(), loss.end());
    };
    c.ref = [=](auto& in) {
        Vec y(N, 0.0);
        for (long n = 0; n < N; n++) {
            if (tg[n] < 0) continue;
            double mx = -1e300, s = 0;
            for (long i = 0; i < V; i++) mx = std::max(mx, in[0][n * V + i]);
            for (long i = 0; i < V; i++) s += std::exp(in[0][n * V + i] - mx);
            y[n] = mx + std::log(s) - in[0][n * V + tg[n]];
        }
        return y;
    };
    // The backward takes one scale for all rows (the mean's 1/count); d<dout, losses> needs a per-row
    // weight, so apply it row by row.
    auto b = [=](auto zero, const std::vector<Vec>& in, const Vec& dout) {
        using T = decltype(zero);
        auto z = cast<T>(in[0]), dy = cast<T>(dout);
        std::vector<T> loss(N), lse(N), dz(N * V, T(0));
        crossentropy_forward(loss.data(), lse.data(), z.data(), tg.data(), N, V);
        for (long n = 0; n < N; n++)
            crossentropy_backward(dz.data() + n * V, z.data() + n * V, lse.data() + n, tg.data() + n, 1, V, dy[n]);
        return std::vector<Vec>{dbl(dz)};
    };
    set_ops(c, f, b);
    return c;
}

// The LM head fused with the mean cross-entropy, in row chunks (a chunk that does not divide N tests
// the last, short one). Output: the mean loss; gradients of x and w through the fused dlogits.
OpCase head_crossentropy_case(long N, long D, long V, long chunk, std::mt19937_64& g) {
    OpCase c;
    c.name = "head_crossentropy N=" + std::to_string(N) + " D=" + std::to_string(D) + " V=" + std::to_string(V) +
             " chunk=" + std::to_string(chunk);
    c.inputs = {randn(N * D, g), randn(V * D, g, 0.5)};
    c.differentiable = {true, true};
    std::vector<int32_t> tg(N);
    for (long i = 0; i < N; i++) tg[i] = (i % 4 == 1) ? -1 : int32_t(g() % V);
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto x = cast<T>(in[0]), w = cast<T>(in[1]);
        std::vector<T> loss(N), lse(N), dz(N * V);
        const long counted = head_crossentropy_forward(loss.data(), lse.data(), dz.data(), static_cast<T*>(nullptr),
                                                       x.data(), w.data(), tg.data(), N, D, V, chunk);
        double s = 0;
        for (T l : loss) s += double(l);
        return Vec{s / double(counted)};
    };
    c.ref = [=](auto& in) {
        double s = 0;
        long counted = 0;
        std::vector<double> z(V);
        for (long n = 0; n < N; n++) {
            if (tg[n] < 0) continue;
            counted++;
            double mx = -1e300, e = 0;
            for (long v = 0; v < V; v++) {
                z[v] = 0;
                for (long k = 0; k < D; k++) z[v] += in[0][n * D + k] * in[1][v * D + k];
                mx = std::max(mx, z[v]);
            }
            for (long v = 0; v < V; v++) e += std::exp(z[v] - mx);
            s += mx + std::log(e) - z[tg[n]];
        }
        return Vec{s / double(counted)};
    };
    auto b = [=](auto zero, const std::vector<Vec>& in, const Vec& dout) {
        using T = decltype(zero);
        auto x = cast<T>(in[0]), w = cast<T>(in[1]);
        std::vector<T> loss(N), lse(N), dz(N * V), dx(N * D, T(0)), dw(V * D, T(0));
        head_crossentropy_forward(loss.data(), lse.data(), dz.data(), static_cast<T*>(nullptr), x.data(), w.data(),
                                  tg.data(), N, D, V, chunk);
        for (T& v : dz) v *= T(dout[0]);
        matmul_backward(dx.data(), dw.data(), dz.data(), x.data(), w.data(), N, D, V);
        return std::vector<Vec>{dbl(dx), dbl(dw)};
    };
    set_ops(c, f, b);
    return c;
}

OpCase embedding_case(long N, long V, long C, std::mt19937_64& g) {
    OpCase c;
    c.name = "embedding N=" + std::to_string(N) + " V=" + std::to_string(V) + " C=" + std::to_string(C);
    c.inputs = {randn(V * C, g)};
    c.differentiable = {true};
    std::vector<int32_t> tok(N);
    for (auto& t : tok) t = int32_t(g() % V);  // repeats are likely: their gradients must add up
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto tab = cast<T>(in[0]);
        std::vector<T> y(N * C);
        embedding_forward(y.data(), tok.data(), tab.data(), N, C);
        return Vec(y.begin(), y.end());
    };
    c.ref = [=](auto& in) {
        Vec y(N * C);
        for (long n = 0; n < N; n++)
            for (long i = 0; i < C; i++) y[n * C + i] = in[0][tok[n] * C + i];
        return y;
    };
    auto b = [=](auto zero, const std::vector<Vec>&, const Vec& dout) {
        using T = decltype(zero);
        auto dy = cast<T>(dout);
        std::vector<T> dt(V * C, T(0));
        embedding_backward(dt.data(), dy.data(), tok.data(), N, C);
        return std::vector<Vec>{dbl(dt)};
    };
    set_ops(c, f, b);
    return c;
}

// AttnRes over n sources of (N, D); inputs are the n sources, then w, then γ (when with_gamma).
// sigmoid: the ablation's unnormalised gates σ(s_i) in place of the softmax.
// per_row: the input-dependent query ablation, one (D) query per row.
OpCase attnres_case(long N, long D, int n, bool with_gamma, std::mt19937_64& g, bool sigmoid = false,
                    bool per_row = false) {
    OpCase c;
    c.name = "attnres N=" + std::to_string(N) + " D=" + std::to_string(D) + " n=" + std::to_string(n) +
             (with_gamma ? " gamma" : "") + (sigmoid ? " sigmoid" : "") + (per_row ? " query-per-row" : "");
    const AttnResGate gate = sigmoid ? AttnResGate::sigmoid : AttnResGate::softmax;
    const long WQ = per_row ? N * D : D;  // the query's size
    for (int i = 0; i < n; i++) c.inputs.push_back(randn(N * D, g, 1.0 + 0.25 * i));  // sources of different scales
    c.inputs.push_back(randn(WQ, g, 0.15));  // logits of order 1: far from uniform, but smooth enough for FD
    if (with_gamma) {
        Vec gm = randn(D, g, 0.3);
        for (auto& x : gm) x += 1.0;
        c.inputs.push_back(gm);
    }
    c.differentiable.assign(c.inputs.size(), true);
    const double eps = 1e-5;
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        std::vector<std::vector<T>> src;
        std::vector<const T*> ptr;
        for (int i = 0; i < n; i++) src.push_back(cast<T>(in[i]));
        for (auto& s : src) ptr.push_back(s.data());
        auto w = cast<T>(in[n]);
        std::vector<T> gm = with_gamma ? cast<T>(in[n + 1]) : std::vector<T>();
        std::vector<T> y(N * D), lg(n * N), rs(n * N), lse(N);
        attnres_forward(y.data(), lg.data(), rs.data(), lse.data(), ptr.data(), n, w.data(),
                        with_gamma ? gm.data() : nullptr, N, D, eps, gate, per_row);
        return Vec(y.begin(), y.end());
    };
    c.ref = [=](auto& in) {
        Vec y(N * D, 0.0);
        for (long r = 0; r < N; r++) {
            std::vector<double> s(n);
            double m = -INFINITY;
            for (int i = 0; i < n; i++) {
                double ms = 0, dot = 0;
                for (long k = 0; k < D; k++) ms += in[i][r * D + k] * in[i][r * D + k] / D;
                for (long k = 0; k < D; k++) {
                    double key = in[i][r * D + k] / std::sqrt(ms + eps) * (with_gamma ? in[n + 1][k] : 1.0);
                    dot += in[n][(per_row ? r * D : 0) + k] * key;
                }
                s[i] = dot;
                m = std::max(m, dot);
            }
            double z = 0;
            for (int i = 0; i < n; i++) z += std::exp(s[i] - m);
            for (int i = 0; i < n; i++) {
                const double a = sigmoid ? 1.0 / (1.0 + std::exp(-s[i])) : std::exp(s[i] - m) / z;
                for (long k = 0; k < D; k++) y[r * D + k] += a * in[i][r * D + k];
            }
        }
        return y;
    };
    auto b = [=](auto zero, const std::vector<Vec>& in, const Vec& dout) {
        using T = decltype(zero);
        std::vector<std::vector<T>> src, dsrc(n, std::vector<T>(N * D, T(0)));
        std::vector<const T*> ptr;
        std::vector<T*> dptr;
        for (int i = 0; i < n; i++) src.push_back(cast<T>(in[i]));
        for (auto& s : src) ptr.push_back(s.data());
        for (auto& s : dsrc) dptr.push_back(s.data());
        auto w = cast<T>(in[n]), dy = cast<T>(dout);
        std::vector<T> gm = with_gamma ? cast<T>(in[n + 1]) : std::vector<T>();
        const T* gp = with_gamma ? gm.data() : nullptr;
        std::vector<T> y(N * D), lg(n * N), rs(n * N), lse(N), dw(WQ, T(0)), dg(D, T(0));
        attnres_forward(y.data(), lg.data(), rs.data(), lse.data(), ptr.data(), n, w.data(), gp, N, D, eps, gate,
                        per_row);
        attnres_backward(dptr.data(), dw.data(), with_gamma ? dg.data() : nullptr, dy.data(), y.data(), lg.data(),
                         rs.data(), lse.data(), ptr.data(), n, w.data(), gp, N, D, gate, per_row);
        std::vector<Vec> grads;
        for (auto& s : dsrc) grads.push_back(dbl(s));
        grads.push_back(dbl(dw));
        if (with_gamma) grads.push_back(dbl(dg));
        return grads;
    };
    set_ops(c, f, b);
    return c;
}

// ---- glue ----------------------------------------------------------------------------------------
// Residual add, out = a + b; `alias` runs it in place as the model does: out = a (1) or out = b (2).
OpCase residual_case(long n, int alias, std::mt19937_64& g) {
    OpCase c;
    c.name = "residual n=" + std::to_string(n) + (alias == 1 ? " out=a" : alias == 2 ? " out=b" : "");
    c.inputs = {randn(n, g), randn(n, g)};
    c.differentiable = {true, true};
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto a = cast<T>(in[0]), b = cast<T>(in[1]);
        std::vector<T> y(n);
        T* out = alias == 1 ? a.data() : alias == 2 ? b.data() : y.data();
        residual_forward(out, a.data(), b.data(), n);
        return Vec(out, out + n);
    };
    c.ref = [=](auto& in) {
        Vec y(n);
        for (long i = 0; i < n; i++) y[i] = in[0][i] + in[1][i];
        return y;
    };
    auto b = [=](auto zero, const std::vector<Vec>&, const Vec& dout) {
        using T = decltype(zero);
        auto dy = cast<T>(dout);
        std::vector<T> da(n, T(0)), db(n, T(0));
        residual_backward(da.data(), db.data(), dy.data(), n);
        return std::vector<Vec>{dbl(da), dbl(db)};
    };
    set_ops(c, f, b);
    return c;
}

// ReZero's gated residual, out = a + alpha·b, alpha one element.
OpCase gated_residual_case(long n, std::mt19937_64& g) {
    OpCase c;
    c.name = "gated_residual n=" + std::to_string(n);
    c.inputs = {randn(n, g), randn(n, g), randn(1, g)};
    c.differentiable = {true, true, true};
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto a = cast<T>(in[0]), b = cast<T>(in[1]), al = cast<T>(in[2]);
        std::vector<T> y(n);
        gated_residual_forward(y.data(), a.data(), b.data(), al.data(), n);
        return dbl(y);
    };
    c.ref = [=](auto& in) {
        Vec y(n);
        for (long i = 0; i < n; i++) y[i] = in[0][i] + in[2][0] * in[1][i];
        return y;
    };
    // db is overwritten: it starts as NaN. da is residual_backward's (the model's pass-through).
    auto b = [=](auto zero, const std::vector<Vec>& in, const Vec& dout) {
        using T = decltype(zero);
        auto bb = cast<T>(in[1]), al = cast<T>(in[2]), dy = cast<T>(dout);
        std::vector<T> da(n, T(0)), db(n, T(NAN)), dal(1, T(0.5));
        residual_backward(da.data(), static_cast<T*>(nullptr), dy.data(), n);
        gated_residual_backward(db.data(), dal.data(), dy.data(), bb.data(), al.data(), n);
        dal[0] -= T(0.5);  // it accumulates
        return std::vector<Vec>{dbl(da), dbl(db), dbl(dal)};
    };
    set_ops(c, f, b);
    return c;
}

// DenseFormer's weighted sum of k sources: out = Σ alpha_i·src_i.
OpCase weighted_sum_case(long n, int k, std::mt19937_64& g) {
    OpCase c;
    c.name = "weighted_sum n=" + std::to_string(n) + " k=" + std::to_string(k);
    for (int i = 0; i < k; i++) c.inputs.push_back(randn(n, g));
    c.inputs.push_back(randn(k, g));
    c.differentiable.assign(size_t(k + 1), true);
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        std::vector<std::vector<T>> src;
        std::vector<const T*> ptr;
        for (int i = 0; i < k; i++) src.push_back(cast<T>(in[i]));
        for (auto& x : src) ptr.push_back(x.data());
        auto al = cast<T>(in[k]);
        std::vector<T> y(n);
        weighted_sum_forward(y.data(), ptr.data(), k, al.data(), n);
        return dbl(y);
    };
    c.ref = [=](auto& in) {
        Vec y(n, 0.0);
        for (int i = 0; i < k; i++)
            for (long e = 0; e < n; e++) y[e] += in[k][i] * in[i][e];
        return y;
    };
    auto b = [=](auto zero, const std::vector<Vec>& in, const Vec& dout) {
        using T = decltype(zero);
        std::vector<std::vector<T>> src, dsrc(size_t(k), std::vector<T>(n, T(0)));
        std::vector<const T*> ptr;
        std::vector<T*> dptr;
        for (int i = 0; i < k; i++) src.push_back(cast<T>(in[i]));
        for (auto& x : src) ptr.push_back(x.data());
        for (auto& x : dsrc) dptr.push_back(x.data());
        auto al = cast<T>(in[k]), dy = cast<T>(dout);
        std::vector<T> dal(k, T(0));
        weighted_sum_backward(dptr.data(), dal.data(), dy.data(), ptr.data(), k, al.data(), n);
        std::vector<Vec> grads;
        for (auto& x : dsrc) grads.push_back(dbl(x));
        grads.push_back(dbl(dal));
        return grads;
    };
    set_ops(c, f, b);
    return c;
}

// qkv split of (N, Wq + Wk + Wv); the output is q (N, Wq), k (N, Wk), v (N, Wv) one after another.
OpCase qkv_split_case(long N, long Wq, long Wk, long Wv, std::mt19937_64& g) {
    OpCase c;
    c.name = "qkv_split N=" + std::to_string(N) + " Wq=" + std::to_string(Wq) + " Wk=" + std::to_string(Wk) +
             " Wv=" + std::to_string(Wv);
    const long W = Wq + Wk + Wv;
    c.inputs = {randn(N * W, g)};
    c.differentiable = {true};
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto qkv = cast<T>(in[0]);
        std::vector<T> y(N * W);
        qkv_split_forward(y.data(), y.data() + N * Wq, y.data() + N * (Wq + Wk), qkv.data(), N, Wq, Wk, Wv);
        return dbl(y);
    };
    c.ref = [=](auto& in) {
        Vec y;
        const long lo[3] = {0, Wq, Wq + Wk}, wd[3] = {Wq, Wk, Wv};
        for (int p = 0; p < 3; p++)
            for (long r = 0; r < N; r++)
                for (long i = 0; i < wd[p]; i++) y.push_back(in[0][r * W + lo[p] + i]);
        return y;
    };
    // The merge OVERWRITES dqkv: it starts as NaN, so an element skipped or accumulated into shows.
    auto b = [=](auto zero, const std::vector<Vec>&, const Vec& dout) {
        using T = decltype(zero);
        auto dy = cast<T>(dout);
        std::vector<T> dqkv(N * W, T(NAN));
        qkv_split_backward(dqkv.data(), dy.data(), dy.data() + N * Wq, dy.data() + N * (Wq + Wk), N, Wq, Wk, Wv);
        return std::vector<Vec>{dbl(dqkv)};
    };
    set_ops(c, f, b);
    return c;
}

// Depth slot write: inputs src (N, stride), of which each row's first W are read, and the stream's
// prior contents (N, slots, W), not differentiated; the output is the whole stream, so the other
// slots must come through untouched.
OpCase depth_slot_case(long N, long slots, long slot, long W, long stride, std::mt19937_64& g) {
    OpCase c;
    c.name = "depth_slot N=" + std::to_string(N) + " slot=" + std::to_string(slot) + "/" + std::to_string(slots) +
             " W=" + std::to_string(W) + " stride=" + std::to_string(stride);
    c.inputs = {randn(N * stride, g), randn(N * slots * W, g)};
    c.differentiable = {true, false};
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto src = cast<T>(in[0]), depth = cast<T>(in[1]);
        depth_slot_forward(depth.data(), slots, slot, src.data(), stride, N, W);
        return dbl(depth);
    };
    c.ref = [=](auto& in) {
        Vec y = in[1];
        for (long r = 0; r < N; r++)
            for (long i = 0; i < W; i++) y[(r * slots + slot) * W + i] = in[0][r * stride + i];
        return y;
    };
    auto b = [=](auto zero, const std::vector<Vec>&, const Vec& dout) {
        using T = decltype(zero);
        auto dy = cast<T>(dout);
        std::vector<T> dsrc(N * stride, T(0));
        depth_slot_backward(dsrc.data(), stride, dy.data(), slots, slot, N, W);
        return std::vector<Vec>{dbl(dsrc)};
    };
    set_ops(c, f, b);
    return c;
}

std::vector<OpCase> table() {
    std::mt19937_64 g(42);
    std::vector<OpCase> t;
    for (long T : {1, 3, 63, 65, 127}) {
        t.push_back(matmul_case(T, 17, 24, g));
        t.push_back(rmsnorm_case(T, 48, g));
        t.push_back(rope_case(2, T, 3, 8, g));
        t.push_back(swiglu_case(T, 20, g));
        t.push_back(crossentropy_case(T, 50, g));
        t.push_back(head_crossentropy_case(T, 12, 37, 2, g));  // chunks of 2 rows, the last short at odd T
        t.push_back(embedding_case(T, 11, 16, g));
        t.push_back(attention_case(2, T, 4, 4, 8, g));   // G = 1
        t.push_back(attention_case(1, T, 4, 2, 16, g));  // G = 2
        t.push_back(attention_case(2, T, 4, 1, 8, g));   // G = 4
    }
    t.push_back(attention_case(1, 200, 2, 1, 64, g));  // several key and query tiles, d = 64
    for (long T : {1, 3, 65}) {
        t.push_back(moda_case(2, T, 4, 2, 8, 3, 4, g));   // G = 2, 3 of 4 depth slots used
        t.push_back(moda_case(1, T, 4, 1, 16, 6, 6, g));  // G = 4
        t.push_back(moda_case(1, T, 2, 2, 8, 0, 2, g));   // no depth: plain attention
    }
    t.push_back(moda_case(1, 130, 2, 1, 16, 5, 5, g));  // several key and query tiles
    // the depth steps' small GEMMs in whole register blocks: G = 8 heads (6 + 2 rows), d = 64 (two
    // vector blocks), 7 slots (6 + 1 rows of dK_d, dV_d); and d = 32 at G = 2 under chunk visibility
    t.push_back(moda_case(1, 21, 16, 2, 64, 7, 9, g));
    t.push_back(moda_case(2, 11, 4, 2, 32, 13, 16, g, {SeqMask::causal, DepthVisibility::chunk, 4}));
    // Every sequence mask with every depth visibility: at odd T, L from 0 to 16, G = 1, 2, 4 and 8, the
    // default chunk (64/G) and small ones, windows, and a scale of its own.
    for (SeqMask mask : {SeqMask::causal, SeqMask::noncausal, SeqMask::none})
        for (DepthVisibility vis : {DepthVisibility::own, DepthVisibility::chunk}) {
            t.push_back(moda_case(1, 1, 4, 4, 8, 1, 2, g, {mask, vis}));                // G = 1, one token
            t.push_back(moda_case(1, 9, 4, 1, 8, 0, 2, g, {mask, vis, 4}));             // G = 4, no depth
            t.push_back(moda_case(1, 7, 8, 1, 8, 16, 16, g, {mask, vis, 3, 0, 0.3}));   // G = 8, L = 16
            t.push_back(moda_case(2, 67, 4, 2, 8, 5, 6, g, {mask, vis}));               // G = 2, chunks of 32
            t.push_back(moda_case(1, 13, 4, 2, 8, 6, 6, g, {mask, vis, 4, 3}));         // the 3 latest slots
            t.push_back(moda_case(1, 5, 2, 2, 8, 2, 4, g, {mask, vis, 2, 4}));          // a window above L
        }
    for (long T : {1, 3, 65}) {
        t.push_back(attnres_case(T, 24, 1, true, g));   // one source: out = v exactly, zero logit gradient
        t.push_back(attnres_case(T, 24, 3, false, g));  // parameter-free key norm
        t.push_back(attnres_case(T, 40, 7, true, g));
        t.push_back(attnres_case(T, 24, 1, true, g, true));   // sigmoid gates: one source is no longer out = v
        t.push_back(attnres_case(T, 40, 5, false, g, true));  // with the parameter-free key norm
        t.push_back(attnres_case(T, 24, 3, true, g, false, true));   // a query per row
        t.push_back(attnres_case(T, 40, 4, false, g, true, true));   // ... with the sigmoid, no key-norm weight
        t.push_back(attnres_case(T, 72, 6, true, g));                // D = 72: whole 4-vector column blocks, a tail
        t.push_back(attnres_case(T, 136, 3, false, g, false, true)); // ... with a query per row
    }
    for (long N : {1, 3, 65}) {
        t.push_back(residual_case(N * 13, 0, g));
        t.push_back(qkv_split_case(N, 15, 5, 5, g));               // grouped: Wk = Wv = Wq / 3
        t.push_back(qkv_split_case(N, 9, 5, 3, g));                // Wk ≠ Wv
        t.push_back(depth_slot_case(N, 3, 0, 13, 13, g));          // contiguous source, first slot
        t.push_back(depth_slot_case(N, 4, 3, 13, 3 * 13 + 5, g));  // in place from a wider fused row, last slot
    }
    t.push_back(residual_case(1, 0, g));
    t.push_back(residual_case(65 * 13, 1, g));
    t.push_back(residual_case(65 * 13, 2, g));
    t.push_back(residual_case(40001, 0, g));  // above the single-thread cutoff
    t.push_back(residual_case(40001, 1, g));
    t.push_back(rmsnorm_case(3, 48, g, 1.0 / std::sqrt(3.0)));   // LayerNorm-Scaling, layer 3
    t.push_back(rmsnorm_case(65, 48, g, 1.0 / std::sqrt(8.0)));
    for (long n : {1L, 13L * 65, 40001L, 3 * 4096L + 7}) {  // one chunk, several, above the thread cutoff
        t.push_back(gated_residual_case(n, g));
        t.push_back(weighted_sum_case(n, 1, g));
        t.push_back(weighted_sum_case(n, 4, g));
    }
    return t;
}

}  // namespace

class OpTable : public ::testing::TestWithParam<size_t> {};

TEST_P(OpTable, ForwardAndGradient) {
    static const std::vector<OpCase> cases = table();
    run_case(cases[GetParam()]);
}

INSTANTIATE_TEST_SUITE_P(Ops, OpTable, ::testing::Range<size_t>(0, table().size()), [](const auto& info) {
    static const std::vector<OpCase> cases = table();
    std::string n = cases[info.param].name;
    for (auto& ch : n)
        if (!isalnum((unsigned char)ch)) ch = '_';
    return n + "_" + std::to_string(info.param);
});

// k and v (B, T, w) in a zeroed KV cache of max_T rows per batch.
static std::pair<Vec, Vec> kv_cache_of(const Vec& k, const Vec& v, long B, long T, long max_T, long w) {
    Vec kc(B * max_T * w, 0.0), vc(B * max_T * w, 0.0);
    for (long b = 0; b < B; b++)
        for (long i = 0; i < T * w; i++) kc[b * max_T * w + i] = k[b * T * w + i], vc[b * max_T * w + i] = v[b * T * w + i];
    return {kc, vc};
}

// The table runs on the build of the engine the loader picks for this CPU, and again with the
// x86-64-v4 build masked (tests/CMakeLists.txt, label op-v3). Each run must really be on the build it
// names: a mask or flag that stops taking effect fails here rather than testing one build twice.
TEST(OpTableBuild, RunsTheBuildThisCpuAndTheMaskCallFor) {
    const std::string level = engine_cpu_level();
    if (level == "native") GTEST_SKIP() << "one engine built with -march=native";
    const char* tunables = std::getenv("GLIBC_TUNABLES");
    const bool masked = tunables && std::string(tunables).find("-AVX512F") != std::string::npos;
    const bool v4 = __builtin_cpu_supports("x86-64-v4") && !masked;
    EXPECT_EQ(level, v4 ? "x86-64-v4" : "x86-64-v3");
    EXPECT_EQ(engine_vec_bytes(), v4 ? 64 : 32);
}

// The decode path: attention for query rows at positions q_pos0.. over a longer KV cache must equal
// the corresponding rows of full causal attention.
TEST(Attention, CachedRowsMatchFullAttention) {
    std::mt19937_64 g(7);
    const long B = 2, T = 70, H = 4, Hk = 2, d = 16, max_T = 96, p0 = 66;
    Vec q = randn(B * T * H * d, g), k = randn(B * T * Hk * d, g), v = randn(B * T * Hk * d, g);
    Vec o(B * T * H * d), lse(B * H * T);
    attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), AttnDims{B, T, T, H, Hk, d, 0, T * Hk * d});
    auto [kc, vc] = kv_cache_of(k, v, B, T, max_T, Hk * d);
    Vec qn(B * (T - p0) * H * d);
    for (long b = 0; b < B; b++) {
        for (long t = p0; t < T; t++)
            for (long i = 0; i < H * d; i++) qn[(b * (T - p0) + t - p0) * H * d + i] = q[(b * T + t) * H * d + i];
    }
    Vec on(qn.size()), lsen(B * H * (T - p0));
    attention_forward(on.data(), lsen.data(), qn.data(), kc.data(), vc.data(),
                      AttnDims{B, T - p0, T, H, Hk, d, p0, max_T * Hk * d});
    for (long b = 0; b < B; b++)
        for (long t = p0; t < T; t++)
            for (long i = 0; i < H * d; i++)
                EXPECT_NEAR(on[(b * (T - p0) + t - p0) * H * d + i], o[(b * T + t) * H * d + i], 1e-12);
}

// Two-phase Block AttnRes is the same op, reordered: phase 1 over the completed sources for S
// queries at once, then phase 2 folding in each query's partial sum, must give what the one-phase
// op gives over all n+1 sources — the output and the logits, rstd and lse its backward reads.
template <typename T>
void check_two_phase(double tol) {
    std::mt19937_64 g(99);
    const long N = 37, D = 80;  // D: whole 4-vector column blocks and a remainder
    const int n = 4, S = 3;
    std::vector<std::vector<T>> src(n), part(S), w(S), gm(S);
    for (auto& s : src) s = cast<T>(randn(N * D, g, 2.0));
    for (int q = 0; q < S; q++) {
        part[q] = cast<T>(randn(N * D, g));
        w[q] = cast<T>(randn(D, g, 0.3));
        Vec x = randn(D, g, 0.2);
        for (auto& v : x) v += 1;
        gm[q] = cast<T>(x);
    }
    const int n1 = n + 1;
    std::vector<std::vector<T>> out(S, std::vector<T>(N * D)), lg(S, std::vector<T>(n1 * N)),
        rs(S, std::vector<T>(n1 * N)), lse(S, std::vector<T>(N));
    std::vector<T*> po, pl, pr, pe;
    std::vector<const T*> ps, pw, pg;
    for (auto& s : src) ps.push_back(s.data());
    for (int q = 0; q < S; q++) {
        po.push_back(out[q].data()), pl.push_back(lg[q].data()), pr.push_back(rs[q].data()), pe.push_back(lse[q].data());
        pw.push_back(w[q].data()), pg.push_back(gm[q].data());
    }
    attnres_phase1(po.data(), pl.data(), pr.data(), pe.data(), ps.data(), n, pw.data(), pg.data(), S, N, D, 1e-5);
    for (int q = 0; q < S; q++) {
        attnres_phase2(out[q].data(), lg[q].data(), rs[q].data(), lse[q].data(), part[q].data(), n, w[q].data(),
                       gm[q].data(), N, D, 1e-5);
        std::vector<const T*> all = ps;
        all.push_back(part[q].data());
        std::vector<T> o1(N * D), l1(n1 * N), r1(n1 * N), e1(N);
        attnres_forward(o1.data(), l1.data(), r1.data(), e1.data(), all.data(), n1, w[q].data(), gm[q].data(), N, D,
                        1e-5);
        auto vec = [](const std::vector<T>& v) { return Vec(v.begin(), v.end()); };
        EXPECT_LE(rel_l2(vec(out[q]), vec(o1)), tol) << "query " << q;
        EXPECT_LE(rel_l2(vec(lg[q]), vec(l1)), tol) << "query " << q;
        EXPECT_LE(rel_l2(vec(rs[q]), vec(r1)), tol) << "query " << q;
        EXPECT_LE(rel_l2(vec(lse[q]), vec(e1)), tol) << "query " << q;
    }
}

TEST(AttnRes, TwoPhaseEqualsOnePhaseFloat) { check_two_phase<float>(2e-6); }
TEST(AttnRes, TwoPhaseEqualsOnePhaseDouble) { check_two_phase<double>(1e-13); }

// The block's backward: attnres_phase1_backward over the shared sources, then attnres_backward over
// each op's partial sum alone, adds what attnres_backward of each whole op adds (into gradients that
// already hold something; the first source's gradient is skipped in both).
template <typename T>
void check_two_phase_backward(double tol) {
    std::mt19937_64 g(5);
    const long N = 45, D = 72;
    const int n = 3, S = 4, n1 = n + 1;
    auto vecs = [&](int k, long len, double sd) {
        std::vector<std::vector<T>> v;
        v.resize(size_t(k));
        for (auto& x : v) x = cast<T>(randn(len, g, sd));
        return v;
    };
    auto src = vecs(n, N * D, 2.0), part = vecs(S, N * D, 1.0), w = vecs(S, D, 0.3), gm = vecs(S, D, 0.2);
    auto dout = vecs(S, N * D, 1.0), dsrc0 = vecs(n, N * D, 1.0), dpart0 = vecs(S, N * D, 1.0);
    auto dw0 = vecs(S, D, 1.0), dg0 = vecs(S, D, 1.0);
    for (auto& x : gm)
        for (auto& v : x) v += 1;
    std::vector<std::vector<T>> out(S, std::vector<T>(N * D)), lg(S, std::vector<T>(n1 * N)),
        rs(S, std::vector<T>(n1 * N)), lse(S, std::vector<T>(N));
    for (int q = 0; q < S; q++) {
        std::vector<const T*> all;
        for (auto& x : src) all.push_back(x.data());
        all.push_back(part[q].data());
        attnres_forward(out[q].data(), lg[q].data(), rs[q].data(), lse[q].data(), all.data(), n1, w[q].data(),
                        gm[q].data(), N, D, 1e-5);
    }
    // reference: each op's whole backward
    auto dsrc_ref = dsrc0, dpart_ref = dpart0, dw_ref = dw0, dg_ref = dg0;
    for (int q = 0; q < S; q++) {
        std::vector<const T*> all;
        std::vector<T*> dall;
        for (int i = 0; i < n; i++) all.push_back(src[i].data()), dall.push_back(i == 0 ? nullptr : dsrc_ref[i].data());
        all.push_back(part[q].data()), dall.push_back(dpart_ref[q].data());
        attnres_backward(dall.data(), dw_ref[q].data(), dg_ref[q].data(), dout[q].data(), out[q].data(), lg[q].data(),
                         rs[q].data(), lse[q].data(), all.data(), n1, w[q].data(), gm[q].data(), N, D);
    }
    // the block's way
    auto dsrc = dsrc0, dpart = dpart0, dw = dw0, dg = dg0;
    std::vector<T*> pds, pdw, pdg;
    std::vector<const T*> ps, pdo, po, pl, pr, pe, pw, pg;
    for (int i = 0; i < n; i++) ps.push_back(src[i].data()), pds.push_back(i == 0 ? nullptr : dsrc[i].data());
    for (int q = 0; q < S; q++) {
        pdw.push_back(dw[q].data()), pdg.push_back(dg[q].data()), pdo.push_back(dout[q].data());
        po.push_back(out[q].data()), pl.push_back(lg[q].data()), pr.push_back(rs[q].data()), pe.push_back(lse[q].data());
        pw.push_back(w[q].data()), pg.push_back(gm[q].data());
    }
    attnres_phase1_backward(pds.data(), pdw.data(), pdg.data(), pdo.data(), po.data(), pl.data(), pr.data(), pe.data(),
                            ps.data(), n, pw.data(), pg.data(), S, N, D);
    for (int q = 0; q < S; q++) {
        const T* p = part[q].data();
        T* dp = dpart[q].data();
        attnres_backward(&dp, dw[q].data(), dg[q].data(), dout[q].data(), out[q].data(), lg[q].data() + n * N,
                         rs[q].data() + n * N, lse[q].data(), &p, 1, w[q].data(), gm[q].data(), N, D);
    }
    auto vec = [](const std::vector<T>& v) { return Vec(v.begin(), v.end()); };
    for (int i = 0; i < n; i++) EXPECT_LE(rel_l2(vec(dsrc[i]), vec(dsrc_ref[i])), tol) << "source " << i;
    EXPECT_EQ(vec(dsrc[0]), vec(dsrc0[0])) << "a null gradient is skipped";
    for (int q = 0; q < S; q++) {
        EXPECT_LE(rel_l2(vec(dpart[q]), vec(dpart_ref[q])), tol) << "partial " << q;
        EXPECT_LE(rel_l2(vec(dw[q]), vec(dw_ref[q])), tol) << "query " << q;
        EXPECT_LE(rel_l2(vec(dg[q]), vec(dg_ref[q])), tol) << "key norm " << q;
    }
}

TEST(AttnRes, BlockBackwardEqualsEachOpsBackwardFloat) { check_two_phase_backward<float>(2e-6); }
TEST(AttnRes, BlockBackwardEqualsEachOpsBackwardDouble) { check_two_phase_backward<double>(1e-13); }

// MoDA's decode path: query rows at positions p0.. over a longer KV cache, each with its own depth
// slots, must equal the corresponding rows of the full causal MoDA; with no slots it is attention.
TEST(MoDA, CachedRowsMatchFullAndNoDepthIsAttention) {
    std::mt19937_64 g(8);
    const long B = 2, T = 70, H = 4, Hk = 2, d = 16, max_T = 96, p0 = 66, L = 3, Lm = 4;
    Vec q = randn(B * T * H * d, g), k = randn(B * T * Hk * d, g), v = randn(B * T * Hk * d, g);
    Vec kd = randn(B * T * Lm * Hk * d, g), vd = randn(B * T * Lm * Hk * d, g);
    Vec o(B * T * H * d), lse(B * H * T);
    strata::testing::moda_fwd(o.data(), lse.data(), q.data(), k.data(), v.data(), kd.data(), vd.data(), L, Lm,
                 AttnDims{B, T, T, H, Hk, d, 0, T * Hk * d});
    const long n = T - p0, slot = Lm * Hk * d;
    auto [kc, vc] = kv_cache_of(k, v, B, T, max_T, Hk * d);
    Vec qn(B * n * H * d), kdn(B * n * slot), vdn(B * n * slot);
    for (long b = 0; b < B; b++) {
        for (long t = p0; t < T; t++) {
            for (long i = 0; i < H * d; i++) qn[(b * n + t - p0) * H * d + i] = q[(b * T + t) * H * d + i];
            for (long i = 0; i < slot; i++) {
                kdn[(b * n + t - p0) * slot + i] = kd[(b * T + t) * slot + i];
                vdn[(b * n + t - p0) * slot + i] = vd[(b * T + t) * slot + i];
            }
        }
    }
    Vec on(qn.size()), lsen(B * H * n);
    strata::testing::moda_fwd(on.data(), lsen.data(), qn.data(), kc.data(), vc.data(), kdn.data(), vdn.data(), L, Lm,
                 AttnDims{B, n, T, H, Hk, d, p0, max_T * Hk * d});
    for (long b = 0; b < B; b++)
        for (long t = p0; t < T; t++)
            for (long i = 0; i < H * d; i++)
                EXPECT_NEAR(on[(b * n + t - p0) * H * d + i], o[(b * T + t) * H * d + i], 1e-12);

    Vec o0(o.size()), l0(lse.size()), oa(o.size()), la(lse.size());
    const AttnDims a{B, T, T, H, Hk, d, 0, T * Hk * d};
    strata::testing::moda_fwd(o0.data(), l0.data(), q.data(), k.data(), v.data(), kd.data(), vd.data(), 0, Lm, a);
    attention_forward(oa.data(), la.data(), q.data(), k.data(), v.data(), a);
    EXPECT_EQ(o0, oa);
    EXPECT_EQ(l0, la);
}

// Chunk visibility when decoding: query rows at positions p0.. over a longer KV cache, with a depth
// buffer of only the rows from their chunk's start (depth_pos0), equal the rows of the full op; and
// the same with a window and under the depth-only mask.
TEST(MoDA, ChunkRowsFromTheChunkStartMatchFull) {
    std::mt19937_64 g(18);
    const long B = 2, T = 45, H = 4, Hk = 2, d = 8, max_T = 64, L = 5, Lm = 6, C = 8;
    for (auto [mask, window] : {std::pair{SeqMask::causal, 0L}, std::pair{SeqMask::causal, 2L}, std::pair{SeqMask::none, 0L}}) {
        SCOPED_TRACE(std::string(to_string(mask)) + " window " + std::to_string(window));
        Vec q = randn(B * T * H * d, g), k = randn(B * T * Hk * d, g), v = randn(B * T * Hk * d, g);
        Vec kd = randn(B * T * Lm * Hk * d, g), vd = randn(B * T * Lm * Hk * d, g);
        Vec o(B * T * H * d), lse(B * H * T);
        auto full = strata::testing::moda_args(o.data(), lse.data(), q.data(), k.data(), v.data(), kd.data(), vd.data(),
                                               L, Lm, AttnDims{B, T, T, H, Hk, d, 0, T * Hk * d});
        full.mask = mask, full.visibility = DepthVisibility::chunk, full.chunk = C, full.window = window;
        moda_forward(full);
        for (long p0 : {43L, 40L, 35L}) {  // mid-chunk, at a chunk start, and two chunks' queries at once
            const long n = T - p0, start = p0 / C * C, rows = T - start, slot = Lm * Hk * d;
            auto [kc, vc] = kv_cache_of(k, v, B, T, max_T, Hk * d);
            Vec qn(B * n * H * d), kdn(B * rows * slot), vdn(B * rows * slot);
            for (long b = 0; b < B; b++) {
                for (long t = p0; t < T; t++)
                    for (long i = 0; i < H * d; i++) qn[(b * n + t - p0) * H * d + i] = q[(b * T + t) * H * d + i];
                for (long t = start; t < T; t++)
                    for (long i = 0; i < slot; i++) {
                        kdn[(b * rows + t - start) * slot + i] = kd[(b * T + t) * slot + i];
                        vdn[(b * rows + t - start) * slot + i] = vd[(b * T + t) * slot + i];
                    }
            }
            Vec on(qn.size()), lsen(B * H * n);
            ModaParams<double> p = full;
            p.dims = AttnDims{B, n, T, H, Hk, d, p0, max_T * Hk * d};
            p.q = qn.data(), p.k = kc.data(), p.v = vc.data(), p.kd = kdn.data(), p.vd = vdn.data();
            p.depth_rows = rows, p.depth_pos0 = start;
            p.out = on.data(), p.lse = lsen.data();
            moda_forward(p);
            for (long b = 0; b < B; b++)
                for (long t = p0; t < T; t++)
                    for (long i = 0; i < H * d; i++)
                        EXPECT_NEAR(on[(b * n + t - p0) * H * d + i], o[(b * T + t) * H * d + i], 1e-12) << p0;
            p.depth_pos0 = start + 1;  // a buffer missing the chunk's first token is refused
            if (p0 > start) strata::testing::expect_error([&] { moda_forward(p); }, {"do not cover the depth tokens"});
        }
    }
}

// moda_mass: each row's softmax mass on its depth slots and on key 0, against the probabilities of an
// explicit softmax over what the row sees, for each mask with chunk visibility and a window.
TEST(MoDA, MassIsTheSoftmaxOnDepthAndOnKeyZero) {
    std::mt19937_64 g(23);
    const long B = 2, T = 11, H = 4, Hk = 2, d = 8, L = 4, C = 3, W = 3, G = H / Hk;
    for (SeqMask mask : {SeqMask::causal, SeqMask::noncausal, SeqMask::none}) {
        SCOPED_TRACE(to_string(mask));
        Vec q = randn(B * T * H * d, g), k = randn(B * T * Hk * d, g), v = randn(B * T * Hk * d, g);
        Vec kd = randn(B * T * L * Hk * d, g), vd = randn(kd.size(), g), o(q.size()), lse(B * H * T);
        auto p = strata::testing::moda_args(o.data(), lse.data(), q.data(), k.data(), v.data(), kd.data(), vd.data(), L,
                                            L, AttnDims{B, T, T, H, Hk, d, 0, T * Hk * d});
        p.mask = mask, p.visibility = DepthVisibility::chunk, p.chunk = C, p.window = W;
        moda_forward(p);
        Vec dm(B * H * T), sm(B * H * T);
        moda_mass(p, dm.data(), sm.data());
        auto dot = [&](const double* x, const double* y) {
            double s = 0;
            for (long i = 0; i < d; i++) s += x[i] * y[i];
            return s / std::sqrt(double(d));
        };
        for (long b = 0; b < B; b++)
            for (long h = 0; h < H; h++)
                for (long t = 0; t < T; t++) {
                    const double* qr = &q[((b * T + t) * H + h) * d];
                    std::vector<double> seq, dep;
                    const long end = mask == SeqMask::causal ? t + 1 : mask == SeqMask::noncausal ? T : 0;
                    for (long u = 0; u < end; u++) seq.push_back(dot(qr, &k[((b * T + u) * Hk + h / G) * d]));
                    for (long u = t / C * C; u <= t; u++)
                        for (long i = L - W; i < L; i++) dep.push_back(dot(qr, &kd[(((b * T + u) * L + i) * Hk + h / G) * d]));
                    double z = 0;
                    for (double s : seq) z += std::exp(s);
                    for (double s : dep) z += std::exp(s);
                    double want_d = 0;
                    for (double s : dep) want_d += std::exp(s) / z;
                    const long r = (b * H + h) * T + t;
                    EXPECT_NEAR(dm[r], want_d, 1e-12);
                    EXPECT_NEAR(sm[r], seq.empty() ? 0.0 : std::exp(seq[0]) / z, 1e-12);
                }
    }
}

// Arguments that disagree are errors naming the field, before any memory is touched.
TEST(MoDA, BadArgumentsAreNamedErrors) {
    std::vector<float> q(2 * 4 * 8), k(2 * 2 * 8), v(k.size()), kd(2 * 3 * 2 * 8), vd(kd.size()), o(q.size()), lse(2 * 4);
    auto ok = [&] {
        return strata::testing::moda_args(o.data(), lse.data(), q.data(), k.data(), v.data(), kd.data(), vd.data(), 3L, 3L,
                                          AttnDims{1, 2, 2, 4, 2, 8, 0, 2 * 2 * 8});
    };
    moda_forward(ok());  // the baseline call is fine
    using strata::testing::expect_error;
    auto bad = [&](auto change, const std::string& needle) {
        auto p = ok();
        change(p);
        expect_error([&] { moda_forward(p); }, {needle});
    };
    bad([](auto& p) { p.window = -1; }, "window must be non-negative");
    bad([](auto& p) { p.window = 4; }, "exceeds the slot count");
    bad([](auto& p) { p.chunk = -2; }, "chunk must be positive");
    bad([](auto& p) { p.L = 4; }, "exceeds L_max");
    bad([](auto& p) { p.L = -1; }, "must be non-negative");
    bad([](auto& p) { p.kd = nullptr; }, "kd and vd are required");
    bad([](auto& p) { p.k = nullptr; }, "k and v are required");
    bad([](auto& p) { p.scale = -1; }, "scale must be finite");
    bad([](auto& p) { p.dims.H = 3; }, "multiple of Hk");
    bad([](auto& p) { p.dims.Tk = 1; }, "keys must reach");
    bad([](auto& p) { p.depth_rows = 1; }, "do not cover");
    auto none = ok();  // depth only: no sequence keys needed
    none.mask = SeqMask::none, none.k = none.v = nullptr;
    moda_forward(none);
}

// ---- glue ops outside the table: no backward, or not an elementwise map ----------------------------
// Each against a naive loop here, in float and double; float inputs are the rounded float64 draws.

// fill_zero clears exactly [0, n) of a filled buffer.
template <typename T>
void check_fill_zero() {
    SCOPED_TRACE(sizeof(T) == 4 ? "float" : "double");
    for (size_t n : {0, 1, 3, 65, 40001}) {
        std::vector<T> x(n + 10, T(7));
        fill_zero(x.data() + 3, n);
        for (size_t i = 0; i < x.size(); i++) ASSERT_EQ(x[i], i >= 3 && i < 3 + n ? T(0) : T(7)) << n << " " << i;
    }
}
TEST(Glue, FillZero) { check_fill_zero<float>(), check_fill_zero<double>(); }

// copy_forward: exactly [0, n) of src, nothing past it.
template <typename T>
void check_copy() {
    SCOPED_TRACE(sizeof(T) == 4 ? "float" : "double");
    std::mt19937_64 g(9);
    for (long n : {1L, 13L, 65L}) {
        auto src = cast<T>(randn(n + 3, g)), dst = cast<T>(randn(n + 3, g));
        const auto before = dst;
        copy_forward(dst.data(), src.data(), size_t(n));
        for (long i = 0; i < n + 3; i++) EXPECT_EQ(dst[i], i < n ? src[i] : before[i]) << "n=" << n << " i=" << i;
    }
}
TEST(Glue, Copy) { check_copy<float>(), check_copy<double>(); }

// The table's rows start their gradients at zero; here the backwards add into what is there
// (residual_backward skipping a null side) and depth_slot_backward honours dsrc's own row stride.
// The same two numbers added in the same order: exact.
template <typename T>
void check_accumulate() {
    SCOPED_TRACE(sizeof(T) == 4 ? "float" : "double");
    std::mt19937_64 g(5);
    const long n = 65;
    auto d = cast<T>(randn(n, g)), a0 = cast<T>(randn(n, g)), b0 = cast<T>(randn(n, g));
    auto da = a0, db = b0;
    residual_backward<T>(da.data(), db.data(), d.data(), n);
    residual_backward<T>(da.data(), nullptr, d.data(), n);
    residual_backward<T>(nullptr, db.data(), d.data(), n);
    for (long i = 0; i < n; i++) {
        EXPECT_EQ(da[i], T(a0[i] + d[i]) + d[i]) << i;
        EXPECT_EQ(db[i], T(b0[i] + d[i]) + d[i]) << i;
    }
    const long N = 3, slots = 4, slot = 1, W = 13, stride = 20;
    auto dd = cast<T>(randn(N * slots * W, g)), ds0 = cast<T>(randn(N * stride, g));
    auto ds = ds0;
    depth_slot_backward(ds.data(), stride, dd.data(), slots, slot, N, W);
    for (long r = 0; r < N; r++)
        for (long i = 0; i < stride; i++)
            EXPECT_EQ(ds[r * stride + i], i < W ? T(ds0[r * stride + i] + dd[(r * slots + slot) * W + i])
                                                : ds0[r * stride + i])
                << r << " " << i;
}
TEST(Glue, BackwardsAccumulate) { check_accumulate<float>(), check_accumulate<double>(); }

// Into::overwrite: the input gradient written over whatever the buffer held (NaN here, so a read of
// it shows) equals the gradient added into zeros, bit for bit; the weight gradient still accumulates.
template <typename T>
void check_overwrite() {
    SCOPED_TRACE(sizeof(T) == 4 ? "float" : "double");
    std::mt19937_64 g(6);
    const T nan = std::numeric_limits<T>::quiet_NaN();
    const long N = 7, IC = 5, OC = 9, F = 6;
    auto x = cast<T>(randn(N * IC, g)), w = cast<T>(randn(OC * IC, g)), dy = cast<T>(randn(N * OC, g));
    auto dw0 = cast<T>(randn(OC * IC, g));
    std::vector<T> dx_add(N * IC, T(0)), dx_over(N * IC, nan);
    auto dw_add = dw0, dw_over = dw0;
    matmul_backward(dx_add.data(), dw_add.data(), dy.data(), x.data(), w.data(), N, IC, OC);
    matmul_backward(dx_over.data(), dw_over.data(), dy.data(), x.data(), w.data(), N, IC, OC, Into::overwrite);
    EXPECT_EQ(dx_over, dx_add);
    EXPECT_EQ(dw_over, dw_add);
    auto gu = cast<T>(randn(N * 2 * F, g)), da = cast<T>(randn(N * F, g));
    std::vector<T> dgu_add(N * 2 * F, T(0)), dgu_over(N * 2 * F, nan);
    swiglu_backward(dgu_add.data(), da.data(), gu.data(), N, F);
    swiglu_backward(dgu_over.data(), da.data(), gu.data(), N, F, Into::overwrite);
    EXPECT_EQ(dgu_over, dgu_add);
    auto nx = cast<T>(randn(N * F, g)), nw = cast<T>(randn(F, g)), ndy = cast<T>(randn(N * F, g));
    std::vector<T> ny(N * F), nr(N), ndx_add(N * F, T(0)), ndx_over(N * F, nan), ndw_add(F, T(0)), ndw_over(F, T(0));
    rmsnorm_forward(ny.data(), nr.data(), nx.data(), nw.data(), N, F, 1e-5);
    rmsnorm_backward(ndx_add.data(), ndw_add.data(), ndy.data(), nx.data(), nw.data(), nr.data(), N, F, 0.5);
    rmsnorm_backward(ndx_over.data(), ndw_over.data(), ndy.data(), nx.data(), nw.data(), nr.data(), N, F, 0.5,
                     Into::overwrite);
    EXPECT_EQ(ndx_over, ndx_add);
    EXPECT_EQ(ndw_over, ndw_add);
}
TEST(Backward, OverwriteIgnoresWhatIsThere) { check_overwrite<float>(), check_overwrite<double>(); }

// KV append: row t of batch b of (B, n, W) lands at position pos0 + t of caches whose batches are
// bstride apart (padded here); every other cache element stays as it was.
template <typename T>
void check_kv_append() {
    SCOPED_TRACE(sizeof(T) == 4 ? "float" : "double");
    std::mt19937_64 g(6);
    const long B = 2, W = 13, max_T = 11, bstride = max_T * W + 5;
    const long shapes[][2] = {{1, 0}, {1, 10}, {4, 3}, {11, 0}};  // (n, pos0): decode steps and prefills
    for (auto& sh : shapes) {
        const long n = sh[0], pos0 = sh[1];
        auto k = cast<T>(randn(B * n * W, g)), v = cast<T>(randn(B * n * W, g));
        auto kc0 = cast<T>(randn(B * bstride, g)), vc0 = cast<T>(randn(B * bstride, g));
        auto kc = kc0, vc = vc0;
        kv_append_forward(kc.data(), vc.data(), k.data(), v.data(), B, n, pos0, bstride, W);
        for (long b = 0; b < B; b++)
            for (long t = 0; t < n; t++)
                for (long i = 0; i < W; i++) {
                    kc0[b * bstride + (pos0 + t) * W + i] = k[(b * n + t) * W + i];
                    vc0[b * bstride + (pos0 + t) * W + i] = v[(b * n + t) * W + i];
                }
        EXPECT_EQ(kc, kc0) << "n=" << n << " pos0=" << pos0;
        EXPECT_EQ(vc, vc0) << "n=" << n << " pos0=" << pos0;
    }
}
TEST(Glue, KvAppend) { check_kv_append<float>(), check_kv_append<double>(); }

// x *= s: in double exactly x·s; in float within the rounding of s and of the product (≤ 2⁻²³).
template <typename T>
void check_scale() {
    SCOPED_TRACE(sizeof(T) == 4 ? "float" : "double");
    std::mt19937_64 g(7);
    // One rounding (double: the check itself may be fused into an FMA, which sees it).
    const double tol = sizeof(T) == 8 ? 1.2e-16 : 1.2e-7;
    for (long n : {1, 3, 65, 40001})
        for (double s : {0.0, -1.5, 0.1, 3e-3}) {
            auto x = cast<T>(randn(n, g)), y = x;
            scale_forward(y.data(), n, s);
            for (long i = 0; i < n; i++)
                ASSERT_LE(std::abs(double(y[i]) - double(x[i]) * s), tol * std::abs(double(x[i]) * s))
                    << "n=" << n << " s=" << s << " i=" << i;
        }
}
TEST(Glue, Scale) { check_scale<float>(), check_scale<double>(); }

// The reductions, against long double loops: Σx², Σ_r mean_c x², Σ_r exp(logit − lse) within 1e-12
// relative; Σx in index order to the bit; the count of NaN/±Inf exactly.
template <typename T>
void check_reductions() {
    SCOPED_TRACE(sizeof(T) == 4 ? "float" : "double");
    std::mt19937_64 g(8);
    for (long n : {1, 3, 65, 100003}) {
        SCOPED_TRACE("n=" + std::to_string(n));
        auto x = cast<T>(randn(n, g, 3.0));
        long double ss = 0;
        double so = 0;
        for (long i = 0; i < n; i++) ss += (long double)x[i] * x[i], so += double(x[i]);
        // Σx²: fixed for a given thread count (two calls, the same bits), right at any.
        const int nt0 = omp_get_max_threads();
        for (int nt : {1, 2, 3}) {
            omp_set_num_threads(nt);
            const double got = sum_squares(x.data(), n);
            EXPECT_NEAR(got, double(ss), 1e-12 * double(ss)) << nt << " threads";
            EXPECT_EQ(got, sum_squares(x.data(), n)) << nt << " threads";
        }
        omp_set_num_threads(nt0);
        EXPECT_EQ(sum_ordered(x.data(), n), so);
    }
    // Σx accumulates in double: 2²⁵ + 1 is exact there, not in float.
    const std::vector<T> c = {T(33554432), T(1), T(-33554432), T(1)};
    EXPECT_EQ(sum_ordered(c.data(), 4), 2.0);

    const T bad[3] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                      -std::numeric_limits<T>::infinity()};
    for (long n : {1, 3, 65, 40001}) {  // 40001: above the single-thread cutoff
        SCOPED_TRACE("n=" + std::to_string(n));
        auto x = cast<T>(randn(n, g));
        x[n / 2] = std::numeric_limits<T>::max();  // finite extremes do not count
        x[0] = -std::numeric_limits<T>::denorm_min();
        EXPECT_EQ(nonfinite_count(x.data(), n), 0);
        for (int k = 0; k < 3; k++) {
            auto y = x;
            y[(n - 1) * k / 2] = bad[k];
            EXPECT_EQ(nonfinite_count(y.data(), n), 1) << "planted " << double(bad[k]);
        }
        long planted = 0;
        for (long i = 0; i < n; i += 7) x[i] = bad[planted++ % 3];
        x[n - 1] = bad[(n - 1) % 3];
        planted += (n - 1) % 7 != 0;
        EXPECT_EQ(nonfinite_count(x.data(), n), planted);
    }

    const long shapes[][2] = {{1, 1}, {3, 13}, {65, 47}};
    for (auto& sh : shapes) {
        const long N = sh[0], C = sh[1];
        auto x = cast<T>(randn(N * C, g, 2.0));
        long double want = 0;
        for (long r = 0; r < N; r++) {
            long double s = 0;
            for (long i = 0; i < C; i++) s += (long double)x[r * C + i] * x[r * C + i];
            want += s / C;
        }
        EXPECT_NEAR(row_mean_square_sum(x.data(), N, C), double(want), 1e-12 * double(want)) << N << "x" << C;
    }

    // Softmax weights of n = 3 sources over N rows: each source's sum; and all of them add up to N.
    const long N = 65;
    auto lg = cast<T>(randn(3 * N, g, 2.0));
    std::vector<T> lse(N);
    for (long r = 0; r < N; r++) {
        const double m = std::max({double(lg[r]), double(lg[N + r]), double(lg[2 * N + r])});
        double z = 0;
        for (int i = 0; i < 3; i++) z += std::exp(double(lg[i * N + r]) - m);
        lse[r] = T(m + std::log(z));
    }
    double total = 0;
    for (int i = 0; i < 3; i++) {
        long double want = 0;
        for (long r = 0; r < N; r++) want += std::exp((long double)lg[i * N + r] - (long double)lse[r]);
        const double got = softmax_weight_sum(lg.data() + i * N, lse.data(), N);
        EXPECT_NEAR(got, double(want), 1e-12 * double(want)) << "source " << i;
        total += got;
    }
    EXPECT_NEAR(total, double(N), (sizeof(T) == 8 ? 1e-13 : 1e-6) * N);
}
TEST(Glue, Reductions) { check_reductions<float>(), check_reductions<double>(); }

// AdamW against torch.optim.AdamW's update written out in float64, over 3 steps, decay on and off:
// m ← β1 m + (1−β1) g,  v ← β2 v + (1−β2) g²,  p ← p (1 − lr·wd) − lr/bc1 · m / (√(v/bc2) + ε).
// Every tenth gradient is ~1e-9, where ε dominates the denominator.
template <typename T>
void check_adamw(double tol) {
    SCOPED_TRACE(sizeof(T) == 4 ? "float" : "double");
    std::mt19937_64 g(10);
    const long n = 1001;
    const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    for (bool decay : {true, false}) {
        auto p = cast<T>(randn(n, g));
        std::vector<T> m(n, T(0)), v(n, T(0));
        Vec P = dbl(p), M(n, 0.0), V(n, 0.0);
        for (long step = 1; step <= 3; step++) {
            Vec gd = randn(n, g, 0.5);
            for (long i = 0; i < n; i += 10) gd[i] *= 1e-9;
            auto gr = cast<T>(gd);
            adamw_update(p.data(), gr.data(), m.data(), v.data(), n, AdamWArgs{lr, b1, b2, eps, wd, step}, decay);
            const double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
            for (long i = 0; i < n; i++) {
                const double gi = gr[i];
                M[i] = b1 * M[i] + (1 - b1) * gi;
                V[i] = b2 * V[i] + (1 - b2) * gi * gi;
                if (decay) P[i] *= 1 - lr * wd;
                P[i] -= lr / bc1 * M[i] / (std::sqrt(V[i] / bc2) + eps);
            }
            EXPECT_LE(rel_l2(dbl(p), P), tol) << "p, step " << step << (decay ? " decay" : "");
            EXPECT_LE(rel_l2(dbl(m), M), tol) << "m, step " << step << (decay ? " decay" : "");
            EXPECT_LE(rel_l2(dbl(v), V), tol) << "v, step " << step << (decay ? " decay" : "");
        }
    }
}
TEST(Glue, AdamW) { check_adamw<float>(1e-6), check_adamw<double>(1e-14); }

// ---- residual add fused with RMSNorm: bit for bit the two ops in sequence ------------------------
namespace {
template <typename T>
void check_residual_rmsnorm() {
    std::mt19937_64 g(99);
    const long N = 37, C = 72;
    auto a = cast<T>(randn(N * C, g)), b = cast<T>(randn(N * C, g)), w = cast<T>(randn(C, g, 0.3));
    std::vector<T> out1(N * C), y1(N * C), r1(N), out2(N * C), y2(N * C), r2(N);
    residual_forward(out1.data(), a.data(), b.data(), N * C);
    rmsnorm_forward(y1.data(), r1.data(), out1.data(), w.data(), N, C, 1e-5);
    residual_rmsnorm_forward(out2.data(), y2.data(), r2.data(), a.data(), b.data(), w.data(), N, C, 1e-5);
    EXPECT_EQ(out1, out2);
    EXPECT_EQ(y1, y2);
    EXPECT_EQ(r1, r2);
}
}  // namespace
TEST(Glue, ResidualRmsNormIsTheTwoOps) { check_residual_rmsnorm<float>(), check_residual_rmsnorm<double>(); }
