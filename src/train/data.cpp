#include "train/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.h"
#include "core/fileio.h"
#include "model/config.h"

namespace strata {

static_assert(std::endian::native == std::endian::little, "token shards are stored little-endian");

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'S', 'T', 'R', 'T', 'O', 'K', 'S', '1'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 32;
// Bumped whenever prepare_data would produce different tokens from the same inputs.
constexpr int kPrepareFormat = 1;
// Text is encoded in pieces of about this size, cut after a newline: the tokenizer never merges
// across a newline (training sees single lines), so the pieces encode exactly as the whole would.
constexpr size_t kEncodeChunkBytes = 64 << 10;

int bytes_per_token_for(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

template <class T>
T load_le(const unsigned char* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// A fast non-cryptographic content hash: enough to notice that an input changed.
uint64_t hash_bytes(std::string_view s) {
    uint64_t h = 0x243F6A8885A308D3ull ^ (s.size() * 0x9E3779B97F4A7C15ull);
    size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
        uint64_t w;
        std::memcpy(&w, s.data() + i, 8);
        h = std::rotl(h ^ (w * 0xC2B2AE3D27D4EB4Full), 31) * 0x9E3779B97F4A7C15ull;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, s.data() + i, s.size() - i);
    h = std::rotl(h ^ (tail * 0xC2B2AE3D27D4EB4Full), 31) * 0x9E3779B97F4A7C15ull;
    return splitmix64(h);
}

std::string hex64(uint64_t v) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return buf;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); i++) {
        if (i) s += ", ";
        s += v[i];
    }
    return s;
}

void decode_tokens(const unsigned char* p, int bytes_per_token, size_t n, int32_t* out) {
    if (bytes_per_token == 2) {
        for (size_t i = 0; i < n; i++) out[i] = load_le<uint16_t>(p + 2 * i);
    } else {
        std::memcpy(out, p, n * 4);  // validated on open to be < vocab_size <= INT32_MAX
    }
}

struct InputStat {
    uint64_t size = 0;
    int64_t mtime_ns = 0;
};

