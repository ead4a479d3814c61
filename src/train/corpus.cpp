#include "train/corpus.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"
#include "train/evaluate.h"

namespace strata {

namespace {

struct FileStat {
    long long size = 0, mtime_s = 0, mtime_ns = 0;
};

FileStat stat_file(const std::string& f) {
    struct stat sb {};
    if (::stat(f.c_str(), &sb) != 0) throw Error("cannot read corpus file " + f);
    return {(long long)sb.st_size, (long long)sb.st_mtim.tv_sec,
            (long long)sb.st_mtim.tv_sec * 1000000000LL + (long long)sb.st_mtim.tv_nsec};
}

// What the tokenizer was trained from: the vocabulary size and, for each input in order, its size and
// content hash (what decides the tokenizer), with its path and mtime (a fast path: an input whose path,
// size and mtime match the record is not read again).
nlohmann::json tokenizer_signature(const std::vector<std::string>& files, int vocab) {
    nlohmann::json j = {{"vocab_size", vocab}, {"files", nlohmann::json::array()}};
    for (const auto& f : files) {
        const FileStat st = stat_file(f);
        j["files"].push_back({{"path", f},
                              {"size", st.size},
                              {"mtime_ns", st.mtime_ns},
                              {"hash", content_hash(read_file(f))}});
    }
    return j;
}

// Whether DATA_DIR/tokenizer.json records a tokenizer trained on inputs with this content. A record
// made before content hashes were kept ("mtime" in seconds, no "hash") still matches by path, size
// and mtime.
bool tokenizer_is_fresh(const nlohmann::json& rec, const std::vector<std::string>& files, int vocab) {
    if (rec.at("vocab_size").get<int>() != vocab) return false;
    const auto& in = rec.at("files");
    if (!in.is_array() || in.size() != files.size()) return false;
    for (size_t i = 0; i < files.size(); i++) {
        const FileStat st = stat_file(files[i]);
        const auto& r = in[i];
        if (r.at("size").get<long long>() != st.size) return false;
        const bool same_stat = r.at("path").get<std::string>() == files[i] &&
                               (r.contains("mtime_ns") ? r["mtime_ns"].get<long long>() == st.mtime_ns
                                                       : r.at("mtime").get<long long>() == st.mtime_s);
        if (same_stat) continue;
        if (!r.contains("hash") || r["hash"].get<std::string>() != content_hash(read_file(files[i]))) return false;
    }
    return true;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); i++) s += (i ? ", " : "") + v[i];
    return s;
}

}  // namespace

