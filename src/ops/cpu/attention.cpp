// Causal grouped-query attention, flash-style, on the CPU.
//
// Forward: one task per (batch, query head, query tile). The task walks the key tiles the causal
// mask lets it see; each tile's scores come from one small register-blocked GEMM (ops/cpu/tile_gemm.h,
// against the tile's keys transposed once), then an online softmax rescales the running output. Only a BQ×BK score tile per thread is ever held; the log-sum-exp per row is
// written out for the backward.
//
// Backward: one task per (batch, kv head), so dq, dk and dv of a task are written by that task
// alone (no atomics, no reduction, a result independent of the thread count). For every query
// head of the group and every visible (key tile, query tile) pair it recomputes P from the lse and
// runs the five GEMMs of the FlashAttention-2 backward: S, dV += Pᵀ·dO, dP = dO·Vᵀ,
// dS = P⊙(dP − D), dQ += s·dS·K, dK += s·dSᵀ·Q. In every tile GEMM a block of rows skips the keys
// (or queries) the causal mask hides from all of its rows.
//
// MoDA (Mixture-of-Depths Attention, docs/moda.md) is the same kernel with one more set of keys per
// query token: its own L depth keys/values from earlier layers, inside the same softmax. In the
// forward they are folded into each row's online softmax after the sequence tiles; in the backward
// the task of kv head kh owns the depth gradients of kh, so they too are written without atomics.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "ops/cpu/attention_shared.h"
#include "ops/cpu/tile_gemm.h"
#include "ops/cpu/vec_math.h"
#include "ops/ops.h"
#include "ops/profile.h"

namespace strata {

namespace {
using attn::BK;
using attn::BQ;
static_assert(BK % tile::Simd<double>::W == 0 && BK % tile::Simd<float>::W == 0);

// n rounded up to whole SIMD vectors of T (the score tiles are BK wide, so this stays ≤ BK).
template <typename T>
long vec_ceil(long n) {
    constexpr long W = tile::Simd<T>::W;
    return (n + W - 1) / W * W;
}
// A leading dimension for n columns: whole vectors plus one more, so that the rows of a tile spread
// over the cache's sets (at a power-of-two stride of 512 B or 1 KiB, the 64 or 128 rows a tile GEMM
// streams through fall into a few sets and evict each other).
template <typename T>
long padded_ld(long n) {
    return vec_ceil<T>(n) + tile::Simd<T>::W;
}

// The leading dimensions of one call: score tiles (ldS), rows of d (ldR), transposed K/V (ldT, over the
// keys rounded up to whole tiles, the padding zero).
template <typename T>
struct Lds {
    long S, R, T_;
    explicit Lds(const AttnDims& a)
        : S(padded_ld<T>(BK)), R(padded_ld<T>(a.d)), T_(padded_ld<T>((a.Tk + BK - 1) / BK * BK)) {}
};

using attn::thread_scratch;

// Scratch per thread for both passes. Every thread of the team grows its buffer up front, so once a
// shape has been seen no call allocates, whichever thread the dynamic schedule hands a task to.
// Forward: the score tile, and the running outputs and depth scores of a run of query heads;
// backward: P and dP tiles, this kv head's Kᵀ, Vᵀ and K rows, one query head's Q and dO rows, D of
// every head of the group, and one depth pair's probabilities and dP. Both end with the depth steps'
// widened slots (attn::depth_wide_size).
template <typename T>
size_t reserve_scratch(const AttnDims& a, long L_max = 0) {
    const Lds<T> ld(a);
    const long G = a.H / a.Hk;
    const long wide = attn::depth_wide_size(L_max, G, a.d);
    const long fwd = BQ * ld.S + G * (BQ * a.d + 2 * BQ + L_max) + wide;
    const long bwd = 2 * BQ * ld.S + 2 * a.d * ld.T_ + a.Tk * ld.R + 2 * a.Tq * ld.R + G * a.Tq + 2 * G * L_max + wide;
    const size_t n = size_t(std::max(fwd, bwd));
#pragma omp parallel
    thread_scratch<T>(n);
    return n;
}

// dst (rows × cols, row stride ld_dst) = src (row stride ld_src).
template <typename T>
void copy_rows(T* dst, long ld_dst, const T* src, long ld_src, long rows, long cols) {
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < cols; c++) dst[r * ld_dst + c] = src[r * ld_src + c];
}

// The forward's copies of K and V, made once per call for all its tasks: per (batch, kv head), Kᵀ
// (d × ldT) and V's rows (Tk × ldR). The buffer only grows.
template <typename T>
std::vector<T>& forward_kv_buffer() {
    thread_local std::vector<T> buf;
    return buf;
}
}  // namespace

