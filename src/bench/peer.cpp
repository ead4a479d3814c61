#include "bench/peer.h"

namespace fs = std::filesystem;

namespace strata::bench {

std::string peer_missing(const fs::path& python, const fs::path& script) {
    if (!fs::exists(python))
        return "peer python " + python.string() +
               " not found; create it with `bash bench/setup.sh` (or pass --peer-python)";
    if (!fs::exists(script)) return "peer script " + script.string() + " not found";
    return "";
}

std::vector<std::string> peer_argv(const fs::path& python, const fs::path& script, const TrainBenchOptions& o,
                                   const std::string& config) {
    return {python.string(),
            script.string(),
            "--serve",
            "--config",
            config,
            "--threads",
            std::to_string(o.threads),
            "--warmup",
            std::to_string(o.warmup),
            "--steps",
            std::to_string(o.steps),
            "--batch",
            std::to_string(o.batch),
            "--seq",
            std::to_string(o.seq),
            "--residual",
            o.residual,
            "--block-size",
            std::to_string(o.attnres_block_size),
            "--attention",
            o.attention};
}

std::vector<std::pair<std::string, std::string>> peer_env() { return {{"TORCHINDUCTOR_COMPILE_THREADS", "1"}}; }

}  // namespace strata::bench
