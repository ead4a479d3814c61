// Helpers shared by the C++ tests: a self-deleting temporary folder and an expected-Error check.
#pragma once
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/config.h"
#include "ops/ops.h"

namespace strata::testing {

// The small model the model-level tests start from: 2 layers, d_model 32, 4 query / 2 kv heads of
// dim 8, SwiGLU hidden 40. Each test sets what it varies on top.
inline ModelConfig tiny_model(int vocab_size, int max_seq_len) {
    ModelConfig c;
    c.vocab_size = vocab_size;
    c.d_model = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.ffn_hidden = 40;
    c.max_seq_len = max_seq_len;
    return c;
}

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/strata_test_XXXXXX";
        const char* p = mkdtemp(tmpl);
        if (!p) throw std::runtime_error("mkdtemp failed");
        path = p;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::string file(const std::string& name) const { return path + "/" + name; }
    std::vector<std::string> entries() const {
        std::vector<std::string> out;
        for (const auto& e : std::filesystem::directory_iterator(path)) out.push_back(e.path().filename().string());
        std::sort(out.begin(), out.end());
        return out;
    }
};

// Runs fn, expecting a strata::Error whose message contains every one of `needles`.
inline void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
    try {
        fn();
    } catch (const Error& e) {
        std::string msg = e.what();
        for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
        return;
    }
    ADD_FAILURE() << "expected strata::Error";
}

// MoDA's op arguments for the common case: slots 0..L−1 of an L_max-slot buffer of this call's rows,
// the causal mask, own-token visibility; callers set the rest.
template <typename S>
ModaParams<S> moda_args(S* out, compute_t<S>* lse, const S* q, const S* k, const S* v, const S* kd, const S* vd,
                        long L, long L_max, const AttnDims& a) {
    ModaParams<S> p;
    p.dims = a;
    p.q = q, p.k = k, p.v = v, p.kd = kd, p.vd = vd;
    p.L = L, p.L_max = L_max;
    p.depth_pos0 = a.q_pos0;
    p.out = out, p.lse = lse;
    return p;
}

// The op on those arguments, forward and backward (positional, as the tests' naive loops index them).
template <typename S>
void moda_fwd(S* out, compute_t<S>* lse, const S* q, const S* k, const S* v, const S* kd, const S* vd, long L,
              long L_max, const AttnDims& a) {
    moda_forward(moda_args(out, lse, q, k, v, kd, vd, L, L_max, a));
}
template <typename S>
void moda_bwd(compute_t<S>* dq, compute_t<S>* dk, compute_t<S>* dv, compute_t<S>* dkd, compute_t<S>* dvd,
              const compute_t<S>* dout, const S* out, const compute_t<S>* lse, const S* q, const S* k, const S* v,
              const S* kd, const S* vd, long L, long L_max, const AttnDims& a) {
    moda_backward(moda_args(const_cast<S*>(out), const_cast<compute_t<S>*>(lse), q, k, v, kd, vd, L, L_max, a),
                  ModaGrads<S>{dq, dk, dv, dkd, dvd, dout});
}

}  // namespace strata::testing