InputStat stat_input(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        int err = errno;
        throw Error("cannot read " + path + ": " + std::strerror(err));
    }
    return {static_cast<uint64_t>(st.st_size),
            static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

std::string row_error(const TokenShard& shard, int T) {
    return "corpus " + shard.path() + " has " + std::to_string(shard.size()) +
           " tokens, fewer than one sequence of T+1 = " + std::to_string(static_cast<int64_t>(T) + 1);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Shards

void write_token_shard(const std::string& path, std::span<const int32_t> tokens, int vocab_size) {
    if (vocab_size <= 0) throw Error("cannot write " + path + ": vocab_size " + std::to_string(vocab_size) + " is not positive");
    for (size_t i = 0; i < tokens.size(); i++)
        if (tokens[i] < 0 || tokens[i] >= vocab_size)
            throw Error("cannot write " + path + ": token " + std::to_string(tokens[i]) + " at position " +
                        std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
    const uint32_t bpt = static_cast<uint32_t>(bytes_per_token_for(vocab_size));
    unsigned char header[kHeaderBytes] = {};
    const uint32_t version = kVersion, vocab = static_cast<uint32_t>(vocab_size), reserved = 0;
    const uint64_t n = tokens.size();
    std::memcpy(header, kMagic, 8);
    std::memcpy(header + 8, &version, 4);
    std::memcpy(header + 12, &vocab, 4);
    std::memcpy(header + 16, &n, 8);
    std::memcpy(header + 24, &bpt, 4);
    std::memcpy(header + 28, &reserved, 4);

    AtomicFileWriter w(path);
    w.write(header, sizeof header);
    if (bpt == 4) {
        w.write(tokens.data(), tokens.size_bytes());
    } else {
        std::vector<uint16_t> buf;
        constexpr size_t kChunk = 1 << 18;
        for (size_t i = 0; i < tokens.size(); i += kChunk) {
            size_t m = std::min(kChunk, tokens.size() - i);
            buf.resize(m);
            for (size_t j = 0; j < m; j++) buf[j] = static_cast<uint16_t>(tokens[i + j]);
            w.write(buf.data(), m * 2);
        }
    }
    w.commit();
}

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int vocab_size) {
    write_token_shard(path, std::span<const int32_t>(tokens), vocab_size);
}

TokenShard TokenShard::open(const std::string& path) {
    auto bad = [&](const std::string& what) { return Error("token shard " + path + " " + what); };
    ReadOnlyFile file = ReadOnlyFile::open(path);
    const int fd = file.fd;
    const uint64_t file_size = file.size;
    if (file_size < kHeaderBytes)
        throw bad("is truncated: it holds " + std::to_string(file_size) + " bytes, fewer than the " +
                  std::to_string(kHeaderBytes) + "-byte header");

    TokenShard s;
    s.path_ = path;
    // Shards are only ever replaced by rename (AtomicFileWriter), never rewritten in place, so a mapping
    // keeps seeing the complete old file even while prepare_data publishes a new one.
    s.map_ = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (s.map_ == MAP_FAILED) {
        s.map_ = nullptr;
        int err = errno;
        throw Error("cannot read " + path + ": mmap: " + std::strerror(err));
    }
    s.map_bytes_ = file_size;  // from here on the destructor unmaps, whatever throws

    const auto* h = static_cast<const unsigned char*>(s.map_);
    if (std::memcmp(h, kMagic, 8) != 0) throw bad("is not a token shard (wrong magic; expected STRTOKS1)");
    const uint32_t version = load_le<uint32_t>(h + 8);
    const uint32_t vocab = load_le<uint32_t>(h + 12);
    const uint64_t n = load_le<uint64_t>(h + 16);
    const uint32_t bpt = load_le<uint32_t>(h + 24);
    if (version != kVersion)
        throw bad("has version " + std::to_string(version) + "; this build reads version " + std::to_string(kVersion));
    if (vocab == 0 || vocab > static_cast<uint32_t>(INT32_MAX)) throw bad("has an invalid vocab_size " + std::to_string(vocab));
    if (bpt != static_cast<uint32_t>(bytes_per_token_for(vocab)))
        throw bad("is corrupt: " + std::to_string(bpt) + " bytes per token do not match vocab_size " +
                  std::to_string(vocab));
    const uint64_t held = (file_size - kHeaderBytes) / bpt;
    if (n > held) throw bad("is truncated: header says " + std::to_string(n) + " tokens, file holds " + std::to_string(held));
    if (kHeaderBytes + n * bpt != file_size)
        throw bad("is corrupt: " + std::to_string(file_size - kHeaderBytes - n * bpt) +
                  " unexpected bytes follow its " + std::to_string(n) + " tokens");

    s.tokens_ = h + kHeaderBytes;
    s.n_tokens_ = static_cast<size_t>(n);
    s.vocab_size_ = static_cast<int>(vocab);
    s.bytes_per_token_ = static_cast<int>(bpt);

    // One pass over the data, so samplers never have to check tokens (or feed bad ids to an embedding).
    uint32_t max_token = 0;
    const auto* t = s.tokens_;
    const int64_t count = static_cast<int64_t>(n);
    if (bpt == 2) {
#pragma omp parallel for reduction(max : max_token) schedule(static)
        for (int64_t i = 0; i < count; i++) max_token = std::max<uint32_t>(max_token, load_le<uint16_t>(t + 2 * i));
    } else {
#pragma omp parallel for reduction(max : max_token) schedule(static)
        for (int64_t i = 0; i < count; i++) max_token = std::max(max_token, load_le<uint32_t>(t + 4 * i));
    }
    if (n > 0 && max_token >= vocab)
        throw bad("is corrupt: it holds token " + std::to_string(max_token) + ", outside its vocabulary of " +
                  std::to_string(vocab));
    return s;
}

TokenShard::TokenShard(TokenShard&& other) noexcept { *this = std::move(other); }

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
    if (this != &other) {
        if (map_) ::munmap(map_, map_bytes_);
        path_ = std::move(other.path_);
        map_ = std::exchange(other.map_, nullptr);
        map_bytes_ = std::exchange(other.map_bytes_, 0);
        tokens_ = std::exchange(other.tokens_, nullptr);
        n_tokens_ = std::exchange(other.n_tokens_, 0);
        vocab_size_ = other.vocab_size_;
        bytes_per_token_ = other.bytes_per_token_;
    }
    return *this;
}

TokenShard::~TokenShard() {
    if (map_) ::munmap(map_, map_bytes_);
}

int32_t TokenShard::operator[](size_t i) const {
    if (i >= n_tokens_)
        throw Error("token index " + std::to_string(i) + " is past the end of " + path_ + " (" +
                    std::to_string(n_tokens_) + " tokens)");
    return bytes_per_token_ == 2 ? load_le<uint16_t>(tokens_ + 2 * i) : load_le<int32_t>(tokens_ + 4 * i);
}

void TokenShard::copy(size_t begin, size_t n, int32_t* out) const {
    if (begin > n_tokens_ || n > n_tokens_ - begin)
        throw Error("tokens [" + std::to_string(begin) + ", " + std::to_string(begin + n) + ") run past the end of " +
                    path_ + " (" + std::to_string(n_tokens_) + " tokens)");
    if (n == 0) return;  // `out` may then be null (an empty vector's data()), which memcpy must not see
    decode_tokens(tokens_ + begin * bytes_per_token_, bytes_per_token_, n, out);
}

// ---------------------------------------------------------------------------------------------
// Corpus discovery and preparation

std::vector<std::string> list_corpus_files(const std::string& path) {
    std::error_code ec;
    fs::file_status st = fs::status(path, ec);
    if (ec || !fs::exists(st)) throw Error("corpus path " + path + " does not exist");
    if (fs::is_regular_file(st)) return {path};
    if (!fs::is_directory(st)) throw Error("corpus path " + path + " is neither a file nor a folder");

    std::vector<std::string> out;
    fs::recursive_directory_iterator it(path, fs::directory_options::none, ec), end;
    if (ec) throw Error("cannot read corpus folder " + path + ": " + ec.message());
    for (; it != end; it.increment(ec)) {
        if (ec) throw Error("cannot read corpus folder " + path + ": " + ec.message());
        const std::string name = it->path().filename().string();
        if (!name.empty() && name[0] == '.') {
            if (it->is_directory(ec)) it.disable_recursion_pending();
            continue;
        }
        if (it->is_regular_file(ec)) out.push_back(it->path().string());
    }
    if (ec) throw Error("cannot read corpus folder " + path + ": " + ec.message());
    if (out.empty()) throw Error("corpus folder " + path + " holds no files");
    std::sort(out.begin(), out.end());
    return out;
}

namespace {

// Encodes one file's text as an exact token sequence, in parallel over newline-aligned chunks.
void encode_text(const Tokenizer& tok, std::string_view text, std::vector<int32_t>& out) {
    std::vector<std::string_view> chunks;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t end = std::min(text.size(), pos + kEncodeChunkBytes);
        if (end < text.size()) {
            size_t nl = text.rfind('\n', end - 1);
            if (nl != std::string_view::npos && nl >= pos) {
                end = nl + 1;
            } else {
                // One very long line: cut before a space (a piece may start with one but never
                // contain one), else at a character boundary.
                size_t sp = text.find(' ', end);
                nl = text.find('\n', end);
                end = std::min({sp, nl, text.size()});
            }
        }
        chunks.push_back(text.substr(pos, end - pos));
        pos = end;
    }
    std::vector<std::vector<int32_t>> encoded(chunks.size());
    std::string error;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < static_cast<int64_t>(chunks.size()); i++) {
        try {
            encoded[i] = tok.encode(chunks[i]);
        } catch (const std::exception& e) {
#pragma omp critical(strata_encode_error)
            if (error.empty()) error = e.what();
        }
    }
    if (!error.empty()) throw Error(error);
    for (auto& e : encoded) out.insert(out.end(), e.begin(), e.end());
}

