// Commands that hand work to Python (plot: matplotlib; export --format gguf: the gguf package). The
// script's source is embedded in the binary (cmake/embed_text.cmake) and run with `python -c`, so
// it always matches the binary and works from any directory.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace strata::cli {

// STRATA_PYTHON when set, else python3 from PATH.
std::string python_interpreter();

// Runs `python -c source args...`, passing its stdout through and its stderr line by line, except
// a line starting with `error_prefix` (the script's own error), which becomes the Error thrown when
// the script fails. `command` names the CLI command in the other errors.
void run_python_script(const std::string& command, const std::string& python, std::string_view source,
                       const std::string& error_prefix, const std::vector<std::string>& args);

}  // namespace strata::cli
