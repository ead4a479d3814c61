// The PyTorch peer: bench/peer_train.py, one process per PyTorch configuration, in its --serve mode
// (it builds the same bench model, warms up, then answers `rep` and `quit` on stdin).
#pragma once
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "bench/options.h"

namespace strata::bench {

// Why the peer cannot be started at all ("" when it can): the python or the script is missing.
std::string peer_missing(const std::filesystem::path& python, const std::filesystem::path& script);

// The command line of one configuration ("eager", "eager-bf16", "compile", "compile-bf16") in
// --serve mode, with the bench's model and step flags.
std::vector<std::string> peer_argv(const std::filesystem::path& python, const std::filesystem::path& script,
                                   const TrainBenchOptions& o, const std::string& config);

// The environment the peer runs with: torch.compile's code generation stays in the peer's own
// process (TORCHINDUCTOR_COMPILE_THREADS=1), so its peak RSS is that process's alone.
std::vector<std::pair<std::string, std::string>> peer_env();

}  // namespace strata::bench