nlohmann::json describe_inputs(const std::vector<std::string>& files, const std::vector<InputStat>& stats,
                               const std::vector<uint64_t>& hashes) {
    nlohmann::json arr = nlohmann::json::array();
    for (size_t i = 0; i < files.size(); i++)
        arr.push_back({{"path", files[i]},
                       {"size", stats[i].size},
                       {"mtime_ns", stats[i].mtime_ns},
                       {"hash", hex64(hashes[i])}});
    return arr;
}

// True when meta.json records exactly these inputs, tokenizer and split, and both shards match it.
// Anything unexpected (missing, unparsable, stale) just means "prepare again".
bool up_to_date(const std::string& meta_path, const std::vector<std::string>& files,
                const std::vector<InputStat>& stats, const std::string& tok_hash, int vocab_size,
                double val_fraction, PreparedData& result) {
    std::error_code ec;
    if (!fs::exists(meta_path, ec)) return false;
    try {
        nlohmann::json meta = nlohmann::json::parse(read_file(meta_path));
        if (meta.at("format").get<int>() != kPrepareFormat) return false;
        if (meta.at("tokenizer_hash").get<std::string>() != tok_hash) return false;
        if (meta.at("vocab_size").get<int>() != vocab_size) return false;
        if (meta.at("val_fraction").get<double>() != val_fraction) return false;
        const auto& inputs = meta.at("inputs");
        if (!inputs.is_array() || inputs.size() != files.size()) return false;
        for (size_t i = 0; i < files.size(); i++) {
            const auto& in = inputs[i];
            if (in.at("size").get<uint64_t>() != stats[i].size) return false;
            // The inputs are known by their content: the same path with the same mtime is taken as
            // unchanged without reading it; another spelling of the path, a copy or a touched file is
            // the same input when its content hash matches.
            if ((in.at("path").get<std::string>() != files[i] || in.at("mtime_ns").get<int64_t>() != stats[i].mtime_ns) &&
                in.at("hash").get<std::string>() != hex64(hash_bytes(read_file(files[i]))))
                return false;
        }
        const size_t n_train = meta.at("n_train").get<size_t>(), n_val = meta.at("n_val").get<size_t>();
        // The inputs match, so a shard that fails to open was damaged after it was made: say so,
        // then make it again from the corpus (it is derived data; nothing is lost).
        std::optional<TokenShard> train, val;
        for (auto [shard, path] : {std::pair{&train, &result.train_path}, std::pair{&val, &result.val_path}}) {
            try {
                shard->emplace(TokenShard::open(*path));
            } catch (const Error& e) {
                std::fprintf(stderr, "warning: %s; preparing the shards again\n", e.what());
                return false;
            }
        }
        if (train->size() != n_train || val->size() != n_val) return false;
        if (train->vocab_size() != vocab_size || val->vocab_size() != vocab_size) return false;
        result.n_train = n_train;
        result.n_val = n_val;
        return true;
    } catch (const std::exception&) {
        return false;
    }
}

}  // namespace

