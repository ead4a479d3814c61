#include "train/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <unordered_map>

#include "core/error.h"
#include "core/fileio.h"

namespace strata {

size_t find_invalid_utf8(std::string_view text) {
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    size_t i = 0;
    while (i < n) {
        // ASCII runs dominate real text; skip them eight bytes at a time.
        while (i + 8 <= n) {
            uint64_t w;
            std::memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;        // overlong
            else if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;        // overlong
            else if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
        } else {
            return i;
        }
        if (i + len > n) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += len;
    }
    return std::string_view::npos;
}

namespace {

// Sentences longer than the trainer's max_sentence_length are silently dropped by SentencePiece, so
// long lines are cut into pieces below it, at a space where possible, never inside a character.
constexpr size_t kMaxSentenceBytes = 16384;
constexpr size_t kSplitSentenceBytes = 4096;

// Feeds the trainer the non-empty lines of the files, validating UTF-8 on the way. Errors cannot
// propagate as exceptions through SentencePiece, so they are recorded and the iteration ends early.
class LineIterator : public sentencepiece::SentenceIterator {
public:
    explicit LineIterator(const std::vector<std::string>& files) : files_(files) { advance(); }

    bool done() const override { return finished_; }
    void Next() override { advance(); }
    const std::string& value() const override { return value_; }
    sentencepiece::util::Status status() const override {
        if (error_.empty()) return sentencepiece::util::Status();
        return sentencepiece::util::Status(sentencepiece::util::StatusCode::kInternal, error_);
    }

    const std::string& error() const { return error_; }
    size_t sentences() const { return sentences_; }

private:
    void advance() {
        while (!finished_) {
            if (!pending_.empty()) {
                take_piece();
                return;
            }
            if (!in_.is_open()) {
                if (file_index_ == files_.size()) {
                    finished_ = true;
                    return;
                }
                in_.open(files_[file_index_], std::ios::binary);
                offset_ = 0;
                if (!in_) {
                    fail("cannot read " + files_[file_index_]);
                    return;
                }
            }
            std::string line;
            if (!std::getline(in_, line)) {
                if (in_.bad()) {
                    fail("cannot read " + files_[file_index_]);
                    return;
                }
                in_.close();
                in_.clear();
                file_index_++;
                continue;
            }
            size_t bad = find_invalid_utf8(line);
            if (bad != std::string::npos) {
                fail("corpus file " + files_[file_index_] + ": invalid UTF-8 at byte offset " +
                     std::to_string(offset_ + bad));
                return;
            }
            offset_ += line.size() + 1;
            pending_ = std::move(line);
        }
    }

    void take_piece() {
        size_t cut = pending_.size();
        if (cut > kSplitSentenceBytes) {
            cut = pending_.rfind(' ', kSplitSentenceBytes);
            if (cut == std::string::npos || cut < kSplitSentenceBytes / 2) {
                cut = kSplitSentenceBytes;
                while (cut > 0 && (static_cast<unsigned char>(pending_[cut]) & 0xC0) == 0x80) cut--;
            }
        }
        value_.assign(pending_, 0, cut);
        pending_.erase(0, cut);
        sentences_++;
    }

    void fail(std::string msg) {
        error_ = std::move(msg);
        finished_ = true;
    }

