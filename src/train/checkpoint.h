// Checkpoints: one self-contained safetensors file holding the weights, the AdamW moments, the
// tokenizer and, in its metadata, the run config, the step, the sampler position and the RNG state.
// One file written atomically (temp file, fsync, rename) means a checkpoint is either the old one or
// the new one, never a mix. config.json and tokenizer.model are written beside it for convenience.
// The metadata also holds "checksums", the XXH3-64 digest of every tensor's bytes (format
// "strata-checkpoint-2"); loading verifies each tensor it reads, so a flipped or zeroed byte is an
// error naming the tensor. Format-1 files (no checksums) still load, with a note that they are unverified.
#pragma once
#include <memory>
#include <string>

#include "model/model.h"
#include "train/optimizer.h"
#include "train/run_config.h"
#include "train/tokenizer.h"

namespace strata {

struct TrainState {
    long step = 0;                   // optimizer steps completed
    uint64_t sampler_position = 0;   // BatchSampler batch counter
    uint64_t rng_state = 0;          // reserved for stochastic training features (kept bit-exact)
    double last_loss = 0;
    // The trainer's own state (its lr schedule, divergence count, best validation loss), saved as
    // the "trainer" metadata field; null when the checkpoint predates it.
    nlohmann::json trainer;
};

std::string checkpoint_path(const std::string& out_dir);

void save_checkpoint(const std::string& out_dir, const RunConfig& rc, const Model<float>& model,
                     const AdamW<float>& opt, const Tokenizer& tok, const TrainState& st);

struct LoadedCheckpoint {
    RunConfig rc;
    std::unique_ptr<Model<float>> model;
    std::unique_ptr<AdamW<float>> opt;  // null when weights_only
    std::unique_ptr<Tokenizer> tok;
    TrainState st;
};

// `path` is a checkpoint file or a run directory holding checkpoint.safetensors. Every problem (a
// missing or corrupt file, a tensor missing, of the wrong shape or failing its checksum, bad
// metadata) is an Error that names the file. weights_only verifies and reads the model's tensors
// and the tokenizer, not the AdamW moments.
// The model is built on `device`'s backend.
LoadedCheckpoint load_checkpoint(const std::string& path, bool weights_only = false, Device device = Device::cpu);

}  // namespace strata
