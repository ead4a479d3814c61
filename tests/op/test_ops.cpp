// The op table, in the spirit of ggml's test-backend-ops: every op × several shapes, checked in two
// modes:
//   fwd  — the float32 op against a naive float64 reference written here (relative L2 ≤ 1e-6);
//   grad — the float64 backward against float64 central finite differences of the float64 forward,
//          along random directions (relative error ≤ 1e-6).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ops/ops.h"

using namespace strata;
using Vec = std::vector<double>;

namespace {

template <typename T>
std::vector<T> cast(const Vec& v) {
    return std::vector<T>(v.begin(), v.end());
}

double rel_l2(const Vec& a, const Vec& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

Vec randn(size_t n, std::mt19937_64& g, double scale = 1.0) {
    std::normal_distribution<double> d(0.0, scale);
    Vec v(n);
    for (auto& x : v) x = d(g);
    return v;
}

// One row of the table. Inputs are float64; `fwd32`/`fwd64` run the op at that precision, `bwd64`
// returns the gradient of <dout, out> w.r.t. every differentiable input, `ref` is the naive truth.
struct OpCase {
    std::string name;
    std::vector<Vec> inputs;
    std::vector<bool> differentiable;
    std::function<Vec(const std::vector<Vec>&)> fwd32, fwd64, ref;
    std::function<std::vector<Vec>(const std::vector<Vec>&, const Vec& dout)> bwd64;
};

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
    c.fwd32 = [=](auto& in) { return f(0.f, in); };
    c.fwd64 = [=](auto& in) { return f(0.0, in); };
    c.ref = [=](auto& in) {
        Vec y(N * OC, 0.0);
        for (long n = 0; n < N; n++)
            for (long o = 0; o < OC; o++)
                for (long i = 0; i < IC; i++) y[n * OC + o] += in[0][n * IC + i] * in[1][o * IC + i];
        return y;
    };
    c.bwd64 = [=](auto& in, const Vec& dy) {
        Vec dx(N * IC, 0.0), dw(OC * IC, 0.0);
        matmul_backward(dx.data(), dw.data(), dy.data(), in[0].data(), in[1].data(), N, IC, OC);
        return std::vector<Vec>{dx, dw};
    };
    return c;
}

OpCase rmsnorm_case(long N, long C, std::mt19937_64& g) {
    OpCase c;
    c.name = "rmsnorm N=" + std::to_string(N) + " C=" + std::to_string(C);
    Vec w = randn(C, g, 0.3);
    for (auto& x : w) x += 1.0;
    c.inputs = {randn(N * C, g), w};
    c.differentiable = {true, true};
    const double eps = 1e-5;
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T = decltype(zero);
        auto x = cast<T>(in[0]), wt = cast<T>(in[1]);
        std::vector<T> y(N * C), r(N);
        rmsnorm_forward(y.data(), r.data(), x.data(), wt.data(), N, C, eps);
        return Vec(y.begin(), y.end());
    };
    c.fwd32 = [=](auto& in) { return f(0.f, in); };
    c.fwd64 = [=](auto& in) { return f(0.0, in); };
    c.ref = [=](auto& in) {
        Vec y(N * C);
        for (long n = 0; n < N; n++) {
            double ms = 0;
            for (long i = 0; i < C; i++) ms += in[0][n * C + i] * in[0][n * C + i] / C;
            for (long i = 0; i < C; i++) y[n * C + i] = in[0][n * C + i] / std::sqrt(ms + eps) * in[1][i];
        }
        return y;
    };
    c.bwd64 = [=](auto& in, const Vec& dy) {
        Vec y(N * C), r(N), dx(N * C, 0.0), dw(C, 0.0);
        rmsnorm_forward(y.data(), r.data(), in[0].data(), in[1].data(), N, C, eps);
        rmsnorm_backward(dx.data(), dw.data(), dy.data(), in[0].data(), in[1].data(), r.data(), N, C);
        return std::vector<Vec>{dx, dw};
    };
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
    c.fwd32 = [=](auto& in) { return f(0.f, in); };
    c.fwd64 = [=](auto& in) { return f(0.0, in); };
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
    c.bwd64 = [=](auto& in, const Vec& dy) {
        Vec cs(T * d / 2), sn(T * d / 2), dx = dy;
        rope_table(cs.data(), sn.data(), T, d, theta);
        rope_backward(dx.data(), pos.data(), cs.data(), sn.data(), B * T, H, d);
        return std::vector<Vec>{dx};
    };
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
    c.fwd32 = [=](auto& in) { return f(0.f, in); };
    c.fwd64 = [=](auto& in) { return f(0.0, in); };
    c.ref = [=](auto& in) {
        Vec y(N * F);
        for (long n = 0; n < N; n++)
            for (long i = 0; i < F; i++) {
                double gt = in[0][n * 2 * F + i], u = in[0][n * 2 * F + F + i];
                y[n * F + i] = gt / (1 + std::exp(-gt)) * u;
            }
        return y;
    };
    c.bwd64 = [=](auto& in, const Vec& dy) {
        Vec dgu(N * 2 * F, 0.0);
        swiglu_backward(dgu.data(), dy.data(), in[0].data(), N, F);
        return std::vector<Vec>{dgu};
    };
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
    c.fwd32 = [=](auto& in) { return f(0.f, in); };
    c.fwd64 = [=](auto& in) { return f(0.0, in); };
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
    c.bwd64 = [=](auto& in, const Vec& dy) {
        Vec o(B * T * H * d), lse(B * H * T), dq(in[0].size(), 0.0), dk(in[1].size(), 0.0), dv(in[2].size(), 0.0);
        attention_forward(o.data(), lse.data(), in[0].data(), in[1].data(), in[2].data(), a);
        attention_backward(dq.data(), dk.data(), dv.data(), dy.data(), o.data(), lse.data(), in[0].data(),
                           in[1].data(), in[2].data(), a);
        return std::vector<Vec>{dq, dk, dv};
    };
    return c;
}

