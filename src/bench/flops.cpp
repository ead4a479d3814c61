#include "bench/flops.h"

namespace strata::bench {

long attnres_op_sources(const ModelConfig& c, long j) {
    const int S = attnres_sublayers_per_block(c);
    if (S == 0) return 0;
    long n = 1;                               // the embedding
    for (long e = S - 1; e < j; e += S) n++;  // block sums: block k ends at sublayer (k+1)·S − 1
    if (j % S != 0) n++;                      // the partial sum of j's own block
    return n;
}

FlopCount training_flops(const ModelConfig& c, long B, long T) {
    const double D = c.d_model, H = c.n_heads, Hk = c.n_kv_heads, d = c.head_dim, F = c.ffn_hidden,
                 V = c.vocab_size, L = c.n_layers, N = double(B) * double(T);
    FlopCount f;
    f.moda = c.attention == AttentionKind::moda;
    f.matmul_params = L * (D * (H + 2 * Hk) * d + H * d * D + 3 * D * F) + V * D;
    if (moda_ffn_kv(c)) f.matmul_params += (L - 1) * 2 * Hk * d * D;
    for (long l = 0; l < c.n_layers; l++) f.moda_slots += double(moda_slots_read(c, l));
    if (is_attnres(c))
        for (long j = 0; j <= 2 * long(c.n_layers); j++) f.attnres_sources += double(attnres_op_sources(c, j));
    f.matmul = 6.0 * f.matmul_params * N;
    f.attention = 6.0 * L * double(B) * H * double(T) * double(T) * d;
    f.moda_depth = 12.0 * N * H * d * f.moda_slots;
    f.attnres_mix = 12.0 * N * D * f.attnres_sources;
    f.total = f.matmul + f.attention + f.moda_depth + f.attnres_mix;
    return f;
}

double family_flops(const FlopCount& f, OpFamily family) {
    switch (family) {
        case OpFamily::gemm_fwd: return f.matmul / 3.0;
        case OpFamily::gemm_bwd: return f.matmul * 2.0 / 3.0;
        case OpFamily::attn_fwd: return f.moda ? 0.0 : f.attention / 3.0;
        case OpFamily::attn_bwd: return f.moda ? 0.0 : f.attention * 2.0 / 3.0;
        case OpFamily::moda_fwd: return f.moda ? (f.attention + f.moda_depth) / 3.0 : 0.0;
        case OpFamily::moda_bwd: return f.moda ? (f.attention + f.moda_depth) * 2.0 / 3.0 : 0.0;
        case OpFamily::attnres_fwd: return f.attnres_mix / 3.0;
        case OpFamily::attnres_bwd: return f.attnres_mix * 2.0 / 3.0;
        default: return 0.0;
    }
}

}  // namespace strata::bench
