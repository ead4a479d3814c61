#include "core/fileio.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <utility>

#include "core/error.h"

namespace strata {

namespace {

constexpr size_t kBufferSize = 1 << 20;

std::string errno_text(int err) { return std::strerror(err); }

std::string parent_dir(const std::string& path) {
    auto slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

// Returns UINT64_MAX when no fault is requested. A malformed value is a test bug, so it is loud.
uint64_t fault_limit_from_env() {
    const char* v = std::getenv("STRATA_FAULT_DISK_FULL");
    if (!v || !*v) return UINT64_MAX;
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(v, &end, 10);
    if (errno != 0 || *end != '\0' || v[0] == '-')
        throw Error(std::string("STRATA_FAULT_DISK_FULL must be a byte count, got '") + v + "'");
    return n;
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& other) noexcept { *this = std::move(other); }

AtomicFileWriter& AtomicFileWriter::operator=(AtomicFileWriter&& other) noexcept {
    if (this != &other) {
        abort();
        fd_ = std::exchange(other.fd_, -1);
        path_ = std::move(other.path_);
        tmp_path_ = std::move(other.tmp_path_);
        buffer_ = std::move(other.buffer_);
        logical_size_ = other.logical_size_;
        physical_size_ = other.physical_size_;
        fault_limit_ = other.fault_limit_;
    }
    return *this;
}

void AtomicFileWriter::open(const std::string& path) {
    abort();
    if (path.empty()) throw Error("cannot write an empty file path");
    path_ = path;
    tmp_path_ = path + ".tmp." + std::to_string(::getpid());
    buffer_.clear();
    buffer_.reserve(kBufferSize);
    logical_size_ = physical_size_ = 0;
    fault_limit_ = fault_limit_from_env();
    // A directory under the final name would only fail the rename, after all the writing.
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) throw Error("cannot write " + path_ + ": " + errno_text(EISDIR));
    int fd = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int err = errno;
        throw Error("cannot write " + path_ + ": " + errno_text(err));
    }
    fd_ = fd;
}

void AtomicFileWriter::fail(int err, const char* what) {
    std::string msg = "cannot write " + path_ + ": ";
    if (what) msg += std::string(what) + ": ";
    msg += errno_text(err);
    abort();
    throw Error(msg);
}

void AtomicFileWriter::raw_write(const char* data, size_t n) {
    while (n > 0) {
        size_t chunk = n;
        bool injected_full = false;
        if (fault_limit_ != UINT64_MAX) {
            uint64_t room = physical_size_ < fault_limit_ ? fault_limit_ - physical_size_ : 0;
            if (chunk > room) {
                chunk = static_cast<size_t>(room);
                injected_full = true;
            }
        }
        if (chunk == 0 && injected_full) fail(ENOSPC);
        ssize_t w = ::write(fd_, data, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            fail(errno);
        }
        if (w == 0) fail(ENOSPC);  // a regular file that accepts nothing is full
        data += w;
        n -= static_cast<size_t>(w);
        physical_size_ += static_cast<uint64_t>(w);
    }
}

void AtomicFileWriter::flush_buffer() {
    if (buffer_.empty()) return;
    raw_write(buffer_.data(), buffer_.size());
    buffer_.clear();
}

void AtomicFileWriter::write(const void* data, size_t n) {
    STRATA_CHECK(fd_ >= 0, "AtomicFileWriter::write on a writer that is not open");
    if (n == 0) return;
    const char* p = static_cast<const char*>(data);
    logical_size_ += n;
    if (buffer_.size() + n <= kBufferSize) {
        buffer_.insert(buffer_.end(), p, p + n);
        return;
    }
    flush_buffer();
    // Large blocks (tensor data) skip the buffer: copying them would only cost bandwidth.
    if (n >= kBufferSize / 2) {
        raw_write(p, n);
    } else {
        buffer_.insert(buffer_.end(), p, p + n);
    }
}

void AtomicFileWriter::commit() {
    STRATA_CHECK(fd_ >= 0, "AtomicFileWriter::commit on a writer that is not open");
    flush_buffer();
    if (::fsync(fd_) != 0) fail(errno, "fsync");
    int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) {
        int err = errno;
        ::unlink(tmp_path_.c_str());
        throw Error("cannot write " + path_ + ": close: " + errno_text(err));
    }
    if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
        int err = errno;
        ::unlink(tmp_path_.c_str());
        throw Error("cannot write " + path_ + ": rename: " + errno_text(err));
    }
    tmp_path_.clear();
    // The rename is only durable once the directory entry is on disk. Some filesystems cannot fsync a
    // directory (EINVAL); there the rename is as durable as that filesystem allows, so go on.
    int dfd = ::open(parent_dir(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        int rc = ::fsync(dfd);
        int err = errno;
        ::close(dfd);
        if (rc != 0 && err != EINVAL && err != EROFS)
            throw Error("cannot write " + path_ + ": fsync of its directory: " + errno_text(err));
    }
}

