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
#include "ops/cpu/vec_math.h"
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
// The S folded queries of a block, u_q = w_q ⊙ γ_q (γ_q may be null), one row each, in the thread's
// buffer. Grown once, reused.
template <typename T>
const T* fold_queries(const T* const* ws, const T* const* gammas, int S, long D) {
    thread_local std::vector<T> u;
    if (u.size() < size_t(S) * size_t(D)) u.resize(size_t(S) * size_t(D));
    for (int q = 0; q < S; q++)
        for (long c = 0; c < D; c++) u[q * D + c] = gammas && gammas[q] ? ws[q][c] * gammas[q][c] : ws[q][c];
    return u.data();
}

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

namespace {
// Queries given per row: rows r0..r1's folded u_r = w_r ⊙ γ in the thread's tile buffer, made once
// for all the tile's sources. Grown once, reused.
template <typename T>
const T* tile_queries(const T* w, const T* gamma, long r0, long r1, long D) {
    thread_local std::vector<T> u;
    if (u.size() < size_t(kRowTile * D)) u.resize(size_t(kRowTile * D));
    for (long r = r0; r < r1; r++) std::copy_n(row_query(w, gamma, r, D), D, u.data() + (r - r0) * D);
    return u.data();
}

// (v·v, v·u) in one pass over v, summed in the same order as two simd::dot calls.
template <typename T>
std::pair<T, T> norm_and_dot(const T* v, const T* u, long n) {
    using S = simd::Simd<T>;
    using V = typename S::V;
    V a0{}, a1{}, b0{}, b1{};
    long i = 0;
    for (; i + 2 * S::W <= n; i += 2 * S::W) {
        const V x0 = S::load(v + i), x1 = S::load(v + i + S::W);
        a0 += x0 * x0;
        a1 += x1 * x1;
        b0 += x0 * S::load(u + i);
        b1 += x1 * S::load(u + i + S::W);
    }
    if (i + S::W <= n) {
        const V x = S::load(v + i);
        a0 += x * x;
        b0 += x * S::load(u + i);
        i += S::W;
    }
    const V a = a0 + a1, b = b0 + b1;
    T ss = simd::lane_sum<T, simd::kVecBytes>(&a), uv = simd::lane_sum<T, simd::kVecBytes>(&b);
    for (; i < n; i++) ss += v[i] * v[i], uv += v[i] * u[i];
    return {ss, uv};
}

// o = Σ_i a_i · srcs[i][off, off + D), in source order, a block of columns at a time in registers:
// each output element is written once, not once per source.
template <typename T>
void mix_row(T* o, const T* a, const T* const* srcs, long off, int n, long D) {
    using S = simd::Simd<T>;
    using V = typename S::V;
    long c = 0;
    for (; c + 4 * S::W <= D; c += 4 * S::W) {
        V x0{}, x1{}, x2{}, x3{};
        for (int i = 0; i < n; i++) {
            const V ai = S::splat(a[i]);
            const T* v = srcs[i] + off + c;
            x0 += ai * S::load(v);
            x1 += ai * S::load(v + S::W);
            x2 += ai * S::load(v + 2 * S::W);
            x3 += ai * S::load(v + 3 * S::W);
        }
        S::store(o + c, x0);
        S::store(o + c + S::W, x1);
        S::store(o + c + 2 * S::W, x2);
        S::store(o + c + 3 * S::W, x3);
    }
    for (; c + S::W <= D; c += S::W) {
        V x{};
        for (int i = 0; i < n; i++) x += S::splat(a[i]) * S::load(srcs[i] + off + c);
        S::store(o + c, x);
    }
    for (; c < D; c++) {
        T x = 0;
        for (int i = 0; i < n; i++) x += a[i] * srcs[i][off + c];
        o[c] = x;
    }
}
}  // namespace

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
        const T* tile_u = query_per_row ? tile_queries(w, gamma, r0, r1, D) : nullptr;
        // Scores: each source's rows of the tile, one contiguous run.
        for (int i = 0; i < n; i++)
            for (long r = r0; r < r1; r++) {
                const T* u = query_per_row ? tile_u + (r - r0) * D : shared_u;
                const T* v = srcs[i] + r * D;
                const auto [ss, uv] = norm_and_dot(v, u, D);
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
        // Values: the tile's rows again, now from cache, each output row summed in registers.
        thread_local std::vector<T> alpha;
        if (alpha.size() < size_t(n)) alpha.resize(size_t(n));
        for (long r = r0; r < r1; r++) {
            for (int i = 0; i < n; i++) {
                const T s = logit[i * N + r];
                alpha[size_t(i)] = sig ? T(1) / (T(1) + std::exp(-s)) : std::exp(s - lse[r]);
            }
            mix_row(out + r * D, alpha.data(), srcs, r * D, n, D);
        }
    }
}

