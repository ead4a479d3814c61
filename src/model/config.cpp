#include "model/config.h"

#include "core/error.h"
#include "core/json_fields.h"

namespace strata {

const char* to_string(NormPlacement p) {
    switch (p) {
        case NormPlacement::pre: return "pre";
        case NormPlacement::post: return "post";
        case NormPlacement::reordered: return "reordered";
    }
    return "?";
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& origin) {
    ModelConfig c;
    JsonFields f(j, origin);
    f.get("vocab_size", c.vocab_size);
    f.get("d_model", c.d_model);
    f.get("n_layers", c.n_layers);
    f.get("n_heads", c.n_heads);
    f.get("n_kv_heads", c.n_kv_heads);
    f.get("head_dim", c.head_dim);
    f.get("ffn_hidden", c.ffn_hidden);
    f.get("max_seq_len", c.max_seq_len);
    f.get("rope_theta", c.rope_theta);
    f.get("norm_eps", c.norm_eps);
    std::string np = to_string(c.norm_placement);
    f.get("norm_placement", np);
    if (np == "pre") c.norm_placement = NormPlacement::pre;
    else if (np == "post") c.norm_placement = NormPlacement::post;
    else if (np == "reordered") c.norm_placement = NormPlacement::reordered;
    else throw Error(origin + ": norm_placement must be \"pre\", \"post\" or \"reordered\", not \"" + np + "\"");
    f.get("qk_norm", c.qk_norm);
    f.get("tie_embeddings", c.tie_embeddings);
    f.get("init_std", c.init_std);
    f.get("seed", c.seed);
    f.finish();
    c.validate(origin);
    return c;
}

nlohmann::json ModelConfig::to_json() const {
    return {{"vocab_size", vocab_size},   {"d_model", d_model},       {"n_layers", n_layers},
            {"n_heads", n_heads},         {"n_kv_heads", n_kv_heads}, {"head_dim", head_dim},
            {"ffn_hidden", ffn_hidden},   {"max_seq_len", max_seq_len}, {"rope_theta", rope_theta},
            {"norm_eps", norm_eps},       {"norm_placement", to_string(norm_placement)},
            {"qk_norm", qk_norm},         {"tie_embeddings", tie_embeddings}, {"init_std", init_std},
            {"seed", seed}};
}

void ModelConfig::validate(const std::string& origin) const {
    auto positive = [&](const char* name, long v, long max) {
        if (v <= 0) throw Error(origin + ": " + name + " must be positive, got " + std::to_string(v));
        if (v > max)
            throw Error(origin + ": " + name + " = " + std::to_string(v) + " is absurdly large (limit " +
                        std::to_string(max) + ")");
    };
    positive("vocab_size", vocab_size, 1 << 20);
    positive("d_model", d_model, 1 << 16);
    positive("n_layers", n_layers, 1024);
    positive("n_heads", n_heads, 1024);
    positive("n_kv_heads", n_kv_heads, 1024);
    positive("head_dim", head_dim, 4096);
    positive("ffn_hidden", ffn_hidden, 1 << 18);
    positive("max_seq_len", max_seq_len, 1 << 20);
    if (d_model != n_heads * head_dim)
        throw Error(origin + ": d_model (" + std::to_string(d_model) + ") must equal n_heads * head_dim (" +
                    std::to_string(n_heads) + " * " + std::to_string(head_dim) + ")");
    if (n_heads % n_kv_heads != 0)
        throw Error(origin + ": n_heads (" + std::to_string(n_heads) + ") must be divisible by n_kv_heads (" +
                    std::to_string(n_kv_heads) + ")");
    if (head_dim % 2 != 0) throw Error(origin + ": head_dim must be even for RoPE");
    if (!(rope_theta > 0)) throw Error(origin + ": rope_theta must be positive");
    if (!(norm_eps > 0) || norm_eps > 1) throw Error(origin + ": norm_eps must be in (0, 1]");
    if (!(init_std > 0) || init_std > 10) throw Error(origin + ": init_std must be in (0, 10]");
    double n_params = double(vocab_size) * d_model * (tie_embeddings ? 1 : 2) +
                      double(n_layers) * (4.0 * d_model * d_model + 3.0 * d_model * ffn_hidden);
    if (n_params > 4e9) throw Error(origin + ": the model would have more than 4e9 parameters");
}

}  // namespace strata
