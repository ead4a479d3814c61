#include "train/checkpoint.h"

#include "interop/hf.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <xxhash.h>

#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/fileio.h"
#include "core/safetensors.h"

namespace strata {

// Format 2 adds the metadata field "checksums": a JSON object mapping every tensor's name to the
// XXH3-64 digest of its data bytes (16 lowercase hex digits). Format 1 (no checksums) still loads,
// unverified.
static const char* kFormat = "strata-checkpoint-2";
static const char* kFormatUnverified = "strata-checkpoint-1";

static std::string digest(const void* data, size_t n) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(XXH3_64bits(data, n)));
    return buf;
}

// Enough digits to read the same double back.
static std::string fmt_double(double v) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}

std::string checkpoint_path(const std::string& out_dir) { return out_dir + "/checkpoint.safetensors"; }

void save_checkpoint(const std::string& out_dir, const RunConfig& rc, const Model<float>& model,
                     const AdamW<float>& opt, const Tokenizer& tok, const TrainState& st) {
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec) throw Error("cannot create output directory " + out_dir + ": " + ec.message());
    std::vector<TensorRef> ts;
    // Host copies of the three buffers (the backend's memory is not the host's in general).
    const std::vector<float> params = model.params().host<float>(), m = opt.m.host<float>(), v = opt.v.host<float>();
    auto add = [&](const std::string& prefix, const std::vector<float>& buf) {
        for (const ParamSpec& s : model.specs)
            ts.push_back({prefix + s.name, "F32", std::vector<int64_t>(s.shape.begin(), s.shape.end()),
                          buf.data() + s.offset, s.numel * sizeof(float)});
    };
    add("model.", params);
    add("adamw.m.", m);
    add("adamw.v.", v);
    const std::string tok_bytes = tok.to_bytes();
    ts.push_back({"tokenizer", "U8", {int64_t(tok_bytes.size())}, tok_bytes.data(), tok_bytes.size()});
    nlohmann::json sums = nlohmann::json::object();
    for (const TensorRef& t : ts) sums[t.name] = digest(t.data, t.nbytes);
    std::map<std::string, std::string> meta = {
        {"format", kFormat},
        {"checksums", sums.dump()},
        {"config", rc.to_json().dump()},
        {"step", std::to_string(st.step)},
        {"adamw_step", std::to_string(opt.step)},
        {"sampler_position", std::to_string(st.sampler_position)},
        {"rng_state", std::to_string(st.rng_state)},
        {"last_loss", fmt_double(st.last_loss)},
    };
    if (!st.trainer.is_null()) meta["trainer"] = st.trainer.dump();
    safetensors_write(checkpoint_path(out_dir), ts, meta);
    atomic_write_file(out_dir + "/config.json", rc.to_json().dump(2) + "\n");
    atomic_write_file(out_dir + "/tokenizer.model", tok_bytes);
}

static uint64_t meta_u64(const SafetensorsFile& f, const std::string& key) {
    auto it = f.metadata().find(key);
    if (it == f.metadata().end()) throw Error("checkpoint " + f.path() + " lacks the metadata field \"" + key + "\"");
    try {
        size_t pos = 0;
        if (it->second.empty() || it->second[0] == '-') throw std::invalid_argument("x");
        unsigned long long v = std::stoull(it->second, &pos);
        if (pos != it->second.size()) throw std::invalid_argument("x");
        return uint64_t(v);
    } catch (const std::exception&) {
        throw Error("checkpoint " + f.path() + " has a bad \"" + key + "\" field: " + it->second);
    }
}

