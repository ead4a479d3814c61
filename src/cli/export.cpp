// strata export: a trained model in another tool's format (docs/interop.md). hf is a folder
// transformers loads (LlamaForCausalLM, or Qwen3ForCausalLM with QK-norm); gguf a file llama.cpp
// loads (architecture llama or qwen3, written by python/strata_tools/gguf_export.py with the gguf
// package); safetensors is the weights alone, under strata's names, with the model config, for any
// model. The output appears
// whole or not at all: it is written beside its final path and renamed into place.
#include <unistd.h>

#include <filesystem>

#include "cli/commands.h"
#include "cli/python_script.h"
#include "core/error.h"
#include "core/fileio.h"
#include "interop/hf.h"
#include "train/checkpoint.h"
#include "strata_tools_gguf_export_py.h"  // kGgufExportPy: python/strata_tools/gguf_export.py

namespace strata::cli {

namespace fs = std::filesystem;

namespace {

// An existing output is replaced only with --force; a non-empty directory or a file is "existing".
void check_output(const std::string& out, bool force) {
    std::error_code ec;
    const fs::file_status st = fs::symlink_status(out, ec);
    if (!fs::exists(st)) return;
    const bool empty_dir = fs::is_directory(st) && fs::is_empty(out, ec);
    if (!empty_dir && !force)
        throw Error("--out " + out + " exists and is not empty; pass --force to replace it");
}

// The tokenizer's vocabulary for the GGUF writer: pieces, scores, kinds and the special ids.
std::string vocab_json(const Tokenizer& tok) {
    static const char* kinds[] = {"normal", "unknown", "control", "byte", "unused"};
    nlohmann::json j = {{"tokens", nlohmann::json::array()}, {"scores", nlohmann::json::array()},
                        {"kinds", nlohmann::json::array()}, {"bos", tok.bos_id()}, {"eos", tok.eos_id()},
                        {"unk", tok.unk_id()}};
    for (int i = 0; i < tok.vocab_size(); i++) {
        j["tokens"].push_back(tok.piece(i));
        j["scores"].push_back(tok.score(i));
        j["kinds"].push_back(kinds[int(tok.kind(i))]);
    }
    return j.dump();
}

// --format gguf: the safetensors export and the vocabulary in a temporary folder beside --out, then
// python/strata_tools/gguf_export.py, which writes the file (and renames it into place).
void export_gguf(const LoadedCheckpoint& lc, const std::string& out_path, const std::string& dtype) {
    const fs::path out = fs::absolute(out_path).lexically_normal();
    const fs::path tmp = out.parent_path() / (out.filename().string() + ".parts-" + std::to_string(::getpid()));
    std::error_code ec;
    fs::create_directories(tmp, ec);
    if (ec) throw Error("cannot create " + tmp.string() + ": " + ec.message());
    try {
        export_safetensors(lc, (tmp / "weights.safetensors").string());
        atomic_write_file((tmp / "vocab.json").string(), vocab_json(*lc.tok));
        run_python_script("strata export", python_interpreter(), kGgufExportPy, "strata-gguf-error: ",
                          {"--weights", (tmp / "weights.safetensors").string(), "--vocab",
                           (tmp / "vocab.json").string(), "--out", out.string(), "--dtype", dtype});
    } catch (...) {
        fs::remove_all(tmp, ec);
        throw;
    }
    fs::remove_all(tmp, ec);
}

}  // namespace

void add_export_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("export", "write a checkpoint's model for Hugging Face transformers or as plain safetensors");
    struct Opts {
        std::string ckpt = "runs/default", format, out, dtype = "f32";
        bool force = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--ckpt", o->ckpt, "checkpoint file or run directory")->capture_default_str();
    cmd->add_option("--format", o->format,
                    "hf: a transformers folder (LlamaForCausalLM; Qwen3ForCausalLM with QK-norm); gguf: a llama.cpp "
                    "file (needs the Python package gguf); safetensors: the weights and config of any model")
        ->required()
        ->check(CLI::IsMember({"hf", "gguf", "safetensors"}));
    cmd->add_option("--out", o->out, "the folder (hf) or file (gguf, safetensors) to write")->required();
    cmd->add_option("--dtype", o->dtype, "the matrices' type in a gguf file: f32, or bf16 (the norms stay f32); "
                                         "hf and safetensors write f32")
        ->capture_default_str()
        ->check(CLI::IsMember({"f32", "bf16"}));
    cmd->add_flag("--force", o->force, "replace an existing output");
    cmd->callback([o] {
        if (dry_run()) return;
        if (o->dtype != "f32" && o->format != "gguf")
            throw Error("--dtype " + o->dtype + ": only --format gguf writes another type than f32");
        check_output(o->out, o->force);
        LoadedCheckpoint lc = load_checkpoint(o->ckpt, /*weights_only=*/true);
        if (o->format == "hf") {
            if (std::string why = hf_unsupported(lc.model->cfg); !why.empty()) throw Error("export --format hf: " + why);
            // Written into a sibling folder, then swapped in, so --out is never half written.
            const fs::path out = fs::absolute(o->out).lexically_normal();
            const fs::path tmp = out.parent_path() / (out.filename().string() + ".tmp-" + std::to_string(::getpid()));
            std::error_code ec;
            fs::remove_all(tmp, ec);
            fs::create_directories(tmp, ec);
            if (ec) throw Error("cannot create " + tmp.string() + ": " + ec.message());
            try {
                export_hf(lc, tmp.string());
                fs::remove_all(out, ec);  // (check_output allowed it: empty, or --force)
                if (ec) throw Error("cannot replace " + out.string() + ": " + ec.message());
                fs::rename(tmp, out, ec);
                if (ec) throw Error("cannot move the export into " + out.string() + ": " + ec.message());
            } catch (...) {
                fs::remove_all(tmp, ec);
                throw;
            }
            std::printf("wrote %s (%s, %zu parameters)\n", out.c_str(),
                        lc.model->cfg.qk_norm ? "Qwen3ForCausalLM" : "LlamaForCausalLM", lc.model->num_params());
        } else if (o->format == "gguf") {
            if (std::string why = hf_unsupported(lc.model->cfg); !why.empty())
                throw Error("export --format gguf: " + why);
            std::error_code ec;
            if (fs::is_directory(o->out, ec)) throw Error("--out " + o->out + " is a directory; the gguf format writes one file");
            export_gguf(lc, o->out, o->dtype);
            std::printf("wrote %s (llama.cpp architecture %s, %s, %zu parameters)\n", o->out.c_str(),
                        lc.model->cfg.qk_norm ? "qwen3" : "llama", o->dtype.c_str(), lc.model->num_params());
        } else {
            std::error_code ec;
            if (fs::is_directory(o->out, ec)) {
                if (!o->force) throw Error("--out " + o->out + " is a directory; the safetensors format writes one file");
                fs::remove_all(o->out, ec);
            }
            export_safetensors(lc, o->out);  // atomic
            std::printf("wrote %s (%zu parameters)\n", o->out.c_str(), lc.model->num_params());
        }
    });
}

}  // namespace strata::cli
