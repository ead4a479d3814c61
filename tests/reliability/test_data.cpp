// Token shards, corpus preparation and batching: exact round trips, reproducible sampling, and clear
// errors (naming the file) for every bad input.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "../test_util.h"
#include "core/fileio.h"
#include "train/data.h"
#include "train/tokenizer.h"

namespace fs = std::filesystem;
using namespace strata;
using strata::testing::TempDir;
using strata::testing::expect_error;

namespace {

std::vector<int32_t> iota_tokens(size_t n, int vocab) {
    std::vector<int32_t> t(n);
    for (size_t i = 0; i < n; i++) t[i] = static_cast<int32_t>((i * 7919) % vocab);
    return t;
}

std::string sample_text(int lines, uint32_t seed) {
    const char* words[] = {"In", "the", "beginning", "was", "a", "word", "and", "it", "came", "to",
                           "pass", "that", "light", "fell", "on", "water", "résumé", "東京", "🦊", "42"};
    std::mt19937 rng(seed);
    std::string text;
    for (int l = 0; l < lines; l++) {
        int n = 3 + static_cast<int>(rng() % 12);
        for (int w = 0; w < n; w++) {
            if (w) text += ' ';
            text += words[rng() % 20];
        }
        text += (l % 9 == 8) ? "\n\n" : "\n";
    }
    return text;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Shards

TEST(TokenShard, RoundTripTwoAndFourBytes) {
    TempDir d;
    for (int vocab : {300, 65536, 100000}) {
        SCOPED_TRACE(vocab);
        const std::string p = d.file("s" + std::to_string(vocab) + ".bin");
        std::vector<int32_t> t = iota_tokens(300001, vocab);
        t[0] = vocab - 1;
        write_token_shard(p, t, vocab);
        const size_t bpt = vocab <= 65536 ? 2 : 4;
        EXPECT_EQ(fs::file_size(p), 32 + t.size() * bpt);
        TokenShard s = TokenShard::open(p);
        EXPECT_EQ(s.size(), t.size());
        EXPECT_EQ(s.vocab_size(), vocab);
        EXPECT_EQ(s[0], vocab - 1);
        EXPECT_EQ(s[12345], t[12345]);
        std::vector<int32_t> back(t.size());
        s.copy(0, t.size(), back.data());
        EXPECT_EQ(back, t);
        expect_error([&] { s.copy(t.size() - 5, 6, back.data()); }, {p});
        expect_error([&] { (void)s[t.size()]; }, {p});
        TokenShard moved = std::move(s);
        EXPECT_EQ(moved[7], t[7]);
    }
    write_token_shard(d.file("empty.bin"), std::vector<int32_t>{}, 10);
    EXPECT_EQ(TokenShard::open(d.file("empty.bin")).size(), 0u);
}

TEST(TokenShard, HeaderLayoutIsAsDocumented) {
    TempDir d;
    const std::string p = d.file("s.bin");
    write_token_shard(p, {1, 2, 258}, 300);
    std::string b = read_file(p);
    ASSERT_EQ(b.size(), 32u + 6u);
    EXPECT_EQ(b.substr(0, 8), "STRTOKS1");
    auto u32 = [&](size_t o) { uint32_t v; std::memcpy(&v, b.data() + o, 4); return v; };
    uint64_t n;
    std::memcpy(&n, b.data() + 16, 8);
    EXPECT_EQ(u32(8), 1u);
    EXPECT_EQ(u32(12), 300u);
    EXPECT_EQ(n, 3u);
    EXPECT_EQ(u32(24), 2u);
    EXPECT_EQ(u32(28), 0u);
    EXPECT_EQ(static_cast<unsigned char>(b[36]), 2);  // 258 little-endian
    EXPECT_EQ(static_cast<unsigned char>(b[37]), 1);
}

TEST(TokenShard, BadFilesNameThePath) {
    TempDir d;
    const std::string p = d.file("s.bin");
    expect_error([&] { TokenShard::open(p); }, {p});
    expect_error([&] { write_token_shard(p, {1, 2, 300}, 300); }, {p, "300"});
    expect_error([&] { write_token_shard(p, {-1}, 300); }, {p});
    EXPECT_FALSE(fs::exists(p));

    write_token_shard(p, iota_tokens(1000, 300), 300);
    const std::string good = read_file(p);

    atomic_write_file(p, good.substr(0, good.size() - 10));
    expect_error([&] { TokenShard::open(p); },
                 {"token shard " + p + " is truncated: header says 1000 tokens, file holds 995"});
    atomic_write_file(p, good.substr(0, 20));
    expect_error([&] { TokenShard::open(p); }, {"token shard " + p + " is truncated"});
    atomic_write_file(p, good + "xy");
    expect_error([&] { TokenShard::open(p); }, {p, "unexpected bytes"});

    std::string bad = good;
    bad[0] = 'X';
    atomic_write_file(p, bad);
    expect_error([&] { TokenShard::open(p); }, {p, "wrong magic"});
    bad = good;
    bad[8] = 2;  // version
    atomic_write_file(p, bad);
    expect_error([&] { TokenShard::open(p); }, {p, "version 2"});
    bad = good;
    bad[24] = 4;  // bytes per token disagrees with the vocabulary
    atomic_write_file(p, bad);
    expect_error([&] { TokenShard::open(p); }, {p, "bytes per token"});
    bad = good;
    bad[32 + 2 * 500] = '\xFF';  // token 0x..FF >= 300
    bad[32 + 2 * 500 + 1] = '\x7F';
    atomic_write_file(p, bad);
    expect_error([&] { TokenShard::open(p); }, {p, "32767", "outside its vocabulary"});
    bad = good;
    std::memset(&bad[16], 0xFF, 8);  // n_tokens absurd: must not overflow into a pass
    atomic_write_file(p, bad);
    expect_error([&] { TokenShard::open(p); }, {p, "truncated"});
}

// ------------------------------------------------------------------------------------------------
// Corpus discovery

TEST(Corpus, ListFiles) {
    TempDir d;
    fs::create_directories(d.file("c/sub/deeper"));
    fs::create_directories(d.file("c/.git"));
    for (const char* f : {"c/b.txt", "c/a.txt", "c/sub/z.txt", "c/sub/deeper/m.txt", "c/.hidden", "c/.git/HEAD"})
        atomic_write_file(d.file(f), "x\n");
    EXPECT_EQ(list_corpus_files(d.file("c")),
              (std::vector<std::string>{d.file("c/a.txt"), d.file("c/b.txt"), d.file("c/sub/deeper/m.txt"),
                                        d.file("c/sub/z.txt")}));
    EXPECT_EQ(list_corpus_files(d.file("c/b.txt")), std::vector<std::string>{d.file("c/b.txt")});
    expect_error([&] { list_corpus_files(d.file("missing")); }, {d.file("missing"), "does not exist"});
    fs::create_directories(d.file("empty/.only_hidden"));
    expect_error([&] { list_corpus_files(d.file("empty")); }, {d.file("empty"), "no files"});
}

// ------------------------------------------------------------------------------------------------
// Preparation and batching share one small tokenizer.

namespace {

class DataTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = new TempDir();
        const std::string corpus = dir_->file("tok_corpus.txt");
        atomic_write_file(corpus, sample_text(300, 1));
        Tokenizer::train({corpus}, dir_->file("tok.model"), 400, 2);
        tok_ = new Tokenizer(Tokenizer::load(dir_->file("tok.model")));
    }
    static void TearDownTestSuite() {
        delete tok_;
        delete dir_;
    }
    void SetUp() override { work_ = std::make_unique<TempDir>(); }
    std::string file(const std::string& name) const { return work_->file(name); }

    static TempDir* dir_;
    static Tokenizer* tok_;
    std::unique_ptr<TempDir> work_;
};
TempDir* DataTest::dir_ = nullptr;
Tokenizer* DataTest::tok_ = nullptr;

std::vector<int32_t> all_tokens(const TokenShard& s) {
    std::vector<int32_t> v(s.size());
    s.copy(0, s.size(), v.data());
    return v;
}

}  // namespace

