// Model configuration: the architecture hyper-parameters (docs/model.md), parsed from JSON with
// every key checked.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace strata {

enum class NormPlacement { pre, post, reordered };

struct ModelConfig {
    int vocab_size = 4096;
    int d_model = 384;
    int n_layers = 8;
    int n_heads = 6;
    int n_kv_heads = 2;
    int head_dim = 64;
    int ffn_hidden = 1024;
    int max_seq_len = 256;
    double rope_theta = 10000.0;
    double norm_eps = 1e-5;
    NormPlacement norm_placement = NormPlacement::pre;
    bool qk_norm = false;
    bool tie_embeddings = true;
    double init_std = 0.02;
    uint64_t seed = 1337;

    // Throws Error naming `origin` (a file or "--set") for unknown keys, wrong types, or dimensions
    // that disagree.
    static ModelConfig from_json(const nlohmann::json& j, const std::string& origin);
    nlohmann::json to_json() const;
    void validate(const std::string& origin) const;
};

const char* to_string(NormPlacement p);

}  // namespace strata
