// File I/O, safetensors and tokenizer: round trips, and every bad input must end in a strata::Error
// that names the file involved, never a crash or a half-written file.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "../test_util.h"
#include "core/fileio.h"
#include "core/safetensors.h"
#include "train/tokenizer.h"

namespace fs = std::filesystem;
using namespace strata;
using strata::testing::TempDir;
using strata::testing::expect_error;

namespace {

struct ScopedEnv {
    std::string name;
    ScopedEnv(const std::string& n, const std::string& v) : name(n) { setenv(n.c_str(), v.c_str(), 1); }
    ~ScopedEnv() { unsetenv(name.c_str()); }
};

std::string le64(uint64_t v) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; i++) s[i] = static_cast<char>(v >> (8 * i));
    return s;
}

// A hand-made safetensors file: header text, then `data_bytes` bytes of data.
std::string make_st(const std::string& header, size_t data_bytes) {
    return le64(header.size()) + header + std::string(data_bytes, '\x01');
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// fileio

TEST(FileIO, AtomicWriteRoundTripAndOverwrite) {
    TempDir d;
    const std::string p = d.file("a.bin");
    atomic_write_file(p, "first");
    EXPECT_EQ(read_file(p), "first");
    std::string big(3 << 20, 'x');  // larger than the writer's buffer
    big[12345] = 'y';
    atomic_write_file(p, big);
    EXPECT_EQ(read_file(p), big);
    atomic_write_file(p, "");
    EXPECT_EQ(read_file(p), "");
    EXPECT_EQ(d.entries(), std::vector<std::string>{"a.bin"});
}

TEST(FileIO, ReadMissingFileNamesIt) {
    TempDir d;
    expect_error([&] { read_file(d.file("nope.txt")); }, {d.file("nope.txt"), "No such file"});
    expect_error([&] { read_file(d.path); }, {d.path});
}

TEST(FileIO, WriteIntoMissingFolderNamesPath) {
    TempDir d;
    const std::string p = d.file("missing/x.bin");
    expect_error([&] { atomic_write_file(p, "x"); }, {"cannot write " + p});
}

TEST(FileIO, UncommittedWriterLeavesNothing) {
    TempDir d;
    const std::string p = d.file("a.bin");
    atomic_write_file(p, "old");
    {
        AtomicFileWriter w(p);
        w.write("new data that is never committed");
    }
    EXPECT_EQ(read_file(p), "old");
    EXPECT_EQ(d.entries(), std::vector<std::string>{"a.bin"});
}

TEST(FileIO, SimulatedDiskFullKeepsOldFile) {
    TempDir d;
    const std::string p = d.file("a.bin");
    atomic_write_file(p, "old content");
    {
        ScopedEnv env("STRATA_FAULT_DISK_FULL", "100");
        expect_error([&] { atomic_write_file(p, std::string(5000, 'z')); }, {"cannot write " + p, "No space left"});
        atomic_write_file(p + ".small", std::string(100, 'k'));  // exactly at the limit still fits
    }
    EXPECT_EQ(read_file(p), "old content");
    EXPECT_EQ(read_file(p + ".small"), std::string(100, 'k'));
    EXPECT_EQ(d.entries(), (std::vector<std::string>{"a.bin", "a.bin.small"}));
}

// ------------------------------------------------------------------------------------------------
// safetensors

TEST(Safetensors, RoundTripAllDtypes) {
    TempDir d;
    const std::string p = d.file("m.safetensors");
    std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-7f, 42.0f};
    std::vector<double> f64 = {3.141592653589793, -1e300};
    std::vector<int32_t> i32 = {-7, 0, 2147483647};
    std::vector<int64_t> i64 = {-9000000000LL};
    std::vector<uint8_t> u8 = {0, 255, 17};  // odd size: later tensors start unaligned in the data
    std::vector<TensorRef> ts = {
        {"w.f32", "F32", {2, 3}, f32.data(), f32.size() * 4},
        {"bytes", "U8", {3}, u8.data(), u8.size()},
        {"w.f64", "F64", {2}, f64.data(), f64.size() * 8},
        {"empty", "F32", {0, 5}, nullptr, 0},
        {"i32", "I32", {3, 1}, i32.data(), i32.size() * 4},
        {"scalar.i64", "I64", {}, i64.data(), 8},
    };
    std::map<std::string, std::string> meta = {{"config", "{\"d_model\": 8}"}, {"step", "17"}, {"unicode", "héllo ✓"}};
    safetensors_write(p, ts, meta);

    auto raw = read_file(p);
    uint64_t n = 0;
    std::memcpy(&n, raw.data(), 8);
    EXPECT_EQ(n % 8, 0u) << "header is padded so the data section is 8-byte aligned";

    SafetensorsFile f = SafetensorsFile::open(p);
    EXPECT_EQ(f.metadata(), meta);
    std::vector<std::string> order;
    for (auto& t : ts) order.push_back(t.name);
    EXPECT_EQ(f.names(), order);
    for (auto& t : ts) {
        ASSERT_TRUE(f.has(t.name));
        const TensorRef& r = f.get(t.name);
        EXPECT_EQ(r.dtype, t.dtype);
        EXPECT_EQ(r.shape, t.shape);
        ASSERT_EQ(r.nbytes, t.nbytes);
        if (t.nbytes) {
            EXPECT_EQ(std::memcmp(r.data, t.data, t.nbytes), 0) << t.name;
        }
    }
    EXPECT_FALSE(f.has("nope"));
    expect_error([&] { f.get("nope"); }, {"nope", p});

    // References stay valid when the file object moves.
    const void* before = f.get("w.f32").data;
    SafetensorsFile moved = std::move(f);
    EXPECT_EQ(moved.get("w.f32").data, before);
    EXPECT_EQ(static_cast<const float*>(moved.get("w.f32").data)[2], 3.25f);
}