TEST_F(DataTest, PrepareIsExactAndSplitsAtTheEnd) {
    const std::string a = file("a.txt"), b = file("b.txt"), e = file("empty.txt");
    const std::string ta = sample_text(3000, 2);  // > 64 KB, so encoding runs in several chunks
    const std::string tb = "second document\nwith two lines and 🦊\n";
    ASSERT_GT(ta.size(), 100000u);
    atomic_write_file(a, ta);
    atomic_write_file(b, tb);
    atomic_write_file(e, "");
    PreparedData pd = prepare_data({a, e, b}, *tok_, file("out"), 0.1);
    EXPECT_FALSE(pd.reused);
    EXPECT_EQ(pd.train_path, file("out/train.bin"));
    EXPECT_EQ(pd.val_path, file("out/val.bin"));
    EXPECT_TRUE(fs::exists(file("out/meta.json")));

    std::vector<int32_t> expect = tok_->encode(ta);  // chunked encoding must equal one-shot encoding
    expect.push_back(tok_->eos_id());
    std::vector<int32_t> tbt = tok_->encode(tb);
    expect.insert(expect.end(), tbt.begin(), tbt.end());
    expect.push_back(tok_->eos_id());

    TokenShard train = TokenShard::open(pd.train_path), val = TokenShard::open(pd.val_path);
    EXPECT_EQ(train.size(), pd.n_train);
    EXPECT_EQ(val.size(), pd.n_val);
    EXPECT_EQ(pd.n_val, static_cast<size_t>(expect.size() * 0.1));
    std::vector<int32_t> got = all_tokens(train), v = all_tokens(val);
    got.insert(got.end(), v.begin(), v.end());
    EXPECT_EQ(got, expect);
    EXPECT_EQ(tok_->decode(got), ta + tb);
}

