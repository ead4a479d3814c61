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

namespace strata::testing {

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

}  // namespace strata::testing
