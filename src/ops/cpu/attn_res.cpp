// AttnRes: each sublayer's input is a softmax over earlier sources along depth, per token, with a
// learned input-independent query w and an RMSNorm (weight γ) applied to the keys only.
//
// Backward, per row (g = dout, h = out, u = w ⊙ γ, k_i = γ ⊙ v_i · rstd_i):
//   g_s_i = α_i · (g·v_i − g·h)           (softmax; the sigmoid gate: α_i (1 − α_i) · g·v_i)
//   dv_i += α_i g + g_s_i · (rstd_i u − s_i rstd_i² / D · v_i)        (∂rstd/∂v = −rstd³ v / D)
//   du   += Σ_rows Σ_i g_s_i rstd_i v_i,   dw = du ⊙ γ,   dγ = du ⊙ w
// With a query per row (the input-dependent ablation) du is kept per row: dw_r = du_r ⊙ γ and
// dγ = Σ_rows du_r ⊙ w_r.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/cpu/threads.h"
#include "ops/ops.h"
#include "ops/profile.h"

namespace strata {

namespace {
// The query folded with the key-norm weight: u = w ⊙ γ. Grown once, reused.
template <typename T>
const T* fold_query(const T* w, const T* gamma, long D) {
    if (!gamma) return w;
    thread_local std::vector<T> u;
    if (u.size() < size_t(D)) u.resize(size_t(D));
    for (long c = 0; c < D; c++) u[c] = w[c] * gamma[c];
    return u.data();
}
}  // namespace

namespace {
// Row r's folded query, for queries given per row: u_r = w_r ⊙ γ into the thread's buffer.
template <typename T>
const T* row_query(const T* w, const T* gamma, long r, long D) {
    thread_local std::vector<T> u;
    if (u.size() < size_t(D)) u.resize(size_t(D));
    const T* wr = w + r * D;
    for (long c = 0; c < D; c++) u[c] = gamma ? wr[c] * gamma[c] : wr[c];
    return u.data();
}
}  // namespace

// Rows per tile of the forward. The sources are n separate arrays: read one row at a time in turn,
// each stream advances by D elements and then waits for the other n − 1, too short a run for the
// hardware prefetcher (the op ran at under half the copy bandwidth). A tile reads kRowTile
// consecutive rows of each source at once, then mixes them from L2 (n · kRowTile · D floats: 432 KiB
// at n = 9, D = 384). Software prefetching of the next tile measured slower here.
constexpr long kRowTile = 32;


template <typename T>
void attnres_forward(T* out, T* logit, T* rstd, T* lse, const T* const* srcs, int n, const T* w, const T* gamma,
                     long N, long D, double eps, AttnResGate gate, bool query_per_row) {
    OpTimer t_(OpFamily::attnres_fwd);
    STRATA_CHECK(n >= 1, "attnres_forward needs at least one source");
    const T* shared_u = query_per_row ? nullptr : fold_query(w, gamma, D);
    const bool sig = gate == AttnResGate::sigmoid;
    const long tiles = (N + kRowTile - 1) / kRowTile;
#pragma omp parallel for schedule(static) if (N * n * D >= 32768)
    for (long t = 0; t < tiles; t++) {
        const long r0 = t * kRowTile, r1 = std::min(N, r0 + kRowTile);
        // Scores: each source's rows of the tile, one contiguous run.
        for (int i = 0; i < n; i++)
            for (long r = r0; r < r1; r++) {
                const T* u = query_per_row ? row_query(w, gamma, r, D) : shared_u;
                const T* v = srcs[i] + r * D;
                T ss = 0, uv = 0;
#pragma omp simd reduction(+ : ss, uv)
                for (long c = 0; c < D; c++) ss += v[c] * v[c], uv += u[c] * v[c];
                const T rs = T(1) / std::sqrt(ss / T(D) + T(eps));
                rstd[i * N + r] = rs;
                logit[i * N + r] = rs * uv;
            }
        for (long r = r0; r < r1; r++) {
            T l = 0;
            if (!sig) {
                T m = -INFINITY;
                for (int i = 0; i < n; i++) m = std::max(m, logit[i * N + r]);
                T denom = 0;
                for (int i = 0; i < n; i++) denom += std::exp(logit[i * N + r] - m);
                l = m + std::log(denom);
            }
            lse[r] = l;
        }
        // Values: the tile's rows again, now from cache.
        for (int i = 0; i < n; i++)
            for (long r = r0; r < r1; r++) {
                const T s = logit[i * N + r];
                const T a = sig ? T(1) / (T(1) + std::exp(-s)) : std::exp(s - lse[r]);
                const T* v = srcs[i] + r * D;
                T* o = out + r * D;
                if (i == 0) {
#pragma omp simd
                    for (long c = 0; c < D; c++) o[c] = a * v[c];
                } else {
#pragma omp simd
                    for (long c = 0; c < D; c++) o[c] += a * v[c];
                }
            }
    }
}

template <typename T>
void attnres_backward(T* const* dsrcs, T* dw, T* dgamma, const T* dout, const T* out, const T* logit, const T* rstd,
                      const T* lse, const T* const* srcs, int n, const T* w, const T* gamma, long N, long D,
                      AttnResGate gate, bool query_per_row) {
    OpTimer t_(OpFamily::attnres_bwd);
    const bool sig = gate == AttnResGate::sigmoid;
    STRATA_CHECK(n >= 1, "attnres_backward needs at least one source");
    const T* shared_u = query_per_row ? nullptr : fold_query(w, gamma, D);
    // g_s for every (source, row), then the per-row value gradients.
    thread_local std::vector<T> gs_buf;
    if (gs_buf.size() < size_t(n) * size_t(N)) gs_buf.resize(size_t(n) * size_t(N));
    T* gs = gs_buf.data();
#pragma omp parallel for schedule(static) if (N * n * D >= 32768)
    for (long r = 0; r < N; r++) {
        const T* u = query_per_row ? row_query(w, gamma, r, D) : shared_u;
        const T* g = dout + r * D;
        const T* h = out + r * D;
        T gh = 0;
#pragma omp simd reduction(+ : gh)
        for (long c = 0; c < D; c++) gh += g[c] * h[c];
        for (int i = 0; i < n; i++) {
            const T* v = srcs[i] + r * D;
            T gv = 0;
#pragma omp simd reduction(+ : gv)
            for (long c = 0; c < D; c++) gv += g[c] * v[c];
            const T s = logit[i * N + r];
            const T a = sig ? T(1) / (T(1) + std::exp(-s)) : std::exp(s - lse[r]);
            const T g_s = sig ? a * (T(1) - a) * gv : a * (gv - gh);
            gs[i * N + r] = g_s;
            if (!dsrcs[i]) continue;
            const T rs = rstd[i * N + r];
            const T cu = g_s * rs, cv = g_s * logit[i * N + r] * rs * rs / T(D);
            T* dv = dsrcs[i] + r * D;
#pragma omp simd
            for (long c = 0; c < D; c++) dv[c] += a * g[c] + cu * u[c] - cv * v[c];
        }
        if (query_per_row) {  // this row's du = Σ_i g_s_i rstd_i v_i, and dw_r = du ⊙ γ
            T* dwr = dw + r * D;
            for (int i = 0; i < n; i++) {
                const T coef = gs[i * N + r] * rstd[i * N + r];
                const T* v = srcs[i] + r * D;
#pragma omp simd
                for (long c = 0; c < D; c++) dwr[c] += gamma ? coef * v[c] * gamma[c] : coef * v[c];
            }
        }
    }
    if (query_per_row && !dgamma) return;
    // du: each thread owns a fixed slice of the columns and sums them over (row, source) in order.
#pragma omp parallel if (N * n * D >= 32768)
    {
        const std::pair<long, long> slice = thread_slice(D);  // not a structured binding: the simd loop
        const long c0 = slice.first, c1 = slice.second;        // below may not capture one (clang)
        thread_local std::vector<T> du_buf;
        if (du_buf.size() < size_t(D)) du_buf.resize(size_t(D));
        T* du = du_buf.data();
        std::fill(du, du + (c1 - c0), T(0));
        for (long r = 0; r < N; r++)
            for (int i = 0; i < n; i++) {
                const T coef = gs[i * N + r] * rstd[i * N + r];
                const T* v = srcs[i] + r * D;
                if (query_per_row) {  // dγ = Σ_rows du_r ⊙ w_r
                    const T* wr = w + r * D;
#pragma omp simd
                    for (long c = c0; c < c1; c++) du[c - c0] += coef * v[c] * wr[c];
                } else {
#pragma omp simd
                    for (long c = c0; c < c1; c++) du[c - c0] += coef * v[c];
                }
            }
        for (long c = c0; c < c1; c++) {
            if (query_per_row) {
                dgamma[c] += du[c - c0];
                continue;
            }
            dw[c] += gamma ? du[c - c0] * gamma[c] : du[c - c0];
            if (dgamma) dgamma[c] += du[c - c0] * w[c];
        }
    }
}

template <typename T>
void attnres_phase1(T* const* outs, T* const* logits, T* const* rstds, T* const* lses, const T* const* srcs, int n,
                    const T* const* ws, const T* const* gammas, int S, long N, long D, double eps) {
    OpTimer t_(OpFamily::attnres_fwd);
    STRATA_CHECK(n >= 1 && S >= 1, "attnres_phase1 needs at least one source and one query");
    // The S folded queries u_q = w_q ⊙ γ_q, one row each. Grown once, reused.
    thread_local std::vector<T> u_buf;
    if (u_buf.size() < size_t(S) * size_t(D)) u_buf.resize(size_t(S) * size_t(D));
    T* u = u_buf.data();
    for (int q = 0; q < S; q++)
        for (long c = 0; c < D; c++) u[q * D + c] = gammas && gammas[q] ? ws[q][c] * gammas[q][c] : ws[q][c];
#pragma omp parallel for schedule(static) if (N * n * D * S >= 32768)
    for (long r = 0; r < N; r++) {
        // Scores: each source row is read once for all S queries.
        for (int i = 0; i < n; i++) {
            const T* v = srcs[i] + r * D;
            T ss = 0;
#pragma omp simd reduction(+ : ss)
            for (long c = 0; c < D; c++) ss += v[c] * v[c];
            const T rs = T(1) / std::sqrt(ss / T(D) + T(eps));
            for (int q = 0; q < S; q++) {
                const T* uq = u + q * D;
                T uv = 0;
#pragma omp simd reduction(+ : uv)
                for (long c = 0; c < D; c++) uv += uq[c] * v[c];
                logits[q][i * N + r] = rs * uv;
                rstds[q][i * N + r] = rs;
            }
        }
        for (int q = 0; q < S; q++) {
            T m = -INFINITY;
            for (int i = 0; i < n; i++) m = std::max(m, logits[q][i * N + r]);
            T denom = 0;
            for (int i = 0; i < n; i++) denom += std::exp(logits[q][i * N + r] - m);
            lses[q][r] = m + std::log(denom);
            std::fill(outs[q] + r * D, outs[q] + (r + 1) * D, T(0));
        }
        // Values: again one read of each source row for all S outputs.
        for (int i = 0; i < n; i++) {
            const T* v = srcs[i] + r * D;
            for (int q = 0; q < S; q++) {
                const T a = std::exp(logits[q][i * N + r] - lses[q][r]);
                T* o = outs[q] + r * D;
#pragma omp simd
                for (long c = 0; c < D; c++) o[c] += a * v[c];
            }
        }
    }
}

template <typename T>
void attnres_phase2(T* out, T* logit, T* rstd, T* lse, const T* p, int n, const T* w, const T* gamma, long N, long D,
                    double eps) {
    OpTimer t_(OpFamily::attnres_fwd);
    const T* u = fold_query(w, gamma, D);
#pragma omp parallel for schedule(static) if (N * D >= 32768)
    for (long r = 0; r < N; r++) {
        const T* v = p + r * D;
        T ss = 0, uv = 0;
#pragma omp simd reduction(+ : ss, uv)
        for (long c = 0; c < D; c++) ss += v[c] * v[c], uv += u[c] * v[c];
        const T rs = T(1) / std::sqrt(ss / T(D) + T(eps));
        const T s = rs * uv, l1 = lse[r];
        const T l = std::max(l1, s) + std::log1p(std::exp(-std::abs(l1 - s)));
        const T sig = std::exp(s - l);
        logit[n * N + r] = s;
        rstd[n * N + r] = rs;
        lse[r] = l;
        T* o = out + r * D;
#pragma omp simd
        for (long c = 0; c < D; c++) o[c] = (T(1) - sig) * o[c] + sig * v[c];
    }
}

#define STRATA_INSTANTIATE(T)                                                                                   \
    template void attnres_forward<T>(T*, T*, T*, T*, const T* const*, int, const T*, const T*, long, long,      \
                                     double, AttnResGate, bool);                                                \
    template void attnres_backward<T>(T* const*, T*, T*, const T*, const T*, const T*, const T*, const T*,      \
                                      const T* const*, int, const T*, const T*, long, long, AttnResGate, bool); \
    template void attnres_phase1<T>(T* const*, T* const*, T* const*, T* const*, const T* const*, int,          \
                                    const T* const*, const T* const*, int, long, long, double);               \
    template void attnres_phase2<T>(T*, T*, T*, T*, const T*, int, const T*, const T*, long, long, double);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)

}  // namespace strata
