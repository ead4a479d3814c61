// Causal grouped-query attention (and MoDA) with bf16 storage on AVX512-BF16: the kernel of
// ops/cpu/attention.cpp with its tile GEMMs on VDPBF16PS (ops/cpu/tile_gemm_bf16.h) instead of float
// FMAs on widened copies. The tasks, the causal bounds, the online softmax and the depth slots are the
// float kernel's; what changes is what the GEMMs read:
//   - q, k, v are read as bf16, never widened: each task packs the operands it needs once (K and V
//     pair-interleaved over d for S = Q·Kᵀ and dP = dO·Vᵀ, and over the keys for O += P·V and
//     dQ += dS·K; Q and dO over the queries for dK and dV);
//   - the probabilities P and dS = P ⊙ (dP − D) are computed in float, then rounded to bf16 as the
//     next GEMM's input, as a bf16 framework stores them (FlashAttention does the same on GPUs);
//   - dO (float) is rounded to bf16 as a GEMM input; D = dO·O uses the float dO.
// Scores, softmax statistics, the running output and every gradient are float; the sums run in a fixed
// order, so results do not depend on the thread count. docs/precision.md gives the error budget.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/attention_shared.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/tile_gemm_bf16.h"

// GCC's target pragma; clang ignores it and takes its own attribute pragma, so a build whose -march
// lacks AVX-512 (a Zen 3's -march=native, say) still compiles these kernels for AVX512-BF16.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")
#endif