    const std::vector<std::string>& files_;
    size_t file_index_ = 0;
    std::ifstream in_;
    uint64_t offset_ = 0;
    std::string pending_, value_, error_;
    size_t sentences_ = 0;
    bool finished_ = false;
};

std::string join_files(const std::vector<std::string>& files) {
    std::string s;
    for (size_t i = 0; i < files.size(); i++) {
        if (i) s += ", ";
        s += files[i];
    }
    return s;
}

// SentencePiece reports a vocabulary that does not fit the corpus with an internal check message;
// say what it means in terms of the config, and keep the original text for reference.
std::string explain_trainer_error(const std::string& raw, int vocab_size) {
    auto number_after = [&](const std::string& marker) -> std::string {
        size_t p = raw.find(marker);
        if (p == std::string::npos) return "";
        p += marker.size();
        size_t e = p;
        while (e < raw.size() && raw[e] >= '0' && raw[e] <= '9') e++;
        return raw.substr(p, e - p);
    };
    std::string at_most = number_after("Please set it to a value <= ");
    if (!at_most.empty())
        return "the corpus is too small for a vocabulary of " + std::to_string(vocab_size) +
               " pieces: it supports at most " + at_most + "; lower model.vocab_size or use more text (" + raw + ")";
    // The trainer's "V vs N" counts N = the corpus's distinct characters + the fixed pieces (3 special
    // ids and 256 bytes), so the vocabulary needs at least N pieces.
    const std::string needed = number_after(std::to_string(vocab_size) + " vs ");
    constexpr long kFixedPieces = 259;
    if (!needed.empty() && needed.size() < 10 && raw.find("required_chars") != std::string::npos &&
        std::stol(needed) > kFixedPieces) {
        const long n = std::stol(needed), chars = n - kFixedPieces;
        return "the corpus has " + std::to_string(chars) + " distinct characters and each needs its own piece besides "
               "the " + std::to_string(kFixedPieces) + " fixed ones (3 special ids and 256 bytes), so a vocabulary of " +
               std::to_string(vocab_size) + " pieces is too small; raise model.vocab_size to at least " +
               std::to_string(n) + " (" + std::to_string(chars) + " + " + std::to_string(kFixedPieces) +
               ") or use a corpus with fewer distinct characters (" + raw + ")";
    }
    return raw;
}

}  // namespace

void Tokenizer::train(const std::vector<std::string>& text_files, const std::string& model_path, int vocab_size,
                      int /*num_threads: see the trainer arguments below*/) {
    if (text_files.empty()) throw Error("no text files given to train the tokenizer " + model_path + " on");
    if (vocab_size < kMinVocab || vocab_size > kMaxVocab)
        throw Error("tokenizer vocab_size " + std::to_string(vocab_size) + " is outside [" +
                    std::to_string(kMinVocab) + ", " + std::to_string(kMaxVocab) +
                    "] (256 byte pieces and 3 special ids are always part of the vocabulary)");
    // Count first: an empty corpus would otherwise surface as an obscure trainer message.
    {
        LineIterator probe(text_files);
        if (!probe.error().empty()) throw Error(probe.error());
        bool any = false;
        for (; !probe.done(); probe.Next())
            if (!probe.value().empty()) {
                any = true;
                break;
            }
        if (!probe.error().empty()) throw Error(probe.error());
        if (!any) throw Error("no text to train the tokenizer on in " + join_files(text_files));
    }

    const std::unordered_map<std::string, std::string> args = {
        {"model_type", "bpe"},
        {"vocab_size", std::to_string(vocab_size)},
        {"byte_fallback", "true"},
        {"character_coverage", "1.0"},
        // Identity normalization, no dummy prefix, no whitespace folding: decode(encode(s)) == s.
        {"normalization_rule_name", "identity"},
        {"add_dummy_prefix", "false"},
        {"remove_extra_whitespaces", "false"},
        {"split_digits", "true"},
        {"unk_id", "0"},
        {"bos_id", "1"},
        {"eos_id", "2"},
        {"pad_id", "-1"},
        {"input_sentence_size", "2000000"},
        {"shuffle_input_sentence", "true"},
        {"max_sentence_length", std::to_string(kMaxSentenceBytes)},
        // SentencePiece records num_threads in the model it writes, so passing the caller's count would
        // make the tokenizer file (and every checkpoint embedding it) differ between thread counts
        // although the vocabulary is the same. Its BPE merges run on one thread anyway; only the
        // normalization pass (the identity here) would use more.
        {"num_threads", "1"},
        {"minloglevel", "2"},  // the trainer's progress chatter buries our own output
    };
    sentencepiece::SetRandomGeneratorSeed(20240601);  // sentence sampling must not vary run to run
    LineIterator lines(text_files);
    std::string proto;
    auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &proto);
    if (!lines.error().empty()) throw Error(lines.error());
    if (!status.ok())
        throw Error("cannot train tokenizer " + model_path + " on " + join_files(text_files) + ": " +
                    explain_trainer_error(status.ToString(), vocab_size));
    // Load it back before publishing so a bad model never lands at model_path.
    from_bytes(proto, model_path);
    atomic_write_file(model_path, proto);
}

Tokenizer Tokenizer::load(const std::string& path) { return from_bytes(read_file(path), "tokenizer file " + path); }

