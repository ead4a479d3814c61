#include "bench/report.h"

#include <cmath>
#include <sstream>

namespace strata::bench {

using json = nlohmann::json;

namespace {
json cpu_use_json(const CpuUse& u) {
    return {{"wall_s", u.wall}, {"self_cpu_s", u.self}, {"others_cpu_s", u.others}, {"steal_s", u.steal}};
}

std::string join(const std::vector<std::string>& v, const char* sep) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
    return out;
}

// GFLOP/s of one family from the FLOP model, or "" when the model does not count it.
std::string family_rate(const FlopCount& fl, const ProfileResult& p, int f) {
    const double flops = family_flops(fl, OpFamily(f));
    return flops > 0 && p.ms[f] > 0 ? fmt("%.1f", flops / (p.ms[f] / 1e3) / 1e9) : "";
}

void markdown_flops(std::ostringstream& md, const TrainBenchResult& r) {
    const FlopCount& fl = r.flops;
    md << "Training FLOPs per step (2 per MAC, backward = 2× forward, causal attention half of T²; "
          "bench/README.md):\n\n";
    md << "| part | per step | GFLOP |\n|---|---|---|\n";
    md << "| matmuls (P_mm = " << long(fl.matmul_params) << " weights) | 6·P_mm·B·T | "
       << fmt("%.2f", fl.matmul / 1e9) << " |\n";
    md << "| attention | 6·L·B·H·T²·d | " << fmt("%.2f", fl.attention / 1e9) << " |\n";
    if (fl.moda)
        md << "| MoDA depth scores (Σ slots over the layers = " << long(fl.moda_slots) << ") | 12·B·T·H·d·Σ slots | "
           << fmt("%.2f", fl.moda_depth / 1e9) << " |\n";
    if (r.model.residual != Residual::standard)
        md << "| AttnRes depth mixes (Σ sources over the " << 2 * r.model.n_layers + 1 << " ops = "
           << long(fl.attnres_sources) << ") | 12·B·T·D·Σ sources | " << fmt("%.2f", fl.attnres_mix / 1e9) << " |\n";
    md << "| **total** | | **" << fmt("%.2f", fl.total / 1e9) << "** |\n\n";
}

void markdown_profile(std::ostringstream& md, const TrainBenchResult& r, const ProfileResult& p) {
    md << "## Profile: the training step by op family (the model's own op calls, mean of " << p.steps
       << " profiled steps)\n\n";
    md << "| op family | calls/step | ms/step | share of step | GFLOP/s |\n|---|---|---|---|---|\n";
    for (int f = 0; f < kOpFamilies; f++) {
        if (p.calls[f] == 0) continue;
        md << "| " << op_profile::family_name(OpFamily(f)) << " | " << fmt("%.0f", p.calls[f]) << " | "
           << fmt("%.1f", p.ms[f]) << " | " << fmt("%.1f", 100.0 * p.ms[f] / p.step_ms) << " % | "
           << family_rate(r.flops, p, f) << " |\n";
    }
    md << "| sum of op families | | " << fmt("%.1f", p.families_ms()) << " | "
       << fmt("%.1f", 100.0 * p.families_ms() / p.step_ms) << " % | |\n";
    md << "| un-profiled remainder (step − sum) | | " << fmt("%.1f", p.remainder_ms()) << " | "
       << fmt("%.1f", 100.0 * p.remainder_ms() / p.step_ms) << " % | |\n";
    md << "| profiled step (wall clock; the timed steps: " << fmt("%.1f", r.strata.step.mean * 1e3) << ") | | "
       << fmt("%.1f", p.step_ms) << " | 100 % | |\n\n";
    md << "Each public op times itself (src/ops/profile.h) inside real training steps run after the timed ones. "
          "GFLOP/s use the FLOP model's counts (attention backward does more real work: it recomputes the "
          "scores). The remainder is the step's time outside every op: input checks and staging, loops "
          "between the ops.\n\n";
}
}  // namespace

