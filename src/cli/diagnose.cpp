// strata diagnose: which sublayers matter and how the depth behaves (docs/diagnostics.md). On a
// checkpoint's validation batches it reports, per sublayer, the RMS of its input, output and running
// state, the loss increase when the sublayer is skipped (its output set to zero; under AttnRes an
// emptied source is also dropped from the mixes), and under AttnRes the mean depth-attention weights.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fileio.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/evaluate.h"
#include "train/trainer.h"

namespace strata::cli {

namespace {

std::string sublayer_name(long j) { return (j % 2 == 0 ? "attn " : "mlp ") + std::to_string(j / 2); }

// Per sublayer, the RMS over batches of the gradient norm of its parameters (the loss's mean over
// each batch's targets, as in training, without clipping). batches ≤ 0: all of them.
std::vector<double> gradient_norms(Model<float>& m, const TokenShard& shard, int B, int T, long batches) {
    check_memory(m.cfg.memory_bytes(B, T, true, m.precision()), "diagnose: gradients with batch " + std::to_string(B) + " x " +
                 std::to_string(T), "the model, its gradients and the activations");
    std::vector<double> sq(size_t(2 * m.cfg.n_layers), 0.0);
    EvalBatches it(shard, B, T);
    std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
    long n = 0;
    for (; (batches <= 0 || n < batches) && it.next(x.data(), y.data()) > 0; n++) {
        m.zero_grad();
        m.forward(x.data(), y.data(), B, T);
        m.backward();
        for (const auto& sp : m.specs)
            if (sp.sublayer >= 0) sq[size_t(sp.sublayer)] += sum_squares(m.grad_data() + sp.offset, long(sp.numel));
    }
    for (auto& v : sq) v = n > 0 ? std::sqrt(v / double(n)) : 0.0;
    return sq;
}

// Column labels of DepthStats::alpha.
std::vector<std::string> alpha_columns(const ModelConfig& c) {
    const int S = attnres_sublayers_per_block(c);
    const long n_sub = 2L * c.n_layers, blocks = (n_sub + S - 1) / S;
    std::vector<std::string> cols = {"emb"};
    for (long k = 0; k < blocks; k++) cols.push_back(S == 1 ? sublayer_name(k) : "block " + std::to_string(k));
    if (S > 1) cols.push_back("partial");
    return cols;
}

}  // namespace

void add_diagnose_command(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "diagnose", "depth diagnostics of a checkpoint: per-sublayer norms, skip ablation, AttnRes weights, MoDA depth and sink mass");
    struct Opts {
        std::string ckpt = "runs/default", data_dir, json_out, precision = "fp32";
        long batches = 4;
        int batch_size = 0, seq_len = 0, threads = 2;
        bool no_skip = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--ckpt", o->ckpt, "checkpoint file or run directory")->capture_default_str();
    cmd->add_option("--data-dir", o->data_dir, "read val.bin from this folder instead of the run's data_dir");
    cmd->add_option("--batches", o->batches, "validation batches per measurement (0 = all)")
        ->capture_default_str()
        ->check(in_range(0, 1000000));
    cmd->add_option("--batch-size", o->batch_size, "batch size (default: the run's)")->check(at_least(0));
    cmd->add_option("--seq-len", o->seq_len, "tokens per sequence, at most the model's max_seq_len (default: the run's)")
        ->check(at_least(1));
    cmd->add_option("--threads", o->threads, "threads")->capture_default_str()->check(in_range(1, kMaxThreads));
    add_precision_option(cmd, o->precision);
    cmd->add_flag("--no-skip", o->no_skip, "leave out the skip ablation (one evaluation per sublayer)");
    cmd->add_option("--json-out", o->json_out, "also write the results as JSON to this file");
    cmd->callback([o] {
        if (dry_run()) return;
        std::unique_ptr<AtomicFileWriter> json_file;
        if (!o->json_out.empty()) json_file = open_output(o->json_out, "--json-out");
        set_threads(o->threads);
        LoadedCheckpoint lc = load_checkpoint(o->ckpt, /*weights_only=*/true);
        Model<float>& m = *lc.model;
        use_precision(m, o->precision);
        const ModelConfig& c = m.cfg;
        const TrainConfig& t = lc.rc.train;
        const int B = o->batch_size > 0 ? o->batch_size : t.batch_size;
        const int T = o->seq_len > 0 ? o->seq_len : t.seq_len;
        if (T > c.max_seq_len)
            throw Error("--seq-len " + std::to_string(T) + " exceeds the model's max_seq_len (" +
                        std::to_string(c.max_seq_len) + ")");
        // A mixture's sources have a split each (DATA_DIR/corpus<i>): the user picks one.
        if (o->data_dir.empty() && !t.corpora.empty())
            throw Error("checkpoint " + o->ckpt + " was trained on a list of " + std::to_string(t.corpora.size()) +
                        " corpora, each with its own validation split: pass --data-dir " + t.data_dir +
                        "/corpus<i> (i = 0 … " + std::to_string(t.corpora.size() - 1) + ") to evaluate one");
        const std::string data_dir = o->data_dir.empty() ? t.data_dir : o->data_dir;
        const TokenShard shard = TokenShard::open(data_dir + "/val.bin");
        check_prepared_with(data_dir, shard, *lc.tok, o->ckpt);
        const long n_sub = 2L * c.n_layers;
        // The batches each measurement reads (all of the shard's when --batches is 0).
        long n_batches = long(EvalBatches(shard, B, T).num_batches());
        if (o->batches > 0) n_batches = std::min(n_batches, o->batches);

        DepthStats st;
        m.keep_sublayer_outputs = true;  // for accumulate_depth_stats; off again for the gradients
        const double loss = evaluate(m, shard, B, T, o->batches, [&] { m.accumulate_depth_stats(st); });
        m.keep_sublayer_outputs = false;
        const std::vector<double> grad = gradient_norms(m, shard, B, T, o->batches);
        std::vector<double> skip_loss;
        if (!o->no_skip) {
            const bool tty = ::isatty(2);
            for (long j = 0; j < n_sub; j++) {
                if (tty) std::fprintf(stderr, "\rskipping %s (%ld/%ld) ...", sublayer_name(j).c_str(), j + 1, n_sub);
                m.skip_sublayer = int(j);
                skip_loss.push_back(evaluate(m, shard, B, T, o->batches));
            }
            m.skip_sublayer = -1;
            if (tty) std::fprintf(stderr, "\r%*s\r", 40, "");
        }

        const double rows = double(st.rows);
        auto rms = [&](double ms) { return std::sqrt(ms / rows); };
        std::string residual = to_string(c.residual);
        if (c.residual == Residual::attnres_block) residual += " (" + std::to_string(c.attnres_block_size) + " sublayers per block)";
        std::string attention = to_string(c.attention);
        nlohmann::json att = {{"kind", to_string(c.attention)}};
        if (c.attention == AttentionKind::moda) {
            att["moda_depth_source"] = to_string(c.moda_depth_source);
            att["moda_sequence_mask"] = to_string(c.moda_sequence_mask);
            att["moda_depth_visibility"] = to_string(c.moda_depth_visibility);
            att["moda_chunk_size"] = c.moda_chunk_size;
            att["moda_depth_window"] = c.moda_depth_window;
            attention += std::string(" (depth ") + to_string(c.moda_depth_source) + ", mask " +
                         to_string(c.moda_sequence_mask) + ", visibility " + to_string(c.moda_depth_visibility) +
                         (c.moda_depth_visibility == DepthVisibility::chunk ? " of " + std::to_string(c.moda_chunk_size) + " tokens" : "") +
                         ", window " + (c.moda_depth_window ? std::to_string(c.moda_depth_window) + " slots" : "all") + ")";
        }
        std::printf("depth diagnostics of %s: %d layers, norm %s, residual %s, attention %s\n", o->ckpt.c_str(),
                    c.n_layers, to_string(c.norm_placement), residual.c_str(), attention.c_str());
        std::printf("validation: %ld batches of %d x %d tokens, loss %.4f\n\n", n_batches, B, T, loss);
        std::printf("%-9s %10s %10s %10s %10s %12s\n", "sublayer", "input RMS", "output RMS", "state RMS",
                    "grad norm", o->no_skip ? "" : "skip: Δloss");
        nlohmann::json js = {{"checkpoint", o->ckpt}, {"residual", to_string(c.residual)},
                             {"attnres_block_size", c.attnres_block_size}, {"norm_placement", to_string(c.norm_placement)},
                             {"batches", n_batches}, {"batch_size", B}, {"seq_len", T}, {"loss", loss},
                             {"tokens", st.rows}, {"attention", att}};
        nlohmann::json subs = nlohmann::json::array();
        for (long j = 0; j < n_sub; j++) {
            nlohmann::json row = {{"sublayer", sublayer_name(j)}, {"input_rms", rms(st.input_ms[j])},
                                  {"output_rms", rms(st.output_ms[j])}, {"state_rms", rms(st.state_ms[j])},
                                  {"grad_norm", grad[j]}};
            std::string d;
            if (!skip_loss.empty()) {
                row["skip_loss"] = skip_loss[j];
                row["skip_delta_loss"] = skip_loss[j] - loss;
                char buf[32];
                std::snprintf(buf, sizeof buf, "%+12.4f", skip_loss[j] - loss);
                d = buf;
            }
            std::printf("%-9s %10.4g %10.4g %10.4g %10.4g %s\n", sublayer_name(j).c_str(), rms(st.input_ms[j]),
                        rms(st.output_ms[j]), rms(st.state_ms[j]), grad[j], d.c_str());
            subs.push_back(row);
        }
        std::printf("%-9s %10.4g\n", "final", rms(st.final_ms));
        js["sublayers"] = subs;
        js["final_input_rms"] = rms(st.final_ms);
        const char* state = is_attnres(c) ? ", or under AttnRes its block's partial sum"
                            : c.residual == Residual::denseformer
                                ? ", or under DenseFormer the depth-weighted average after its block"
                                : "";
        std::printf("\n(input: what the sublayer normalises and reads; state: the residual stream after it%s;\n"
                    " grad norm: of the sublayer's parameters, RMS over the batches)\n",
                    state);

        if (!st.alpha.empty()) {
            const auto cols = alpha_columns(c);
            std::printf("\nAttnRes mean weights (rows: each sublayer's mix and the output's; columns: sources)\n%-9s",
                        "");
            for (const auto& col : cols) std::printf(" %8s", col.c_str());
            std::printf("\n");
            nlohmann::json rows_j = nlohmann::json::array();
            for (long j = 0; j <= n_sub; j++) {
                std::printf("%-9s", j < n_sub ? sublayer_name(j).c_str() : "output");
                std::vector<double> a;
                for (size_t k = 0; k < cols.size(); k++) {
                    a.push_back(st.alpha[j][k] / rows);
                    if (st.alpha[j][k] == 0) std::printf(" %8s", ".");
                    else std::printf(" %8.3f", a.back());
                }
                std::printf("\n");
                rows_j.push_back({{"mix", j < n_sub ? sublayer_name(j) : "output"}, {"weights", a}});
            }
            js["alpha_columns"] = cols;
            js["alpha"] = rows_j;
        }
        if (!st.depth_mass.empty()) {  // MoDA: where each head's softmax goes
            std::printf("\nMoDA softmax mass per layer and query head (depth: on the depth slots, the rest on "
                        "sequence keys; sink: on position 0 of the window)\n%-7s", "layer");
            for (int h = 0; h < c.n_heads; h++) std::printf("  h%-2d depth  sink", h);
            std::printf("\n");
            nlohmann::json layers = nlohmann::json::array();
            for (int l = 0; l < c.n_layers; l++) {
                std::printf("%-7d", l);
                std::vector<double> dm, sm;
                for (int h = 0; h < c.n_heads; h++) {
                    dm.push_back(st.depth_mass[size_t(l)][size_t(h)] / rows);
                    sm.push_back(st.sink_mass[size_t(l)][size_t(h)] / rows);
                    std::printf("      %6.3f %5.3f", dm.back(), sm.back());
                }
                std::printf("\n");
                layers.push_back({{"layer", l}, {"depth_slots", moda_slots_read(c, l)}, {"depth_mass", dm},
                                  {"sequence_mass", [&] {
                                       std::vector<double> r;
                                       // every row sees a key under a sequence mask: the rest of its mass
                                       for (double x : dm) r.push_back(c.moda_sequence_mask == SeqMask::none ? 0.0 : 1.0 - x);
                                       return r;
                                   }()},
                                  {"sink_mass", sm}});
            }
            js["moda"] = layers;
        }
        if (json_file) {
            json_file->write(js.dump(2) + "\n");
            json_file->commit();
        }
    });
}

}  // namespace strata::cli