Tokenizer Tokenizer::from_bytes(const std::string& serialized_proto, const std::string& origin_for_errors) {
    auto corrupt = [&](const std::string& what) { return Error(origin_for_errors + " is corrupt: " + what); };
    if (serialized_proto.empty()) throw corrupt("it is empty");
    auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
    sentencepiece::util::Status status;
    try {
        status = sp->LoadFromSerializedProto(serialized_proto);
    } catch (const std::exception& e) {
        // SentencePiece reports some malformed models by throwing (e.g. its trie builder on an empty
        // piece) rather than through the status.
        throw corrupt(e.what());
    }
    if (!status.ok()) throw corrupt(status.ToString());
    if (sp->GetPieceSize() <= 0) throw corrupt("its vocabulary is empty");
    if (sp->eos_id() < 0) throw corrupt("it has no end-of-sequence token");
    Tokenizer t;
    const char* marker_pieces[3] = {"<0xE2>", "<0x96>", "<0x81>"};
    for (int i = 0; i < 3; i++) {
        int id = sp->PieceToId(marker_pieces[i]);
        if (id < 0 || !sp->IsByte(id)) {
            std::fill(t.marker_bytes_, t.marker_bytes_ + 3, -1);
            break;
        }
        t.marker_bytes_[i] = id;
    }
    t.sp_ = std::move(sp);
    t.origin_ = origin_for_errors;
    return t;
}

std::string Tokenizer::to_bytes() const {
    auto bytes = sp_->serialized_model_proto();
    return std::string(bytes.data(), bytes.size());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
    size_t bad = find_invalid_utf8(text);
    if (bad != std::string_view::npos) throw Error("invalid UTF-8 at byte offset " + std::to_string(bad));
    std::vector<int32_t> out;
    std::vector<int> ids;
    auto encode_piece = [&](std::string_view piece) {
        if (piece.empty()) return;
        auto status = sp_->Encode(absl::string_view(piece.data(), piece.size()), &ids);
        if (!status.ok()) throw Error("cannot encode text with " + origin_ + ": " + status.ToString());
        out.insert(out.end(), ids.begin(), ids.end());
    };
    // SentencePiece writes spaces as U+2581 internally, so a literal U+2581 in the text would decode as
    // a space. Spelling it out in byte-fallback tokens keeps decode(encode(s)) == s for every s.
    static constexpr std::string_view kMarker = "\xE2\x96\x81";
    size_t pos = 0;
    if (marker_bytes_[0] >= 0) {
        for (size_t m; (m = text.find(kMarker, pos)) != std::string_view::npos; pos = m + kMarker.size()) {
            encode_piece(text.substr(pos, m - pos));
            out.insert(out.end(), marker_bytes_, marker_bytes_ + 3);
        }
    }
    encode_piece(text.substr(pos));
    return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
    const int v = vocab_size();
    std::vector<int> tmp(ids.size());
    for (size_t i = 0; i < ids.size(); i++) {
        if (ids[i] < 0 || ids[i] >= v)
            throw Error("token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                        " is outside the vocabulary [0, " + std::to_string(v) + ") of " + origin_);
        tmp[i] = ids[i];
    }
    std::string out;
    auto status = sp_->Decode(tmp, &out);
    if (!status.ok()) throw Error("cannot decode tokens with " + origin_ + ": " + status.ToString());
    return out;
}

std::string Tokenizer::piece(int32_t id) const {
    if (id < 0 || id >= vocab_size())
        throw Error("token id " + std::to_string(id) + " is outside the vocabulary of " + origin_);
    return sp_->IdToPiece(id);
}

Tokenizer::Kind Tokenizer::kind(int32_t id) const {
    piece(id);  // the range check
    if (sp_->IsUnknown(id)) return Kind::unknown;
    if (sp_->IsControl(id)) return Kind::control;
    if (sp_->IsByte(id)) return Kind::byte;
    if (sp_->IsUnused(id)) return Kind::unused;
    return Kind::normal;
}

float Tokenizer::score(int32_t id) const {
    piece(id);
    return sp_->GetScore(id);
}

int Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }
int Tokenizer::bos_id() const { return sp_->bos_id(); }
int Tokenizer::eos_id() const { return sp_->eos_id(); }
int Tokenizer::unk_id() const { return sp_->unk_id(); }

}  // namespace strata
