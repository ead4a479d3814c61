// Checkpoint validation: load_checkpoint() on arbitrary bytes written to a file in /dev/shm. A bad
// file must end in strata::Error; one that loads must hold a model, tokenizer and optimizer state
// that agree with its config, and must also load weights-only.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_common.h"
#include "train/checkpoint.h"

using namespace strata;
using strata::fuzz::expect_ok_or_error;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    strata::fuzz::single_thread();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = strata::fuzz::scratch_dir() + "/checkpoint.safetensors";
    strata::fuzz::write_file(path, data, size);

    LoadedCheckpoint lc;
    if (!expect_ok_or_error([&] { lc = load_checkpoint(path, /*weights_only=*/false); })) return 0;
    FUZZ_CHECK(lc.model && lc.tok && lc.opt, "a loaded checkpoint lacks its model, tokenizer or optimizer");
    FUZZ_CHECK(lc.tok->vocab_size() == lc.rc.model.vocab_size, "tokenizer and model vocabularies differ");
    FUZZ_CHECK(lc.opt->m.numel() == lc.model->num_params() && lc.opt->v.numel() == lc.model->num_params(),
               "optimizer moments do not match the parameters");

    LoadedCheckpoint weights;
    std::string err;
    FUZZ_CHECK(expect_ok_or_error([&] { weights = load_checkpoint(path, /*weights_only=*/true); }, &err),
               "a checkpoint that loads in full does not load weights-only: " + err);
    FUZZ_CHECK(weights.model->num_params() == lc.model->num_params() &&
                   weights.model->params().host<float>() == lc.model->params().host<float>(),
               "weights-only load gives different weights");
    FUZZ_CHECK(!weights.opt, "weights-only load built an optimizer");
    return 0;
}