// MoDA: the attention above plus, for every query token, its own L depth keys/values (slots of a
// (B, T, L_max, Hk, d) buffer) inside the same softmax.
OpCase moda_case(long B, long T, long H, long Hk, long d, long L, long L_max, std::mt19937_64& g) {
    OpCase c;
    c.name = "moda B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) + " Hk=" +
             std::to_string(Hk) + " d=" + std::to_string(d) + " L=" + std::to_string(L) + "/" + std::to_string(L_max);
    const long nd = B * T * L_max * Hk * d;
    c.inputs = {randn(B * T * H * d, g), randn(B * T * Hk * d, g), randn(B * T * Hk * d, g), randn(nd, g),
                randn(nd, g)};
    c.differentiable = {true, true, true, true, true};
    AttnDims a{B, T, T, H, Hk, d, 0, T * Hk * d};
    auto f = [=](auto zero, const std::vector<Vec>& in) {
        using T_ = decltype(zero);
        auto q = cast<T_>(in[0]), k = cast<T_>(in[1]), v = cast<T_>(in[2]), kd = cast<T_>(in[3]), vd = cast<T_>(in[4]);
        std::vector<T_> o(B * T * H * d), lse(B * H * T);
        moda_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), kd.data(), vd.data(), L, L_max, a);
        return Vec(o.begin(), o.end());
    };
    c.fwd32 = [=](auto& in) { return f(0.f, in); };
    c.fwd64 = [=](auto& in) { return f(0.0, in); };
    c.ref = [=](auto& in) {  // one explicit softmax over the t+1 sequence keys and the L depth keys
        Vec o(B * T * H * d, 0.0);
        auto dot = [&](const double* x, const double* y) {
            double acc = 0;
            for (long i = 0; i < d; i++) acc += x[i] * y[i];
            return acc / std::sqrt(double(d));
        };
        for (long b = 0; b < B; b++)
            for (long h = 0; h < H; h++) {
                const long kh = h / (H / Hk);
                for (long t = 0; t < T; t++) {
                    const double* q = &in[0][((b * T + t) * H + h) * d];
                    std::vector<const double*> keys, vals;
                    for (long u = 0; u <= t; u++) {
                        keys.push_back(&in[1][((b * T + u) * Hk + kh) * d]);
                        vals.push_back(&in[2][((b * T + u) * Hk + kh) * d]);
                    }
                    for (long i = 0; i < L; i++) {
                        keys.push_back(&in[3][(((b * T + t) * L_max + i) * Hk + kh) * d]);
                        vals.push_back(&in[4][(((b * T + t) * L_max + i) * Hk + kh) * d]);
                    }
                    Vec s(keys.size());
                    double mx = -1e300, z = 0;
                    for (size_t j = 0; j < keys.size(); j++) mx = std::max(mx, s[j] = dot(q, keys[j]));
                    for (auto& x : s) z += (x = std::exp(x - mx));
                    for (size_t j = 0; j < keys.size(); j++)
                        for (long i = 0; i < d; i++) o[((b * T + t) * H + h) * d + i] += s[j] / z * vals[j][i];
                }
            }
        return o;
    };
    c.bwd64 = [=](auto& in, const Vec& dy) {
        Vec o(B * T * H * d), lse(B * H * T), dq(in[0].size(), 0.0), dk(in[1].size(), 0.0), dv(in[2].size(), 0.0),
            dkd(nd, 0.0), dvd(nd, 0.0);
        moda_forward(o.data(), lse.data(), in[0].data(), in[1].data(), in[2].data(), in[3].data(), in[4].data(), L,
                     L_max, a);
        moda_backward(dq.data(), dk.data(), dv.data(), dkd.data(), dvd.data(), dy.data(), o.data(), lse.data(),
                      in[0].data(), in[1].data(), in[2].data(), in[3].data(), in[4].data(), L, L_max, a);
        return std::vector<Vec>{dq, dk, dv, dkd, dvd};
    };
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
    c.fwd32 = [=](auto& in) { return f(0.f, in); };
    c.fwd64 = [=](auto& in) { return f(0.0, in); };
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
    c.bwd64 = [=](auto& in, const Vec& dy) {
        Vec loss(N), lse(N), dz(N * V, 0.0);
        crossentropy_forward(loss.data(), lse.data(), in[0].data(), tg.data(), N, V);
        for (long n = 0; n < N; n++)
            crossentropy_backward(dz.data() + n * V, in[0].data() + n * V, lse.data() + n, tg.data() + n, 1, V, dy[n]);
        return std::vector<Vec>{dz};
    };
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
    c.fwd32 = [=](auto& in) { return f(0.f, in); };
    c.fwd64 = [=](auto& in) { return f(0.0, in); };
    c.ref = [=](auto& in) {
        Vec y(N * C);
        for (long n = 0; n < N; n++)
            for (long i = 0; i < C; i++) y[n * C + i] = in[0][tok[n] * C + i];
        return y;
    };
    c.bwd64 = [=](auto& in, const Vec& dy) {
        Vec dt(V * C, 0.0);
        embedding_backward(dt.data(), dy.data(), tok.data(), N, C);
        return std::vector<Vec>{dt};
    };
    return c;
}