TEST(Safetensors, WriterRejectsBadTensors) {
    TempDir d;
    const std::string p = d.file("m.safetensors");
    float x[4] = {};
    expect_error([&] { safetensors_write(p, {{"a", "F16", {4}, x, 8}}, {}); }, {p, "F16"});
    expect_error([&] { safetensors_write(p, {{"a", "F32", {3}, x, 16}}, {}); }, {p, "'a'"});
    expect_error([&] { safetensors_write(p, {{"a", "F32", {4}, x, 16}, {"a", "F32", {4}, x, 16}}, {}); }, {p, "twice"});
    expect_error([&] { safetensors_write(p, {{"b", "F32", {-4}, x, 16}}, {}); }, {p, "'b'"});
    EXPECT_FALSE(fs::exists(p));
    EXPECT_TRUE(d.entries().empty());
}

TEST(Safetensors, MissingAndTruncatedFiles) {
    TempDir d;
    const std::string p = d.file("m.safetensors");
    expect_error([&] { SafetensorsFile::open(p); }, {p});
    atomic_write_file(p, "abc");
    expect_error([&] { SafetensorsFile::open(p); }, {p, "fewer than the 8-byte"});

    float x[2] = {1, 2};
    safetensors_write(p, {{"x", "F32", {2}, x, 8}}, {});
    std::string good = read_file(p);
    atomic_write_file(p, good.substr(0, good.size() - 3));  // truncated data
    expect_error([&] { SafetensorsFile::open(p); }, {p, "'x'"});
    atomic_write_file(p, good.substr(0, 20));  // truncated header
    expect_error([&] { SafetensorsFile::open(p); }, {p, "header length"});
}

