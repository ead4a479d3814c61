// The token-shard reader: TokenShard::open on arbitrary bytes written to a file in /dev/shm. A bad
// file must end in strata::Error; a shard that opens must match its header and file length, and
// every token read back (by index and in bulk) must lie inside its vocabulary.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "train/data.h"

using namespace strata;
using strata::fuzz::expect_ok_or_error;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    strata::fuzz::single_thread();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = strata::fuzz::scratch_dir() + "/shard.bin";
    strata::fuzz::write_file(path, data, size);

    std::unique_ptr<TokenShard> shard;
    if (!expect_ok_or_error([&] { shard = std::make_unique<TokenShard>(TokenShard::open(path)); })) return 0;
    const size_t n = shard->size();
    const int v = shard->vocab_size();
    FUZZ_CHECK(v > 0, "a shard opened with vocab_size " + std::to_string(v));
    const size_t bpt = v <= 65536 ? 2 : 4;
    FUZZ_CHECK(size == 32 + n * bpt, "a shard opened whose length does not match its header");

    std::vector<int32_t> all(n);
    shard->copy(0, n, all.data());
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(all[i] >= 0 && all[i] < v, "token " + std::to_string(all[i]) + " outside the vocabulary");
        FUZZ_CHECK((*shard)[i] == all[i], "operator[] and copy disagree at " + std::to_string(i));
    }
    std::string err;
    FUZZ_CHECK(!expect_ok_or_error([&] { (*shard)[n]; }, &err), "reading past the end did not throw");
    int32_t one;
    FUZZ_CHECK(!expect_ok_or_error([&] { shard->copy(n, 1, &one); }, &err), "copying past the end did not throw");
    FUZZ_CHECK(!expect_ok_or_error([&] { shard->copy(1, SIZE_MAX, &one); }, &err), "a huge copy did not throw");
    return 0;
}
