// Interop with Hugging Face transformers (docs/interop.md): a standard pre-norm strata model is the
// Llama architecture (rotate-half RoPE, RMSNorm, SwiGLU, GQA), and with QK-norm the Qwen3
// architecture (a per-head RMSNorm on q and k before RoPE). Export writes a folder transformers
// loads (LlamaForCausalLM / Qwen3ForCausalLM); import reads such a folder, within a stated subset,
// into a strata model. Also a weights-only safetensors export for any strata model.
#pragma once
#include <string>

#include "train/checkpoint.h"

namespace strata {

// Why a model has no Hugging Face class ("" when it has one): post-norm and reordered placements,
// the residual rules other than standard, and MoDA have none.
std::string hf_unsupported(const ModelConfig& c);

// Writes config.json, generation_config.json, model.safetensors (HF names; float32), and the
// tokenizer (tokenizer.model, tokenizer_config.json, special_tokens_map.json) into the existing,
// empty directory `dir`. Throws Error (hf_unsupported's reason) for a model without an HF class.
void export_hf(const LoadedCheckpoint& lc, const std::string& dir);

// One safetensors file of the model's weights under strata's names, with the model config (JSON)
// in its metadata ("strata_config") and "format": "strata-weights-1". Any model. Atomic.
void export_safetensors(const LoadedCheckpoint& lc, const std::string& path);

// Whether `path` is a directory holding a Hugging Face model (config.json with "architectures")
// rather than a strata run directory.
bool is_hf_folder(const std::string& path);

// Reads a Llama or Qwen3 folder (config.json and model.safetensors, float32, bfloat16 or float16
// tensors). The subset: no rope_scaling, no attention or MLP biases, hidden_act silu, and only keys
// that strata understands or that do not change the computation; anything else is an Error naming
// the key. The tokenizer is loaded where tokenizer.model is present (lc.tok is null otherwise).
// The run config's train section is the default's.
LoadedCheckpoint import_hf(const std::string& dir);

}  // namespace strata