std::string to_markdown(const TrainBenchResult& r) {
    const TrainBenchOptions& o = r.options;
    const MachineFacts& m = r.machine;
    const ModelConfig& cfg = r.model;
    const StrataResult& sr = r.strata;
    const Stats& st = sr.step;
    const PeerResult& peer = r.peer;
    const GemmResult& best = best_of(r.gemm);
    const double peak = best.best_gflops, strata_tps = r.strata_tokens_per_s(), strata_gflops = r.strata_gflops();
    std::ostringstream md;
    md << "# strata bench train — " << m.date << "\n\n";
    md << "| | |\n|---|---|\n";
    md << "| machine | " << m.cpu << ", " << m.online_cpus << " online CPUs, widest SIMD " << m.simd << " (flags: "
       << (m.simd_flags.empty() ? std::string("none listed") : join(m.simd_flags, ", ")) << ") |\n";
    md << "| date | " << m.date << " |\n";
    md << "| command | `" << m.command << "` |\n";
    md << "| strata commit | " << m.commit << " |\n";
    md << "| BLAS | OpenBLAS (" << m.openblas_config << "), kernel " << m.openblas_core << ", OPENBLAS_CORETYPE "
       << m.openblas_coretype << " |\n";
    md << "| environment | " << m.environment << " |\n";
    md << "| threads | " << o.threads << " (OpenMP and OpenBLAS; the peer: torch.set_num_threads) |\n";
    md << "| load average before → after | " << m.loadavg_before << " → " << m.loadavg_after << " |\n";
    md << "| CPU used by other processes | sgemm: " << cpu_use_str(r.cpu_gemm) << "; strata: " << cpu_use_str(sr.cpu);
    if (peer.ran) md << "; peer: " << cpu_use_str(r.cpu_peer);
    md << " |\n\n";

    md << "Bench model: vocab " << cfg.vocab_size << ", d_model " << cfg.d_model << ", " << cfg.n_layers << " blocks, "
       << cfg.n_heads << " query / " << cfg.n_kv_heads << " kv heads × " << cfg.head_dim << ", SwiGLU hidden "
       << cfg.ffn_hidden << ", pre-norm, residual " << to_string(cfg.residual)
       << (cfg.residual == Residual::attnres_block ? " (" + std::to_string(cfg.attnres_block_size) + " sublayers per block)"
                                                   : std::string())
       << ", attention " << to_string(cfg.attention)
       << (cfg.attention == AttentionKind::moda ? " (depth K/V of every earlier attention and FFN)" : "")
       << ", tied embeddings, fp32; batch " << o.batch << " × seq " << o.seq << " = " << long(r.tokens())
       << " tokens/step; " << sr.params << " parameters. Step: zero_grad, forward with targets, "
       << "backward, grad-norm clip to 1.0, AdamW. " << o.warmup << " warm-up + " << o.steps << " timed steps.\n\n";
    markdown_flops(md, r);

    md << "## Results\n\n| measurement | value |\n|---|---|\n";
    md << "| strata step time | " << fmt("%.1f", st.mean * 1e3) << " ± " << fmt("%.1f", st.std * 1e3) << " ms (min "
       << fmt("%.1f", st.min * 1e3) << ", max " << fmt("%.1f", st.max * 1e3) << ") |\n";
    md << "| strata tokens/s | " << fmt("%.0f", strata_tps) << " |\n";
    md << "| strata achieved | " << fmt("%.1f", strata_gflops) << " GFLOP/s |\n";
    md << "| sgemm peak (best shape: " << best.s.what << ") | " << fmt("%.1f", peak) << " GFLOP/s |\n";
    md << "| **strata ÷ sgemm peak** | **" << fmt("%.1f", 100.0 * strata_gflops / peak) << " %** |\n";
    if (peer.ran) {
        const double ptps = peer.j["tokens_per_s"].get<double>();
        md << "| peer step time (PyTorch " << peer.j.value("torch", std::string("?")) << ", "
           << peer.j.value("threads", 0) << " threads) | " << fmt("%.1f", peer.j["step_ms_mean"].get<double>()) << " ± "
           << fmt("%.1f", peer.j["step_ms_std"].get<double>()) << " ms |\n";
        md << "| peer tokens/s | " << fmt("%.0f", ptps) << " |\n";
        md << "| peer achieved (same FLOP count) | "
           << fmt("%.1f", r.flops.total / (peer.j["step_ms_mean"].get<double>() / 1e3) / 1e9) << " GFLOP/s |\n";
        md << "| **strata ÷ peer tokens/s** | **" << fmt("%.2f", strata_tps / ptps) << "×** |\n";
    } else {
        md << "| peer | not run: " << peer.note << " |\n";
    }
    md << "| loss, first → last step (one repeated batch; ln V = " << fmt("%.3f", std::log(double(cfg.vocab_size)))
       << ") | strata " << fmt("%.4f", sr.loss_first) << " → " << fmt("%.4f", sr.loss_last);
    if (peer.ran)
        md << "; peer " << fmt("%.4f", peer.j.value("loss_first", 0.0)) << " → " << fmt("%.4f", peer.j.value("loss_last", 0.0));
    md << " |\n\n";

    md << "## strata step phases\n\n| phase | ms (mean ± std) | share |\n|---|---|---|\n";
    for (int p = 0; p < kPhases; p++)
        md << "| " << kPhaseNames[p] << " | " << fmt("%.1f", sr.phase[p].mean * 1e3) << " ± "
           << fmt("%.1f", sr.phase[p].std * 1e3) << " | " << fmt("%.1f", 100.0 * sr.phase[p].mean / st.mean) << " % |\n";
    md << "\n";

    if (sr.profile) markdown_profile(md, r, *sr.profile);

    md << "## sgemm (cblas_sgemm, " << o.threads << " threads, row-major, best and mean of repeated calls)\n\n";
    md << "| shape (M×K)·(K×N) | M, N, K | best GFLOP/s | mean GFLOP/s | calls |\n|---|---|---|---|---|\n";
    for (const auto& g : r.gemm)
        md << "| " << g.s.what << " | " << g.s.M << ", " << g.s.N << ", " << g.s.K << " | " << fmt("%.1f", g.best_gflops)
           << " | " << fmt("%.1f", g.mean_gflops) << " | " << g.reps << " |\n";
    md << "\n";
    if (sr.cpu.others > 0.05 * sr.cpu.wall * o.threads || r.cpu_peer.others > 0.05 * r.cpu_peer.wall * o.threads)
        md << "**Warning:** other processes used more than 5 % of the CPU time during a measurement; the numbers "
              "may be noisy. Rerun on an idle machine.\n\n";
    return md.str();
}

