// strata: the tokenizer, a thin wrapper of a SentencePiece BPE model.
//
// Models trained here use byte fallback and the identity normalizer (no NFKC, no dummy prefix, no
// whitespace folding), so decode(encode(s)) == s for every valid UTF-8 string s: text the model never
// saw (emoji, newlines, tabs) becomes one token per UTF-8 byte instead of <unk>. Special ids are fixed:
// unk = 0, bos = 1, eos = 2, and there is no pad token.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace strata {

// Byte offset of the first invalid UTF-8 sequence in `text` (overlong forms, surrogates and code
// points above U+10FFFF are invalid), or npos when it is all valid.
size_t find_invalid_utf8(std::string_view text);

class Tokenizer {
public:
    // Trains a BPE model on the lines of `text_files` and writes it atomically to `model_path`.
    // Throws Error naming the files when they hold no text or are not valid UTF-8, and Error when
    // vocab_size is outside [kMinVocab, kMaxVocab] or too small for the characters in the text.
    // The model file does not depend on num_threads (kept for callers; the trainer runs on one thread).
    static void train(const std::vector<std::string>& text_files, const std::string& model_path, int vocab_size,
                      int num_threads = 2);
    static constexpr int kMinVocab = 260;  // 3 special ids + 256 byte pieces + at least one more
    static constexpr int kMaxVocab = 1 << 20;

    // Throws Error("tokenizer file <path> is corrupt: ...") (or "cannot read <path>: ...").
    static Tokenizer load(const std::string& path);
    // `origin_for_errors` names where the bytes came from (a file, "checkpoint <path>") in errors.
    static Tokenizer from_bytes(const std::string& serialized_proto, const std::string& origin_for_errors);
    // The serialized model, suitable for from_bytes (e.g. to embed it in a checkpoint).
    std::string to_bytes() const;

    // Throws Error("invalid UTF-8 at byte offset N") for invalid input. Thread-safe.
    std::vector<int32_t> encode(std::string_view text) const;
    // Throws Error when an id is outside [0, vocab_size). Control ids (bos, eos) decode to nothing.
    std::string decode(const std::vector<int32_t>& ids) const;
    std::string piece(int32_t id) const;  // the raw vocabulary entry, for debugging and tests
    // What a vocabulary entry is, and its score in the model (for exports to other tokenizers).
    enum class Kind { normal, unknown, control, byte, unused };
    Kind kind(int32_t id) const;
    float score(int32_t id) const;

    int vocab_size() const;
    int bos_id() const;
    int eos_id() const;
    int unk_id() const;
    const std::string& origin() const { return origin_; }

private:
    Tokenizer() = default;
    std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;  // immutable, so copies may share it
    std::string origin_;
    // Byte-fallback ids of U+2581, SentencePiece's internal space marker; -1 when the model has none.
    int32_t marker_bytes_[3] = {-1, -1, -1};
};

}  // namespace strata