TEST_F(DataTest, SecondRunReusesUntilAnInputChanges) {
    const std::string a = file("a.txt");
    atomic_write_file(a, sample_text(200, 3));
    const std::string out = file("out");
    PreparedData first = prepare_data({a}, *tok_, out);
    EXPECT_FALSE(first.reused);
    auto train_mtime = fs::last_write_time(first.train_path);

    PreparedData again = prepare_data({a}, *tok_, out);
    EXPECT_TRUE(again.reused);
    EXPECT_EQ(again.n_train, first.n_train);
    EXPECT_EQ(again.n_val, first.n_val);
    EXPECT_EQ(fs::last_write_time(first.train_path), train_mtime);

    // Same bytes, new mtime: the content hash shows nothing changed.
    atomic_write_file(a, read_file(a));
    EXPECT_TRUE(prepare_data({a}, *tok_, out).reused);

    // A different split, different content, or a damaged shard each force a rebuild.
    EXPECT_FALSE(prepare_data({a}, *tok_, out, 0.2).reused);
    EXPECT_TRUE(prepare_data({a}, *tok_, out, 0.2).reused);
    atomic_write_file(a, sample_text(201, 3));
    PreparedData changed = prepare_data({a}, *tok_, out, 0.2);
    EXPECT_FALSE(changed.reused);
    EXPECT_NE(changed.n_train + changed.n_val, first.n_train + first.n_val);
    atomic_write_file(changed.val_path, "garbage");
    EXPECT_FALSE(prepare_data({a}, *tok_, out, 0.2).reused);
    EXPECT_EQ(TokenShard::open(changed.val_path).size(), changed.n_val);
}

TEST_F(DataTest, ReuseIsKeyedOnContentNotPath) {
    const std::string a = file("a.txt");
    atomic_write_file(a, sample_text(200, 5));
    const std::string out = file("out");
    PreparedData first = prepare_data({a}, *tok_, out);
    ASSERT_FALSE(first.reused);
    const auto train_mtime = fs::last_write_time(first.train_path);

    // Another spelling of the same file (relative to the working directory), and a copy in another
    // folder: the same content, so nothing is tokenized again.
    const std::string relative = fs::relative(a).string();
    ASSERT_NE(relative, a);
    EXPECT_TRUE(prepare_data({relative}, *tok_, out).reused);
    fs::create_directories(file("elsewhere"));
    const std::string copy = file("elsewhere/b.txt");
    fs::copy_file(a, copy);
    EXPECT_TRUE(prepare_data({copy}, *tok_, out).reused);
    EXPECT_EQ(fs::last_write_time(first.train_path), train_mtime);

    // A file of the same size with other bytes, under the recorded path: prepared again.
    std::string text(read_file(a).size(), 'z');
    for (size_t i = 40; i < text.size(); i += 41) text[i] = '\n';
    atomic_write_file(copy, text);
    EXPECT_FALSE(prepare_data({copy}, *tok_, out).reused);
}

