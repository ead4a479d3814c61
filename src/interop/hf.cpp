#include "interop/hf.h"

#include <sys/stat.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "core/error.h"
#include "core/fileio.h"
#include "core/safetensors.h"
#include "model/spec.h"
#include "ops/ops.h"

namespace strata {

namespace {

// strata's name of a parameter -> the HF name, for layer-independent tensors and per-layer ones
// ("blocks.L.x" -> "model.layers.L.y").
const std::map<std::string, std::string>& layer_names() {
    static const std::map<std::string, std::string> m = {
        {"attn_norm", "input_layernorm.weight"},   {"wq", "self_attn.q_proj.weight"},
        {"wk", "self_attn.k_proj.weight"},         {"wv", "self_attn.v_proj.weight"},
        {"wo", "self_attn.o_proj.weight"},         {"q_norm", "self_attn.q_norm.weight"},
        {"k_norm", "self_attn.k_norm.weight"},     {"mlp_norm", "post_attention_layernorm.weight"},
        {"w_gate", "mlp.gate_proj.weight"},        {"w_up", "mlp.up_proj.weight"},
        {"w_down", "mlp.down_proj.weight"},
    };
    return m;
}

std::string hf_name(const std::string& name) {
    if (name == "tok_emb") return "model.embed_tokens.weight";
    if (name == "final_norm") return "model.norm.weight";
    if (name == "lm_head") return "lm_head.weight";
    const size_t dot = name.find('.', 7);  // "blocks." is 7 characters
    if (name.rfind("blocks.", 0) == 0 && dot != std::string::npos) {
        auto it = layer_names().find(name.substr(dot + 1));
        if (it != layer_names().end()) return "model.layers." + name.substr(7, dot - 7) + "." + it->second;
    }
    throw Error("no Hugging Face name for strata parameter " + name);
}

// Every parameter of a model as float32 tensors named by `name_of`, the host copies held in `data`.
template <class NameOf>
std::vector<TensorRef> weight_refs(const Model<float>& m, std::vector<std::vector<float>>& data, NameOf name_of) {
    std::vector<TensorRef> refs;
    data.assign(m.specs.size(), {});
    for (size_t i = 0; i < m.specs.size(); i++) {
        const ParamSpec& s = m.specs[i];
        data[i].resize(s.numel);
        m.param_to_host(s, data[i].data());
        refs.push_back(TensorRef{name_of(s.name), "F32", std::vector<int64_t>(s.shape.begin(), s.shape.end()),
                                 data[i].data(), s.numel * sizeof(float)});
    }
    return refs;
}

// The keys of a Llama/Qwen3 config.json that strata reads, and those that do not change the
// computation (bookkeeping, generation defaults, training-only settings) and are accepted as they are.
const std::set<std::string>& read_keys() {
    static const std::set<std::string> k = {
        "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
        "rope_theta", "rope_scaling", "attention_bias", "mlp_bias", "hidden_act", "tie_word_embeddings",
        "use_sliding_window", "sliding_window", "max_window_layers", "pretraining_tp"};
    return k;
}
const std::set<std::string>& inert_keys() {
    static const std::set<std::string> k = {
        "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "transformers_version", "use_cache",
        "initializer_range", "attention_dropout", "_name_or_path", "return_dict", "output_hidden_states",
        "output_attentions", "torchscript", "strata_config"};
    return k;
}

}  // namespace

std::string hf_unsupported(const ModelConfig& c) {
    if (c.norm_placement != NormPlacement::pre)
        return std::string("norm_placement \"") + (c.norm_placement == NormPlacement::post ? "post" : "reordered") +
               "\" has no Hugging Face class (Llama and Qwen3 are pre-norm); export it with --format safetensors";
    if (c.residual != Residual::standard)
        return "residual \"" + c.to_json()["residual"].get<std::string>() +
               "\" has no Hugging Face class (Llama and Qwen3 have the standard residual stream); export it with "
               "--format safetensors";
    if (c.attention != AttentionKind::causal)
        return "attention \"moda\" has no Hugging Face class (Llama and Qwen3 attend over the sequence only); "
               "export it with --format safetensors";
    return "";
}

void export_hf(const LoadedCheckpoint& lc, const std::string& dir) {
    const ModelConfig& c = lc.model->cfg;
    if (std::string why = hf_unsupported(c); !why.empty()) throw Error("export --format hf: " + why);
    const bool qwen = c.qk_norm;
    const Tokenizer& tok = *lc.tok;
    nlohmann::json cfg = {
        {"architectures", {qwen ? "Qwen3ForCausalLM" : "LlamaForCausalLM"}},
        {"model_type", qwen ? "qwen3" : "llama"},
        {"vocab_size", c.vocab_size},
        {"hidden_size", c.d_model},
        {"intermediate_size", c.ffn_hidden},
        {"num_hidden_layers", c.n_layers},
        {"num_attention_heads", c.n_heads},
        {"num_key_value_heads", c.n_kv_heads},
        {"head_dim", c.head_dim},
        {"max_position_embeddings", c.max_seq_len},
        {"rms_norm_eps", c.norm_eps},
        {"rope_theta", c.rope_theta},
        {"rope_scaling", nullptr},
        {"attention_bias", false},
        {"hidden_act", "silu"},
        {"tie_word_embeddings", c.tie_embeddings},
        {"bos_token_id", tok.bos_id()},
        {"eos_token_id", tok.eos_id()},
        {"torch_dtype", "float32"},
        {"initializer_range", c.init_std},
        {"attention_dropout", 0.0},
        {"use_cache", true},
    };
    if (qwen) {
        cfg["use_sliding_window"] = false;
        cfg["sliding_window"] = nullptr;
        cfg["max_window_layers"] = c.n_layers;
    } else {
        cfg["mlp_bias"] = false;
        cfg["pretraining_tp"] = 1;
    }
    cfg["strata_config"] = c.to_json();  // the source model, for the record (ignored by transformers)
    atomic_write_file(dir + "/config.json", cfg.dump(2) + "\n");
    atomic_write_file(dir + "/generation_config.json",
                      nlohmann::json{{"bos_token_id", tok.bos_id()}, {"eos_token_id", tok.eos_id()}}.dump(2) + "\n");

    std::vector<std::vector<float>> data;
    safetensors_write(dir + "/model.safetensors", weight_refs(*lc.model, data, hf_name), {{"format", "pt"}});

    // The SentencePiece model, for LlamaTokenizer. Documents begin with the end-of-text token in
    // strata's training data, so nothing is added to an encoding (add_bos_token false).
    atomic_write_file(dir + "/tokenizer.model", tok.to_bytes());
    const std::string unk = tok.piece(tok.unk_id()), bos = tok.piece(tok.bos_id()), eos = tok.piece(tok.eos_id());
    atomic_write_file(dir + "/tokenizer_config.json",
                      nlohmann::json{{"tokenizer_class", "LlamaTokenizer"},
                                     {"bos_token", bos},
                                     {"eos_token", eos},
                                     {"unk_token", unk},
                                     {"pad_token", nullptr},
                                     {"add_bos_token", false},
                                     {"add_eos_token", false},
                                     {"add_prefix_space", false},
                                     {"legacy", true},
                                     {"sp_model_kwargs", nlohmann::json::object()},
                                     {"clean_up_tokenization_spaces", false},
                                     {"model_max_length", c.max_seq_len}}
                              .dump(2) + "\n");
    atomic_write_file(dir + "/special_tokens_map.json",
                      nlohmann::json{{"bos_token", bos}, {"eos_token", eos}, {"unk_token", unk}}.dump(2) + "\n");
}

void export_safetensors(const LoadedCheckpoint& lc, const std::string& path) {
    std::vector<std::vector<float>> data;
    safetensors_write(path, weight_refs(*lc.model, data, [](const std::string& n) { return n; }),
                      {{"format", "strata-weights-1"}, {"strata_config", lc.model->cfg.to_json().dump()}});
}

bool is_hf_folder(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::is_directory(path, ec) || fs::exists(checkpoint_path(path), ec)) return false;
    if (!fs::is_regular_file(path + "/config.json", ec)) return false;
    try {
        const nlohmann::json j = nlohmann::json::parse(read_file(path + "/config.json"));
        return j.is_object() && j.contains("architectures");
    } catch (const std::exception&) {
        return false;
    }
}

