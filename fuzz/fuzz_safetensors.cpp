// The safetensors reader. Each input is read twice, from memory (SafetensorsFile::from_bytes) and
// from a file (SafetensorsFile::open); both must agree, to the error message. Every tensor of a file
// that loads must lie inside the data section (ASan checks each byte), and writing the tensors and
// metadata back out with safetensors_write must give a file that reads back identical.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "fuzz_common.h"

using namespace strata;
using strata::fuzz::expect_ok_or_error;

namespace {

uint64_t touch(const TensorRef& t) {
    uint64_t sum = 0;
    const auto* p = static_cast<const unsigned char*>(t.data);
    for (size_t i = 0; i < t.nbytes; i++) sum += p[i];
    return sum;
}

std::vector<std::string> sorted_names(const SafetensorsFile& f) {
    std::vector<std::string> v = f.names();
    std::sort(v.begin(), v.end());
    return v;
}

// Same tensors and metadata. Names are compared as sets: empty tensors share an offset, so their
// order among themselves is not defined by the file.
void check_same(const SafetensorsFile& a, const SafetensorsFile& b, const char* what) {
    FUZZ_CHECK(sorted_names(a) == sorted_names(b), std::string(what) + ": tensor names differ");
    FUZZ_CHECK(a.metadata() == b.metadata(), std::string(what) + ": metadata differs");
    for (const std::string& name : a.names()) {
        const TensorRef& x = a.get(name);
        const TensorRef& y = b.get(name);
        FUZZ_CHECK(x.dtype == y.dtype && x.shape == y.shape && x.nbytes == y.nbytes, std::string(what) + ": " + name);
        FUZZ_CHECK(x.nbytes == 0 || std::memcmp(x.data, y.data, x.nbytes) == 0, std::string(what) + ": data of " + name);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = strata::fuzz::scratch_dir() + "/input.safetensors";
    strata::fuzz::write_file(path, data, size);

    SafetensorsFile mem, file;
    std::string mem_err, file_err;
    const bool mem_ok = expect_ok_or_error(
        [&] { mem = SafetensorsFile::from_bytes(std::string(reinterpret_cast<const char*>(data), size), path); },
        &mem_err);
    const bool file_ok = expect_ok_or_error([&] { file = SafetensorsFile::open(path); }, &file_err);
    FUZZ_CHECK(mem_ok == file_ok, "from_bytes and open disagree: '" + mem_err + "' vs '" + file_err + "'");
    FUZZ_CHECK(mem_err == file_err, "from_bytes and open give different errors: '" + mem_err + "' vs '" + file_err + "'");
    if (!mem_ok) return 0;
    check_same(mem, file, "from_bytes vs open");

    std::vector<TensorRef> tensors;
    uint64_t total = 0, sum = 0;
    for (const std::string& name : mem.names()) {
        const TensorRef& t = mem.get(name);
        FUZZ_CHECK(t.name == name, "tensor " + name + " is filed under " + t.name);
        FUZZ_CHECK(t.nbytes == 0 || t.data != nullptr, "tensor " + name + " has no data");
        sum += touch(t);
        total += t.nbytes;
        tensors.push_back(t);
    }
    FUZZ_CHECK(total + 8 <= size, "the tensors hold more bytes than the file");
    (void)sum;

    const std::string out = strata::fuzz::scratch_dir() + "/rewritten.safetensors";
    std::string err;
    FUZZ_CHECK(expect_ok_or_error([&] { safetensors_write(out, tensors, mem.metadata()); }, &err),
               "a file that loads cannot be written back: " + err);
    SafetensorsFile back;
    FUZZ_CHECK(expect_ok_or_error([&] { back = SafetensorsFile::open(out); }, &err),
               "a rewritten file does not load: " + err);
    check_same(mem, back, "rewritten");
    return 0;
}