TEST(Safetensors, CorruptHeadersAreRejected) {
    TempDir d;
    const std::string p = d.file("m.safetensors");
    struct Case {
        std::string bytes, needle;
    };
    const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    std::vector<Case> cases = {
        {le64(1000) + "{}", "header length 1000"},
        {le64(1ull << 62) + "{}", "absurd"},
        {le64(~0ull) + std::string(64, ' '), "absurd"},
        {make_st("{not json", 0), "not valid JSON"},
        {make_st("[1,2]", 0), "not an object"},
        {make_st("", 0), "not valid JSON"},
        {make_st(std::string(100, '[') + std::string(100, ']'), 0), "nested too deeply"},
        {make_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), "beyond"},
        {make_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "end before"},
        {make_st(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "does not match"},
        {make_st(R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})", 8), "BF16"},
        {make_st(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "negative"},
        {make_st(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8), "not an integer"},
        {make_st(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", 8), "does not match"},
        {make_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})", 8), "non-negative"},
        {make_st(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "data_offsets"},
        {make_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8), "unknown field"},
        {make_st(R"({"a":[1]})", 8), "not described"},
        {make_st(ok, 12), "trailing"},
        {make_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "overlaps"},
        {make_st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "gap"},
        {make_st(R"({"__metadata__":{"k":5}})", 0), "not a string"},
        {make_st(R"({"__metadata__":[]})", 0), "not an object"},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.needle);
        atomic_write_file(p, c.bytes);
        expect_error([&] { SafetensorsFile::open(p); }, {"safetensors file " + p + " is corrupt", c.needle});
    }
    // Offsets listed out of order are fine as long as the spans tile the data.
    atomic_write_file(p, make_st(R"({"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},)"
                                 R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 8));
    EXPECT_EQ(SafetensorsFile::open(p).names(), (std::vector<std::string>{"a", "b"}));
}

TEST(Safetensors, MutatedFilesNeverCrash) {
    TempDir d;
    const std::string p = d.file("m.safetensors");
    std::vector<float> x(16, 1.0f);
    std::vector<int64_t> y(3, 7);
    safetensors_write(p, {{"x", "F32", {4, 4}, x.data(), 64}, {"y", "I64", {3}, y.data(), 24}}, {{"k", "v"}});
    const std::string good = read_file(p);
    std::mt19937_64 rng(7);
    int rejected = 0;
    for (int it = 0; it < 3000; it++) {
        std::string b = good;
        switch (it % 3) {
            case 0:  // flip a few bytes, biased towards the header
                for (int k = 0; k < 3; k++) b[rng() % std::min<size_t>(b.size(), 160)] = static_cast<char>(rng());
                break;
            case 1:
                b.resize(rng() % b.size());
                break;
            default:
                b.insert(rng() % b.size(), 1, static_cast<char>(rng()));
        }
        {
            std::ofstream out(p, std::ios::binary | std::ios::trunc);  // no fsync: speed over safety here
            out.write(b.data(), static_cast<std::streamsize>(b.size()));
        }
        try {
            SafetensorsFile f = SafetensorsFile::open(p);
            for (const auto& n : f.names()) EXPECT_EQ(f.get(n).nbytes, f.get(n).nbytes);
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
            rejected++;
        }
    }
    EXPECT_GT(rejected, 1000);
}

TEST(Safetensors, DiskFullDuringWriteKeepsPreviousFile) {
    TempDir d;
    const std::string p = d.file("ckpt.safetensors");
    std::vector<float> a(1000, 1.0f), b(1 << 20, 2.0f);  // the second save is 4 MB
    safetensors_write(p, {{"a", "F32", {1000}, a.data(), a.size() * 4}}, {{"step", "1"}});
    const std::string before = read_file(p);
    for (const char* limit : {"0", "5", "300", "1000000"}) {
        SCOPED_TRACE(limit);
        ScopedEnv env("STRATA_FAULT_DISK_FULL", limit);
        expect_error([&] { safetensors_write(p, {{"b", "F32", {1 << 20}, b.data(), b.size() * 4}}, {{"step", "2"}}); },
                     {"cannot write " + p, "No space left on device"});
        EXPECT_EQ(read_file(p), before);
        EXPECT_EQ(d.entries(), std::vector<std::string>{"ckpt.safetensors"}) << "a temporary file was left behind";
    }
    safetensors_write(p, {{"b", "F32", {1 << 20}, b.data(), b.size() * 4}}, {{"step", "2"}});
    EXPECT_EQ(SafetensorsFile::open(p).metadata().at("step"), "2");
}

// ------------------------------------------------------------------------------------------------
// tokenizer