using attn::Call;
using attn::Depth;

template <typename T, typename U>
static void attention_forward_impl(T* out, T* lse, const T* q, const T* k, const T* v, const Call<U>& c) {
    const AttnDims& a = c.a;
    const long G = a.H / a.Hk, d = a.d, qs = a.H * d, ks = a.Hk * d;
    const long n_qt = (a.Tq + BQ - 1) / BQ;
    const T scale = T(c.scale);
    const T neg_inf = -std::numeric_limits<T>::infinity();
    const size_t scratch_n = reserve_scratch<T>(a, c.dep.n());
    const Lds<T> ld(a);
    const long kt_n = d * ld.T_, vr_n = a.Tk * ld.R;  // per (batch, kv head)
    std::vector<T>& kv = forward_kv_buffer<T>();
    if (kv.size() < size_t(a.B * a.Hk * (kt_n + vr_n))) kv.resize(size_t(a.B * a.Hk * (kt_n + vr_n)));
    if (a.Tk > 0) {
#pragma omp parallel for collapse(2) schedule(static)
        for (long b = 0; b < a.B; b++)
            for (long kh = 0; kh < a.Hk; kh++) {
                T* kt = kv.data() + (b * a.Hk + kh) * (kt_n + vr_n);
                tile::transpose_pad(kt, ld.T_, k + b * a.kv_bstride + kh * d, ks, a.Tk, d, ld.T_);
                copy_rows(kt + kt_n, ld.R, v + b * a.kv_bstride + kh * d, ks, a.Tk, d);
            }
    }
    // One task per (batch, query tile, run of query heads): a run is the whole group of a kv head when
    // there are depth slots (its heads then share each slot's reads, depth_forward_heads), else one head.
    const long run = c.dep.n() > 0 ? G : 1, n_runs = a.H / run;
#pragma omp parallel for collapse(3) schedule(dynamic)
    for (long b = 0; b < a.B; b++)
        for (long hr = 0; hr < n_runs; hr++)
            for (long qt = 0; qt < n_qt; qt++) {
                T* scratch = thread_scratch<T>(scratch_n);
                T* S = scratch;              // scores, then probabilities: BQ × ldS
                T* O0 = S + BQ * ld.S;       // the running outputs: run × BQ × d
                T* m0 = O0 + run * BQ * d;   // run × BQ
                T* l0 = m0 + run * BQ;       // run × BQ
                T* sd = l0 + run * BQ;       // run × n: the depth scores of one token
                const long t0 = qt * BQ, tq = std::min(BQ, a.Tq - t0);
                const long h0 = hr * run, kh = h0 / G;
                const T* KT = kv.data() + (b * a.Hk + kh) * (kt_n + vr_n);  // Kᵀ: d × ldT
                const T* VR = KT + kt_n;                                      // V: Tk × ldR
                const long k_end = c.seq.end(t0 + tq - 1);  // keys visible to the last row
                for (long g = 0; g < run; g++) {
                    const T* Q = q + ((b * a.Tq + t0) * a.H + h0 + g) * d;
                    T *O = O0 + g * BQ * d, *m = m0 + g * BQ, *l = l0 + g * BQ;
                    for (long r = 0; r < tq; r++) m[r] = neg_inf, l[r] = 0;
                    for (long i = 0; i < tq * d; i++) O[i] = 0;
                    for (long s0 = 0; s0 < k_end; s0 += BK) {
                        const long tk = std::min(BK, k_end - s0);
                        // keys s0 .. s0 + vis(r) − 1 are visible to row r
                        auto vis = [&](long r) { return std::clamp(c.seq.end(t0 + r) - s0, 0L, tk); };
                        tile::gemm(tq, scale, Q, qs, 1, KT + s0, ld.T_, false, S, ld.S, [&](long, long r1) {
                            return tile::Bounds{0, d, vec_ceil<T>(vis(r1 - 1))};
                        });
                        for (long r = 0; r < tq; r++) attn::softmax_row(S + r * ld.S, vis(r), tk, m[r], l[r], O + r * d, d);
                        tile::gemm(tq, T(1), S, ld.S, 1, VR + s0 * ld.R, ld.R, true, O, d,
                                   [&](long, long r1) { return tile::Bounds{0, vis(r1 - 1), d}; });
                    }
                }
                // MoDA: the depth slots each row sees join its softmax, the run's heads together
                for (long r = 0; r < tq; r++)
                    attn::depth_forward_heads(q + ((b * a.Tq + t0 + r) * a.H + h0) * d, run, O0 + r * d, BQ * d, m0 + r,
                                              l0 + r, BQ, sd, c, b, t0 + r, kh, scale, r + 1 < tq);
                for (long g = 0; g < run; g++)
                    for (long r = 0; r < tq; r++) {
                        T* O = O0 + g * BQ * d + r * d;
                        lse[(b * a.H + h0 + g) * a.Tq + t0 + r] = attn::finish_row(O, m0[g * BQ + r], l0[g * BQ + r], d);
                        T* o = out + ((b * a.Tq + t0 + r) * a.H + h0 + g) * d;
                        for (long i = 0; i < d; i++) o[i] = O[i];
                    }
            }
}

