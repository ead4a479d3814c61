// The depth report shared by `strata diagnose` and `strata analyze` (analysis/depth_report.h).
#include "analysis/depth_report.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "train/evaluate.h"

namespace strata {

std::string sublayer_name(long j) { return (j % 2 == 0 ? "attn " : "mlp ") + std::to_string(j / 2); }

double log_slope(const std::vector<double>& x, const std::vector<double>& y) {
    const size_t n = std::min(x.size(), y.size());
    if (n < 2) return 0.0;
    double mx = 0, my = 0;
    for (size_t i = 0; i < n; i++) mx += x[i], my += std::log(y[i]);
    mx /= double(n), my /= double(n);
    double sxy = 0, sxx = 0;
    for (size_t i = 0; i < n; i++) {
        sxy += (x[i] - mx) * (std::log(y[i]) - my);
        sxx += (x[i] - mx) * (x[i] - mx);
    }
    return sxx > 0 ? sxy / sxx : 0.0;
}

namespace {

// Per sublayer, the RMS over batches of the gradient norm of its parameters (the loss's mean over
// each batch's targets, as in training, without clipping). batches ≤ 0: all of them.
std::vector<double> gradient_norms(Model<float>& m, const TokenShard& shard, int B, int T, long batches) {
    check_memory(m.cfg.memory_bytes(B, T, true, m.precision()),
                 "diagnose: gradients with batch " + std::to_string(B) + " x " + std::to_string(T),
                 "the model, its gradients and the activations");
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

nlohmann::json attention_of(const ModelConfig& c) {
    nlohmann::json att = {{"kind", to_string(c.attention)}};
    if (c.attention == AttentionKind::moda) {
        att["moda_depth_source"] = to_string(c.moda_depth_source);
        att["moda_sequence_mask"] = to_string(c.moda_sequence_mask);
        att["moda_depth_visibility"] = to_string(c.moda_depth_visibility);
        att["moda_chunk_size"] = c.moda_chunk_size;
        att["moda_depth_window"] = c.moda_depth_window;
    }
    return att;
}

}  // namespace

nlohmann::json depth_report(Model<float>& m, const TokenShard& val, const DepthReportOptions& o,
                            const std::string& checkpoint) {
    const ModelConfig& c = m.cfg;
    const int B = o.batch_size, T = o.seq_len;
    STRATA_CHECK(B > 0 && T > 0, "depth_report: batch size and sequence length must be set");
    const long n_sub = 2L * c.n_layers;
    long n_batches = long(EvalBatches(val, B, T).num_batches());
    if (o.batches > 0) n_batches = std::min(n_batches, o.batches);

    DepthStats st;
    m.keep_sublayer_outputs = true;  // for accumulate_depth_stats; off again for the gradients
    const double loss = evaluate(m, val, B, T, o.batches, [&] { m.accumulate_depth_stats(st); });
    m.keep_sublayer_outputs = false;
    const std::vector<double> grad = gradient_norms(m, val, B, T, o.batches);
    std::vector<double> skip_loss;
    if (o.skip) {
        const bool tty = o.progress && ::isatty(2);
        for (long j = 0; j < n_sub; j++) {
            if (tty) std::fprintf(stderr, "\rskipping %s (%ld/%ld) ...", sublayer_name(j).c_str(), j + 1, n_sub);
            m.skip_sublayers = {int(j)};
            skip_loss.push_back(evaluate(m, val, B, T, o.batches));
        }
        m.skip_sublayers.clear();
        if (tty) std::fprintf(stderr, "\r%*s\r", 40, "");
    }

    const double rows = double(st.rows);
    auto rms = [&](double ms) { return std::sqrt(ms / rows); };
    nlohmann::json js = {{"checkpoint", checkpoint},
                         {"n_layers", c.n_layers},
                         {"d_model", c.d_model},
                         {"residual", to_string(c.residual)},
                         {"attnres_block_size", c.attnres_block_size},
                         {"norm_placement", to_string(c.norm_placement)},
                         {"batches", n_batches},
                         {"batch_size", B},
                         {"seq_len", T},
                         {"loss", loss},
                         {"tokens", st.rows},
                         {"attention", attention_of(c)}};
    nlohmann::json subs = nlohmann::json::array();
    std::vector<double> depth, in_rms, out_rms, state_rms;
    for (long j = 0; j < n_sub; j++) {
        nlohmann::json row = {{"sublayer", sublayer_name(j)}, {"input_rms", rms(st.input_ms[j])},
                              {"output_rms", rms(st.output_ms[j])}, {"state_rms", rms(st.state_ms[j])},
                              {"grad_norm", grad[j]}};
        if (!skip_loss.empty()) {
            row["skip_loss"] = skip_loss[j];
            row["skip_delta_loss"] = skip_loss[j] - loss;
        }
        subs.push_back(row);
        depth.push_back(0.5 * double(j));  // in layers
        in_rms.push_back(rms(st.input_ms[j]));
        out_rms.push_back(rms(st.output_ms[j]));
        state_rms.push_back(rms(st.state_ms[j]));
    }
    js["sublayers"] = subs;
    js["final_input_rms"] = rms(st.final_ms);
    // The slope of ln RMS per layer of depth, over every sublayer (the AttnRes paper's Fig. 5 claim:
    // under the standard pre-norm stream the magnitudes grow with depth).
    js["log_rms_slope"] = {{"input", log_slope(depth, in_rms)},
                           {"output", log_slope(depth, out_rms)},
                           {"state", log_slope(depth, state_rms)}};

    if (!st.alpha.empty()) {
        nlohmann::json rows_j = nlohmann::json::array();
        const auto cols = alpha_columns(c);
        for (long j = 0; j <= n_sub; j++) {
            std::vector<double> w;  // 0: a source the mix cannot see
            for (size_t k = 0; k < cols.size(); k++) w.push_back(st.alpha[j][k] / rows);
            rows_j.push_back({{"mix", j < n_sub ? sublayer_name(j) : "output"}, {"weights", w}});
        }
        js["alpha_columns"] = cols;
        js["alpha"] = rows_j;
    }
    if (!st.depth_mass.empty()) {  // MoDA: where each head's softmax goes
        nlohmann::json layers = nlohmann::json::array();
        for (int l = 0; l < c.n_layers; l++) {
            std::vector<double> dm, sm, qm;
            for (int h = 0; h < c.n_heads; h++) {
                dm.push_back(st.depth_mass[size_t(l)][size_t(h)] / rows);
                sm.push_back(st.sink_mass[size_t(l)][size_t(h)] / rows);
                // every row sees a key under a sequence mask: the rest of its mass
                qm.push_back(c.moda_sequence_mask == SeqMask::none ? 0.0 : 1.0 - dm.back());
            }
            layers.push_back({{"layer", l}, {"depth_slots", moda_slots_read(c, l)}, {"depth_mass", dm},
                              {"sequence_mass", qm}, {"sink_mass", sm}});
        }
        js["moda"] = layers;
    }
    return js;
}

void print_depth_report(const nlohmann::json& r, std::FILE* out) {
    std::string residual = r["residual"].get<std::string>();
    if (residual == "attnres_block")
        residual += " (" + std::to_string(r["attnres_block_size"].get<int>()) + " sublayers per block)";
    const nlohmann::json& att = r["attention"];
    std::string attention = att["kind"].get<std::string>();
    if (att.contains("moda_depth_source")) {
        const long window = att["moda_depth_window"].get<long>();
        attention += " (depth " + att["moda_depth_source"].get<std::string>() + ", mask " +
                     att["moda_sequence_mask"].get<std::string>() + ", visibility " +
                     att["moda_depth_visibility"].get<std::string>() +
                     (att["moda_depth_visibility"] == "chunk"
                          ? " of " + std::to_string(att["moda_chunk_size"].get<long>()) + " tokens"
                          : "") +
                     ", window " + (window ? std::to_string(window) + " slots" : "all") + ")";
    }
    const bool skip = !r["sublayers"].empty() && r["sublayers"][0].contains("skip_loss");
    std::fprintf(out, "depth diagnostics of %s: %d layers, norm %s, residual %s, attention %s\n",
                 r["checkpoint"].get<std::string>().c_str(), r["n_layers"].get<int>(),
                 r["norm_placement"].get<std::string>().c_str(), residual.c_str(), attention.c_str());
    std::fprintf(out, "validation: %ld batches of %d x %d tokens, loss %.4f\n\n", r["batches"].get<long>(),
                 r["batch_size"].get<int>(), r["seq_len"].get<int>(), r["loss"].get<double>());
    std::fprintf(out, "%-9s %10s %10s %10s %10s %12s\n", "sublayer", "input RMS", "output RMS", "state RMS",
                 "grad norm", skip ? "skip: Δloss" : "");
    for (const auto& s : r["sublayers"]) {
        std::string d;
        if (skip) {
            char buf[32];
            std::snprintf(buf, sizeof buf, "%+12.4f", s["skip_delta_loss"].get<double>());
            d = buf;
        }
        std::fprintf(out, "%-9s %10.4g %10.4g %10.4g %10.4g %s\n", s["sublayer"].get<std::string>().c_str(),
                     s["input_rms"].get<double>(), s["output_rms"].get<double>(), s["state_rms"].get<double>(),
                     s["grad_norm"].get<double>(), d.c_str());
    }
    std::fprintf(out, "%-9s %10.4g\n", "final", r["final_input_rms"].get<double>());
    const char* state = residual.rfind("attnres", 0) == 0 ? ", or under AttnRes its block's partial sum"
                        : residual == "denseformer" ? ", or under DenseFormer the depth-weighted average after its block"
                                                    : "";
    std::fprintf(out,
                 "\n(input: what the sublayer normalises and reads; state: the residual stream after it%s;\n"
                 " grad norm: of the sublayer's parameters, RMS over the batches)\n",
                 state);
    const auto& sl = r["log_rms_slope"];
    std::fprintf(out, "slope of ln RMS per layer: input %+.4f, output %+.4f, state %+.4f\n",
                 sl["input"].get<double>(), sl["output"].get<double>(), sl["state"].get<double>());

    if (r.contains("alpha")) {
        std::fprintf(out, "\nAttnRes mean weights (rows: each sublayer's mix and the output's; columns: sources)\n%-9s",
                     "");
        for (const auto& col : r["alpha_columns"]) std::fprintf(out, " %8s", col.get<std::string>().c_str());
        std::fprintf(out, "\n");
        for (const auto& row : r["alpha"]) {
            std::fprintf(out, "%-9s", row["mix"].get<std::string>().c_str());
            for (const auto& w : row["weights"]) {
                if (w.get<double>() == 0) std::fprintf(out, " %8s", ".");
                else std::fprintf(out, " %8.3f", w.get<double>());
            }
            std::fprintf(out, "\n");
        }
    }
    if (r.contains("moda")) {
        const size_t H = r["moda"][0]["depth_mass"].size();
        std::fprintf(out,
                     "\nMoDA softmax mass per layer and query head (depth: on the depth slots, the rest on "
                     "sequence keys; sink: on position 0 of the window)\n%-7s",
                     "layer");
        for (size_t h = 0; h < H; h++) std::fprintf(out, "  h%-2zu depth  sink", h);
        std::fprintf(out, "\n");
        for (const auto& l : r["moda"]) {
            std::fprintf(out, "%-7d", l["layer"].get<int>());
            for (size_t h = 0; h < H; h++)
                std::fprintf(out, "      %6.3f %5.3f", l["depth_mass"][h].get<double>(), l["sink_mass"][h].get<double>());
            std::fprintf(out, "\n");
        }
    }
}

}  // namespace strata
