// strata ops: every op is a forward/backward pair, written for the CPU with OpenMP and BLAS, templated
// on the scalar type so float64 instances can be checked by finite differences.
//
// Conventions (as in llm.c):
//  - Row-major. N is the number of rows (tokens = B·T). A Linear weight is (out, in): y = x·Wᵀ.
//  - Backward functions ACCUMULATE (+=) into every gradient they produce, inputs and parameters
//    alike, so a tensor consumed twice (a residual stream) just receives two contributions. Callers
//    zero gradient buffers once per step.
//  - Nothing here allocates in steady state: per-thread scratch is grown once and then reused.
//  - Each op opens with an OpTimer of its family (ops/profile.h): off by default, one atomic load.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/precision.h"
#include "ops/attn_res_gate.h"
#include "ops/moda_modes.h"

namespace strata {

// Storage and compute types (the precision seam, core/precision.h). An op is templated on the
// storage types of its tensors; it computes in compute_t of them: float for float and bf16, double
// for double. Statistics it saves (rstd, lse) and every gradient are compute_t, the gradients'
// storage type under mixed precision. Instances: all-float and all-double, and for bf16 the
// combinations the mixed-precision model uses (listed at each op's instantiation).
template <typename S>
struct compute_type {
    using type = S;
};
template <>
struct compute_type<bf16> {
    using type = float;
};
template <typename S>
using compute_t = typename compute_type<S>::type;

// Where a backward writes an input gradient: added to what is there (the convention above), or written
// over it, for a buffer the caller would otherwise zero just before (one pass over memory fewer, and a
// GEMM that need not read its output).
enum class Into { add, overwrite };

// ---- matmul: out (N, OC) = inp (N, IC) · w (OC, IC)ᵀ ----------------------------------------------
// The inputs inp and w have one storage type A (bf16 GEMMs take bf16 weight copies); out may be A or
// compute_t<A> (a bf16 GEMM accumulates in float and can write float).
template <typename O, typename A>
void matmul_forward(O* out, const A* inp, const A* w, long N, long IC, long OC);
// dinp (N, IC) += dout·w ; dw (OC, IC) += doutᵀ·inp. dinp may be null (no input gradient wanted);
// with Into::overwrite, dinp = dout·w.
template <typename A>
void matmul_backward(compute_t<A>* dinp, compute_t<A>* dw, const A* dout, const A* inp, const A* w, long N, long IC,
                     long OC, Into dinp_into = Into::add);

// ---- embedding: out (N, C) = table[tokens] -----------------------------------------------------------
template <typename T, typename W = T>
void embedding_forward(T* out, const int32_t* tokens, const W* table, long N, long C);
template <typename T, typename W = T>
void embedding_backward(W* dtable, const T* dout, const int32_t* tokens, long N, long C);

// ---- RMSNorm over rows of width C: out = inp · rstd · w · scale, rstd = (mean(inp²) + eps)^-½ ---------
// out and inp may differ in storage type (a float stream normed into a bf16 GEMM input). `scale` is a
// constant factor on the output (LayerNorm-Scaling's 1/√ℓ); rstd is saved without it, and the
// backward takes the same scale. At scale 1 the results are those of the unscaled norm, bit for bit.
template <typename O, typename I, typename W>
void rmsnorm_forward(O* out, compute_t<I>* rstd, const I* inp, const W* w, long N, long C, double eps,
                     double scale = 1.0);
// dinp: added into, or with Into::overwrite written over (a buffer nothing else has written).
template <typename I, typename W>
void rmsnorm_backward(compute_t<I>* dinp, W* dw, const compute_t<I>* dout, const I* inp, const W* w,
                      const compute_t<I>* rstd, long N, long C, double scale = 1.0, Into dinp_into = Into::add);

// ---- residual add fused with the next RMSNorm (pre-norm): out = a + b, then normed = RMSNorm(out)·w
// with its rstd, in one pass over the rows (the sum is normed while still in cache). Equal, bit for
// bit, to residual_forward followed by rmsnorm_forward; its backward is theirs.
template <typename O, typename T, typename B, typename W>
void residual_rmsnorm_forward(T* out, O* normed, compute_t<T>* rstd, const T* a, const B* b, const W* w, long N,
                              long C, double eps, double scale = 1.0);

// ---- RoPE, rotate-half layout, in place on (rows, n_heads, d) ----------------------------------------
// pos[r] is the absolute position of row r; cos/sin tables are (max_pos, d/2).
template <typename T>
void rope_table(T* cos_t, T* sin_t, long max_pos, long d, double theta);
template <typename S, typename T>
void rope_forward(S* x, const int32_t* pos, const T* cos_t, const T* sin_t, long rows, long n_heads, long d);
// The rotation is orthogonal, so the backward rotates the gradient back by −angle (in place).
template <typename T>
void rope_backward(T* dx, const int32_t* pos, const T* cos_t, const T* sin_t, long rows, long n_heads, long d);

// ---- SwiGLU: gu is (N, 2F) = [gate | up]; out (N, F) = silu(gate) ⊙ up ----------------------------
template <typename S>
void swiglu_forward(S* out, const S* gu, long N, long F);
// dgu may be stored as S or compute_t<S> (it feeds a GEMM's backward).
template <typename D, typename S>
void swiglu_backward(D* dgu, const compute_t<S>* dout, const S* gu, long N, long F, Into into = Into::add);

// ---- causal grouped-query attention, flash-style -------------------------------------------------
// q, out: (B, Tq, H, d) contiguous. k, v: (B, ·, Hk, d) with batch stride kv_bstride elements (a KV
// cache may be longer than Tk). Query row i sits at absolute position q_pos0 + i and sees keys
// 0..q_pos0+i. Query head h reads kv head h / (H/Hk). lse: (B, H, Tq), the log-sum-exp of the
// scaled scores of each row, kept for the backward. Never materialises a Tq×Tk matrix: it walks key
// tiles with an online softmax.
struct AttnDims {
    long B, Tq, Tk, H, Hk, d;
    long q_pos0;      // absolute position of query row 0 (0 in training, the cache length when decoding)
    long kv_bstride;  // elements between batches in k and v
};
// Storage S (q, k, v, out) may be bf16; lse and every gradient are compute_t<S>.
template <typename S>
void attention_forward(S* out, compute_t<S>* lse, const S* q, const S* k, const S* v, const AttnDims& a);
// dq, dk, dv accumulate. Recomputes probabilities from lse; D = rowsum(dout ⊙ out).
template <typename S>
void attention_backward(compute_t<S>* dq, compute_t<S>* dk, compute_t<S>* dv, const compute_t<S>* dout, const S* out,
                        const compute_t<S>* lse, const S* q, const S* k, const S* v, const AttnDims& a);

// ---- MoDA: attention over the sequence and depth keys/values, in one softmax (docs/moda.md) ---------
// One parameter struct, as FlashAttention's: pointers, strides, sizes, the sequence mask, the depth
// visibility, the chunk, the slots and the window. attention_forward/backward above are this op with
// no depth and the causal mask; every mask and visibility rule lives in one place
// (ops/cpu/attention_shared.h).
//
// Query row t of q sits at absolute position p = dims.q_pos0 + t. Query head h reads kv head
// h / (H/Hk) in the sequence and in the depth. Its one softmax covers:
//  - the sequence keys: 0..p under `causal`, all Tk under `noncausal`, none under `none` (FDA, flash
//    depth attention: depth slots only; a row that sees nothing gets out = 0, lse = −inf);
//  - the depth slots lo..L−1 (lo = L − window when window > 0, else 0) of the tokens it sees: its own
//    token under `own`; under `chunk` also the earlier tokens of its chunk of `chunk` tokens (the
//    tokens at positions ⌊p/C⌋·C .. p).
// The depth K/V are (B, depth_rows, L_max, Hk, d) with batch stride depth_bstride; row j holds the
// token at absolute position depth_pos0 + j, so every query's visible tokens must be rows of it.
template <typename S>
struct ModaParams {
    AttnDims dims{};                                    // the sequence part, as attention_forward
    const S *q = nullptr, *k = nullptr, *v = nullptr;   // k, v may be null under SeqMask::none
    const S *kd = nullptr, *vd = nullptr;               // depth K/V (null when L = 0)
    long L = 0;              // depth slots filled per token (slots 0..L−1)
    long L_max = 0;          // slots per token in the buffer (0: L)
    long depth_rows = 0;     // tokens in the depth buffer (0: dims.Tq)
    long depth_pos0 = 0;     // absolute position of depth row 0
    long depth_bstride = 0;  // elements between batches in kd, vd (0: depth_rows·L_max·Hk·d)
    SeqMask mask = SeqMask::causal;
    DepthVisibility visibility = DepthVisibility::own;
    long chunk = 0;      // tokens per chunk under DepthVisibility::chunk (0: max(1, 64/G), as the official kernel)
    long window = 0;     // read only the `window` most recent slots of each token (0: all L)
    double scale = 0;    // score scale (0: 1/√d)
    S* out = nullptr;                // (B, Tq, H, d)
    compute_t<S>* lse = nullptr;     // (B, H, Tq), natural-log log-sum-exp of each row's scores
};
// The gradients of moda_backward; each accumulates (dkd, dvd shaped like kd, vd). dk, dv may be null
// under SeqMask::none, dkd, dvd when L = 0.
template <typename S>
struct ModaGrads {
    compute_t<S> *dq = nullptr, *dk = nullptr, *dv = nullptr, *dkd = nullptr, *dvd = nullptr;
    const compute_t<S>* dout = nullptr;
};
// The chunk size a call uses (p.chunk, or its default), and a check of every field against the
// others: throws Error naming the field.
template <typename S>
long moda_chunk(const ModaParams<S>& p);
template <typename S>
void moda_check(const ModaParams<S>& p);

template <typename S>
void moda_forward(const ModaParams<S>& p);
// Reads p.out and p.lse of the forward; recomputes probabilities from lse; D = rowsum(dout ⊙ out).
template <typename S>
void moda_backward(const ModaParams<S>& p, const ModaGrads<S>& g);
// Diagnostics, after moda_forward (reads p.lse): for every row (B, H, Tq), the softmax mass on its depth
// slots, depth_mass = Σ_slots exp(s − lse), and on sequence key 0 (the attention sink of the window),
// sink_mass = exp(s_0 − lse), 0 where key 0 is hidden (SeqMask::none). A row that saw nothing gives 0.
template <typename S>
void moda_mass(const ModaParams<S>& p, compute_t<S>* depth_mass, compute_t<S>* sink_mass);

// ---- cross-entropy over rows of logits (N, V) --------------------------------------------------------
// losses[r] = lse_r − logits[r, target_r]; rows with target < 0 get loss 0 and are not counted.
// Returns the number of counted rows.
template <typename S>
long crossentropy_forward(compute_t<S>* losses, compute_t<S>* lse, const S* logits, const int32_t* targets, long N,
                          long V);
// dlogits += scale · (softmax(logits) − onehot(target)) for counted rows; dlogits stored as S or
// compute_t<S> (it feeds the head's GEMM backward).
template <typename D, typename S>
void crossentropy_backward(D* dlogits, const S* logits, const compute_t<S>* lse, const int32_t* targets, long N,
                           long V, compute_t<S> scale);

// ---- LM head fused with cross-entropy, in row chunks (training and loss evaluation) -----------------
// The mean cross-entropy of logits = x·wᵀ (x (N, D), w (V, D)) without storing the logits: for each
// chunk of `chunk` rows, the head's GEMM writes the chunk's logits (in compute_t<A>, so they stay in
// cache), then one pass gives losses[r] and lse[r] as crossentropy_forward does, and writes
// dlogits[r] = (softmax − onehot(target_r)) / counted, the gradient of the mean loss (a zero row for
// target < 0). dlogits (N, V) is the dout of the head's matmul_backward. scratch (chunk, V) holds a
// bf16 run's float logits; full precision writes them into dlogits and needs none (null is fine).
// Returns the number of counted rows.
template <typename A>
long head_crossentropy_forward(compute_t<A>* losses, compute_t<A>* lse, A* dlogits, compute_t<A>* scratch,
                               const A* x, const A* w, const int32_t* targets, long N, long D, long V, long chunk);

// ---- AttnRes: softmax attention over depth with a static pseudo-query (docs/attn_res.md) ------------
// srcs[0..n) are (N, D) row-major sources (earlier sublayer outputs, block sums, the embedding). For
// each row r, with u = w ⊙ γ (γ = all ones when gamma is null):
//   rstd_i = (mean(v_i²) + eps)^-½,  s_i = rstd_i · (u · v_i),  α = softmax_i(s),  out = Σ_i α_i v_i.
// The values enter raw; the RMSNorm only shapes the logits. Saves logit and rstd, each (n, N), and
// lse (N) for the backward. n must be at least 1.
// The sigmoid gate (an ablation, attnres_gate = "sigmoid") replaces the softmax with unnormalised
// gates α_i = σ(s_i); lse is then written as 0 and not read (AttnResGate: ops/attn_res_gate.h).
// query_per_row (the input-dependent query ablation): w is (N, D), one query per row, in place of
// one (D) query for every row.
template <typename T>
void attnres_forward(T* out, T* logit, T* rstd, T* lse, const T* const* srcs, int n, const T* w, const T* gamma,
                     long N, long D, double eps, AttnResGate gate = AttnResGate::softmax, bool query_per_row = false);
// dsrcs[i] (N, D) accumulate (a null entry skips that source); dw (D, or (N, D) with query_per_row)
// and dgamma (D, may be null) accumulate. out is the forward's output. Every sum over rows is taken per
// tile of rows and the tiles added in order, so it does not depend on the thread count.
template <typename T>
void attnres_backward(T* const* dsrcs, T* dw, T* dgamma, const T* dout, const T* out, const T* logit, const T* rstd,
                      const T* lse, const T* const* srcs, int n, const T* w, const T* gamma, long N, long D,
                      AttnResGate gate = AttnResGate::softmax, bool query_per_row = false);

// ---- AttnRes, two-phase (Block AttnRes; the paper's Algorithm 1) -----------------------------------
// The S sublayers of a block mix the same completed sources (plus each one's partial sum), and their
// queries do not depend on the input, so phase 1 serves all S at once: it reads each source row once,
// computes its rstd once, and for every query q writes the normalised mix outs[q] (N, D), its logits
// logits[q] (n, N), the sources' rstd rstds[q] (n, N) and lse lses[q] (N). gammas may be null.
template <typename T>
void attnres_phase1(T* const* outs, T* const* logits, T* const* rstds, T* const* lses, const T* const* srcs, int n,
                    const T* const* ws, const T* const* gammas, int S, long N, long D, double eps);
// Phase 2 folds one more source, the partial sum p, into a phase-1 result in place: with
// s = w·RMSNorm_γ(p) and σ = exp(s − logaddexp(lse, s)), out ← (1−σ)·out + σ·p. The logits, rstd and
// lse then describe the (n+1)-source op exactly (logit and rstd of p at index n), so
// attnres_backward applies unchanged.
template <typename T>
void attnres_phase2(T* out, T* logit, T* rstd, T* lse, const T* p, int n, const T* w, const T* gamma, long N, long D,
                    double eps);
// The backward of phase 1's part of S ops: op q's gradient through its first n sources (the completed
// ones it shares with the block's other sublayers), all S at once, so each source row and its gradient
// row are read and written once for the block instead of once per sublayer. douts[q] is op q's output
// gradient, outs[q] its whole output (after phase 2), logits/rstds/lses what the forward left for op q
// (only the first n sources are read). Adds into dsrcs[i] (null: skipped), dws[q] and dgammas[q] (or
// gammas null). What attnres_backward of each op over these n sources adds, summed over q; the ops'
// other sources (the partial sums) are left to attnres_backward. Softmax, static queries only.
template <typename T>
void attnres_phase1_backward(T* const* dsrcs, T* const* dws, T* const* dgammas, const T* const* douts,
                             const T* const* outs, const T* const* logits, const T* const* rstds,
                             const T* const* lses, const T* const* srcs, int n, const T* const* ws,
                             const T* const* gammas, int S, long N, long D);


// ---- glue: the copies, adds and reductions between the ops above (src/ops/cpu/glue.cpp) -----------
// Each is an op like the rest, so the model never touches memory itself and another backend only has
// to provide these too.

// zero fill: x[0..n) = 0
template <typename T>
void fill_zero(T* x, size_t n);
// fill: x[0..n) = value
template <typename T>
void fill_value(T* x, size_t n, double value);

// copy: dst[0..n) = src[0..n) (no backward: callers add the gradient back with residual_backward)
template <typename T>
void copy_forward(T* dst, const T* src, size_t n);

// convert: dst[0..n) = src[0..n) between storage types (float ↔ bf16: rounds to nearest even). Its
// backward is a convert the other way, or residual_backward where the gradient stays float.
template <typename D, typename S>
void convert_forward(D* dst, const S* src, size_t n);

// residual add: out = a + b (out may alias a or b; b may be stored narrower, a bf16 sublayer output
// added to a float stream). Backward: da += dout, db += dout (either may be null).
template <typename T, typename B>
void residual_forward(T* out, const T* a, const B* b, long n);
template <typename T>
void residual_backward(T* da, T* db, const T* dout, long n);

// gated residual add (ReZero): out = a + alpha[0]·b, with the gate a one-element tensor (out may alias
// a). Backward: db = alpha[0]·dout, OVERWRITTEN (a buffer of its own, like a GEMM's Into::overwrite),
// and dalpha[0] += Σ dout·b in double over fixed chunks, added in order (the same bits at any thread
// count); da is residual_backward's.
template <typename T, typename B>
void gated_residual_forward(T* out, const T* a, const B* b, const T* alpha, long n);
template <typename T, typename B>
void gated_residual_backward(T* db, T* dalpha, const T* dout, const B* b, const T* alpha, long n);

// weighted sum of n sources (DenseFormer's depth-weighted average): out = Σ_i alpha[i]·srcs[i], each
// source n_elem long. Backward: dsrcs[i] += alpha[i]·dout (a null dsrcs[i] is skipped) and
// dalpha[i] += Σ dout·srcs[i], reduced as in gated_residual_backward.
template <typename T>
void weighted_sum_forward(T* out, const T* const* srcs, int n, const T* alpha, long n_elem);
template <typename T>
void weighted_sum_backward(T* const* dsrcs, T* dalpha, const T* dout, const T* const* srcs, int n, const T* alpha,
                           long n_elem);

// qkv split: the fused projection qkv (N, Wq + Wk + Wv) into contiguous q (N, Wq), k (N, Wk), v (N, Wv).
// Its backward is the merge: dqkv = [dq | dk | dv]. Every element of dqkv is written once, so the
// backward OVERWRITES dqkv (callers need not zero it), the one exception to the accumulate rule.
template <typename T>
void qkv_split_forward(T* q, T* k, T* v, const T* qkv, long N, long Wq, long Wk, long Wv);
template <typename T>
void qkv_split_backward(T* dqkv, const T* dq, const T* dk, const T* dv, long N, long Wq, long Wk, long Wv);

// depth slot write: slot `slot` of a depth stream (N, slots, W) ← rows of src (N, W), row stride
// src_stride (≥ W; a wider fused row can be read in place). Backward: dsrc rows += the slot's
// gradient, read from ddepth; dsrc has row stride dsrc_stride.
template <typename T>
void depth_slot_forward(T* depth, long slots, long slot, const T* src, long src_stride, long N, long W);
template <typename T>
void depth_slot_backward(T* dsrc, long dsrc_stride, const T* ddepth, long slots, long slot, long N, long W);

// KV-cache append: rows t = 0..n−1 of batch b of k and v, (B, n, W) contiguous, go to positions
// pos0 + t of the caches, whose batches are bstride elements apart (row width W). Inference only.
template <typename T>
void kv_append_forward(T* kc, T* vc, const T* k, const T* v, long B, long n, long pos0, long bstride, long W);

// x *= s, element-wise (gradient averaging and clipping)
template <typename T>
void scale_forward(T* x, long n, double s);

// Σ x², summed in double over a fixed split of [0, n) by thread, the partials added in thread order:
// the same bits for a given thread count. The global gradient norm is sqrt of the sum of these
// partials over all gradient buffers (and, later, over ranks).
template <typename T>
double sum_squares(const T* x, long n);

// Σ x in double, serially in index order (a loss over its rows).
template <typename T>
double sum_ordered(const T* x, long n);

// Number of NaN and ±Inf elements among x[0..n).
template <typename T>
long nonfinite_count(const T* x, long n);

// Σ_r mean_c(x[r, c]²) over the N rows of x (N, C), in double (depth diagnostics).
template <typename T>
double row_mean_square_sum(const T* x, long N, long C);
// Σ_r exp(logit[r] − lse[r]) over N rows, in double: the summed softmax weight of one source (with
// the sigmoid gate, Σ_r σ(logit[r]); lse is not read).
template <typename T>
double softmax_weight_sum(const T* logit, const T* lse, long N, AttnResGate gate = AttnResGate::softmax);

// AdamW (decoupled weight decay, torch.optim.AdamW) on one tensor of n elements, at the 1-based step
// `step`: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g², p ← p·(1 − lr·wd·decay) − lr/bc1 · m / (√v/√bc2 + ε).
struct AdamWArgs {
    double lr, beta1, beta2, eps, weight_decay;
    long step;
};
// The moments m, v are stored as S (the optimizer-state type), the weights and gradients as T.
template <typename T, typename S = T>
void adamw_update(T* p, const T* g, S* m, S* v, long n, const AdamWArgs& a, bool decay);

}  // namespace strata