template <typename T, typename U>
static void attention_backward_impl(T* dq, T* dk, T* dv, T* dkd, T* dvd, const T* dout, const T* out, const T* lse,
                                    const T* q, const T* k, const T* v, const Call<U>& c) {
    const AttnDims& a = c.a;
    const Depth<U>& dep = c.dep;
    const long G = a.H / a.Hk, d = a.d, qs = a.H * d, ks = a.Hk * d;
    const T scale = T(c.scale);
    const size_t scratch_n = reserve_scratch<T>(a, dep.L_max);
    const Lds<T> ld(a);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (long b = 0; b < a.B; b++)
        for (long kh = 0; kh < a.Hk; kh++) {
            T* scratch = thread_scratch<T>(scratch_n);
            T* P = scratch;              // BQ × ldS
            T* dP = P + BQ * ld.S;       // BQ × ldS, then dS
            T* KT = dP + BQ * ld.S;      // this kv head's Kᵀ and Vᵀ: d × ldT each
            T* VT = KT + d * ld.T_;
            T* KR = VT + d * ld.T_;      // its K rows: Tk × ldR
            T* QR = KR + a.Tk * ld.R;    // one query head's Q and dO rows: Tq × ldR each
            T* GR = QR + a.Tq * ld.R;
            T* D0 = GR + a.Tq * ld.R;    // G × Tq: D of each query head of the group
            T* pd = D0 + G * a.Tq;       // G × n: one depth pair's probabilities, then dS, per head
            T* dpd = pd + G * dep.n();   // G × n: dP
            T* wide = dpd + G * dep.n(); // depth_wide_size: the pair's slots (and queries) widened
            const T* K0 = a.Tk > 0 ? k + b * a.kv_bstride + kh * d : nullptr;
            const T* V0 = a.Tk > 0 ? v + b * a.kv_bstride + kh * d : nullptr;
            if (a.Tk > 0) {
                tile::transpose_pad(KT, ld.T_, K0, ks, a.Tk, d, ld.T_);
                tile::transpose_pad(VT, ld.T_, V0, ks, a.Tk, d, ld.T_);
                copy_rows(KR, ld.R, K0, ks, a.Tk, d);
            }
            for (long g = 0; g < G; g++) {
                const long h = kh * G + g;
                const T* L = lse + (b * a.H + h) * a.Tq;
                T* D = D0 + g * a.Tq;
                copy_rows(QR, ld.R, q + (b * a.Tq * a.H + h) * d, qs, a.Tq, d);
                copy_rows(GR, ld.R, dout + (b * a.Tq * a.H + h) * d, qs, a.Tq, d);
                for (long t = 0; t < a.Tq; t++) {  // D_t = dO_t · O_t
                    const T* o = out + ((b * a.Tq + t) * a.H + h) * d;
                    const T* go = GR + t * ld.R;
                    T s = 0;
                    for (long i = 0; i < d; i++) s += o[i] * go[i];
                    D[t] = s;
                }
                for (long s0 = 0; s0 < a.Tk; s0 += BK) {
                    const long tk = std::min(BK, a.Tk - s0);
                    T* dK = dk + b * a.kv_bstride + s0 * ks + kh * d;
                    T* dV = dv + b * a.kv_bstride + s0 * ks + kh * d;
                    const long t_first = c.seq.first_row(s0);  // the first query row that sees key s0
                    for (long t0 = (t_first / BQ) * BQ; t0 < a.Tq; t0 += BQ) {
                        const long tq = std::min(BQ, a.Tq - t0);
                        const T* Qt = QR + t0 * ld.R;
                        const T* Gt = GR + t0 * ld.R;
                        // keys s0 .. s0 + vis(r) − 1 are visible to row r; key c to rows ≥ first_row(c)
                        auto vis = [&](long r) { return std::clamp(c.seq.end(t0 + r) - s0, 0L, tk); };
                        auto first_row = [&](long x) { return std::clamp(c.seq.first_row(s0 + x) - t0, 0L, tq); };
                        auto by_rows = [&](long, long r1) { return tile::Bounds{0, d, vec_ceil<T>(vis(r1 - 1))}; };
                        auto by_keys = [&](long c0, long) { return tile::Bounds{first_row(c0), tq, d}; };
                        tile::gemm(tq, scale, Qt, ld.R, 1, KT + s0, ld.T_, false, P, ld.S, by_rows);  // S
                        for (long r = 0; r < tq; r++) attn::probabilities_row(P + r * ld.S, vis(r), tk, L[t0 + r]);
                        tile::gemm(tk, T(1), P, 1, ld.S, Gt, ld.R, true, dV, ks, by_keys);              // dV += Pᵀ·dO
                        tile::gemm(tq, T(1), Gt, ld.R, 1, VT + s0, ld.T_, false, dP, ld.S, by_rows);   // dP = dO·Vᵀ
                        for (long r = 0; r < tq; r++)  // dS = P ⊙ (dP − D)
                            attn::score_grad_row(dP + r * ld.S, P + r * ld.S, vis(r), tk, D[t0 + r]);
                        tile::gemm(tq, scale, dP, ld.S, 1, KR + s0 * ld.R, ld.R, true, dq + ((b * a.Tq + t0) * a.H + h) * d,
                                   qs, [&](long, long r1) { return tile::Bounds{0, vis(r1 - 1), d}; });  // dQ += s·dS·K
                        tile::gemm(tk, scale, dP, 1, ld.S, Qt, ld.R, true, dK, ks, by_keys);           // dK += s·dSᵀ·Q
                    }
                }
            }
            // MoDA: the depth slots every query token sees, seen by its row of each head of the group. A
            // slot's key and value gradients are summed over the group first, so each is written once.
            attn::depth_backward(dq, dkd, dvd, dout, q, lse, D0, pd, dpd, wide, c, b, kh, scale);
        }
}

