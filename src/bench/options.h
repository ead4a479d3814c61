// What `strata bench train` runs: the flags of the CLI, checked there (src/cli/bench.cpp).
#pragma once
#include <string>

namespace strata::bench {

struct TrainBenchOptions {
    int threads = 2;
    int warmup = 2;
    int steps = 10;
    long batch = 8;
    long seq = 256;
    std::string repo;         // repository root; found automatically when empty
    std::string peer_python;  // default <repo>/bench/.venv/bin/python
    bool no_peer = false;
    bool profile = false;
    std::string residual = "standard";  // the bench model's residual rule (docs/attn_res.md)
    int attnres_block_size = 4;
    std::string attention = "causal";  // causal or moda (docs/moda.md)
    std::string json_out, markdown_out;  // report files (the CLI opens and writes them)
};

}  // namespace strata::bench
