// The command line: CLI11 parsing of every strata subcommand and its option checks, without running
// anything (run_main's dry run). The input is split into argv words at NUL and newline bytes, after
// the program name. Bad flags end in a non-zero status; nothing may crash or throw out of run_main.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::vector<std::string> words = {"strata"};
    std::string cur;
    for (size_t i = 0; i < size; i++) {
        const char c = static_cast<char>(data[i]);
        if (c == '\0' || c == '\n') {
            words.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    if (!cur.empty()) words.push_back(cur);
    std::vector<char*> argv;
    for (std::string& w : words) argv.push_back(w.data());
    argv.push_back(nullptr);
    const int rc = strata::cli::run_main(static_cast<int>(words.size()), argv.data(), /*dry_run=*/true);
    FUZZ_CHECK(rc >= 0 && rc < 256, "run_main returned " + std::to_string(rc));
    return 0;
}