// bf16 storage: on AVX512-BF16 with native bf16 GEMMs, the bf16 kernel (attention_bf16.cpp). Elsewhere
// q, k, v (and out) are widened to float once per call, the depth K/V as they are read; the float
// kernel runs, and the output is rounded back. Every score, softmax statistic and gradient is float, as
// in the float op; only the stored tensors are bf16. The widened copies live in per-thread buffers
// that only grow.
namespace {
struct Widened {
    std::vector<float> q, k, v, o;
};
Widened& widened() {
    thread_local Widened w;
    return w;
}
const float* widen(std::vector<float>& dst, const bf16* src, size_t n) {
    if (!src) return nullptr;
    if (dst.size() < n) dst.resize(n);
    float* d = dst.data();
    const long m = long(n);
#pragma omp parallel for schedule(static) if (m >= 32768)
    for (long i = 0; i < m; i++) d[i] = float(src[i]);
    return d;
}
size_t q_elems(const AttnDims& a) { return size_t(a.B * a.Tq * a.H * a.d); }
size_t kv_elems(const AttnDims& a) { return size_t((a.B - 1) * a.kv_bstride + a.Tk * a.Hk * a.d); }

template <typename S>
void forward_any(S* out, compute_t<S>* lse, const S* q, const S* k, const S* v, const attn::Call<S>& c) {
    if constexpr (std::is_same_v<S, bf16>) {
        if (attn::bf16_attention_native()) return attn::forward_bf16_native(out, lse, q, k, v, c);
        Widened& w = widened();
        const float* qf = widen(w.q, q, q_elems(c.a));
        const float* kf = c.a.Tk > 0 ? widen(w.k, k, kv_elems(c.a)) : nullptr;
        const float* vf = c.a.Tk > 0 ? widen(w.v, v, kv_elems(c.a)) : nullptr;
        if (w.o.size() < q_elems(c.a)) w.o.resize(q_elems(c.a));
        attention_forward_impl(w.o.data(), lse, qf, kf, vf, c);
        convert_forward(out, w.o.data(), q_elems(c.a));
    } else {
        attention_forward_impl(out, lse, q, k, v, c);
    }
}

template <typename S>
void backward_any(compute_t<S>* dq, compute_t<S>* dk, compute_t<S>* dv, compute_t<S>* dkd, compute_t<S>* dvd,
                  const compute_t<S>* dout, const S* out, const compute_t<S>* lse, const S* q, const S* k, const S* v,
                  const attn::Call<S>& c) {
    if constexpr (std::is_same_v<S, bf16>) {
        if (attn::bf16_attention_native())
            return attn::backward_bf16_native(dq, dk, dv, dkd, dvd, dout, out, lse, q, k, v, c);
        Widened& w = widened();
        const float* of = widen(w.o, out, q_elems(c.a));
        const float* qf = widen(w.q, q, q_elems(c.a));
        const float* kf = c.a.Tk > 0 ? widen(w.k, k, kv_elems(c.a)) : nullptr;
        const float* vf = c.a.Tk > 0 ? widen(w.v, v, kv_elems(c.a)) : nullptr;
        attention_backward_impl(dq, dk, dv, dkd, dvd, dout, of, lse, qf, kf, vf, c);
    } else {
        attention_backward_impl(dq, dk, dv, dkd, dvd, dout, out, lse, q, k, v, c);
    }
}

// What every call checks of its sizes (both ops). The messages are built only on failure: a check
// that passes allocates nothing (steps after the first make no allocations).
void check_dims(const AttnDims& a, const char* op) {
    auto fail = [&](const char* what) { throw Error(std::string(op) + ": " + what); };
    if (!(a.B >= 0 && a.Tq >= 0 && a.Tk >= 0 && a.d > 0)) fail("sizes must be non-negative and d positive");
    if (!(a.H > 0 && a.Hk > 0 && a.H % a.Hk == 0)) fail("H must be a positive multiple of Hk");
    if (a.q_pos0 < 0) fail("q_pos0 must be non-negative");
    if (a.kv_bstride < a.Tk * a.Hk * a.d) fail("kv_bstride must cover Tk·Hk·d");
}
}  // namespace

