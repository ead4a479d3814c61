// Checkpoint integrity: every tensor carries an XXH3-64 checksum in the metadata; a checkpoint whose
// bytes changed after it was written is refused naming the tensor, and weights-only loads verify what
// they read.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "../test_util.h"
#include "core/fileio.h"
#include "core/safetensors.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/run_config.h"
#include "train/tokenizer.h"

using namespace strata;
using strata::testing::TempDir;
using strata::testing::expect_error;

namespace {

class CheckpointTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = new TempDir();
        std::string text;
        std::mt19937 rng(7);
        const char* words[] = {"the", "light", "of", "day", "and", "night", "over", "seven", "rivers", "ran", "far"};
        for (int line = 0; line < 200; line++) {
            for (int w = 0; w < 9; w++) text += std::string(w ? " " : "") + words[rng() % 11];
            text += ".\n";
        }
        atomic_write_file(dir_->file("corpus.txt"), text);
        Tokenizer::train({dir_->file("corpus.txt")}, dir_->file("tok.model"), kVocab, 1);

        RunConfig rc;
        rc.model.vocab_size = kVocab;
        rc.model.d_model = 16;
        rc.model.n_layers = 1;
        rc.model.n_heads = 2;
        rc.model.n_kv_heads = 1;
        rc.model.head_dim = 8;
        rc.model.ffn_hidden = 24;
        rc.model.max_seq_len = 16;
        rc.train.seq_len = 8;
        rc.train.batch_size = 2;
        Model<float> model(rc.model);
        AdamW<float> opt(model, AdamWConfig{});
        // Distinct, non-zero moments, so that zeroing their bytes changes them.
        std::vector<float> m(size_t(model.num_params())), v(m.size());
        for (size_t i = 0; i < m.size(); i++) m[i] = 0.001f * float(i % 97 + 1), v[i] = 0.002f * float(i % 89 + 1);
        opt.m.from_host(m.data(), 0, long(m.size()));
        opt.v.from_host(v.data(), 0, long(v.size()));
        opt.step = 3;
        TrainState st;
        st.step = 3;
        save_checkpoint(dir_->path, rc, model, opt, Tokenizer::load(dir_->file("tok.model")), st);
        original_ = read_file(checkpoint_path(dir_->path));
        params_ = model.params().host<float>();
    }
    static void TearDownTestSuite() {
        delete dir_;
        dir_ = nullptr;
    }

    // A copy of the checkpoint with 8 bytes zeroed in the middle of tensor `name`'s data.
    static std::string corrupted(const std::string& name, const std::string& file) {
        std::string raw = original_;
        uint64_t n = 0;
        std::memcpy(&n, raw.data(), 8);
        const auto header = nlohmann::json::parse(raw.substr(8, n));
        const uint64_t a = header.at(name).at("data_offsets")[0], b = header.at(name).at("data_offsets")[1];
        EXPECT_GE(b - a, 16u) << name;
        const size_t at = size_t(8 + n + a + (b - a) / 2 - 4);
        const std::string before = raw.substr(at, 8);
        std::memset(raw.data() + at, 0, 8);
        EXPECT_NE(raw.substr(at, 8), before) << name << ": these bytes were zero already";
        const std::string path = dir_->file(file);
        atomic_write_file(path, raw);
        return path;
    }

    static constexpr int kVocab = 300;
    static TempDir* dir_;
    static std::string original_;
    static std::vector<float> params_;
};
TempDir* CheckpointTest::dir_ = nullptr;
std::string CheckpointTest::original_;
std::vector<float> CheckpointTest::params_;

}  // namespace

TEST_F(CheckpointTest, EveryTensorHasAChecksumAndTheFileRoundTrips) {
    SafetensorsFile f = SafetensorsFile::open(checkpoint_path(dir_->path));
    EXPECT_EQ(f.metadata().at("format"), "strata-checkpoint-2");
    const auto sums = nlohmann::json::parse(f.metadata().at("checksums"));
    ASSERT_TRUE(sums.is_object());
    EXPECT_EQ(sums.size(), f.names().size());
    for (const std::string& name : f.names()) {
        ASSERT_TRUE(sums.contains(name)) << name;
        EXPECT_EQ(sums[name].get<std::string>().size(), 16u) << name;
    }
    LoadedCheckpoint lc = load_checkpoint(dir_->path);
    EXPECT_EQ(lc.model->params().host<float>(), params_);
    EXPECT_EQ(lc.opt->step, 3);
    EXPECT_EQ(lc.st.step, 3);
}

TEST_F(CheckpointTest, ZeroedBytesInAnyTensorAreRefusedNamingIt) {
    for (const std::string name : {"model.tok_emb", "model.blocks.0.wq", "adamw.m.blocks.0.w_up",
                                   "adamw.v.tok_emb", "tokenizer"}) {
        const std::string path = corrupted(name, "bad.safetensors");
        expect_error([&] { load_checkpoint(path); },
                     {"checkpoint " + path + ": tensor " + name + " fails its checksum (the file is corrupt)"});
    }
}

TEST_F(CheckpointTest, WeightsOnlyLoadsVerifyTheWeightsAndTokenizerButNotTheMoments) {
    for (const std::string name : {"model.blocks.0.wo", "tokenizer"}) {
        const std::string path = corrupted(name, "bad.safetensors");
        expect_error([&] { load_checkpoint(path, /*weights_only=*/true); }, {path, name, "fails its checksum"});
    }
    // The moments are not read, so their damage does not stop eval or generate.
    const std::string path = corrupted("adamw.v.blocks.0.wk", "moments.safetensors");
    LoadedCheckpoint lc = load_checkpoint(path, /*weights_only=*/true);
    EXPECT_EQ(lc.model->params().host<float>(), params_);
    expect_error([&] { load_checkpoint(path); }, {"adamw.v.blocks.0.wk", "fails its checksum"});
}

TEST_F(CheckpointTest, MissingOrMalformedChecksumsAreRefused) {
    SafetensorsFile f = SafetensorsFile::open(checkpoint_path(dir_->path));
    std::vector<TensorRef> ts;
    for (const std::string& name : f.names()) ts.push_back(f.get(name));
    auto with_sums = [&](const char* file, const std::string* sums) {
        std::map<std::string, std::string> meta = f.metadata();
        if (sums) meta["checksums"] = *sums;
        else meta.erase("checksums");
        const std::string path = dir_->file(file);
        safetensors_write(path, ts, meta);
        return path;
    };
    std::string p = with_sums("none.safetensors", nullptr);
    expect_error([&] { load_checkpoint(p); }, {p, "lacks the metadata field \"checksums\""});
    for (const std::string bad : {"[]", "{", "{\"model.tok_emb\": 5}"}) {
        p = with_sums("bad.safetensors", &bad);
        expect_error([&] { load_checkpoint(p); }, {p, "corrupt \"checksums\""});
    }
    auto sums = nlohmann::json::parse(f.metadata().at("checksums"));
    sums.erase("model.final_norm");
    const std::string dropped = sums.dump();
    p = with_sums("dropped.safetensors", &dropped);
    expect_error([&] { load_checkpoint(p); }, {p, "tensor model.final_norm has no checksum"});
}