LoadedCheckpoint import_hf(const std::string& dir) {
    const std::string cfg_path = dir + "/config.json";
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(read_file(cfg_path));
    } catch (const nlohmann::json::exception& e) {
        throw Error(cfg_path + " is not valid JSON: " + e.what());
    }
    if (!j.is_object()) throw Error(cfg_path + " is not a JSON object");
    for (const auto& [k, v] : j.items())
        if (!read_keys().count(k) && !inert_keys().count(k))
            throw Error(cfg_path + ": key \"" + k + "\" is outside what strata imports (docs/interop.md); " +
                        "remove it if it does not change the model");
    const auto arch = j.value("architectures", nlohmann::json::array());
    const bool llama = arch == nlohmann::json::array({"LlamaForCausalLM"});
    const bool qwen = arch == nlohmann::json::array({"Qwen3ForCausalLM"});
    if (!llama && !qwen)
        throw Error(cfg_path + ": architectures is " + arch.dump() +
                    "; strata imports [\"LlamaForCausalLM\"] and [\"Qwen3ForCausalLM\"]");
    auto need = [&](const char* k) -> const nlohmann::json& {
        if (!j.contains(k) || j[k].is_null()) throw Error(cfg_path + ": key \"" + std::string(k) + "\" is missing");
        return j[k];
    };
    auto refuse_true = [&](const char* k) {
        if (j.contains(k) && !j[k].is_null() && !(j[k].is_boolean() && !j[k].get<bool>()))
            throw Error(cfg_path + ": " + k + " = " + j[k].dump() + " is not supported (strata's projections have no biases)");
    };
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
        throw Error(cfg_path + ": rope_scaling = " + j["rope_scaling"].dump() + " is not supported (plain RoPE only)");
    refuse_true("attention_bias");
    refuse_true("mlp_bias");
    refuse_true("use_sliding_window");
    if (j.contains("hidden_act") && j["hidden_act"] != "silu")
        throw Error(cfg_path + ": hidden_act = " + j["hidden_act"].dump() + " is not supported (SwiGLU with silu only)");
    if (j.contains("pretraining_tp") && j["pretraining_tp"] != 1)
        throw Error(cfg_path + ": pretraining_tp = " + j["pretraining_tp"].dump() + " is not supported (1 only)");

    nlohmann::json mc = {
        {"vocab_size", need("vocab_size")},
        {"d_model", need("hidden_size")},
        {"n_layers", need("num_hidden_layers")},
        {"n_heads", need("num_attention_heads")},
        {"n_kv_heads", j.contains("num_key_value_heads") ? j["num_key_value_heads"] : need("num_attention_heads")},
        {"ffn_hidden", need("intermediate_size")},
        {"max_seq_len", need("max_position_embeddings")},
        {"rope_theta", j.value("rope_theta", 10000.0)},
        {"norm_eps", j.value("rms_norm_eps", 1e-6)},
        {"norm_placement", "pre"},
        {"qk_norm", qwen},
        {"tie_embeddings", j.value("tie_word_embeddings", false)},  // transformers' default
    };
    if (j.contains("head_dim") && !j["head_dim"].is_null()) {
        mc["head_dim"] = j["head_dim"];
    } else {
        const auto D = need("hidden_size"), H = need("num_attention_heads");
        if (!D.is_number_integer() || !H.is_number_integer() || H.get<long>() <= 0)
            throw Error(cfg_path + ": hidden_size and num_attention_heads must be positive integers");
        mc["head_dim"] = D.get<long>() / H.get<long>();
    }
    LoadedCheckpoint lc;
    nlohmann::json rj = default_config_json();
    rj["model"] = mc;
    // the default train section, with sequences no longer than the model's context
    if (mc["max_seq_len"].is_number_integer() && rj["train"].value("seq_len", 0) > mc["max_seq_len"].get<long>())
        rj["train"]["seq_len"] = mc["max_seq_len"];
    lc.rc = RunConfig::from_json(rj, cfg_path);

    const std::string wpath = dir + "/model.safetensors";
    SafetensorsFile f = SafetensorsFile::open(wpath);
    // Every tensor, named and shaped, before the model is allocated.
    const std::vector<ParamSpec> specs = param_specs(lc.rc.model);
    std::set<std::string> expected;
    for (const ParamSpec& s : specs) {
        const std::string n = hf_name(s.name);
        expected.insert(n);
        const TensorRef& t = f.get(n);
        std::vector<int64_t> want(s.shape.begin(), s.shape.end());
        if (t.shape != want)
            throw Error(wpath + ": tensor " + n + " has shape " + nlohmann::json(t.shape).dump() + ", expected " +
                        nlohmann::json(want).dump());
        if (t.dtype != "F32") throw Error(wpath + ": tensor " + n + " is " + t.dtype + "; strata imports F32 tensors");
    }
    for (const std::string& n : f.names())
        if (!expected.count(n) && !(lc.rc.model.tie_embeddings && n == "lm_head.weight"))
            throw Error(wpath + ": tensor " + n + " is not part of the model strata builds from config.json");
    lc.model = std::make_unique<Model<float>>(lc.rc.model);
    for (const ParamSpec& s : lc.model->specs) {
        const TensorRef& t = f.get(hf_name(s.name));
        if (nonfinite_count(static_cast<const float*>(t.data), long(s.numel)) > 0)
            throw Error(wpath + ": tensor " + hf_name(s.name) + " holds a non-finite value");
        lc.model->param_from_host(s, static_cast<const float*>(t.data));
    }
    std::error_code ec;
    if (std::filesystem::is_regular_file(dir + "/tokenizer.model", ec)) {
        lc.tok = std::make_unique<Tokenizer>(Tokenizer::load(dir + "/tokenizer.model"));
        if (lc.tok->vocab_size() != lc.rc.model.vocab_size)
            throw Error(dir + "/tokenizer.model has " + std::to_string(lc.tok->vocab_size()) +
                        " pieces but config.json's vocab_size is " + std::to_string(lc.rc.model.vocab_size));
    }
    return lc;
}

}  // namespace strata