void AtomicFileWriter::abort() noexcept {
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
    if (!tmp_path_.empty()) {
        ::unlink(tmp_path_.c_str());
        tmp_path_.clear();
    }
    buffer_.clear();
    buffer_.shrink_to_fit();
}

void atomic_write_file(const std::string& path, std::string_view bytes) {
    AtomicFileWriter w(path);
    w.write(bytes);
    w.commit();
}

ReadOnlyFile ReadOnlyFile::open(const std::string& path, bool regular_only) {
    ReadOnlyFile f;
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is then refused below as not a
    // regular file. Reads of regular files ignore the flag.
    f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (regular_only ? O_NONBLOCK : 0));
    if (f.fd < 0) {
        int err = errno;
        throw Error("cannot read " + path + ": " + errno_text(err));
    }
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) {
        int err = errno;
        throw Error("cannot read " + path + ": " + errno_text(err));
    }
    if (S_ISDIR(st.st_mode)) throw Error("cannot read " + path + ": it is a directory");
    if (regular_only && !S_ISREG(st.st_mode)) throw Error("cannot read " + path + ": not a regular file");
    f.size = S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size) : 0;
    return f;
}

ReadOnlyFile::~ReadOnlyFile() {
    if (fd >= 0) ::close(fd);
}

std::string read_file(const std::string& path) {
    ReadOnlyFile file = ReadOnlyFile::open(path, /*regular_only=*/false);
    const int fd = file.fd;
    // st_size is only a hint (special files report 0, files may grow), so read until EOF.
    std::string out;
    size_t used = 0;
    out.resize(file.size > 0 ? static_cast<size_t>(file.size) + 1 : 1 << 16);
    for (;;) {
        if (used == out.size()) out.resize(out.size() * 2);
        ssize_t r = ::read(fd, out.data() + used, out.size() - used);
        if (r < 0) {
            if (errno == EINTR) continue;
            int err = errno;
            throw Error("cannot read " + path + ": " + errno_text(err));
        }
        if (r == 0) break;
        used += static_cast<size_t>(r);
    }
    out.resize(used);
    return out;
}

int remove_stale_temp_files(const std::string& dir) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) return 0;
    int removed = 0;
    for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        const size_t at = name.rfind(".tmp.");
        if (at == std::string::npos || at == 0) continue;
        const std::string pid_text = name.substr(at + 5);
        if (pid_text.empty() || pid_text.size() > 9 ||
            pid_text.find_first_not_of("0123456789") != std::string::npos)
            continue;
        const pid_t pid = pid_t(std::stol(pid_text));
        if (pid == ::getpid()) continue;
        if (pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM)) continue;  // its writer may still be running
        std::error_code rec;
        if (it->is_regular_file(rec) && std::filesystem::remove(it->path(), rec)) removed++;
    }
    return removed;
}

}  // namespace strata
