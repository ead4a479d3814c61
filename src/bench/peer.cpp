#include "bench/peer.h"

#include <sys/wait.h>

#include <cstdio>
#include <sstream>

#include "bench/machine.h"

namespace fs = std::filesystem;

namespace strata::bench {

PeerResult run_peer(const fs::path& python, const fs::path& script, const TrainBenchOptions& o) {
    PeerResult r;
    if (!fs::exists(python)) {
        r.note = "peer python " + python.string() + " not found; create it with `bash bench/setup.sh` (or pass --peer-python)";
        return r;
    }
    if (!fs::exists(script)) {
        r.note = "peer script " + script.string() + " not found";
        return r;
    }
    std::string cmd = shell_quote(python.string()) + " " + shell_quote(script.string()) +
                      " --threads " + std::to_string(o.threads) + " --warmup " + std::to_string(o.warmup) +
                      " --steps " + std::to_string(o.steps) + " --batch " + std::to_string(o.batch) +
                      " --seq " + std::to_string(o.seq) + " --residual " + o.residual + " --block-size " +
                      std::to_string(o.attnres_block_size) + " --attention " + o.attention;
    std::fprintf(stderr, "running the PyTorch peer: %s\n", cmd.c_str());
    int status = 0;
    std::string out = run_capture(cmd, &status);
    if (status != 0) {
        r.note = "peer exited with status " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : status) +
                 " (its stderr is above)";
        return r;
    }
    std::istringstream in(out);
    std::string line, last;
    while (std::getline(in, line))
        if (!line.empty() && line[0] == '{') last = line;
    try {
        r.j = nlohmann::json::parse(last);
        (void)r.j.at("tokens_per_s").get<double>();
        r.ran = true;
    } catch (const std::exception& e) {
        r.note = std::string("could not read the peer's JSON line: ") + e.what();
    }
    return r;
}

}  // namespace strata::bench