PreparedData prepare_data(const std::vector<std::string>& files, const Tokenizer& tok, const std::string& out_dir,
                          double val_fraction) {
    if (files.empty()) throw Error("no corpus files given to prepare into " + out_dir);
    if (!(val_fraction >= 0.0 && val_fraction < 1.0))
        throw Error("val_fraction " + std::to_string(val_fraction) + " is outside [0, 1)");
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    if (ec) throw Error("cannot create data folder " + out_dir + ": " + ec.message());

    PreparedData result;
    result.train_path = (fs::path(out_dir) / "train.bin").string();
    result.val_path = (fs::path(out_dir) / "val.bin").string();
    const std::string meta_path = (fs::path(out_dir) / "meta.json").string();

    std::vector<InputStat> stats;
    for (const auto& f : files) stats.push_back(stat_input(f));
    const std::string tok_hash = prepared_tokenizer_hash(tok);
    if (up_to_date(meta_path, files, stats, tok_hash, tok.vocab_size(), val_fraction, result)) {
        result.reused = true;
        return result;
    }
    // Stale metadata must not outlive the shards it describes, should this run be interrupted.
    fs::remove(meta_path, ec);

    std::vector<int32_t> tokens;
    std::vector<uint64_t> hashes;
    for (size_t i = 0; i < files.size(); i++) {
        // The whole token stream is built in memory: the tokens so far, this file's text and its tokens
        // (estimated at one per two bytes, the worst a trained vocabulary does on text like its corpus).
        check_memory(4.0 * double(tokens.size()) + 3.0 * double(stats[i].size), "corpus file " + files[i],
                     "the token stream so far plus this file's text and tokens");
        const std::string text = read_file(files[i]);
        stats[i].size = text.size();  // what was actually tokenized, should the file be changing
        hashes.push_back(hash_bytes(text));
        size_t bad = find_invalid_utf8(text);
        if (bad != std::string::npos)
            throw Error("corpus file " + files[i] + ": invalid UTF-8 at byte offset " + std::to_string(bad));
        if (text.empty()) continue;
        encode_text(tok, text, tokens);
        tokens.push_back(tok.eos_id());
    }
    if (tokens.empty()) throw Error("corpus " + join(files) + " holds no text (zero tokens)");

    const size_t n_val = static_cast<size_t>(static_cast<double>(tokens.size()) * val_fraction);
    const size_t n_train = tokens.size() - n_val;
    std::span<const int32_t> all(tokens);
    write_token_shard(result.train_path, all.subspan(0, n_train), tok.vocab_size());
    write_token_shard(result.val_path, all.subspan(n_train), tok.vocab_size());

    nlohmann::json meta = {{"format", kPrepareFormat},
                           {"tokenizer_hash", tok_hash},
                           {"vocab_size", tok.vocab_size()},
                           {"val_fraction", val_fraction},
                           {"n_train", n_train},
                           {"n_val", n_val},
                           {"inputs", describe_inputs(files, stats, hashes)}};
    atomic_write_file(meta_path, meta.dump(2) + "\n");
    result.n_train = n_train;
    result.n_val = n_val;
    return result;
}

