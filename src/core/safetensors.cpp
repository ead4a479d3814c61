#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "core/error.h"
#include "core/fileio.h"

namespace strata {

static_assert(std::endian::native == std::endian::little, "strata's file formats assume a little-endian host");

namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Far deeper than any real header (which nests 3 levels); bounds the parser's work on hostile input.
constexpr int kMaxJsonDepth = 32;

// Shape × element size, or false on overflow / negative dims.
bool byte_size(const std::vector<int64_t>& shape, size_t elem, uint64_t* out) {
    uint64_t n = elem;
    for (int64_t d : shape) {
        if (d < 0) return false;
        if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
    }
    *out = n;
    return true;
}

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    return s + "]";
}

// Max nesting of [ and { outside strings; stops counting once past the limit.
bool json_depth_ok(const std::string& text) {
    int depth = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > kMaxJsonDepth) return false;
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    return true;
}

void read_exact(int fd, void* buf, size_t n, uint64_t offset, const std::string& path) {
    char* p = static_cast<char*>(buf);
    while (n > 0) {
        ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
        if (r < 0) {
            if (errno == EINTR) continue;
            int err = errno;
            throw Error("cannot read " + path + ": " + std::strerror(err));
        }
        if (r == 0) throw Error("cannot read " + path + ": the file shrank while being read");
        p += r;
        n -= static_cast<size_t>(r);
        offset += static_cast<uint64_t>(r);
    }
}

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
    if (dtype == "F32" || dtype == "I32") return 4;
    if (dtype == "F64" || dtype == "I64") return 8;
    if (dtype == "U8") return 1;
    return 0;
}

void safetensors_write(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    auto bad = [&](const std::string& what) { return Error("cannot write " + path + ": " + what); };
    json header = json::object();
    std::set<std::string> seen;
    uint64_t offset = 0;
    for (const TensorRef& t : tensors) {
        size_t elem = safetensors_dtype_size(t.dtype);
        if (elem == 0) throw bad("tensor '" + t.name + "' has unsupported dtype '" + t.dtype + "'");
        if (t.name == "__metadata__") throw bad("'__metadata__' is reserved and cannot name a tensor");
        if (!seen.insert(t.name).second) throw bad("tensor name '" + t.name + "' appears twice");
        uint64_t expect = 0;
        if (!byte_size(t.shape, elem, &expect))
            throw bad("tensor '" + t.name + "' has an invalid shape " + shape_str(t.shape));
        if (expect != t.nbytes)
            throw bad("tensor '" + t.name + "' holds " + std::to_string(t.nbytes) + " bytes but " + t.dtype +
                      " shape " + shape_str(t.shape) + " needs " + std::to_string(expect));
        if (t.nbytes > 0 && t.data == nullptr) throw bad("tensor '" + t.name + "' has no data");
        json entry = json::object();
        entry["dtype"] = t.dtype;
        entry["shape"] = t.shape;
        entry["data_offsets"] = json::array({offset, offset + t.nbytes});
        header[t.name] = std::move(entry);
        offset += t.nbytes;
    }
    if (!metadata.empty()) header["__metadata__"] = metadata;

    std::string text;
    try {
        text = header.dump();
    } catch (const json::exception& e) {
        throw bad(std::string("a tensor name or metadata string is not valid UTF-8 (") + e.what() + ")");
    }
    // Space padding keeps the data section 8-byte aligned for readers that map the file.
    text.append((8 - text.size() % 8) % 8, ' ');
    uint64_t n = text.size();
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = static_cast<unsigned char>(n >> (8 * i));

    AtomicFileWriter w(path);
    w.write(len, sizeof len);
    w.write(text);
    for (const TensorRef& t : tensors) w.write(t.data, t.nbytes);
    w.commit();
}

