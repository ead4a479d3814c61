// strata: crash-safe file writing and whole-file reading.
//
// Every file strata produces (checkpoints, token shards, tokenizers, metadata) goes through
// AtomicFileWriter, so a crash, a kill or a full disk never leaves a half-written file under the
// final name: readers see either the complete old file or the complete new one.
//
// Fault injection: when the environment variable STRATA_FAULT_DISK_FULL holds a byte count N, each
// writer behaves as if the disk filled up after N bytes of that file, failing with ENOSPC. Tests use
// it to prove that a failed save leaves the previous file intact and no temporary file behind.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace strata {

// Streams bytes into `<path>.tmp.<pid>` in the destination directory; commit() makes the data
// durable (fsync) and renames it over `path` (then fsyncs the directory so the rename itself
// survives a power cut). Destroying or abort()ing an uncommitted writer removes the temporary file
// and leaves any existing `path` untouched. Every failure throws Error("cannot write <path>: ...").
class AtomicFileWriter {
public:
    AtomicFileWriter() = default;
    explicit AtomicFileWriter(const std::string& path) { open(path); }
    ~AtomicFileWriter() { abort(); }

    AtomicFileWriter(AtomicFileWriter&& other) noexcept;
    AtomicFileWriter& operator=(AtomicFileWriter&& other) noexcept;
    AtomicFileWriter(const AtomicFileWriter&) = delete;
    AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

    void open(const std::string& path);
    void write(const void* data, size_t n);
    void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
    void commit();
    void abort() noexcept;

    bool is_open() const { return fd_ >= 0; }
    const std::string& path() const { return path_; }
    uint64_t bytes_written() const { return logical_size_; }

private:
    void flush_buffer();
    void raw_write(const char* data, size_t n);
    [[noreturn]] void fail(int err, const char* what = nullptr);

    int fd_ = -1;
    std::string path_, tmp_path_;
    std::vector<char> buffer_;  // coalesces small writes (headers, per-row records)
    uint64_t logical_size_ = 0;
    uint64_t physical_size_ = 0;
    uint64_t fault_limit_ = UINT64_MAX;  // from STRATA_FAULT_DISK_FULL
};

// Writes the whole of `bytes` to `path` atomically (see AtomicFileWriter).
void atomic_write_file(const std::string& path, std::string_view bytes);

// A process killed mid-write leaves its `NAME.tmp.PID` behind (NAME itself stays whole). Removes
// those in `dir` whose writer is gone; returns how many.
int remove_stale_temp_files(const std::string& dir);

// A file opened read-only, closed on destruction. open() throws Error("cannot read <path>: ...")
// when the file is missing or unreadable, is a directory, or (if regular_only) is not a regular
// file such as a pipe; `size` is its length in bytes (0 for special files).
struct ReadOnlyFile {
    int fd = -1;
    uint64_t size = 0;
    static ReadOnlyFile open(const std::string& path, bool regular_only = true);
    ReadOnlyFile() = default;
    ReadOnlyFile(ReadOnlyFile&& o) noexcept : fd(o.fd), size(o.size) { o.fd = -1; }
    ReadOnlyFile(const ReadOnlyFile&) = delete;
    ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
    ~ReadOnlyFile();
};

// The whole content of `path`; throws Error("cannot read <path>: <reason>").
std::string read_file(const std::string& path);

}  // namespace strata
