// What `strata bench train` runs: the flags of the CLI, checked there (src/cli/bench.cpp).
#pragma once
#include <string>
#include <vector>

namespace strata::bench {

// The PyTorch configurations the peer can run (bench/peer_train.py --config), in report order.
inline const std::vector<std::string>& peer_config_names() {
    static const std::vector<std::string> names = {"eager", "eager-bf16", "compile", "compile-bf16"};
    return names;
}

struct TrainBenchOptions {
    int threads = 2;
    int warmup = 2;  // untimed steps of each configuration before its first repetition
    int steps = 5;   // timed steps in one repetition
    int reps = 10;   // repetitions of each configuration, interleaved
    double gemm_seconds = 0.4;  // how long each shape of the GEMM peaks is timed (at least 5 calls)
    long batch = 8;
    long seq = 256;
    std::vector<std::string> precisions = {"fp32", "bf16"};  // strata's configurations
    std::vector<std::string> peers = peer_config_names();    // PyTorch's configurations
    std::string repo;         // repository root; found automatically when empty
    std::string peer_python;  // default <repo>/bench/.venv/bin/python
    bool no_peer = false;
    bool profile = false;
    std::string residual = "standard";  // the bench model's residual rule (docs/attn_res.md)
    int attnres_block_size = 4;
    std::string attention = "causal";  // causal or moda (docs/moda.md)
    std::string json_out, markdown_out;  // report files (the CLI opens and writes them)
    std::string serve;  // internal: serve one strata configuration of this precision over stdin/stdout
};

}  // namespace strata::bench