namespace attn {
template <typename U>
Call<U> attention_call(const AttnDims& a) {
    Call<U> c{a, SeqVis{SeqMask::causal, a.Tk, a.q_pos0}, Depth<U>{}, 1.0 / std::sqrt(double(a.d))};
    c.dep.Hk = a.Hk, c.dep.d = a.d;
    return c;
}

template <typename S>
Call<S> moda_call(const ModaParams<S>& p) {
    moda_check(p);
    Call<S> c = attention_call<S>(p.dims);
    if (p.mask == SeqMask::none) c.a.Tk = 0;
    c.seq = SeqVis{p.mask, c.a.Tk, p.dims.q_pos0};
    if (p.scale != 0) c.scale = p.scale;
    const long L_max = p.L_max > 0 ? p.L_max : p.L, rows = p.depth_rows > 0 ? p.depth_rows : p.dims.Tq;
    Depth<S>& dep = c.dep;
    dep.kd = p.kd, dep.vd = p.vd;
    dep.hi = p.L;
    dep.lo = p.window > 0 ? std::max(0L, p.L - p.window) : 0;
    dep.L_max = L_max;
    dep.pos0 = p.depth_pos0;
    dep.bstride = p.depth_bstride > 0 ? p.depth_bstride : rows * L_max * p.dims.Hk * p.dims.d;
    dep.chunk = p.visibility == DepthVisibility::chunk ? moda_chunk(p) : 1;
    return c;
}
}  // namespace attn