// AttnRes over n sources of (N, D); inputs are the n sources, then w, then γ (when with_gamma).
OpCase attnres_case(long N, long D, int n, bool with_gamma, std::mt19937_64& g) {
    OpCase c;
    c.name = "attnres N=" + std::to_string(N) + " D=" + std::to_string(D) + " n=" + std::to_string(n) +
             (with_gamma ? " gamma" : "");
    for (int i = 0; i < n; i++) c.inputs.push_back(randn(N * D, g, 1.0 + 0.25 * i));  // sources of different scales
    c.inputs.push_back(randn(D, g, 0.15));  // logits of order 1: far from uniform, but smooth enough for FD
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
                        with_gamma ? gm.data() : nullptr, N, D, eps);
        return Vec(y.begin(), y.end());
    };
    c.fwd32 = [=](auto& in) { return f(0.f, in); };
    c.fwd64 = [=](auto& in) { return f(0.0, in); };
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
                    dot += in[n][k] * key;
                }
                s[i] = dot;
                m = std::max(m, dot);
            }
            double z = 0;
            for (int i = 0; i < n; i++) z += std::exp(s[i] - m);
            for (int i = 0; i < n; i++)
                for (long k = 0; k < D; k++) y[r * D + k] += std::exp(s[i] - m) / z * in[i][r * D + k];
        }
        return y;
    };
    c.bwd64 = [=](auto& in, const Vec& dy) {
        std::vector<const double*> ptr;
        for (int i = 0; i < n; i++) ptr.push_back(in[i].data());
        const double* gm = with_gamma ? in[n + 1].data() : nullptr;
        Vec y(N * D), lg(n * N), rs(n * N), lse(N);
        attnres_forward(y.data(), lg.data(), rs.data(), lse.data(), ptr.data(), n, in[n].data(), gm, N, D, eps);
        std::vector<Vec> grads(n, Vec(N * D, 0.0));
        std::vector<double*> dptr;
        for (auto& d : grads) dptr.push_back(d.data());
        Vec dw(D, 0.0), dg(D, 0.0);
        attnres_backward(dptr.data(), dw.data(), with_gamma ? dg.data() : nullptr, dy.data(), y.data(), lg.data(),
                         rs.data(), lse.data(), ptr.data(), n, in[n].data(), gm, N, D);
        grads.push_back(dw);
        if (with_gamma) grads.push_back(dg);
        return grads;
    };
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
    for (long T : {1, 3, 65}) {
        t.push_back(attnres_case(T, 24, 1, true, g));   // one source: out = v exactly, zero logit gradient
        t.push_back(attnres_case(T, 24, 3, false, g));  // parameter-free key norm
        t.push_back(attnres_case(T, 40, 7, true, g));
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

// The decode path: attention for query rows at positions q_pos0.. over a longer KV cache must equal
// the corresponding rows of full causal attention.
TEST(Attention, CachedRowsMatchFullAttention) {
    std::mt19937_64 g(7);
    const long B = 2, T = 70, H = 4, Hk = 2, d = 16, max_T = 96, p0 = 66;
    Vec q = randn(B * T * H * d, g), k = randn(B * T * Hk * d, g), v = randn(B * T * Hk * d, g);
    Vec o(B * T * H * d), lse(B * H * T);
    attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), AttnDims{B, T, T, H, Hk, d, 0, T * Hk * d});
    Vec kc(B * max_T * Hk * d, 0.0), vc(B * max_T * Hk * d, 0.0), qn(B * (T - p0) * H * d);
    for (long b = 0; b < B; b++) {
        for (long t = 0; t < T; t++)
            for (long i = 0; i < Hk * d; i++) {
                kc[(b * max_T + t) * Hk * d + i] = k[(b * T + t) * Hk * d + i];
                vc[(b * max_T + t) * Hk * d + i] = v[(b * T + t) * Hk * d + i];
            }
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
    const long N = 37, D = 48;
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

// MoDA's decode path: query rows at positions p0.. over a longer KV cache, each with its own depth
// slots, must equal the corresponding rows of the full causal MoDA; with no slots it is attention.
TEST(MoDA, CachedRowsMatchFullAndNoDepthIsAttention) {
    std::mt19937_64 g(8);
    const long B = 2, T = 70, H = 4, Hk = 2, d = 16, max_T = 96, p0 = 66, L = 3, Lm = 4;
    Vec q = randn(B * T * H * d, g), k = randn(B * T * Hk * d, g), v = randn(B * T * Hk * d, g);
    Vec kd = randn(B * T * Lm * Hk * d, g), vd = randn(B * T * Lm * Hk * d, g);
    Vec o(B * T * H * d), lse(B * H * T);
    moda_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), kd.data(), vd.data(), L, Lm,
                 AttnDims{B, T, T, H, Hk, d, 0, T * Hk * d});
    const long n = T - p0, slot = Lm * Hk * d;
    Vec kc(B * max_T * Hk * d, 0.0), vc(B * max_T * Hk * d, 0.0), qn(B * n * H * d), kdn(B * n * slot), vdn(B * n * slot);
    for (long b = 0; b < B; b++) {
        for (long t = 0; t < T; t++)
            for (long i = 0; i < Hk * d; i++) {
                kc[(b * max_T + t) * Hk * d + i] = k[(b * T + t) * Hk * d + i];
                vc[(b * max_T + t) * Hk * d + i] = v[(b * T + t) * Hk * d + i];
            }
        for (long t = p0; t < T; t++) {
            for (long i = 0; i < H * d; i++) qn[(b * n + t - p0) * H * d + i] = q[(b * T + t) * H * d + i];
            for (long i = 0; i < slot; i++) {
                kdn[(b * n + t - p0) * slot + i] = kd[(b * T + t) * slot + i];
                vdn[(b * n + t - p0) * slot + i] = vd[(b * T + t) * slot + i];
            }
        }
    }
    Vec on(qn.size()), lsen(B * H * n);
    moda_forward(on.data(), lsen.data(), qn.data(), kc.data(), vc.data(), kdn.data(), vdn.data(), L, Lm,
                 AttnDims{B, n, T, H, Hk, d, p0, max_T * Hk * d});
    for (long b = 0; b < B; b++)
        for (long t = p0; t < T; t++)
            for (long i = 0; i < H * d; i++)
                EXPECT_NEAR(on[(b * n + t - p0) * H * d + i], o[(b * T + t) * H * d + i], 1e-12);

    Vec o0(o.size()), l0(lse.size()), oa(o.size()), la(lse.size());
    const AttnDims a{B, T, T, H, Hk, d, 0, T * Hk * d};
    moda_forward(o0.data(), l0.data(), q.data(), k.data(), v.data(), kd.data(), vd.data(), 0, Lm, a);
    attention_forward(oa.data(), la.data(), q.data(), k.data(), v.data(), a);
    EXPECT_EQ(o0, oa);
    EXPECT_EQ(l0, la);
}