LoadedCheckpoint load_checkpoint(const std::string& path_in, bool weights_only, Device device) {
    if (is_hf_folder(path_in)) {  // a Hugging Face Llama/Qwen3 folder (interop/hf.h)
        if (!weights_only)
            throw Error(path_in + " is a Hugging Face model folder: it holds weights, not the AdamW moments and "
                                  "training state this needs");
        LoadedCheckpoint lc = import_hf(path_in);
        if (!lc.tok)
            throw Error(path_in + " is a Hugging Face model folder without tokenizer.model: strata needs its "
                                  "SentencePiece tokenizer here (strata.load reads the weights alone)");
        return lc;
    }
    std::string path = path_in;
    struct stat sb;
    if (::stat(path.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        path = checkpoint_path(path);
        std::error_code ec;
        if (!std::filesystem::exists(std::filesystem::symlink_status(path, ec)))
            throw Error("no checkpoint in " + path_in + " (expected " + path + ")");
    }
    SafetensorsFile f = SafetensorsFile::open(path);
    auto fmt = f.metadata().find("format");
    if (fmt == f.metadata().end() || (fmt->second != kFormat && fmt->second != kFormatUnverified))
        throw Error("checkpoint " + path + " is not a strata checkpoint (metadata \"format\" is missing or wrong)");
    // name -> digest; empty for a format-1 checkpoint, whose tensors cannot be verified.
    std::map<std::string, std::string> sums;
    const bool verified = fmt->second == kFormat;
    if (verified) {
        auto it = f.metadata().find("checksums");
        if (it == f.metadata().end()) throw Error("checkpoint " + path + " lacks the metadata field \"checksums\"");
        try {
            const nlohmann::json j = nlohmann::json::parse(it->second);
            if (!j.is_object()) throw std::invalid_argument("not an object");
            for (const auto& [name, v] : j.items()) sums[name] = v.get<std::string>();
        } catch (const std::exception&) {
            throw Error("checkpoint " + path + " has a corrupt \"checksums\" field (not a JSON object of strings)");
        }
    } else {
        // Once per file and process: the fuzzer and tests load the same file many times.
        static std::set<std::string> noted;
        if (noted.insert(path).second)
            std::fprintf(stderr, "note: checkpoint %s is format 1 (no checksums): its tensors are not verified\n",
                         path.c_str());
    }
    // Throws unless the tensor's bytes match their recorded digest (a no-op for format 1).
    auto verify = [&](const std::string& name) -> const TensorRef& {
        const TensorRef& t = f.get(name);
        if (!verified) return t;
        auto it = sums.find(name);
        if (it == sums.end()) throw Error("checkpoint " + path + ": tensor " + name + " has no checksum");
        if (it->second != digest(t.data, t.nbytes))
            throw Error("checkpoint " + path + ": tensor " + name + " fails its checksum (the file is corrupt)");
        return t;
    };
    auto cfg = f.metadata().find("config");
    if (cfg == f.metadata().end()) throw Error("checkpoint " + path + " lacks its config");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(cfg->second);
    } catch (const nlohmann::json::exception& e) {
        throw Error("checkpoint " + path + " has a corrupt config: " + e.what());
    }
    LoadedCheckpoint lc;
    lc.rc = RunConfig::from_json(j, "checkpoint " + path);
    // Every tensor the config implies must be in the file before anything the config sizes is
    // allocated: a corrupt config must not make a small file allocate (and initialise) a huge model.
    const std::vector<ParamSpec> specs = param_specs(lc.rc.model);
    auto check = [&](const std::string& prefix) {
        for (const ParamSpec& s : specs) {
            const TensorRef& t = f.get(prefix + s.name);
            std::vector<int64_t> want(s.shape.begin(), s.shape.end());
            if (t.dtype != "F32" || t.shape != want)
                throw Error("checkpoint " + path + ": tensor " + prefix + s.name + " has the wrong dtype or shape");
            verify(prefix + s.name);
        }
    };
    check("model.");
    if (!weights_only) {
        check("adamw.m.");
        check("adamw.v.");
    }
    const TensorRef& tk = verify("tokenizer");
    lc.model = std::make_unique<Model<float>>(lc.rc.model, device);
    auto load = [&](const std::string& prefix, Buffer& buf) {
        for (const ParamSpec& s : lc.model->specs) buf.from_host(f.get(prefix + s.name).data, s.offset, s.numel);
    };
    load("model.", lc.model->params());
    // Weights that are not finite make every later loss and sample meaningless: refuse them here,
    // for eval and generate as for training.
    for (const ParamSpec& s : lc.model->specs)
        if (nonfinite_count(lc.model->param_data() + s.offset, long(s.numel)) > 0)
            throw Error("checkpoint " + path + ": tensor model." + s.name + " holds a non-finite value");
    if (tk.dtype != "U8") throw Error("checkpoint " + path + ": tensor tokenizer must be U8");
    lc.tok = std::make_unique<Tokenizer>(
        Tokenizer::from_bytes(std::string((const char*)tk.data, tk.nbytes), "checkpoint " + path));
    if (lc.tok->vocab_size() != lc.rc.model.vocab_size)
        throw Error("checkpoint " + path + ": tokenizer vocabulary (" + std::to_string(lc.tok->vocab_size()) +
                    ") differs from the model's (" + std::to_string(lc.rc.model.vocab_size) + ")");
    lc.st.step = long(meta_u64(f, "step"));
    lc.st.sampler_position = uint64_t(meta_u64(f, "sampler_position"));
    lc.st.rng_state = uint64_t(meta_u64(f, "rng_state"));
    if (auto it = f.metadata().find("last_loss"); it != f.metadata().end()) {
        char* end = nullptr;
        double v = std::strtod(it->second.c_str(), &end);
        if (end && *end == '\0' && end != it->second.c_str()) lc.st.last_loss = v;  // informational only
    }
    if (auto it = f.metadata().find("trainer"); it != f.metadata().end()) {
        try {
            lc.st.trainer = nlohmann::json::parse(it->second);
        } catch (const nlohmann::json::exception& e) {
            throw Error("checkpoint " + path + " has a corrupt \"trainer\" field: " + e.what());
        }
        if (!lc.st.trainer.is_object()) throw Error("checkpoint " + path + " has a corrupt \"trainer\" field");
    }
    if (!weights_only) {
        AdamWConfig ac{lc.rc.train.beta1, lc.rc.train.beta2, lc.rc.train.eps, lc.rc.train.weight_decay};
        lc.opt = std::make_unique<AdamW<float>>(*lc.model, ac);
        load("adamw.m.", lc.opt->m);
        load("adamw.v.", lc.opt->v);
        lc.opt->step = long(meta_u64(f, "adamw_step"));
    }
    return lc;
}

}  // namespace strata