std::string prepared_tokenizer_hash(const Tokenizer& tok) { return hex64(hash_bytes(tok.to_bytes())); }

void check_prepared_with(const std::string& data_dir, const TokenShard& shard, const Tokenizer& tok,
                         const std::string& ckpt, const std::string& other_way) {
    const std::string meta_path = (fs::path(data_dir) / "meta.json").string();
    const bool is_val = fs::path(shard.path()).filename() == "val.bin";
    const std::string fix = "; re-run strata train with this run's config to re-prepare it" + other_way;
    std::string recorded_hash;
    size_t recorded_n = 0;
    try {
        const nlohmann::json meta = nlohmann::json::parse(read_file(meta_path));
        if (meta.at("format").get<int>() != kPrepareFormat) throw std::invalid_argument("format");
        recorded_hash = meta.at("tokenizer_hash").get<std::string>();
        recorded_n = meta.at(is_val ? "n_val" : "n_train").get<size_t>();
    } catch (const std::exception&) {
        std::error_code ec;
        const std::string what = fs::exists(meta_path, ec) ? " is corrupt" : " is missing";
        throw Error(shard.path() + " cannot be checked against checkpoint " + ckpt + ": " + meta_path + what +
                    " (it records the tokenizer the data was made with)" + fix);
    }
    if (recorded_hash != prepared_tokenizer_hash(tok))
        throw Error(shard.path() + " was made with a different tokenizer than checkpoint " + ckpt +
                    " (the data dir was re-prepared by another run?)" + fix);
    if (recorded_n != shard.size())
        throw Error(shard.path() + " holds " + std::to_string(shard.size()) + " tokens but " + meta_path +
                    " records " + std::to_string(recorded_n) + " (the data dir was changed after it was prepared?)" +
                    fix);
}

std::string content_hash(std::string_view bytes) { return hex64(hash_bytes(bytes)); }

// ---------------------------------------------------------------------------------------------
// Batching

BatchSampler::BatchSampler(const TokenShard& shard, int B, int T, uint64_t seed)
    : shard_(&shard), B_(B), T_(T), key_(splitmix64(seed ^ 0x5354524154414253ull)) {
    if (B <= 0 || T <= 0)
        throw Error("batch shape B=" + std::to_string(B) + ", T=" + std::to_string(T) + " must be positive");
    if (shard.size() < static_cast<size_t>(T) + 1) throw Error(row_error(shard, T));
}

uint64_t BatchSampler::offset(uint64_t k, int b) const {
    const uint64_t starts = shard_->size() - static_cast<uint64_t>(T_);  // valid starts: 0 .. n−T−1
    return splitmix64(key_ + k * static_cast<uint64_t>(B_) + static_cast<uint64_t>(b)) % starts;
}