TEST_F(DataTest, BadCorporaNameTheFile) {
    const std::string e1 = file("e1.txt"), e2 = file("e2.txt");
    atomic_write_file(e1, "");
    atomic_write_file(e2, "");
    expect_error([&] { prepare_data({e1, e2}, *tok_, file("out")); }, {e1, e2, "zero tokens"});

    const std::string bad = file("bad.txt");
    atomic_write_file(bad, "good line\nanother good line\nbad \xC3\x28 here\n");
    expect_error([&] { prepare_data({e1, bad}, *tok_, file("out")); },
                 {"corpus file " + bad, "invalid UTF-8 at byte offset 32"});
    expect_error([&] { prepare_data({file("nope.txt")}, *tok_, file("out")); }, {file("nope.txt")});
    expect_error([&] { prepare_data({e1}, *tok_, file("out"), 1.5); }, {"val_fraction"});
    EXPECT_FALSE(fs::exists(file("out/train.bin")));
}

TEST_F(DataTest, SamplerIsDeterministicAndShifted) {
    const std::string p = file("s.bin");
    std::vector<int32_t> t(5000);
    for (size_t i = 0; i < t.size(); i++) t[i] = static_cast<int32_t>(i % 397);
    write_token_shard(p, t, 400);
    TokenShard shard = TokenShard::open(p);
    const int B = 4, T = 16;
    std::vector<int32_t> x(B * T), y(B * T), x2(B * T), y2(B * T);

    BatchSampler s1(shard, B, T, 42), s2(shard, B, T, 42), s3(shard, B, T, 43);
    std::vector<std::vector<int32_t>> history;
    for (int k = 0; k < 50; k++) {
        s1.next(x.data(), y.data());
        s2.next(x2.data(), y2.data());
        EXPECT_EQ(x, x2);
        EXPECT_EQ(y, y2);
        for (int b = 0; b < B; b++) {
            const int32_t* xr = &x[b * T];
            const int32_t* yr = &y[b * T];
            for (int i = 0; i + 1 < T; i++) ASSERT_EQ(yr[i], xr[i + 1]);
            ASSERT_EQ(yr[T - 1], (xr[T - 1] + 1) % 397);
            uint64_t off = s1.offset(k, b);
            ASSERT_LE(off + T, shard.size() - 1);
            ASSERT_EQ(xr[0], t[off]);
        }
        history.push_back(x);
    }
    EXPECT_EQ(s1.position(), 50u);
    s3.next(x2.data(), y2.data());
    EXPECT_NE(history[0], x2) << "a different seed gives different batches";

    // Restoring the counter replays the stream exactly: that is the whole checkpointed state.
    BatchSampler resumed(shard, B, T, 42);
    resumed.set_position(17);
    resumed.next(x2.data(), y2.data());
    EXPECT_EQ(x2, history[17]);

    // Offsets cover the whole valid range, including the very last window.
    const int T2 = 8;
    write_token_shard(p, std::vector<int32_t>(T2 + 3, 1), 400);
    TokenShard small = TokenShard::open(p);
    BatchSampler s4(small, 1, T2, 0);
    std::set<uint64_t> seen;
    for (uint64_t k = 0; k < 200; k++) seen.insert(s4.offset(k, 0));
    EXPECT_EQ(seen, (std::set<uint64_t>{0, 1, 2}));
}

TEST_F(DataTest, MixtureOfOneIsTheSingleSampler) {
    const std::string p = file("one.bin");
    write_token_shard(p, iota_tokens(3000, 400), 400);
    TokenShard shard = TokenShard::open(p);
    const int B = 3, T = 8;
    BatchSampler single(shard, B, T, 7);
    MixtureSampler mix({&shard}, {2.5}, B, T, 7);
    std::vector<int32_t> x(B * T), y(B * T), x2(B * T), y2(B * T);
    for (int k = 0; k < 40; k++) {
        single.next(x.data(), y.data());
        mix.next(x2.data(), y2.data());
        ASSERT_EQ(x, x2);
        ASSERT_EQ(y, y2);
    }
    EXPECT_EQ(mix.position(), 40u);
}