// The backward walks the forward's tiles and reads every source once, a tile's rows of one source
// at a time (the forward's reason for tiles holds twice here: each source comes with its gradient):
// each (row, source) updates that source's gradient and, in the same pass, the tile's partial du.
// The partials are then summed over the tiles in order, so du does not depend on the thread count.
template <typename T>
void attnres_backward(T* const* dsrcs, T* dw, T* dgamma, const T* dout, const T* out, const T* logit, const T* rstd,
                      const T* lse, const T* const* srcs, int n, const T* w, const T* gamma, long N, long D,
                      AttnResGate gate, bool query_per_row) {
    OpTimer t_(OpFamily::attnres_bwd);
    const bool sig = gate == AttnResGate::sigmoid;
    STRATA_CHECK(n >= 1, "attnres_backward needs at least one source");
    const T* shared_u = query_per_row ? nullptr : fold_query(w, gamma, D);
    const long tiles = (N + kRowTile - 1) / kRowTile;
    // du partials: one row of D per tile (for dw with a shared query, or dγ). Grown once, reused.
    const bool need_du = !query_per_row || dgamma;
    thread_local std::vector<T> du_buf;
    if (need_du && du_buf.size() < size_t(tiles) * size_t(D)) du_buf.resize(size_t(tiles) * size_t(D));
    T* du_tiles = du_buf.data();
#pragma omp parallel for schedule(static) if (N * n * D >= 32768)
    for (long t = 0; t < tiles; t++) {
        const long r0 = t * kRowTile, r1 = std::min(N, r0 + kRowTile);
        T* du = need_du ? du_tiles + t * D : nullptr;
        if (du) std::fill(du, du + D, T(0));
        // g·h per row, and the tile's folded queries when they are given per row.
        thread_local std::vector<T> tile_gh;
        if (tile_gh.size() < size_t(kRowTile)) tile_gh.resize(size_t(kRowTile));
        for (long r = r0; r < r1; r++) tile_gh[size_t(r - r0)] = simd::dot(dout + r * D, out + r * D, D);
        const T* tile_u = query_per_row ? tile_queries(w, gamma, r0, r1, D) : nullptr;
        // Each source's rows of the tile in turn: one contiguous run of the source and of its
        // gradient, with the tile's output gradients from cache.
        for (int i = 0; i < n; i++)
            for (long r = r0; r < r1; r++) {
                const T* u = query_per_row ? tile_u + (r - r0) * D : shared_u;
                const T* wr = query_per_row ? w + r * D : nullptr;
                const T* g = dout + r * D;
                const T gh = tile_gh[size_t(r - r0)];
                const T* v = srcs[i] + r * D;
                const T gv = simd::dot(g, v, D);
                const T s = logit[i * N + r], rs = rstd[i * N + r];
                const T a = sig ? T(1) / (T(1) + std::exp(-s)) : std::exp(s - lse[r]);
                const T g_s = sig ? a * (T(1) - a) * gv : a * (gv - gh);
                const T coef = g_s * rs;  // du += Σ_i g_s_i rstd_i v_i
                if (dsrcs[i]) {
                    const T cv = g_s * s * rs * rs / T(D);
                    T* dv = dsrcs[i] + r * D;
#pragma omp simd
                    for (long c = 0; c < D; c++) dv[c] += a * g[c] + coef * u[c] - cv * v[c];
                }
                if (query_per_row) {  // this row's dw_r = du_r ⊙ γ; dγ gathers du_r ⊙ w_r
                    T* dwr = dw + r * D;
#pragma omp simd
                    for (long c = 0; c < D; c++) dwr[c] += gamma ? coef * v[c] * gamma[c] : coef * v[c];
                    if (du) {
#pragma omp simd
                        for (long c = 0; c < D; c++) du[c] += coef * v[c] * wr[c];
                    }
                } else {
#pragma omp simd
                    for (long c = 0; c < D; c++) du[c] += coef * v[c];
                }
            }
    }
    if (!need_du) return;
    // The tiles' partials in tile order, each thread a fixed slice of the columns.
#pragma omp parallel if (tiles * D >= 32768)
    {
        const std::pair<long, long> slice = thread_slice(D);
        for (long c = slice.first; c < slice.second; c++) {
            T sum = 0;
            for (long t = 0; t < tiles; t++) sum += du_tiles[t * D + c];
            if (query_per_row) {
                dgamma[c] += sum;
                continue;
            }
            dw[c] += gamma ? sum * gamma[c] : sum;
            if (dgamma) dgamma[c] += sum * w[c];
        }
    }
}

