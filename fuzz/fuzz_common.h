// Shared by the libFuzzer targets: a scratch folder in /dev/shm, a plain file writer, and the rule
// every target follows: strata::Error is an expected outcome of bad input; anything else (another
// exception escaping, a crash, a sanitizer report, a failed FUZZ_CHECK) is a bug.
#pragma once
#include <fcntl.h>
#include <omp.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/error.h"

namespace strata::fuzz {

// Aborts (libFuzzer records a crash and saves the input) when a property of the code does not hold.
#define FUZZ_CHECK(cond, msg)                                                                       \
    do {                                                                                            \
        if (!(cond)) {                                                                              \
            std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s: %s\n", __FILE__, __LINE__, #cond, \
                         std::string(msg).c_str());                                                 \
            std::abort();                                                                           \
        }                                                                                           \
    } while (0)

// A folder of this process's own in tmpfs (no disk I/O per input), removed at exit.
inline const std::string& scratch_dir() {
    static const std::string dir = [] {
        std::string d = "/dev/shm/strata-fuzz-" + std::to_string(::getpid());
        std::filesystem::create_directories(d);
        std::atexit([] {
            std::error_code ec;
            std::filesystem::remove_all("/dev/shm/strata-fuzz-" + std::to_string(::getpid()), ec);
        });
        return d;
    }();
    return dir;
}

// Replaces `path` with exactly `bytes` (no fsync: the file only has to outlive this input).
inline void write_file(const std::string& path, const uint8_t* data, size_t size) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    FUZZ_CHECK(fd >= 0, "cannot create " + path);
    size_t done = 0;
    while (done < size) {
        ssize_t w = ::write(fd, data + done, size - done);
        FUZZ_CHECK(w > 0, "cannot write " + path);
        done += size_t(w);
    }
    ::close(fd);
}

// One thread: the readers' OpenMP loops must not start a thread pool for every input.
inline void single_thread() { omp_set_num_threads(1); }

// Runs fn; returns true when it completed, false when it threw strata::Error. Anything else escapes.
template <class F>
bool expect_ok_or_error(F&& fn, std::string* message = nullptr) {
    try {
        fn();
        return true;
    } catch (const strata::Error& e) {
        if (message) *message = e.what();
        return false;
    }
}

}  // namespace strata::fuzz