template <typename S>
long moda_chunk(const ModaParams<S>& p) {
    if (p.chunk > 0) return p.chunk;
    const long G = p.dims.Hk > 0 ? p.dims.H / p.dims.Hk : 1;
    return std::max(1L, 64 / std::max(1L, G));
}

template <typename S>
void moda_check(const ModaParams<S>& p) {
    check_dims(p.dims, "moda");
    // each message is built only when its check fails
    auto fail = [](const std::string& what) { throw Error("moda: " + what); };
    const AttnDims& a = p.dims;
    const long L_max = p.L_max > 0 ? p.L_max : p.L;
    if (!(p.q && p.out && p.lse)) fail("q, out and lse are required");
    if (!(p.mask == SeqMask::none || a.Tk == 0 || (p.k && p.v))) fail("k and v are required with a sequence mask");
    if (p.L < 0) fail("L (depth slots) must be non-negative, not " + std::to_string(p.L));
    if (p.L > L_max) fail("L = " + std::to_string(p.L) + " exceeds L_max = " + std::to_string(L_max));
    if (!(p.L == 0 || (p.kd && p.vd))) fail("kd and vd are required with L > 0");
    if (p.window < 0) fail("window must be non-negative (0: every slot), not " + std::to_string(p.window));
    if (p.window > L_max)
        fail("window = " + std::to_string(p.window) + " exceeds the slot count " + std::to_string(L_max));
    if (p.chunk < 0) fail("chunk must be positive (0: the default 64/G), not " + std::to_string(p.chunk));
    if (!(std::isfinite(p.scale) && p.scale >= 0)) fail("scale must be finite and positive (0: 1/sqrt(d))");
    if (!(p.mask != SeqMask::causal || a.Tk >= a.q_pos0 + a.Tq || a.Tq == 0))
        fail("under the causal mask the keys must reach the last query's position");
    if (p.window > BQ * BK) fail("window too large for the kernel's score scratch");
    if (!(p.window > 0 || p.L <= BQ * BK)) fail("L too large for the kernel's score scratch");
    if (p.L > 0 && a.Tq > 0) {  // every visible depth token is a row of the buffer
        const long rows = p.depth_rows > 0 ? p.depth_rows : a.Tq;
        const long C = p.visibility == DepthVisibility::chunk ? moda_chunk(p) : 1;
        const long first = a.q_pos0 / C * C - p.depth_pos0, last = a.q_pos0 + a.Tq - 1 - p.depth_pos0;
        if (!(first >= 0 && last < rows))
            fail("the depth buffer's rows (positions " + std::to_string(p.depth_pos0) + ".." +
                 std::to_string(p.depth_pos0 + rows - 1) + ") do not cover the depth tokens the queries see (positions " +
                 std::to_string(first + p.depth_pos0) + ".." + std::to_string(last + p.depth_pos0) + ")");
        const long bstride = p.depth_bstride > 0 ? p.depth_bstride : rows * L_max * a.Hk * a.d;
        if (bstride < rows * L_max * a.Hk * a.d) fail("depth_bstride must cover depth_rows·L_max·Hk·d");
    }
}

template <typename S>
void attention_forward(S* out, compute_t<S>* lse, const S* q, const S* k, const S* v, const AttnDims& a) {
    OpTimer t_(OpFamily::attn_fwd);
    check_dims(a, "attention_forward");
    forward_any(out, lse, q, k, v, attn::attention_call<S>(a));
}

