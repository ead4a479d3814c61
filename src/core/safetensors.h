// strata: the safetensors tensor file format (reader and writer).
//
// Layout: an 8-byte little-endian u64 N, then N bytes of JSON header, then the data section.
//   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}
// Offsets are relative to the start of the data section. The writer pads the header with spaces to
// a multiple of 8 bytes so the data section starts 8-byte aligned, and lays tensors out contiguously
// in the order given. The reader accepts any file the format allows, and rejects (with an Error
// naming the file) everything else: it is meant to survive hostile input.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace strata {

// A view of one tensor: for writing, `data` points at the caller's bytes; for reading, into the
// SafetensorsFile that returned it (valid for that object's lifetime, including after a move).
struct TensorRef {
    std::string name;
    std::string dtype;  // "F32", "F64", "I32", "I64" or "U8"
    std::vector<int64_t> shape;
    const void* data = nullptr;
    size_t nbytes = 0;
};

// Bytes per element of a supported dtype; 0 for any other string.
size_t safetensors_dtype_size(const std::string& dtype);

// Writes atomically (see fileio.h): either the complete new file replaces `path`, or `path` is left
// as it was. Tensor data is streamed, not copied into one buffer. Throws Error on bad arguments
// (unknown dtype, nbytes not matching the shape, duplicate or reserved names) or I/O failure.
void safetensors_write(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

class SafetensorsFile {
public:
    // Reads and validates the whole file; throws Error naming `path` on any problem.
    static SafetensorsFile open(const std::string& path);
    // The same checks on a file's bytes held in memory; errors and path() name `origin`.
    static SafetensorsFile from_bytes(std::string bytes, std::string origin);

    bool has(const std::string& name) const { return tensors_.count(name) != 0; }
    // Throws Error naming the tensor and the file when absent.
    const TensorRef& get(const std::string& name) const;
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    // Tensor names in the order of their data in the file.
    std::vector<std::string> names() const { return order_; }
    const std::string& path() const { return path_; }

private:
    // Validates the header JSON of a file whose data section holds data_size bytes, allocates
    // storage_ for that section and points the tensors into it; the caller fills storage_.
    void parse_header(const std::string& text, uint64_t data_size);

    std::string path_;
    std::unique_ptr<uint64_t[]> storage_;  // the data section; u64 elements keep it 8-byte aligned
    std::map<std::string, TensorRef> tensors_;
    std::vector<std::string> order_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace strata