namespace {

// A few KB of varied text: common words for merges, accents and CJK so multi-byte characters get
// pieces of their own, digits for split_digits.
std::string tiny_corpus() {
    const char* words[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then",
                           "runs", "into", "forest", "where", "many", "trees", "grow", "tall", "café", "naïve",
                           "Zürich", "東京", "Ελλάδα", "river", "stone", "light", "night", "day"};
    std::mt19937 rng(1);
    std::string text;
    for (int line = 0; line < 120; line++) {
        int n = 4 + static_cast<int>(rng() % 8);
        for (int w = 0; w < n; w++) {
            if (w) text += ' ';
            text += words[rng() % (sizeof words / sizeof *words)];
        }
        text += (line % 7 == 0) ? " in 1984.\n" : ".\n";
    }
    return text;
}

class TokenizerTest : public ::testing::Test {
protected:
    // 3 special ids + 256 bytes + the corpus's distinct characters + some merges.
    static constexpr int kVocab = 400;
    static void SetUpTestSuite() {
        dir_ = new TempDir();
        corpus_ = dir_->file("corpus.txt");
        model_ = dir_->file("tok.model");
        atomic_write_file(corpus_, tiny_corpus());
        Tokenizer::train({corpus_}, model_, kVocab, 2);
    }
    static void TearDownTestSuite() {
        delete dir_;
        dir_ = nullptr;
    }
    static TempDir* dir_;
    static std::string corpus_, model_;
};
TempDir* TokenizerTest::dir_ = nullptr;
std::string TokenizerTest::corpus_, TokenizerTest::model_;

}  // namespace

TEST_F(TokenizerTest, TrainedModelRoundTripsText) {
    Tokenizer tok = Tokenizer::load(model_);
    EXPECT_EQ(tok.vocab_size(), kVocab);
    EXPECT_EQ(tok.unk_id(), 0);
    EXPECT_EQ(tok.bos_id(), 1);
    EXPECT_EQ(tok.eos_id(), 2);
    const std::vector<std::string> samples = {
        "the quick brown fox",
        "  leading spaces,   runs of spaces and a trailing one ",
        "line one\nline two\n\n\ttabbed\r\n",
        "café naïve Zürich 東京 Ελλάδα",
        "emoji 🦊🌲 and unseen script: שָׁלוֹם, русский, हिन्दी",
        "digits 0123456789 and 3.14159",
        "",
        std::string("nul \0 byte", 10),
        "\xE2\x96\x81 is the sentencepiece space marker",
    };
    for (const auto& s : samples) {
        std::vector<int32_t> ids = tok.encode(s);
        for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
        EXPECT_EQ(tok.decode(ids), s);
    }
    // Trained text compresses; unseen emoji fall back to one token per byte rather than <unk>.
    EXPECT_LT(tok.encode("the quick brown fox jumps over the lazy dog").size(), 30u);
    std::vector<int32_t> fox = tok.encode("🦊");
    EXPECT_EQ(fox.size(), 4u);
    for (int32_t id : fox) EXPECT_NE(id, tok.unk_id());
    // split_digits: every digit stands alone.
    EXPECT_EQ(tok.encode("1984").size(), 4u);
}

TEST_F(TokenizerTest, BytesRoundTripAndMoves) {
    Tokenizer a = Tokenizer::load(model_);
    EXPECT_EQ(a.to_bytes(), read_file(model_));
    Tokenizer b = Tokenizer::from_bytes(a.to_bytes(), "checkpoint x");
    const std::string s = "naïve fox 🦊";
    EXPECT_EQ(b.encode(s), a.encode(s));
    Tokenizer c = std::move(b);
    EXPECT_EQ(c.decode(c.encode(s)), s);
    std::vector<Tokenizer> v;
    v.push_back(std::move(c));
    v.push_back(a);
    EXPECT_EQ(v[0].encode(s), v[1].encode(s));
}

TEST_F(TokenizerTest, InvalidInputsGiveClearErrors) {
    Tokenizer tok = Tokenizer::load(model_);
    expect_error([&] { tok.encode("abc\xFF" "def"); }, {"invalid UTF-8 at byte offset 3"});
    expect_error([&] { tok.encode("ok \xC3"); }, {"invalid UTF-8 at byte offset 3"});
    expect_error([&] { tok.encode("\xED\xA0\x80"); }, {"invalid UTF-8 at byte offset 0"});  // surrogate
    expect_error([&] { tok.encode("xx\xC0\xAF"); }, {"invalid UTF-8 at byte offset 2"});    // overlong
    expect_error([&] { tok.decode({5, kVocab}); }, {std::to_string(kVocab), "outside the vocabulary"});
    expect_error([&] { tok.decode({-1}); }, {"-1"});
    EXPECT_EQ(tok.decode({tok.bos_id(), tok.eos_id()}), "");
}