PreparedCorpus prepare_corpus(const RunConfig& rc, bool verbose, const Tokenizer* given) {
    const TrainConfig& t = rc.train;
    const std::vector<CorpusSource> sources = t.sources();
    const bool mixture = !t.corpora.empty();
    std::vector<std::vector<std::string>> source_files;
    std::vector<std::string> files, names;  // files: every source's, in order, each path once
    double weight_sum = 0;
    for (const CorpusSource& s : sources) {
        source_files.push_back(list_corpus_files(s.path));
        for (const std::string& f : source_files.back())
            if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
        names.push_back(s.path);
        weight_sum += s.weight;
    }
    std::error_code ec;
    std::filesystem::create_directories(t.data_dir, ec);
    if (ec) throw Error("cannot create data directory " + t.data_dir + ": " + ec.message());
    const std::string tok_path = t.data_dir + "/tokenizer.model", sig_path = t.data_dir + "/tokenizer.json";
    bool fresh = false;
    if (given) {
        const std::string bytes = given->to_bytes();
        if (!std::filesystem::exists(tok_path) || read_file(tok_path) != bytes) {
            atomic_write_file(tok_path, bytes);
            // Not trained from this corpus: a later run that trains its own tokenizer retrains it.
            atomic_write_file(sig_path, nlohmann::json{{"given", true}}.dump(2) + "\n");
        }
        fresh = true;
    } else if (std::filesystem::exists(tok_path) && std::filesystem::exists(sig_path)) {
        try {
            fresh = tokenizer_is_fresh(nlohmann::json::parse(read_file(sig_path)), files, rc.model.vocab_size);
        } catch (const nlohmann::json::exception&) {
            fresh = false;  // a damaged record only costs a retrain
        }
    }
    if (!fresh) {
        if (verbose)
            std::fprintf(stderr, "training a %d-token SentencePiece tokenizer on %zu file(s) under %s ...\n",
                         rc.model.vocab_size, files.size(), join(names).c_str());
        const nlohmann::json sig = tokenizer_signature(files, rc.model.vocab_size);
        Tokenizer::train(files, tok_path, rc.model.vocab_size, t.threads);
        atomic_write_file(sig_path, sig.dump(2) + "\n");
    }
    PreparedCorpus pc{given ? Tokenizer::from_bytes(given->to_bytes(), tok_path) : Tokenizer::load(tok_path), {}, {},
                      mixture};
    const char* how = given ? ", with the checkpoint's tokenizer" : "";
    for (size_t i = 0; i < sources.size(); i++) {
        const std::string dir = mixture ? t.data_dir + "/corpus" + std::to_string(i) : t.data_dir;
        if (verbose && !fresh) std::fprintf(stderr, "tokenizing the corpus into %s ...\n", dir.c_str());
        PreparedSource ps{names[i], sources[i].weight / weight_sum,
                          prepare_data(source_files[i], pc.tok, dir, t.val_fraction)};
        const char* when = ps.data.reused ? "prepared earlier" : "prepared now";
        if (verbose && !mixture)
            std::fprintf(stderr, "corpus: %zu train / %zu validation tokens (%s%s)\n", ps.data.n_train,
                         ps.data.n_val, when, how);
        else if (verbose)
            std::fprintf(stderr, "corpus: %s (weight %.4g): %zu train / %zu validation tokens (%s%s)\n",
                         ps.name.c_str(), ps.weight, ps.data.n_train, ps.data.n_val, when, how);
        pc.sources.push_back(std::move(ps));
    }
    pc.data = pc.sources.front().data;
    return pc;
}

CorpusShards open_corpus_shards(const PreparedCorpus& pc) {
    CorpusShards cs;
    cs.mixture = pc.mixture;
    for (const PreparedSource& s : pc.sources) {
        cs.names.push_back(s.name);
        cs.weights.push_back(s.weight);
        cs.train.push_back(TokenShard::open(s.data.train_path));
        cs.val.push_back(TokenShard::open(s.data.val_path));
    }
    return cs;
}

MixtureSampler CorpusShards::sampler(int B, int T, uint64_t seed) const {
    std::vector<const TokenShard*> shards;
    for (const TokenShard& s : train) shards.push_back(&s);
    return MixtureSampler(shards, weights, B, T, seed);
}

void CorpusShards::probe(int B, int T) const {
    for (const TokenShard& v : val) EvalBatches(v, B, T);
}

void CorpusShards::check_vocab(const Model<float>& model) const {
    for (size_t i = 0; i < train.size(); i++) {
        check_shard_vocab(train[i], model);
        check_shard_vocab(val[i], model);
    }
}

CorpusEval eval_corpora(Model<float>& model, const CorpusShards& shards, int B, int T, long max_batches,
                        const std::atomic<int>* stop) {
    CorpusEval ce;
    if (!shards.mixture) {
        const EvalResult er = eval_loop(model, shards.val.at(0), B, T, max_batches, stop);
        ce.loss = er.loss;
        ce.complete = er.complete;
        return ce;
    }
    for (size_t i = 0; i < shards.val.size(); i++) {
        const EvalResult er = eval_loop(model, shards.val[i], B, T, max_batches, stop);
        if (!er.complete) {
            ce.complete = false;
            return ce;
        }
        ce.by_corpus.emplace_back(shards.names[i], er.loss);
        ce.loss += shards.weights[i] * er.loss;
    }
    return ce;
}

}  // namespace strata