namespace strata::attn {

namespace {
using tile_bf16::Pair;
constexpr long W = tile_bf16::W;

long vceil(long n) { return (n + W - 1) / W * W; }
// whole vectors plus one: rows of a tile then spread over the cache's sets (see attention.cpp)
long padded(long n) { return vceil(n) + W; }

// Leading dimensions of one call: floats for the float tiles, words (bf16 pairs) for the packed ones.
struct Layout {
    long dp;  // pairs along d
    long S;   // score / probability tiles (float, over a tile's keys)
    long T;   // a pair-of-d row over the keys (Kᵀ, Vᵀ), the keys rounded up to whole tiles
    long Kp;  // rows of a pair-of-keys pack: ⌈Tk/2⌉
    long Qp;  // rows of a pair-of-queries pack: ⌈Tq/2⌉
    long V;   // a pair-of-rows row over d (V, K, Q, dO packed by rows)
    long A;   // a bf16 row of d (Q, dO as left operands)
    long PA;  // a bf16 row of a tile's keys (P, dS as left operands)
    long PQ;  // a pair-of-query-rows row over a tile's keys (Pᵀ, dSᵀ as left operands)
    explicit Layout(const AttnDims& a)
        : dp((a.d + 1) / 2), S(padded(BK)), T(padded((a.Tk + BK - 1) / BK * BK)), Kp((a.Tk + 1) / 2),
          Qp((a.Tq + 1) / 2), V(padded(a.d)), A(padded(dp)), PA(padded(BK / 2)), PQ(padded(BK)) {}
};

// Every thread of the team grows its buffers up front, so once a shape has been seen no call
// allocates, whichever thread the dynamic schedule hands a task to.
void reserve(size_t nf, size_t np) {
#pragma omp parallel
    {
        thread_scratch<float>(nf);
        thread_scratch<Pair>(np);
    }
}

// The forward's packed K and V, made once per call for all its tasks: per (batch, kv head), Kᵀ
// pair-interleaved over d (dp × T) and V over the keys (Kp × V). The buffer only grows.
std::vector<Pair>& forward_kv_buffer() {
    thread_local std::vector<Pair> buf;
    return buf;
}
}  // namespace

bool bf16_attention_native() { return cpu_has_avx512_bf16() && bf16_native(); }

void forward_bf16_native(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const Call<bf16>& c) {
    const AttnDims& a = c.a;
    const long G = a.H / a.Hk, d = a.d, qs = a.H * d, ks = a.Hk * d;
    const long n_qt = (a.Tq + BQ - 1) / BQ;
    const float scale = float(c.scale);
    const float neg_inf = -std::numeric_limits<float>::infinity();
    const Layout ld(a);
    const size_t nf = size_t(BQ * ld.S + G * (BQ * d + 2 * BQ + c.dep.n()) + depth_wide_size(c.dep.n(), G, d)), np = size_t(BQ * ld.A + BQ * ld.PA);
    reserve(nf, np);
    const long kd_n = ld.dp * ld.T, vk_n = ld.Kp * ld.V;  // per (batch, kv head)
    std::vector<Pair>& kv = forward_kv_buffer();
    if (kv.size() < size_t(a.B * a.Hk * (kd_n + vk_n))) kv.resize(size_t(a.B * a.Hk * (kd_n + vk_n)));
    if (a.Tk > 0) {
#pragma omp parallel for collapse(2) schedule(static)
        for (long b = 0; b < a.B; b++)
            for (long kh = 0; kh < a.Hk; kh++) {
                Pair* kd = kv.data() + (b * a.Hk + kh) * (kd_n + vk_n);
                tile_bf16::pair_columns(kd, ld.T, k + b * a.kv_bstride + kh * d, ks, a.Tk, d, ld.T);
                tile_bf16::pair_rows(kd + kd_n, ld.V, v + b * a.kv_bstride + kh * d, ks, a.Tk, d, ld.V);
            }
    }
    // One task per (batch, query tile, run of query heads), as the float kernel (attention.cpp).
    const long run = c.dep.n() > 0 ? G : 1, n_runs = a.H / run;
#pragma omp parallel for collapse(3) schedule(dynamic)
    for (long b = 0; b < a.B; b++)
        for (long hr = 0; hr < n_runs; hr++)
            for (long qt = 0; qt < n_qt; qt++) {
                float* S = thread_scratch<float>(nf);  // scores, then probabilities: BQ × ld.S
                float* O0 = S + BQ * ld.S;             // the running outputs: run × BQ × d
                float* m0 = O0 + run * BQ * d;         // run × BQ
                float* l0 = m0 + run * BQ;             // run × BQ
                float* sd = l0 + run * BQ;             // run × n: the depth scores of one token
                Pair* QA = thread_scratch<Pair>(np);  // this tile's queries: BQ × ld.A
                Pair* PA = QA + BQ * ld.A;             // P in bf16: BQ × ld.PA
                const long t0 = qt * BQ, tq = std::min(BQ, a.Tq - t0);
                const long h0 = hr * run, kh = h0 / G;
                const Pair* KD = kv.data() + (b * a.Hk + kh) * (kd_n + vk_n);  // Kᵀ over d pairs
                const Pair* VK = KD + kd_n;                                     // V over key pairs
                const long k_end = c.seq.end(t0 + tq - 1);  // keys visible to the last row
                for (long g = 0; g < run; g++) {
                    const bf16* Q = q + ((b * a.Tq + t0) * a.H + h0 + g) * d;
                    float *O = O0 + g * BQ * d, *m = m0 + g * BQ, *l = l0 + g * BQ;
                    tile_bf16::bf16_rows(QA, ld.A, Q, qs, tq, d, ld.A);
                    for (long r = 0; r < tq; r++) m[r] = neg_inf, l[r] = 0;
                    for (long i = 0; i < tq * d; i++) O[i] = 0;
                    for (long s0 = 0; s0 < k_end; s0 += BK) {
                        const long tk = std::min(BK, k_end - s0), tkv = vceil(tk);
                        auto vis = [&](long r) { return std::clamp(c.seq.end(t0 + r) - s0, 0L, tk); };
                        tile_bf16::gemm(tq, scale, QA, ld.A, 1, KD + s0, ld.T, false, S, ld.S, [&](long, long r1) {
                            return tile::Bounds{0, d, vceil(vis(r1 - 1))};
                        });
                        for (long r = 0; r < tq; r++) softmax_row(S + r * ld.S, vis(r), tkv, m[r], l[r], O + r * d, d);
                        tile_bf16::bf16_rows(PA, ld.PA, S, ld.S, tq, tkv, ld.PA);
                        tile_bf16::gemm(tq, 1.0f, PA, ld.PA, 1, VK + (s0 / 2) * ld.V, ld.V, true, O, d,
                                        [&](long, long r1) { return tile::Bounds{0, vis(r1 - 1), d}; });
                    }
                }
                for (long r = 0; r < tq; r++)
                    depth_forward_heads(q + ((b * a.Tq + t0 + r) * a.H + h0) * d, run, O0 + r * d, BQ * d, m0 + r, l0 + r,
                                        BQ, sd, c, b, t0 + r, kh, scale, r + 1 < tq);
                for (long g = 0; g < run; g++)
                    for (long r = 0; r < tq; r++) {
                        float* orow = O0 + g * BQ * d + r * d;
                        lse[(b * a.H + h0 + g) * a.Tq + t0 + r] = finish_row(orow, m0[g * BQ + r], l0[g * BQ + r], d);
                        tile_bf16::round_row(out + ((b * a.Tq + t0 + r) * a.H + h0 + g) * d, orow, d);
                    }
            }
}

void backward_bf16_native(float* dq, float* dk, float* dv, float* dkd, float* dvd, const float* dout, const bf16* out,
                          const float* lse, const bf16* q, const bf16* k, const bf16* v, const Call<bf16>& c) {
    const AttnDims& a = c.a;
    const Depth<bf16>& dep = c.dep;
    const long G = a.H / a.Hk, d = a.d, qs = a.H * d, ks = a.Hk * d;
    const float scale = float(c.scale);
    const Layout ld(a);
    const size_t nf = size_t(2 * BQ * ld.S + G * a.Tq + 2 * G * dep.L_max + depth_wide_size(dep.L_max, G, d));
    const size_t np = size_t(2 * ld.dp * ld.T + ld.Kp * ld.V + 2 * a.Tq * ld.A + 2 * ld.Qp * ld.V + BQ * ld.PA +
                             2 * (BQ / 2) * ld.PQ);
    reserve(nf, np);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (long b = 0; b < a.B; b++)
        for (long kh = 0; kh < a.Hk; kh++) {
            float* P = thread_scratch<float>(nf);  // BQ × ld.S
            float* dP = P + BQ * ld.S;             // BQ × ld.S, then dS
            float* D0 = dP + BQ * ld.S;            // G × Tq: D of each query head of the group
            float* pd = D0 + G * a.Tq;      // G × n: one depth pair's probabilities, then dS
            float* dpd = pd + G * dep.n();  // G × n: dP
            float* wide = dpd + G * dep.n();  // depth_wide_size: the pair's slots and queries as float
            Pair* KD = thread_scratch<Pair>(np);  // Kᵀ, Vᵀ over d pairs: dp × T each
            Pair* VD = KD + ld.dp * ld.T;
            Pair* KK = VD + ld.dp * ld.T;  // K over key pairs: Kp × V
            Pair* QA = KK + ld.Kp * ld.V;  // one query head's Q and dO as bf16 rows: Tq × A each
            Pair* GA = QA + a.Tq * ld.A;
            Pair* QQ = GA + a.Tq * ld.A;  // its Q and dO over query pairs: Qp × V each
            Pair* GQ = QQ + ld.Qp * ld.V;
            Pair* SA = GQ + ld.Qp * ld.V;     // dS as bf16 rows: BQ × PA
            Pair* PQ = SA + BQ * ld.PA;        // P and dS over query pairs: BQ/2 × PQ each
            Pair* SQ = PQ + (BQ / 2) * ld.PQ;
            const bf16* K0 = a.Tk > 0 ? k + b * a.kv_bstride + kh * d : nullptr;
            const bf16* V0 = a.Tk > 0 ? v + b * a.kv_bstride + kh * d : nullptr;
            if (a.Tk > 0) {
                tile_bf16::pair_columns(KD, ld.T, K0, ks, a.Tk, d, ld.T);
                tile_bf16::pair_columns(VD, ld.T, V0, ks, a.Tk, d, ld.T);
                tile_bf16::pair_rows(KK, ld.V, K0, ks, a.Tk, d, ld.V);
            }
            for (long g = 0; g < G; g++) {
                const long h = kh * G + g;
                const float* L = lse + (b * a.H + h) * a.Tq;
                float* D = D0 + g * a.Tq;
                const bf16* Qh = q + (b * a.Tq * a.H + h) * d;
                const float* Gh = dout + (b * a.Tq * a.H + h) * d;
                tile_bf16::bf16_rows(QA, ld.A, Qh, qs, a.Tq, d, ld.A);
                tile_bf16::bf16_rows(GA, ld.A, Gh, qs, a.Tq, d, ld.A);
                tile_bf16::pair_rows(QQ, ld.V, Qh, qs, a.Tq, d, ld.V);
                tile_bf16::pair_rows(GQ, ld.V, Gh, qs, a.Tq, d, ld.V);
                for (long t = 0; t < a.Tq; t++) {  // D_t = dO_t · O_t
                    const bf16* o = out + ((b * a.Tq + t) * a.H + h) * d;
                    const float* go = Gh + t * qs;
                    float s = 0;
#pragma omp simd reduction(+ : s)
                    for (long i = 0; i < d; i++) s += float(o[i]) * go[i];
                    D[t] = s;
                }
                for (long s0 = 0; s0 < a.Tk; s0 += BK) {
                    const long tk = std::min(BK, a.Tk - s0), tkv = vceil(tk);
                    float* dK = dk + b * a.kv_bstride + s0 * ks + kh * d;
                    float* dV = dv + b * a.kv_bstride + s0 * ks + kh * d;
                    const long t_first = c.seq.first_row(s0);  // the first row that sees key s0
                    for (long t0 = (t_first / BQ) * BQ; t0 < a.Tq; t0 += BQ) {
                        const long tq = std::min(BQ, a.Tq - t0);
                        auto vis = [&](long r) { return std::clamp(c.seq.end(t0 + r) - s0, 0L, tk); };
                        auto first_row = [&](long x) { return std::clamp(c.seq.first_row(s0 + x) - t0, 0L, tq); };
                        auto by_rows = [&](long, long r1) { return tile::Bounds{0, d, vceil(vis(r1 - 1))}; };
                        auto by_keys = [&](long c0, long) { return tile::Bounds{first_row(c0), tq, d}; };
                        auto to_vis = [&](long, long r1) { return tile::Bounds{0, vis(r1 - 1), d}; };
                        tile_bf16::gemm(tq, scale, QA + t0 * ld.A, ld.A, 1, KD + s0, ld.T, false, P, ld.S, by_rows);
                        for (long r = 0; r < tq; r++) probabilities_row(P + r * ld.S, vis(r), tkv, L[t0 + r]);
                        tile_bf16::pair_rows(PQ, ld.PQ, P, ld.S, tq, tkv, ld.PQ);
                        tile_bf16::gemm(tk, 1.0f, PQ, 1, ld.PQ, GQ + (t0 / 2) * ld.V, ld.V, true, dV, ks,
                                        by_keys);  // dV += Pᵀ·dO
                        tile_bf16::gemm(tq, 1.0f, GA + t0 * ld.A, ld.A, 1, VD + s0, ld.T, false, dP, ld.S,
                                        by_rows);  // dP = dO·Vᵀ
                        for (long r = 0; r < tq; r++)  // dS = P ⊙ (dP − D)
                            score_grad_row(dP + r * ld.S, P + r * ld.S, vis(r), tkv, D[t0 + r]);
                        tile_bf16::bf16_rows(SA, ld.PA, dP, ld.S, tq, tkv, ld.PA);
                        tile_bf16::pair_rows(SQ, ld.PQ, dP, ld.S, tq, tkv, ld.PQ);
                        tile_bf16::gemm(tq, scale, SA, ld.PA, 1, KK + (s0 / 2) * ld.V, ld.V, true,
                                        dq + ((b * a.Tq + t0) * a.H + h) * d, qs, to_vis);  // dQ += s·dS·K
                        tile_bf16::gemm(tk, scale, SQ, 1, ld.PQ, QQ + (t0 / 2) * ld.V, ld.V, true, dK, ks,
                                        by_keys);  // dK += s·dSᵀ·Q
                    }
                }
            }
            depth_backward(dq, dkd, dvd, dout, q, lse, D0, pd, dpd, wide, c, b, kh, scale);
        }
}

}  // namespace strata::attn

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