TEST_F(DataTest, MixtureFollowsTheWeights) {
    // Source 0 holds only token 1, source 1 only token 2 (lengths differ, so each row's window is
    // placed within its own shard).
    const std::string p0 = file("m0.bin"), p1 = file("m1.bin");
    write_token_shard(p0, std::vector<int32_t>(5000, 1), 400);
    write_token_shard(p1, std::vector<int32_t>(70, 2), 400);
    TokenShard s0 = TokenShard::open(p0), s1 = TokenShard::open(p1);
    const int B = 4, T = 16;
    MixtureSampler mix({&s0, &s1}, {0.9, 0.1}, B, T, 11);
    std::vector<int32_t> x(B * T), y(B * T);
    long rows = 0, from0 = 0;
    std::vector<std::vector<int32_t>> history;
    for (uint64_t k = 0; k < 2500; k++) {
        mix.next(x.data(), y.data());
        history.push_back(x);
        for (int b = 0; b < B; b++, rows++) {
            const size_t src = mix.source(k, b);
            ASSERT_LT(src, 2u);
            ASSERT_EQ(x[b * T], src == 0 ? 1 : 2);
            ASSERT_EQ(y[b * T + T - 1], src == 0 ? 1 : 2);
            ASSERT_LE(mix.offset(k, b) + T, (src == 0 ? s0 : s1).size() - 1);
            from0 += src == 0;
        }
    }
    const double share = double(from0) / double(rows);
    EXPECT_NEAR(share, 0.9, 0.015) << from0 << " of " << rows << " rows from source 0";

    // Weights need not sum to 1: 9 and 1 are 0.9 and 0.1, batch for batch.
    MixtureSampler same({&s0, &s1}, {9, 1}, B, T, 11);
    std::vector<int32_t> x2(B * T), y2(B * T);
    same.set_position(1234);
    same.next(x2.data(), y2.data());
    EXPECT_EQ(x2, history[1234]) << "restoring the counter replays the mixture";
    // Reversed weights reverse the mix.
    MixtureSampler flipped({&s0, &s1}, {0.1, 0.9}, B, T, 11);
    long flipped0 = 0;
    for (uint64_t k = 0; k < 500; k++)
        for (int b = 0; b < B; b++) flipped0 += flipped.source(k, b) == 0;
    EXPECT_NEAR(double(flipped0) / (500.0 * B), 0.1, 0.03);

    expect_error([&] { MixtureSampler({}, {}, B, T, 1); }, {"at least one source"});
    expect_error([&] { MixtureSampler({&s0, &s1}, {1}, B, T, 1); }, {"2 sources", "1 weights"});
    expect_error([&] { MixtureSampler({&s0, &s1}, {1, 0}, B, T, 1); }, {"corpus source 1", "positive"});
    expect_error([&] { MixtureSampler({&s0, &s1}, {1, 1}, B, 70, 1); }, {"corpus " + p1 + " has 70 tokens"});
}

TEST_F(DataTest, ShortCorpusIsAnError) {
    const std::string p = file("short.bin");
    write_token_shard(p, std::vector<int32_t>(16, 3), 400);
    TokenShard shard = TokenShard::open(p);
    expect_error([&] { BatchSampler(shard, 2, 16, 1); },
                 {"corpus " + p + " has 16 tokens, fewer than one sequence of T+1 = 17"});
    expect_error([&] { EvalBatches(shard, 2, 16); }, {"corpus " + p + " has 16 tokens"});
    EXPECT_NO_THROW(BatchSampler(shard, 2, 15, 1));
}

TEST_F(DataTest, EvalBatchesWalkInOrder) {
    const std::string p = file("val.bin");
    std::vector<int32_t> t(3 * 10 + 5);  // 3 full windows of T = 10 and a tail too short for a fourth
    for (size_t i = 0; i < t.size(); i++) t[i] = static_cast<int32_t>(i);
    write_token_shard(p, t, 400);
    TokenShard shard = TokenShard::open(p);
    EvalBatches ev(shard, 2, 10);
    EXPECT_EQ(ev.num_windows(), 3u);
    EXPECT_EQ(ev.num_batches(), 2u);
    std::vector<int32_t> x(20), y(20);
    ASSERT_EQ(ev.next(x.data(), y.data()), 2);
    for (int i = 0; i < 20; i++) {
        EXPECT_EQ(x[i], i);
        EXPECT_EQ(y[i], i + 1);
    }
    ASSERT_EQ(ev.next(x.data(), y.data()), 1);
    for (int i = 0; i < 10; i++) {
        EXPECT_EQ(x[i], 20 + i);
        EXPECT_EQ(y[i], 21 + i);
        EXPECT_EQ(y[10 + i], -1) << "padding rows carry ignored targets";
    }
    EXPECT_EQ(ev.next(x.data(), y.data()), 0);
    ev.reset();
    EXPECT_EQ(ev.next(x.data(), y.data()), 2);
}
