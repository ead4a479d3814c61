// The tokenizer's encode/decode wrapper, with a real model: a 300-piece BPE tokenizer trained at
// start-up (into /dev/shm) on a small built-in text, the way strata trains one on a corpus.
//
// The first input byte picks the check, the rest is its argument:
//   even: encode(text). Valid UTF-8 must encode to ids inside the vocabulary that decode back to the
//         exact text; invalid UTF-8 must throw strata::Error, at the offset an independent validator
//         finds.
//   odd:  decode(ids), ids read as little-endian int16 (odd byte 1 or 3, mostly in range) or int32
//         (5 or 7, anything). Any id outside [0, vocab_size) must throw strata::Error; all in range
//         must decode without error.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/fileio.h"
#include "fuzz_common.h"
#include "train/tokenizer.h"

using namespace strata;
using strata::fuzz::expect_ok_or_error;

namespace {

std::unique_ptr<Tokenizer> g_tok;

// A few hundred lines of plain text with some accented, CJK and emoji characters: enough to train
// a 300-piece vocabulary (259 fixed ids + characters + merges).
std::string training_text() {
    const char* words[] = {"in",  "the",   "beginning", "was",  "a",     "word", "and", "it",    "came", "to",
                           "pass", "that", "light",     "fell", "on",    "water", "café", "東京", "🦊",   "42",
                           "The", "of",    "naïve",     "sea",  "stone", "–",    "x=1", "(ok)", "\tsix", "über"};
    const size_t n_words = sizeof words / sizeof *words;
    std::string text;
    uint64_t s = 88172645463325252ull;
    for (int line = 0; line < 400; line++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        int n = 3 + int(s % 10);
        for (int w = 0; w < n; w++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            if (w) text += ' ';
            text += words[s % n_words];
        }
        text += line % 7 == 6 ? ".\n\n" : "\n";
    }
    return text;
}

// Byte offset of the first invalid UTF-8 sequence, decoded the slow obvious way (a second opinion on
// find_invalid_utf8): a lead byte, its continuation bytes, then the code point's range.
size_t first_invalid_utf8(std::string_view t) {
    const auto* s = reinterpret_cast<const unsigned char*>(t.data());
    for (size_t i = 0; i < t.size();) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        if (len == 0 || i + len > t.size()) return i;
        uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += len;
    }
    return std::string_view::npos;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    strata::fuzz::single_thread();
    const std::string dir = strata::fuzz::scratch_dir();
    atomic_write_file(dir + "/corpus.txt", training_text());
    Tokenizer::train({dir + "/corpus.txt"}, dir + "/tok.model", 300, 1);
    g_tok = std::make_unique<Tokenizer>(Tokenizer::load(dir + "/tok.model"));
    FUZZ_CHECK(g_tok->vocab_size() == 300, "the start-up tokenizer has " + std::to_string(g_tok->vocab_size()) + " pieces");
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const Tokenizer& tok = *g_tok;
    const int v = tok.vocab_size();
    const uint8_t mode = data[0];
    const std::string_view arg(reinterpret_cast<const char*>(data + 1), size - 1);

    if (mode % 2 == 0) {
        const size_t bad = first_invalid_utf8(arg);
        FUZZ_CHECK(find_invalid_utf8(arg) == bad, "find_invalid_utf8 says " + std::to_string(find_invalid_utf8(arg)) +
                                                      ", the reference validator " + std::to_string(bad));
        std::vector<int32_t> ids;
        std::string err;
        const bool ok = expect_ok_or_error([&] { ids = tok.encode(arg); }, &err);
        if (bad != std::string_view::npos) {
            FUZZ_CHECK(!ok, "encode accepted invalid UTF-8 at byte " + std::to_string(bad));
            FUZZ_CHECK(err.find("byte offset " + std::to_string(bad)) != std::string::npos, "wrong offset in: " + err);
            return 0;
        }
        FUZZ_CHECK(ok, "encode rejected valid UTF-8: " + err);
        for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < v, "encode produced id " + std::to_string(id));
        std::string text;
        FUZZ_CHECK(expect_ok_or_error([&] { text = tok.decode(ids); }, &err), "decode of encode's ids failed: " + err);
        FUZZ_CHECK(text == arg, "decode(encode(s)) != s for s of " + std::to_string(arg.size()) + " bytes");
        return 0;
    }

    const size_t width = (mode & 4) ? 4 : 2;
    std::vector<int32_t> ids(arg.size() / width);
    bool in_range = true;
    for (size_t i = 0; i < ids.size(); i++) {
        if (width == 4) {
            std::memcpy(&ids[i], arg.data() + 4 * i, 4);
        } else {
            int16_t x;
            std::memcpy(&x, arg.data() + 2 * i, 2);
            ids[i] = x;
        }
        in_range = in_range && ids[i] >= 0 && ids[i] < v;
    }
    std::string text, err;
    const bool ok = expect_ok_or_error([&] { text = tok.decode(ids); }, &err);
    FUZZ_CHECK(ok == in_range, in_range ? "decode rejected ids inside the vocabulary: " + err
                                        : std::string("decode accepted an id outside the vocabulary"));
    return 0;
}