void BatchSampler::next(int32_t* x, int32_t* y) {
    const size_t T = static_cast<size_t>(T_);
    for (int b = 0; b < B_; b++) {
        const size_t off = offset(k_, b);
        shard_->copy(off, T, x + b * T);
        shard_->copy(off + 1, T, y + b * T);
    }
    k_++;
}

MixtureSampler::MixtureSampler(std::vector<const TokenShard*> shards, const std::vector<double>& weights, int B,
                               int T, uint64_t seed)
    : shards_(std::move(shards)),
      B_(B),
      T_(T),
      key_(splitmix64(seed ^ 0x5354524154414253ull)),  // BatchSampler's key: the same windows
      source_key_(splitmix64(seed ^ 0x4D49585455524553ull)) {
    if (shards_.empty()) throw Error("a corpus mixture needs at least one source");
    if (weights.size() != shards_.size())
        throw Error("a corpus mixture of " + std::to_string(shards_.size()) + " sources was given " +
                    std::to_string(weights.size()) + " weights");
    if (B <= 0 || T <= 0)
        throw Error("batch shape B=" + std::to_string(B) + ", T=" + std::to_string(T) + " must be positive");
    double sum = 0;
    for (size_t i = 0; i < weights.size(); i++) {
        if (!(std::isfinite(weights[i]) && weights[i] > 0))
            throw Error("corpus source " + std::to_string(i) + " has weight " + std::to_string(weights[i]) +
                        "; weights must be positive and finite");
        sum += weights[i];
    }
    if (!std::isfinite(sum)) throw Error("the corpus mixture's weights must have a finite sum");
    double acc = 0;
    for (double w : weights) cumulative_.push_back(acc += w / sum);
    cumulative_.back() = 1.0;
    for (const TokenShard* s : shards_)
        if (s->size() < static_cast<size_t>(T) + 1) throw Error(row_error(*s, T));
}

size_t MixtureSampler::source(uint64_t k, int b) const {
    if (shards_.size() == 1) return 0;
    const uint64_t h = splitmix64(source_key_ + k * static_cast<uint64_t>(B_) + static_cast<uint64_t>(b));
    const double u = static_cast<double>(h >> 11) * 0x1.0p-53;  // uniform in [0, 1), exact in a double
    return static_cast<size_t>(std::upper_bound(cumulative_.begin(), cumulative_.end(), u) - cumulative_.begin());
}

uint64_t MixtureSampler::offset(uint64_t k, int b) const {
    const uint64_t starts = shards_[source(k, b)]->size() - static_cast<uint64_t>(T_);
    return splitmix64(key_ + k * static_cast<uint64_t>(B_) + static_cast<uint64_t>(b)) % starts;
}

void MixtureSampler::next(int32_t* x, int32_t* y) {
    const size_t T = static_cast<size_t>(T_);
    for (int b = 0; b < B_; b++) {
        const TokenShard& shard = *shards_[source(k_, b)];
        const size_t off = offset(k_, b);
        shard.copy(off, T, x + b * T);
        shard.copy(off + 1, T, y + b * T);
    }
    k_++;
}

EvalBatches::EvalBatches(const TokenShard& shard, int B, int T) : shard_(&shard), B_(B), T_(T) {
    if (B <= 0 || T <= 0)
        throw Error("batch shape B=" + std::to_string(B) + ", T=" + std::to_string(T) + " must be positive");
    if (shard.size() < static_cast<size_t>(T) + 1) throw Error(row_error(shard, T));
    n_windows_ = (shard.size() - 1) / static_cast<size_t>(T);
}

int EvalBatches::next(int32_t* x, int32_t* y) {
    const size_t T = static_cast<size_t>(T_);
    int rows = 0;
    for (int b = 0; b < B_; b++) {
        int32_t* xr = x + b * T;
        int32_t* yr = y + b * T;
        if (next_window_ < n_windows_) {
            const size_t off = next_window_ * T;
            shard_->copy(off, T, xr);
            shard_->copy(off + 1, T, yr);
            next_window_++;
            rows++;
        } else {
            std::fill(xr, xr + T, 0);
            std::fill(yr, yr + T, -1);
        }
    }
    return rows;
}

}  // namespace strata