TEST(Utf8, Validator) {
    EXPECT_EQ(find_invalid_utf8(""), std::string_view::npos);
    EXPECT_EQ(find_invalid_utf8("plain ascii text, long enough to use the fast path"), std::string_view::npos);
    EXPECT_EQ(find_invalid_utf8("é東🦊\xF4\x8F\xBF\xBF"), std::string_view::npos);  // U+10FFFF is the last valid
    EXPECT_EQ(find_invalid_utf8("abcdefgh\xF4\x90\x80\x80"), 8u);                   // above U+10FFFF
    EXPECT_EQ(find_invalid_utf8("abcdefghij\x80"), 10u);                             // stray continuation
    EXPECT_EQ(find_invalid_utf8("\xF0\x9F\xA6"), 0u);                                // cut short
    EXPECT_EQ(find_invalid_utf8("a\xE0\x80\x80"), 1u);                               // overlong 3-byte
}

TEST_F(TokenizerTest, CorruptOrMissingModelNamesFile) {
    const std::string bad = dir_->file("bad.model");
    atomic_write_file(bad, "this is not a sentencepiece model at all");
    expect_error([&] { Tokenizer::load(bad); }, {"tokenizer file " + bad + " is corrupt"});
    atomic_write_file(bad, "");
    expect_error([&] { Tokenizer::load(bad); }, {"tokenizer file " + bad + " is corrupt"});
    std::string half = read_file(model_);
    atomic_write_file(bad, half.substr(0, half.size() / 2));
    expect_error([&] { Tokenizer::load(bad); }, {"tokenizer file " + bad + " is corrupt"});
    expect_error([&] { Tokenizer::load(dir_->file("missing.model")); }, {dir_->file("missing.model")});
    expect_error([&] { Tokenizer::from_bytes("junk", "checkpoint ck.safetensors"); },
                 {"checkpoint ck.safetensors is corrupt"});
}

TEST_F(TokenizerTest, TrainingErrorsNameTheInputs) {
    const std::string empty = dir_->file("empty.txt"), blank = dir_->file("blank.txt");
    atomic_write_file(empty, "");
    atomic_write_file(blank, "\n\n\n");
    const std::string out = dir_->file("out.model");
    expect_error([&] { Tokenizer::train({empty, blank}, out, 300); }, {empty, blank, "no text"});
    expect_error([&] { Tokenizer::train({dir_->file("none.txt")}, out, 300); }, {dir_->file("none.txt")});
    const std::string bad = dir_->file("bad.txt");
    atomic_write_file(bad, "fine line\nbroken \xFF line\n");
    expect_error([&] { Tokenizer::train({bad}, out, 300); }, {bad, "invalid UTF-8 at byte offset 17"});
    expect_error([&] { Tokenizer::train({corpus_}, out, 100); }, {"vocab_size 100"});
    expect_error([&] { Tokenizer::train({corpus_}, out, 1 << 30); }, {"vocab_size"});
    EXPECT_FALSE(fs::exists(out));
}

TEST_F(TokenizerTest, TrainingIsReproducibleAndCopesWithLongLines) {
    const std::string again = dir_->file("again.model");
    Tokenizer::train({corpus_}, again, kVocab, 2);
    EXPECT_EQ(read_file(again), read_file(model_));

    // One 60 KB line with no newline: SentencePiece would drop it whole as over-long.
    std::string line;
    while (line.size() < 60000) line += "stone river light night café ";
    const std::string one_line = dir_->file("one_line.txt");
    atomic_write_file(one_line, line);
    const std::string m = dir_->file("one_line.model");
    Tokenizer::train({one_line}, m, 300, 1);
    Tokenizer tok = Tokenizer::load(m);
    EXPECT_LT(tok.encode("stone river").size(), 6u);
    EXPECT_EQ(tok.decode(tok.encode(line)), line);
}
