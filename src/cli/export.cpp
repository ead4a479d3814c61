// strata export: a trained model in another tool's format (docs/interop.md). hf is a folder
// transformers loads (LlamaForCausalLM, or Qwen3ForCausalLM with QK-norm); safetensors is the
// weights alone, under strata's names, with the model config, for any model. The output appears
// whole or not at all: it is written beside its final path and renamed into place.
#include <unistd.h>

#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "interop/hf.h"
#include "train/checkpoint.h"

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

}  // namespace

void add_export_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("export", "write a checkpoint's model for Hugging Face transformers or as plain safetensors");
    struct Opts {
        std::string ckpt = "runs/default", format, out;
        bool force = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--ckpt", o->ckpt, "checkpoint file or run directory")->capture_default_str();
    cmd->add_option("--format", o->format,
                    "hf: a transformers folder (LlamaForCausalLM; Qwen3ForCausalLM with QK-norm); safetensors: "
                    "the weights and config of any model")
        ->required()
        ->check(CLI::IsMember({"hf", "safetensors"}));
    cmd->add_option("--out", o->out, "the folder (hf) or file (safetensors) to write")->required();
    cmd->add_flag("--force", o->force, "replace an existing output");
    cmd->callback([o] {
        if (dry_run()) return;
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
