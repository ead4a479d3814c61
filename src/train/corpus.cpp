#include "train/corpus.h"

#include <sys/stat.h>

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"

namespace strata {

// What the tokenizer was trained from: the inputs' paths, sizes and mtimes, and the vocabulary size.
static nlohmann::json tokenizer_signature(const std::vector<std::string>& files, int vocab) {
    nlohmann::json j = {{"vocab_size", vocab}, {"files", nlohmann::json::array()}};
    for (const auto& f : files) {
        struct stat sb;
        if (::stat(f.c_str(), &sb) != 0) throw Error("cannot read corpus file " + f);
        j["files"].push_back({{"path", f}, {"size", (long long)sb.st_size}, {"mtime", (long long)sb.st_mtime}});
    }
    return j;
}

PreparedCorpus prepare_corpus(const RunConfig& rc, bool verbose, const Tokenizer* given) {
    const TrainConfig& t = rc.train;
    std::vector<std::string> files = list_corpus_files(t.corpus);
    std::error_code ec;
    std::filesystem::create_directories(t.data_dir, ec);
    if (ec) throw Error("cannot create data directory " + t.data_dir + ": " + ec.message());
    const std::string tok_path = t.data_dir + "/tokenizer.model", sig_path = t.data_dir + "/tokenizer.json";
    if (given) {
        const std::string bytes = given->to_bytes();
        if (!std::filesystem::exists(tok_path) || read_file(tok_path) != bytes) {
            atomic_write_file(tok_path, bytes);
            // Not trained from this corpus: a later run that trains its own tokenizer retrains it.
            atomic_write_file(sig_path, nlohmann::json{{"given", true}}.dump(2) + "\n");
        }
        PreparedCorpus pc{Tokenizer::from_bytes(bytes, tok_path), {}};
        pc.data = prepare_data(files, pc.tok, t.data_dir, t.val_fraction);
        if (verbose)
            std::fprintf(stderr, "corpus: %zu train / %zu validation tokens (%s, with the checkpoint's tokenizer)\n",
                         pc.data.n_train, pc.data.n_val, pc.data.reused ? "prepared earlier" : "prepared now");
        return pc;
    }
    const nlohmann::json sig = tokenizer_signature(files, rc.model.vocab_size);
    bool fresh = false;
    if (std::filesystem::exists(tok_path) && std::filesystem::exists(sig_path)) {
        try {
            fresh = nlohmann::json::parse(read_file(sig_path)) == sig;
        } catch (const nlohmann::json::exception&) {
            fresh = false;  // a damaged record only costs a retrain
        }
    }
    if (!fresh) {
        if (verbose)
            std::fprintf(stderr, "training a %d-token SentencePiece tokenizer on %zu file(s) under %s ...\n",
                         rc.model.vocab_size, files.size(), t.corpus.c_str());
        Tokenizer::train(files, tok_path, rc.model.vocab_size, t.threads);
        atomic_write_file(sig_path, sig.dump(2) + "\n");
    }
    PreparedCorpus pc{Tokenizer::load(tok_path), {}};
    if (verbose && !fresh) std::fprintf(stderr, "tokenizing the corpus into %s ...\n", t.data_dir.c_str());
    pc.data = prepare_data(files, pc.tok, t.data_dir, t.val_fraction);
    if (verbose)
        std::fprintf(stderr, "corpus: %zu train / %zu validation tokens (%s)\n", pc.data.n_train, pc.data.n_val,
                     pc.data.reused ? "prepared earlier" : "prepared now");
    return pc;
}

}  // namespace strata