template <typename S>
void moda_forward(const ModaParams<S>& p) {
    OpTimer t_(OpFamily::moda_fwd);
    forward_any(p.out, p.lse, p.q, p.k, p.v, attn::moda_call(p));
}

template <typename S>
void attention_backward(compute_t<S>* dq, compute_t<S>* dk, compute_t<S>* dv, const compute_t<S>* dout, const S* out,
                        const compute_t<S>* lse, const S* q, const S* k, const S* v, const AttnDims& a) {
    OpTimer t_(OpFamily::attn_bwd);
    check_dims(a, "attention_backward");
    backward_any<S>(dq, dk, dv, nullptr, nullptr, dout, out, lse, q, k, v, attn::attention_call<S>(a));
}

template <typename S>
void moda_backward(const ModaParams<S>& p, const ModaGrads<S>& g) {
    OpTimer t_(OpFamily::moda_bwd);
    const attn::Call<S> c = attn::moda_call(p);
    if (!g.dq || !g.dout || (c.a.Tk > 0 && (!g.dk || !g.dv)) || (p.L > 0 && (!g.dkd || !g.dvd)))
        throw Error("moda_backward: a gradient the call produces is null");
    backward_any(g.dq, g.dk, g.dv, g.dkd, g.dvd, g.dout, static_cast<const S*>(p.out), p.lse, p.q, p.k, p.v, c);
}

template <typename S>
void moda_mass(const ModaParams<S>& p, compute_t<S>* depth_mass, compute_t<S>* sink_mass) {
    using T = compute_t<S>;
    const attn::Call<S> c = attn::moda_call(p);
    const AttnDims& a = c.a;
    const long G = a.H / a.Hk, d = a.d;
    const T scale = T(c.scale);
    auto dot = [d](const S* x, const S* y) {
        T s = 0;
        for (long i = 0; i < d; i++) s += T(attn::widen(x[i])) * T(attn::widen(y[i]));
        return s;
    };
#pragma omp parallel for collapse(2) schedule(static)
    for (long b = 0; b < a.B; b++)
        for (long h = 0; h < a.H; h++) {
            const long kh = h / G;
            for (long t = 0; t < a.Tq; t++) {
                const long row = (b * a.H + h) * a.Tq + t;
                const T lse = p.lse[row];
                const S* q = p.q + ((b * a.Tq + t) * a.H + h) * d;
                T dm = 0, sm = 0;
                if (std::isfinite(lse)) {
                    if (c.seq.end(t) > 0) sm = std::exp(scale * dot(q, p.k + b * a.kv_bstride + kh * d) - lse);
                    const long pos = a.q_pos0 + t;
                    for (long j = c.dep.first_row(pos); c.dep.n() > 0 && j <= c.dep.row(pos); j++)
                        for (long i = c.dep.lo; i < c.dep.hi; i++) dm += std::exp(scale * dot(q, c.dep.key(b, j, i, kh)) - lse);
                }
                depth_mass[row] = dm;
                sink_mass[row] = sm;
            }
        }
}

#define STRATA_INSTANTIATE_ATTN(S, T)                                                                        \
    template void attention_forward<S>(S*, T*, const S*, const S*, const S*, const AttnDims&);               \
    template void attention_backward<S>(T*, T*, T*, const T*, const S*, const T*, const S*, const S*,         \
                                        const S*, const AttnDims&);                                          \
    template void moda_forward<S>(const ModaParams<S>&);                                                     \
    template void moda_backward<S>(const ModaParams<S>&, const ModaGrads<S>&);                               \
    template long moda_chunk<S>(const ModaParams<S>&);                                                       \
    template void moda_check<S>(const ModaParams<S>&);                                                       \
    template void moda_mass<S>(const ModaParams<S>&, T*, T*);                                                \
    template attn::Call<S> attn::moda_call<S>(const ModaParams<S>&);                                         \
    template attn::Call<S> attn::attention_call<S>(const AttnDims&);
STRATA_INSTANTIATE_ATTN(float, float)
STRATA_INSTANTIATE_ATTN(double, double)
STRATA_INSTANTIATE_ATTN(bf16, float)

}  // namespace strata
