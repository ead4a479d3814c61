// Tokenizer file validation: Tokenizer::from_bytes on arbitrary bytes (a tokenizer.model file or the
// tokenizer tensor of a checkpoint). Bad bytes must end in strata::Error. A tokenizer that loads is
// used the way strata uses one: encode a fixed text, decode the ids, decode every id, and look up
// the special ids, which must all lie inside its vocabulary.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "train/tokenizer.h"

using namespace strata;
using strata::fuzz::expect_ok_or_error;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    std::unique_ptr<Tokenizer> tok;
    if (!expect_ok_or_error([&] { tok = std::make_unique<Tokenizer>(Tokenizer::from_bytes(bytes, "fuzz")); }))
        return 0;
    const int v = tok->vocab_size();
    FUZZ_CHECK(v > 0, "a loaded tokenizer has an empty vocabulary");
    FUZZ_CHECK(tok->eos_id() >= 0 && tok->eos_id() < v, "eos id outside the vocabulary");
    FUZZ_CHECK(tok->bos_id() < v && tok->unk_id() < v, "a special id outside the vocabulary");

    std::vector<int32_t> ids;
    if (expect_ok_or_error([&] { ids = tok->encode("Hello, wörld\n\t東京 ▁ 🦊 42"); })) {
        for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < v, "encode produced id " + std::to_string(id));
        expect_ok_or_error([&] { tok->decode(ids); });
    }
    std::vector<int32_t> all;
    for (int32_t id = 0; id < v && id < 4096; id++) all.push_back(id);
    expect_ok_or_error([&] { tok->decode(all); });
    for (int32_t id : {0, v - 1}) expect_ok_or_error([&] { tok->piece(id); });
    std::string err;
    FUZZ_CHECK(!expect_ok_or_error([&] { tok->decode({v}); }, &err), "decode accepted id vocab_size");
    FUZZ_CHECK(expect_ok_or_error([&] { Tokenizer::from_bytes(tok->to_bytes(), "fuzz (reloaded)"); }, &err),
               "a loaded tokenizer does not load again from to_bytes(): " + err);
    return 0;
}