json to_json(const TrainBenchResult& r) {
    const TrainBenchOptions& o = r.options;
    const MachineFacts& m = r.machine;
    const StrataResult& sr = r.strata;
    const Stats& st = sr.step;
    const FlopCount& fl = r.flops;
    const GemmResult& best = best_of(r.gemm);
    json j;
    j["suite"] = "train";
    j["date"] = m.date;
    j["command"] = m.command;
    j["commit"] = m.commit;
    j["machine"] = {{"cpu", m.cpu},
                    {"online_cpus", m.online_cpus},
                    {"simd", m.simd},
                    {"simd_flags", m.simd_flags},
                    {"openblas_config", m.openblas_config},
                    {"openblas_core", m.openblas_core},
                    {"openblas_coretype", m.openblas_coretype},
                    {"environment", m.environment},
                    {"loadavg_before", m.loadavg_before},
                    {"loadavg_after", m.loadavg_after}};
    j["threads"] = o.threads;
    j["model"] = r.model.to_json();
    j["batch"] = o.batch;
    j["seq"] = o.seq;
    j["flops_per_step"] = {{"matmul", fl.matmul},           {"attention", fl.attention},
                           {"moda_depth", fl.moda_depth},   {"attnres_mix", fl.attnres_mix},
                           {"total", fl.total},             {"matmul_params", fl.matmul_params},
                           {"moda_slots", fl.moda_slots},   {"attnres_sources", fl.attnres_sources}};
    json phases = json::object();
    for (int p = 0; p < kPhases; p++)
        phases[kPhaseNames[p]] = {{"ms_mean", sr.phase[p].mean * 1e3}, {"ms_std", sr.phase[p].std * 1e3}};
    j["strata"] = {{"step_ms_mean", st.mean * 1e3}, {"step_ms_std", st.std * 1e3}, {"step_ms_min", st.min * 1e3},
                   {"step_ms_max", st.max * 1e3}, {"tokens_per_s", r.strata_tokens_per_s()},
                   {"gflops", r.strata_gflops()}, {"warmup", o.warmup}, {"steps", o.steps},
                   {"loss_first", sr.loss_first}, {"loss_last", sr.loss_last}, {"params", sr.params},
                   {"phases", phases}, {"cpu", cpu_use_json(sr.cpu)}};
    json gj = json::array();
    for (const auto& g : r.gemm)
        gj.push_back({{"shape", g.s.what}, {"M", g.s.M}, {"N", g.s.N}, {"K", g.s.K}, {"trans_a", g.s.ta},
                      {"trans_b", g.s.tb}, {"best_gflops", g.best_gflops}, {"mean_gflops", g.mean_gflops}});
    j["sgemm"] = {{"peak_gflops", best.best_gflops}, {"peak_shape", best.s.what}, {"shapes", gj},
                  {"cpu", cpu_use_json(r.cpu_gemm)}};
    j["strata_over_sgemm_peak"] = r.strata_gflops() / best.best_gflops;
    if (r.peer.ran) {
        j["peer"] = r.peer.j;
        j["peer"]["cpu"] = cpu_use_json(r.cpu_peer);
        j["strata_over_peer_tokens_per_s"] = r.strata_tokens_per_s() / r.peer.j["tokens_per_s"].get<double>();
    } else {
        j["peer"] = {{"skipped", r.peer.note}};
    }
    if (sr.profile) {
        const ProfileResult& p = *sr.profile;
        json ms = json::object(), fam = json::object();
        for (int f = 0; f < kOpFamilies; f++) {
            const char* name = op_profile::family_name(OpFamily(f));
            ms[name] = p.ms[f];
            const double flops = family_flops(fl, OpFamily(f));
            fam[name] = {{"ms_per_step", p.ms[f]},
                         {"calls_per_step", p.calls[f]},
                         {"share_of_step", p.step_ms > 0 ? p.ms[f] / p.step_ms : 0.0},
                         {"gflops", flops > 0 && p.ms[f] > 0 ? json(flops / (p.ms[f] / 1e3) / 1e9) : json(nullptr)}};
        }
        j["profile_ms_per_step"] = ms;
        j["profile"] = {{"steps", p.steps},
                        {"step_ms", p.step_ms},
                        {"families_ms", p.families_ms()},
                        {"remainder_ms", p.remainder_ms()},
                        {"families", fam}};
    }
    return j;
}

}  // namespace strata::bench
