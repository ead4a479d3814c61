// strata: the one error type. Every failure that a user can cause (bad config, corrupt file, bad
// flag) throws strata::Error with a message that names the problem and, where there is one, the file.
#pragma once
#include <stdexcept>
#include <string>

namespace strata {

struct Error : std::runtime_error {
    explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Preconditions of our own code (not user input): a plain message, always checked.
#define STRATA_CHECK(cond, msg)                                                              \
    do {                                                                                     \
        if (!(cond)) throw ::strata::Error(std::string("internal check failed: ") + (msg)); \
    } while (0)

}  // namespace strata
