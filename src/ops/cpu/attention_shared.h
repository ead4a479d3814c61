// What the two attention kernels share (ops/cpu/attention.cpp: float storage, and bf16 widened to
// float; ops/cpu/attention_bf16.cpp: bf16 on AVX512-BF16): the tile sizes, and MoDA's depth slots,
// one place for how a query token's own L depth keys/values join its softmax, forward and backward.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "ops/cpu/tile_gemm.h"
#include "ops/cpu/vec_math.h"
#include "ops/ops.h"

namespace strata::attn {

inline constexpr long BQ = 64;   // query rows per tile
inline constexpr long BK = 128;  // keys per tile (a whole number of SIMD vectors)

// A per-thread buffer of at least n elements; it only grows.
template <typename T>
T* thread_scratch(size_t n) {
    thread_local std::vector<T> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

// float for float and bf16 storage, double for double.
template <typename X>
inline auto widen(X x) {
    if constexpr (std::is_same_v<X, bf16>) return float(x);
    else return x;
}

// ---- what a query sees: the one place for MoDA's masks and visibility (ops.h, ModaParams) ------------

// The sequence keys: query row t (absolute position q_pos0 + t) sees keys 0..end(t)−1.
struct SeqVis {
    SeqMask mask = SeqMask::causal;
    long Tk = 0, q_pos0 = 0;  // Tk is 0 under SeqMask::none
    long end(long t) const {
        return mask == SeqMask::causal ? std::min(Tk, q_pos0 + t + 1) : mask == SeqMask::noncausal ? Tk : 0;
    }
    // the first query row that sees key c (every later row sees it too)
    long first_row(long c) const { return mask == SeqMask::causal ? std::max(0L, c - q_pos0) : 0; }
};

// The depth keys/values: (B, rows, L_max, Hk, d) with batch stride bstride, row j the token at absolute
// position pos0 + j. The query at position p reads slots lo..hi−1 of the rows first_row(p)..row(p): its
// own token (chunk = 1), or the tokens of its chunk up to itself. Read in their storage type U (bf16
// slots are widened as they are read: only the slots used are touched, where widening the whole
// buffer up front cost more than the depth attention itself).
template <typename U>
struct Depth {
    const U *kd = nullptr, *vd = nullptr;
    long lo = 0, hi = 0;  // slots read
    long L_max = 0, pos0 = 0, bstride = 0, chunk = 1, Hk = 0, d = 0;
    long n() const { return hi - lo; }
    long row(long p) const { return p - pos0; }
    long first_row(long p) const { return p / chunk * chunk - pos0; }
    long offset(long b, long j, long i, long kh) const { return b * bstride + ((j * L_max + i) * Hk + kh) * d; }
    const U* key(long b, long j, long i, long kh) const { return kd + offset(b, j, i, kh); }
    const U* value(long b, long j, long i, long kh) const { return vd + offset(b, j, i, kh); }
};

// One call of either kernel: its sizes (Tk 0 under SeqMask::none), what each query sees, the scale.
template <typename U>
struct Call {
    AttnDims a;
    SeqVis seq;
    Depth<U> dep;
    double scale;
};

// Plain attention (no depth, causal, 1/√d) or a checked MoDA call (ops.h; attention.cpp).
template <typename U>
Call<U> attention_call(const AttnDims& a);
template <typename S>
Call<S> moda_call(const ModaParams<S>& p);

// The bf16 kernel on AVX512-BF16 (attention_bf16.cpp): taken for bf16 storage where the CPU has
// AVX512-BF16 and bf16 GEMMs run native (bf16_native() in gemm.h, which STRATA_BF16_NATIVE=0 turns
// off); elsewhere bf16 is widened to float for the float kernel. Arguments as attention_forward /
// moda_backward in ops.h.
bool bf16_attention_native();
void forward_bf16_native(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const Call<bf16>& c);
void backward_bf16_native(float* dq, float* dk, float* dv, float* dkd, float* dvd, const float* dout, const bf16* out,
                          const float* lse, const bf16* q, const bf16* k, const bf16* v, const Call<bf16>& c);

// ---- per-row steps on a score tile (both kernels) ---------------------------------------------------
// Row r of a score tile sees its first nv keys; columns [nv, end) are set to 0 so the next GEMM, which
// may read a few of them, adds nothing.

// Forward: the online softmax of one row. srow holds scores and becomes exp(s − m_new); m, l are the
// row's running max and sum, o (d) its running output, rescaled when the max moves.
template <typename T>
inline void softmax_row(T* srow, long nv, long end, T& m, T& l, T* o, long d) {
    const T mx = tile::row_max(srow, nv, m);
    const T corr = std::exp(m - mx);  // exp(-inf) = 0 on the first tile
#pragma omp simd
    for (long c = 0; c < nv; c++) srow[c] = vexp(srow[c] - mx);
    const T sum = simd::sum(srow, nv);  // a second pass over the row in L1, cheaper than an omp simd sum
    for (long c = nv; c < end; c++) srow[c] = 0;
    l = l * corr + sum;
    m = mx;
    if (corr != T(1))
        for (long i = 0; i < d; i++) o[i] *= corr;
}

// Backward: P = exp(S − lse) of one row, in place.
template <typename T>
inline void probabilities_row(T* prow, long nv, long end, T lse) {
#pragma omp simd
    for (long c = 0; c < nv; c++) prow[c] = vexp(prow[c] - lse);
    for (long c = nv; c < end; c++) prow[c] = T(0);
}

// Backward: dS = P ⊙ (dP − D) of one row, in place over dP.
template <typename T>
inline void score_grad_row(T* ds, const T* p, long nv, long end, T D) {
#pragma omp simd
    for (long c = 0; c < nv; c++) ds[c] = p[c] * (ds[c] - D);
    for (long c = nv; c < end; c++) ds[c] = T(0);
}

// Scratch (elements of T) the depth steps need past their scores: one depth row's n keys and values
// widened to T when they are stored narrower, and the G query rows of a group (the backward's left
// operand of dKd, widened likewise).
inline long depth_wide_size(long n, long G, long d) { return 2 * n * d + G * d; }

// n rows of d (row stride ld) as T: the rows themselves when they are T, else widened into buf (row
// stride d). Returns the rows and their stride.
template <typename T, typename U>
inline std::pair<const T*, long> rows_as(const U* src, long ld, long n, long d, T* buf) {
    if constexpr (std::is_same_v<T, U>) {
        return {src, ld};
    } else {
        for (long r = 0; r < n; r++)
#pragma omp simd
            for (long x = 0; x < d; x++) buf[r * d + x] = T(widen(src[r * ld + x]));
        return {buf, d};
    }
}

// Asks the cache for slot row r (d elements) of a run at p (row stride ld), for writing if Write. The
// depth steps ask for the next token's slots while they work on this one's, spread over the slot loop
// so that the requests do not arrive at once. Measured on an Intel Xeon (T = 4K, L = 64): the backward
// at G = 8 about 12 % faster with it, and no difference beyond the noise at G = 2.
template <bool Write, typename U>
inline void prefetch_row(const U* p, long ld, long r, long d) {
    const char* row = reinterpret_cast<const char*>(p + r * ld);
    for (long o = 0; o < long(d * sizeof(U)); o += 64) __builtin_prefetch(row + o, Write ? 1 : 0, 3);
}

// Forward, query token t (batch b) of `heads` consecutive query heads of kv head kh (q0: the first
// head's query row; the others follow at stride d), after their sequence tiles: the slots of every
// depth row it sees join each head's online softmax. Each slot's key is read once for all the heads
// (the group-aware order: a token's slots stay in L1 while the G heads use them, where one head at a
// time would stream them from memory G times), and the values enter as one small GEMM, O += P·V_d,
// the heads' rows against the row's n slots. O, m, l: head g's running output row at O + g·o_stride,
// its max and sum at m[g·ml_stride], l[g·ml_stride] (m is −∞ before anything was seen: the first
// update then scales o and l by exp(−∞) = 0); sd: heads·n scores, then depth_wide_size(n, heads, d)
// of scratch. next: whether the caller's next token (t + 1) is a row of the buffer, to prefetch.
template <typename T, typename Q, typename U>
inline void depth_forward_heads(const Q* q0, long heads, T* O, long o_stride, T* m, T* l, long ml_stride, T* sd,
                                const Call<U>& c, long b, long t, long kh, T scale, bool next) {
    const Depth<U>& dep = c.dep;
    const long n = dep.n(), d = dep.d, p = c.a.q_pos0 + t, ld = dep.Hk * d;
    if (n <= 0) return;
    T* wide = sd + heads * n;
    const auto [Qh, ldq] = rows_as<T>(q0, d, heads, d, wide + 2 * n * d);
    const U* next_k = next ? dep.key(b, dep.row(p) + 1, dep.lo, kh) : nullptr;
    const U* next_v = next ? dep.value(b, dep.row(p) + 1, dep.lo, kh) : nullptr;
    for (long j = dep.first_row(p); j <= dep.row(p); j++) {
        const auto [K, ldk] = rows_as<T>(dep.key(b, j, dep.lo, kh), ld, n, d, wide);
        const auto [V, ldv] = rows_as<T>(dep.value(b, j, dep.lo, kh), ld, n, d, wide + n * d);
        for (long i = 0; i < n; i++) {
            if (next && j == dep.row(p)) prefetch_row<false>(next_k, ld, i, d), prefetch_row<false>(next_v, ld, i, d);
            const T* kd = K + i * ldk;
            for (long g = 0; g < heads; g++) sd[g * n + i] = simd::dot(Qh + g * ldq, kd, d) * scale;
        }
        for (long g = 0; g < heads; g++) {
            T* sg = sd + g * n;
            T* o = O + g * o_stride;
            T& mg = m[g * ml_stride];
            T mx = mg;
            for (long i = 0; i < n; i++) mx = sg[i] > mx ? sg[i] : mx;
            const T corr = std::exp(mg - mx);
            if (corr != T(1))
                for (long x = 0; x < d; x++) o[x] *= corr;
#pragma omp simd
            for (long i = 0; i < n; i++) sg[i] = vexp(sg[i] - mx);
            l[g * ml_stride] = l[g * ml_stride] * corr + simd::sum(sg, n);
            mg = mx;
        }
        tile::gemm(heads, T(1), sd, n, 1, V, ldv, true, O, o_stride, [&](long, long) { return tile::Bounds{0, n, d}; });
    }
}

// Forward, the end of one query row: out = O / l and lse = m + log l; a row that saw nothing (l = 0:
// no sequence keys and no slots) gets out = 0 and lse = −inf.
template <typename T>
inline T finish_row(T* o, T m, T l, long d) {
    const T inv = l > T(0) ? T(1) / l : T(0);
    for (long i = 0; i < d; i++) o[i] *= inv;
    return l > T(0) ? m + std::log(l) : -std::numeric_limits<T>::infinity();
}

// Backward, query token t of batch b (absolute position p), and depth row j it sees: the slots of kv
// head kh, seen by row t of each of the G query heads of the group. The scores and dP are dot products;
// the three gradients are small GEMMs over the group, dQ += s·dS·K_d, dK_d += s·dSᵀ·Q and
// dV_d += Pᵀ·dO, so each slot's gradients are summed over the group in registers and written once per
// (t, j) (the caller's task owns kv head kh: no atomics). D0: G × Tq, D = dO·O per head; pd, dpd: G·n()
// each; wide: depth_wide_size(n(), G, d). next: the slots (and their gradients) to prefetch while this
// pair is worked on, as the depth row's offset, or −1 for none.
template <typename T, typename Q, typename U>
inline void depth_backward_pair(T* dq, T* dkd, T* dvd, const T* dout, const Q* q, const T* lse, const T* D0, T* pd,
                                T* dpd, T* wide, const Depth<U>& dep, const AttnDims& a, long b, long t, long j,
                                long kh, T scale, long next) {
    const long G = a.H / a.Hk, d = a.d, L = dep.n(), n = G * L, ld = dep.Hk * d;
    const long off0 = ((b * a.Tq + t) * a.H + kh * G) * d;  // row t of the group's first head
    const auto [K, ldk] = rows_as<T>(dep.key(b, j, dep.lo, kh), ld, L, d, wide);
    const auto [V, ldv] = rows_as<T>(dep.value(b, j, dep.lo, kh), ld, L, d, wide + L * d);
    const auto [Qg, ldq] = rows_as<T>(q + off0, d, G, d, wide + 2 * L * d);
    const T* dO = dout + off0;
    for (long g = 0; g < G; g++) {
        const T* qr = Qg + g * ldq;
        const T* go = dO + g * d;
        const T lse_g = lse[(b * a.H + kh * G + g) * a.Tq + t], D = D0[g * a.Tq + t];
        for (long i = 0; i < L; i++) {
            if (g == 0 && next >= 0) {
                prefetch_row<false>(dep.kd + next, ld, i, d), prefetch_row<false>(dep.vd + next, ld, i, d);
                prefetch_row<true>(dkd + next, ld, i, d), prefetch_row<true>(dvd + next, ld, i, d);
            }
            pd[g * L + i] = simd::dot(qr, K + i * ldk, d) * scale - lse_g;
            dpd[g * L + i] = simd::dot(go, V + i * ldv, d) - D;
        }
    }
#pragma omp simd
    for (long x = 0; x < n; x++) {
        pd[x] = vexp(pd[x]);      // P
        dpd[x] *= pd[x] * scale;  // s·dS
    }
    const auto all = [](long k1, long cols) { return [=](long, long) { return tile::Bounds{0, k1, cols}; }; };
    tile::gemm(G, T(1), dpd, L, 1, K, ldk, true, dq + off0, d, all(L, d));                          // dQ += s·dS·K_d
    tile::gemm(L, T(1), dpd, 1, L, Qg, ldq, true, dkd + dep.offset(b, j, dep.lo, kh), ld, all(G, d));  // dK_d += s·dSᵀ·Q
    tile::gemm(L, T(1), pd, 1, L, dO, d, true, dvd + dep.offset(b, j, dep.lo, kh), ld, all(G, d));     // dV_d += Pᵀ·dO
}

// Backward: every depth pair of kv head kh in batch b, after the sequence part (D0 filled).
template <typename T, typename Q, typename U>
inline void depth_backward(T* dq, T* dkd, T* dvd, const T* dout, const Q* q, const T* lse, const T* D0, T* pd, T* dpd,
                           T* wide, const Call<U>& c, long b, long kh, T scale) {
    if (c.dep.n() <= 0) return;
    for (long t = 0; t < c.a.Tq; t++) {
        const long p = c.a.q_pos0 + t;
        const long next = t + 1 < c.a.Tq ? c.dep.offset(b, c.dep.row(p) + 1, c.dep.lo, kh) : -1;
        for (long j = c.dep.first_row(p); j <= c.dep.row(p); j++)
            depth_backward_pair(dq, dkd, dvd, dout, q, lse, D0, pd, dpd, wide, c.dep, c.a, b, t, j, kh, scale,
                                j == c.dep.row(p) ? next : -1);
    }
}

}  // namespace strata::attn