template <typename T>
void attnres_phase1(T* const* outs, T* const* logits, T* const* rstds, T* const* lses, const T* const* srcs, int n,
                    const T* const* ws, const T* const* gammas, int S, long N, long D, double eps) {
    OpTimer t_(OpFamily::attnres_fwd);
    STRATA_CHECK(n >= 1 && S >= 1, "attnres_phase1 needs at least one source and one query");
    const T* u = fold_queries(ws, gammas, S, D);
    const long tiles = (N + kRowTile - 1) / kRowTile;
#pragma omp parallel for schedule(static) if (N * n * D * S >= 32768)
    for (long t = 0; t < tiles; t++) {
        const long r0 = t * kRowTile, r1 = std::min(N, r0 + kRowTile);
        // Scores: each source's rows of the tile in one run (as in attnres_forward), each row read
        // once for all S queries.
        for (int i = 0; i < n; i++)
            for (long r = r0; r < r1; r++) {
                const T* v = srcs[i] + r * D;
                const T ss = simd::dot(v, v, D);
                const T rs = T(1) / std::sqrt(ss / T(D) + T(eps));
                for (int q = 0; q < S; q++) {
                    logits[q][i * N + r] = rs * simd::dot(u + q * D, v, D);
                    rstds[q][i * N + r] = rs;
                }
            }
        for (int q = 0; q < S; q++)
            for (long r = r0; r < r1; r++) {
                T m = -INFINITY;
                for (int i = 0; i < n; i++) m = std::max(m, logits[q][i * N + r]);
                T denom = 0;
                for (int i = 0; i < n; i++) denom += std::exp(logits[q][i * N + r] - m);
                lses[q][r] = m + std::log(denom);
            }
        // Values: the tile's rows from cache, each of the S outputs summed in registers.
        thread_local std::vector<T> alpha;
        if (alpha.size() < size_t(n)) alpha.resize(size_t(n));
        for (long r = r0; r < r1; r++)
            for (int q = 0; q < S; q++) {
                for (int i = 0; i < n; i++) alpha[size_t(i)] = std::exp(logits[q][i * N + r] - lses[q][r]);
                mix_row(outs[q] + r * D, alpha.data(), srcs, r * D, n, D);
            }
    }
}