namespace {

Error corrupt_file(const std::string& origin, const std::string& what) {
    return Error("safetensors file " + origin + " is corrupt: " + what);
}

// The header length from the file's first 8 bytes, checked against the file's size.
uint64_t header_length(const unsigned char* len, uint64_t file_size, const std::string& origin) {
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= static_cast<uint64_t>(len[i]) << (8 * i);
    if (n > kMaxHeaderBytes)
        throw corrupt_file(origin, "header length " + std::to_string(n) + " is absurd (limit " +
                                       std::to_string(kMaxHeaderBytes) + ")");
    if (n > file_size - 8)
        throw corrupt_file(origin, "header length " + std::to_string(n) + " exceeds the " +
                                       std::to_string(file_size - 8) + " bytes after it");
    return n;
}

Error too_short(const std::string& origin, uint64_t file_size) {
    return corrupt_file(origin, "it holds " + std::to_string(file_size) + " bytes, fewer than the 8-byte header length");
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
    ReadOnlyFile file = ReadOnlyFile::open(path);
    const int fd = file.fd;
    const uint64_t file_size = file.size;
    if (file_size < 8) throw too_short(path, file_size);

    unsigned char len[8];
    read_exact(fd, len, 8, 0, path);
    const uint64_t n = header_length(len, file_size, path);
    std::string text(n, '\0');
    read_exact(fd, text.data(), n, 8, path);

    SafetensorsFile f;
    f.path_ = path;
    const uint64_t data_size = file_size - 8 - n;
    f.parse_header(text, data_size);
    if (data_size > 0) read_exact(fd, f.storage_.get(), data_size, 8 + n, path);
    return f;
}

SafetensorsFile SafetensorsFile::from_bytes(std::string bytes, std::string origin) {
    const uint64_t file_size = bytes.size();
    if (file_size < 8) throw too_short(origin, file_size);
    const uint64_t n = header_length(reinterpret_cast<const unsigned char*>(bytes.data()), file_size, origin);
    SafetensorsFile f;
    f.path_ = std::move(origin);
    const uint64_t data_size = file_size - 8 - n;
    f.parse_header(bytes.substr(8, n), data_size);
    if (data_size > 0) std::memcpy(f.storage_.get(), bytes.data() + 8 + n, data_size);
    return f;
}

void SafetensorsFile::parse_header(const std::string& text, uint64_t data_size) {
    const std::string& path = path_;
    auto corrupt = [&](const std::string& what) { return corrupt_file(path, what); };
    if (!json_depth_ok(text)) throw corrupt("header JSON is nested too deeply");
    json header;
    try {
        header = json::parse(text);
    } catch (const json::exception& e) {
        throw corrupt(std::string("header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) throw corrupt("header JSON is not an object");

    SafetensorsFile& f = *this;
    f.storage_.reset(new uint64_t[std::max<uint64_t>(1, (data_size + 7) / 8)]);
    const char* base = reinterpret_cast<const char*>(f.storage_.get());

    struct Span {
        uint64_t begin, end;
        std::string name;
    };
    std::vector<Span> spans;
    for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string& name = it.key();
        const json& v = it.value();
        if (name == "__metadata__") {
            if (!v.is_object()) throw corrupt("__metadata__ is not an object");
            for (auto m = v.begin(); m != v.end(); ++m) {
                if (!m.value().is_string()) throw corrupt("metadata value for '" + m.key() + "' is not a string");
                f.metadata_[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        auto bad = [&](const std::string& what) { return corrupt("tensor '" + name + "' " + what); };
        if (!v.is_object()) throw bad("is not described by an object");
        for (auto k = v.begin(); k != v.end(); ++k)
            if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets")
                throw bad("has unknown field '" + k.key() + "'");
        if (!v.contains("dtype") || !v["dtype"].is_string()) throw bad("has no dtype string");
        if (!v.contains("shape") || !v["shape"].is_array()) throw bad("has no shape array");
        if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
            throw bad("has no data_offsets pair");

        TensorRef t;
        t.name = name;
        t.dtype = v["dtype"].get<std::string>();
        size_t elem = safetensors_dtype_size(t.dtype);
        if (elem == 0) throw bad("has unsupported dtype '" + t.dtype + "'");
        for (const json& d : v["shape"]) {
            if (!d.is_number_integer()) throw bad("has a shape entry that is not an integer");
            if (d.is_number_unsigned()) {
                if (d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                    throw bad("has an absurd dimension");
                t.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
            } else {
                t.shape.push_back(d.get<int64_t>());
            }
            if (t.shape.back() < 0) throw bad("has a negative dimension");
        }
        uint64_t off[2];
        for (int i = 0; i < 2; i++) {
            const json& o = v["data_offsets"][i];
            if (!o.is_number_unsigned()) throw bad("has a data offset that is not a non-negative integer");
            off[i] = o.get<uint64_t>();
        }
        if (off[0] > off[1]) throw bad("has data_offsets that end before they begin");
        if (off[1] > data_size)
            throw bad("has data_offsets [" + std::to_string(off[0]) + ", " + std::to_string(off[1]) +
                      "] beyond the " + std::to_string(data_size) + "-byte data section");
        uint64_t expect = 0;
        if (!byte_size(t.shape, elem, &expect) || expect != off[1] - off[0])
            throw bad("has shape " + shape_str(t.shape) + " of " + t.dtype + " that does not match its " +
                      std::to_string(off[1] - off[0]) + " data bytes");
        t.data = base + off[0];
        t.nbytes = static_cast<size_t>(off[1] - off[0]);
        spans.push_back({off[0], off[1], name});
        f.tensors_.emplace(name, std::move(t));
    }

    // Tensors must tile the data section exactly: overlaps would alias, gaps and tails hide data.
    std::sort(spans.begin(), spans.end(),
              [](const Span& a, const Span& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
    uint64_t cursor = 0;
    for (const Span& s : spans) {
        if (s.begin < cursor) throw corrupt("tensor '" + s.name + "' overlaps the tensor before it");
        if (s.begin > cursor)
            throw corrupt("there is a gap of " + std::to_string(s.begin - cursor) + " bytes before tensor '" +
                          s.name + "'");
        cursor = s.end;
        f.order_.push_back(s.name);
    }
    if (cursor != data_size)
        throw corrupt(std::to_string(data_size - cursor) + " bytes of trailing data follow the last tensor");

}

const TensorRef& SafetensorsFile::get(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw Error("tensor '" + name + "' not found in " + path_);
    return it->second;
}

}  // namespace strata
