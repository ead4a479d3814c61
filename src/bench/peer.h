// The PyTorch peer: bench/peer_train.py run with the bench's flags; it prints one JSON line.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "bench/options.h"

namespace strata::bench {

struct PeerResult {
    bool ran = false;
    std::string note;  // why it did not run, or what went wrong
    nlohmann::json j;  // the peer's JSON line (has tokens_per_s) when it ran
};

// Never throws for a peer that is missing, fails or prints no readable JSON: the note says which.
PeerResult run_peer(const std::filesystem::path& python, const std::filesystem::path& script,
                    const TrainBenchOptions& o);

}  // namespace strata::bench