template <typename T>
void attnres_phase1_backward(T* const* dsrcs, T* const* dws, T* const* dgammas, const T* const* douts,
                             const T* const* outs, const T* const* logits, const T* const* rstds,
                             const T* const* lses, const T* const* srcs, int n, const T* const* ws,
                             const T* const* gammas, int S, long N, long D) {
    OpTimer t_(OpFamily::attnres_bwd);
    STRATA_CHECK(n >= 1 && S >= 1, "attnres_phase1_backward needs at least one source and one query");
    const T* u = fold_queries(ws, gammas, S, D);
    const long tiles = (N + kRowTile - 1) / kRowTile;
    constexpr long kCols = 64;  // columns of a source gradient summed over the queries at a time
    // du partials: S rows of D per tile, summed over the tiles in order below.
    thread_local std::vector<T> du_buf;
    if (du_buf.size() < size_t(tiles) * size_t(S) * size_t(D)) du_buf.resize(size_t(tiles) * size_t(S) * size_t(D));
    T* du_tiles = du_buf.data();
#pragma omp parallel for schedule(static) if (N * n * D * S >= 32768)
    for (long t = 0; t < tiles; t++) {
        const long r0 = t * kRowTile, r1 = std::min(N, r0 + kRowTile);
        T* du = du_tiles + t * S * D;
        std::fill(du, du + S * D, T(0));
        // g_q·h_q per (query, row) of the tile.
        thread_local std::vector<T> gh;
        if (gh.size() < size_t(S) * size_t(kRowTile)) gh.resize(size_t(S) * size_t(kRowTile));
        for (int q = 0; q < S; q++)
            for (long r = r0; r < r1; r++) gh[size_t(q * kRowTile + r - r0)] = simd::dot(douts[q] + r * D, outs[q] + r * D, D);
        // Each source's rows of the tile in one run; each row serves the S queries from cache, and its
        // gradient row gets the S queries' terms in one pass.
        thread_local std::vector<T> qa, qcoef;
        if (qa.size() < size_t(S)) qa.resize(size_t(S)), qcoef.resize(size_t(S));
        for (int i = 0; i < n; i++)
            for (long r = r0; r < r1; r++) {
                const T* v = srcs[i] + r * D;
                T cv_sum = 0;
                for (int q = 0; q < S; q++) {
                    const T s = logits[q][i * N + r], rs = rstds[q][i * N + r];
                    const T a = std::exp(s - lses[q][r]);
                    const T g_s = a * (simd::dot(douts[q] + r * D, v, D) - gh[size_t(q * kRowTile + r - r0)]);
                    const T coef = g_s * rs;
                    qa[size_t(q)] = a, qcoef[size_t(q)] = coef;
                    cv_sum += g_s * s * rs * rs / T(D);
                    T* duq = du + q * D;
#pragma omp simd
                    for (long c = 0; c < D; c++) duq[c] += coef * v[c];
                }
                if (!dsrcs[i]) continue;
                T* dv = dsrcs[i] + r * D;
                for (long c0 = 0; c0 < D; c0 += kCols) {  // a block of columns in registers over the S queries
                    const long c1 = std::min(D, c0 + kCols);
                    T acc[kCols];
#pragma omp simd
                    for (long c = c0; c < c1; c++) acc[c - c0] = -cv_sum * v[c];
                    for (int q = 0; q < S; q++) {
                        const T a = qa[size_t(q)], coef = qcoef[size_t(q)];
                        const T *g = douts[q] + r * D, *uq = u + q * D;
#pragma omp simd
                        for (long c = c0; c < c1; c++) acc[c - c0] += a * g[c] + coef * uq[c];
                    }
#pragma omp simd
                    for (long c = c0; c < c1; c++) dv[c] += acc[c - c0];
                }
            }
    }
    // The tiles' partials in tile order, each thread a fixed slice of the columns.
#pragma omp parallel if (tiles * S * D >= 32768)
    {
        const std::pair<long, long> slice = thread_slice(D);
        for (int q = 0; q < S; q++)
            for (long c = slice.first; c < slice.second; c++) {
                T sum = 0;
                for (long t = 0; t < tiles; t++) sum += du_tiles[(t * S + q) * D + c];
                const T* gq = gammas ? gammas[q] : nullptr;
                dws[q][c] += gq ? sum * gq[c] : sum;
                if (dgammas && dgammas[q]) dgammas[q][c] += sum * ws[q][c];
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
        const T ss = simd::dot(v, v, D), uv = simd::dot(u, v, D);
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
    template void attnres_phase2<T>(T*, T*, T*, T*, const T*, int, const T*, const T*, long, long, double);   \
    template void attnres_phase1_backward<T>(T* const*, T* const*, T* const*, const T* const*, const T* const*, \
                                             const T* const*, const T* const*, const T* const*, const T* const*, \
                                             int, const T* const*, const T* const*, int, long, long);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)

}  // namespace strata
