#include "bench/report.h"

#include "ops/cpu/gemm.h"

#include <algorithm>
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

constexpr double kMiB = 1024.0 * 1024.0;

// The targets of the project's performance rule (bench/README.md, "Targets").
constexpr double kFp32Target = 1.10, kFp32Aim = 1.25;   // strata fp32 ÷ the faster PyTorch fp32 configuration
constexpr double kBf16Target = 1.15, kBf16Aim = 1.40;   // strata bf16 ÷ the fastest of the four
constexpr double kFp32Memory = 0.6, kBf16Memory = 0.4;  // strata's RSS delta ÷ PyTorch eager fp32's
constexpr double kFp32Peak = 0.75, kFp32PeakAim = 0.85;  // strata fp32 GFLOP/s ÷ the fp32 GEMM peak
constexpr double kBf16Peak = 0.60, kBf16PeakAim = 0.70;  // strata bf16 GFLOP/s ÷ the bf16 GEMM peak

const char* kFasterFp32 = "faster-fp32";
const char* kFastest = "fastest";

// Pairs repetition i of a with repetition i of b.
std::vector<double> paired_ratios(const std::vector<double>& a, const std::vector<double>& b) {
    std::vector<double> out;
    for (size_t i = 0; i < std::min(a.size(), b.size()); i++)
        if (b[i] > 0) out.push_back(a[i] / b[i]);
    return out;
}

std::string ci_text(const MedianCI& m, const char* f) {
    return fmt(f, m.median) + " [" + fmt(f, m.lo) + ", " + fmt(f, m.hi) + "]";
}

json ci_json(const MedianCI& m) { return {{"median", m.median}, {"ci95", {m.lo, m.hi}}, {"n", m.n}}; }

std::string mib(double bytes) { return bytes > 0 ? fmt("%.0f", bytes / kMiB) : std::string("—"); }

// What the report says about a configuration beside its numbers.
std::string notes_of(const ConfigResult& c) {
    std::vector<std::string> n;
    if (!c.measured) n.push_back("**failed**: " + c.failure);
    const json& i = c.info;
    if (c.kind == "pytorch" && !i.empty()) {
        n.push_back("torch " + i.value("torch", std::string("?")));
        if (i.contains("compile") && i["compile"].is_object()) {
            const json& cj = i["compile"];
            n.push_back("torch.compile mode " + cj.value("mode", std::string("?")) + ", " +
                        std::to_string(cj.value("compiled_graphs", 0)) + " graph(s), " +
                        std::to_string(cj.value("graph_breaks", 0)) + " graph break(s), " +
                        std::to_string(i.value("warmup_steps_run", 0)) + " warm-up steps in all");
        }
        n.push_back("AdamW " + i.value("adamw", std::string("?")));
        n.push_back("attention " + i.value("attention", std::string("?")) + ", GQA " + i.value("gqa", std::string("?")));
    }
    return join(n, "; ");
}

void markdown_flops(std::ostringstream& md, const TrainBenchResult& r);
void markdown_profile(std::ostringstream& md, const TrainBenchResult& r, const ProfileResult& p, double timed_ms);

// The first measured strata configuration, preferring fp32 (the report's strata summary).
const ConfigResult* main_strata(const TrainBenchResult& r) {
    const ConfigResult* fp32 = r.find("strata-fp32");
    if (fp32 != nullptr && fp32->measured) return fp32;
    for (const auto& c : r.configs)
        if (c.kind == "strata" && c.measured) return &c;
    return nullptr;
}
}  // namespace

const ConfigSummary* Analysis::find(const std::string& id) const {
    for (const auto& s : configs)
        if (s.c->id == id) return &s;
    return nullptr;
}

Analysis analyze(const TrainBenchResult& r) {
    Analysis a;
    const double tokens = r.tokens();
    for (const auto& c : r.configs) {
        ConfigSummary s;
        s.c = &c;
        s.tokens_per_s = bootstrap_median(c.rep_tokens_per_s(tokens));
        s.step_ms = s.tokens_per_s.median > 0 ? tokens / s.tokens_per_s.median * 1e3 : 0;
        a.configs.push_back(s);
    }
    std::vector<std::string> peers;
    for (const auto& c : r.configs)
        if (c.kind == "pytorch") peers.push_back(c.id);

    // strata ÷ one configuration, or ÷ the one of `group` with the higher median tokens/s.
    auto compare = [&](const ConfigResult& s, const std::vector<std::string>& group, const std::string& vs,
                       const std::string& label) {
        Comparison cmp;
        cmp.strata_id = s.id;
        cmp.vs = vs;
        cmp.vs_label = label;
        std::vector<std::string> missing;
        const ConfigSummary* pick = nullptr;
        for (const auto& id : group) {
            const ConfigSummary* p = a.find(id);
            if (p == nullptr) {
                missing.push_back(id + " was not run");
                continue;
            }
            if (!p->c->measured) {
                missing.push_back(p->c->label + " failed");
                continue;
            }
            if (pick == nullptr || p->tokens_per_s.median > pick->tokens_per_s.median) pick = p;
        }
        cmp.complete = missing.empty();
        if (!s.measured) {
            cmp.reason = s.label + " failed";
        } else if (pick == nullptr) {
            cmp.reason = missing.empty() ? std::string("no PyTorch configuration") : join(missing, "; ");
        } else {
            cmp.ok = true;
            cmp.picked = pick->c->id;
            cmp.ratio = bootstrap_median(paired_ratios(s.rep_tokens_per_s(tokens), pick->c->rep_tokens_per_s(tokens)));
            if (!missing.empty()) cmp.reason = join(missing, "; ");
        }
        return cmp;
    };
    for (const auto& c : r.configs) {
        if (c.kind != "strata" || peers.empty()) continue;
        for (const auto& p : peers) a.ratios.push_back(compare(c, {p}, p, a.find(p)->c->label));
        a.ratios.push_back(compare(c, {"pytorch-eager", "pytorch-compile"}, kFasterFp32,
                                   "the faster PyTorch fp32 configuration (eager or compile, higher median)"));
        a.ratios.push_back(compare(c, {"pytorch-eager", "pytorch-eager-bf16", "pytorch-compile", "pytorch-compile-bf16"},
                                   kFastest, "the fastest of the four PyTorch configurations (higher median)"));
    }

    // The targets: speed on the interval's lower bound, memory on the measured share.
    for (const auto& c : r.configs) {
        if (c.kind != "strata" || (c.which != "fp32" && c.which != "bf16")) continue;
        const bool fp32 = c.which == "fp32";
        TargetCheck t;
        t.kind = "speed";
        t.target = fp32 ? kFp32Target : kBf16Target;
        t.aim = fp32 ? kFp32Aim : kBf16Aim;
        const std::string vs = fp32 ? kFasterFp32 : kFastest;
        t.what = c.label + " ÷ " + (fp32 ? "the faster PyTorch fp32 configuration" : "the fastest PyTorch configuration") +
                 ", tokens/s";
        const Comparison* cmp = nullptr;
        for (const auto& x : a.ratios)
            if (x.strata_id == c.id && x.vs == vs) cmp = &x;
        if (cmp == nullptr) {
            t.reason = r.options.no_peer ? "no PyTorch configuration was run (--no-peer)" : "no PyTorch configuration was run";
        } else if (!cmp->ok) {
            t.reason = cmp->reason;
        } else {
            t.evaluated = true;
            t.value = cmp->ratio.median;
            t.lo = cmp->ratio.lo;
            t.hi = cmp->ratio.hi;
            t.met = cmp->complete && t.lo >= t.target;
            t.aim_met = cmp->complete && t.lo >= t.aim;
            if (!cmp->complete) t.reason = cmp->reason;
        }
        a.targets.push_back(t);

        TargetCheck pk;  // achieved GFLOP/s ÷ the precision's GEMM peak, on the tokens/s interval
        pk.kind = "speed";
        pk.target = fp32 ? kFp32Peak : kBf16Peak;
        pk.aim = fp32 ? kFp32PeakAim : kBf16PeakAim;
        pk.what = c.label + " achieved GFLOP/s ÷ the " + c.which + " GEMM peak";
        const double peak = r.precision_peak(c.which);
        const ConfigSummary* cs = a.find(c.id);
        if (!c.measured) pk.reason = c.label + " failed";
        else if (peak <= 0) pk.reason = "the " + c.which + " GEMM peak was not measured";
        else if (cs != nullptr) {
            const double per_token = r.flops.total / r.tokens() / 1e9 / peak;  // share of the peak per token/s
            pk.evaluated = true;
            pk.value = cs->tokens_per_s.median * per_token;
            pk.lo = cs->tokens_per_s.lo * per_token;
            pk.hi = cs->tokens_per_s.hi * per_token;
            pk.met = pk.lo >= pk.target;
            pk.aim_met = pk.lo >= pk.aim;
        }
        a.targets.push_back(pk);

        TargetCheck m;
        m.kind = "memory";
        m.target = m.aim = fp32 ? kFp32Memory : kBf16Memory;
        m.what = c.label + " RSS delta ÷ PyTorch eager fp32's";
        const ConfigResult* eager = r.find("pytorch-eager");
        if (!c.measured) m.reason = c.label + " failed";
        else if (eager == nullptr) m.reason = "PyTorch eager fp32 was not run";
        else if (!eager->measured) m.reason = eager->label + " failed";
        else if (c.rss_delta() <= 0 || eager->rss_delta() <= 0) m.reason = "a memory figure is missing";
        else {
            m.evaluated = true;
            m.value = m.lo = m.hi = c.rss_delta() / eager->rss_delta();
            m.met = m.aim_met = m.value <= m.target;
        }
        a.targets.push_back(m);
    }
    return a;
}

namespace {
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
    if (is_attnres(r.model))
        md << "| AttnRes depth mixes (Σ sources over the " << 2 * r.model.n_layers + 1 << " ops = "
           << long(fl.attnres_sources) << ") | 12·B·T·D·Σ sources | " << fmt("%.2f", fl.attnres_mix / 1e9) << " |\n";
    md << "| **total** | | **" << fmt("%.2f", fl.total / 1e9) << "** |\n\n";
}

void markdown_profile(std::ostringstream& md, const TrainBenchResult& r, const ProfileResult& p, double timed_ms) {
    md << "## Profile: the " << p.precision << " training step by op family (the model's own op calls, mean of "
       << p.steps << " profiled steps)\n\n";
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
    md << "| profiled step (wall clock; the timed " << p.precision << " steps, mean: " << fmt("%.1f", timed_ms) << ") | | "
       << fmt("%.1f", p.step_ms) << " | 100 % | |\n\n";
    md << "Each public op times itself (src/ops/profile.h) inside real training steps of this precision, run in the bench's own process after the repetitions. "
          "GFLOP/s use the FLOP model's counts (attention backward does more real work: it recomputes the "
          "scores). The remainder is the step's time outside every op: input checks and staging, loops "
          "between the ops.\n\n";
}

std::string verdict(const TargetCheck& t) {
    std::string v = t.met ? "**met**" : "**not met**";
    if (t.kind == "speed" && t.met) v += t.aim_met ? " (aim met too)" : " (aim not met)";
    if (!t.reason.empty()) v += " — " + t.reason;
    return v;
}
}  // namespace

std::string to_markdown(const TrainBenchResult& r) {
    const TrainBenchOptions& o = r.options;
    const MachineFacts& m = r.machine;
    const ModelConfig& cfg = r.model;
    const Analysis an = analyze(r);
    const GemmResult& best = best_of(r.gemm);
    const double peak = best.best_gflops;
    std::ostringstream md;
    md << "# strata bench train — " << m.date << "\n\n";
    md << "| | |\n|---|---|\n";
    md << "| machine | " << machine_cell(m) << " (flags: "
       << (m.simd_flags.empty() ? std::string("none listed") : join(m.simd_flags, ", ")) << ") |\n";
    md << "| date | " << m.date << " |\n";
    md << "| command | `" << m.command << "` |\n";
    md << "| strata commit | " << m.commit << " |\n";
    md << "| BLAS | OpenBLAS (" << m.openblas_config << "), kernel " << m.openblas_core << ", OPENBLAS_CORETYPE "
       << m.openblas_coretype << " |\n";
    md << "| strata's GEMMs | fp32: " << f32_gemm_backend() << "; bf16: " << bf16_gemm_backend() << " |\n";
    md << "| environment | " << m.environment << " |\n";
    md << "| threads | " << o.threads << " (OpenMP and OpenBLAS; the peer: torch.set_num_threads) |\n";
    md << "| protocol | " << o.reps << " repetitions of " << o.steps << " timed steps per configuration, after "
       << o.warmup << " warm-up steps (and compilation), interleaved: repetition i of every configuration before "
       << "repetition i + 1 of any; medians with percentile-bootstrap " << int(kIntervalLevel * 100) << " % intervals ("
       << kBootstrapResamples << " resamples, seed " << kBootstrapSeed << ") |\n";
    md << "| PyTorch peer | " << (o.no_peer ? std::string("skipped (--no-peer)") : "`" + r.peer_python + "` bench/peer_train.py --serve")
       << " |\n";
    md << "| load average before → after | " << m.loadavg_before << " → " << m.loadavg_after << " |\n";
    md << "| CPU used by other processes | sgemm: " << cpu_use_str(r.cpu_gemm)
       << "; the configurations (warm-ups and repetitions): " << cpu_use_str(r.cpu_configs) << " |\n\n";

    md << "Bench model: vocab " << cfg.vocab_size << ", d_model " << cfg.d_model << ", " << cfg.n_layers << " blocks, "
       << cfg.n_heads << " query / " << cfg.n_kv_heads << " kv heads × " << cfg.head_dim << ", SwiGLU hidden "
       << cfg.ffn_hidden << ", pre-norm, residual " << to_string(cfg.residual)
       << (cfg.residual == Residual::attnres_block ? " (" + std::to_string(cfg.attnres_block_size) + " sublayers per block)"
                                                   : std::string())
       << ", attention " << to_string(cfg.attention)
       << (cfg.attention == AttentionKind::moda ? " (depth K/V of every earlier attention and FFN)" : "")
       << ", tied embeddings; batch " << o.batch << " × seq " << o.seq << " = " << long(r.tokens())
       << " tokens/step; " << r.params << " parameters. Step: zero_grad, forward with targets, "
       << "backward, grad-norm clip to 1.0, AdamW.\n\n";
    markdown_flops(md, r);

    md << "## Configurations\n\n";
    md << "| configuration | median tokens/s [95 % CI] | step ms (at the median) | peak RSS MiB | RSS delta MiB | reps | notes |\n"
          "|---|---|---|---|---|---|---|\n";
    for (const auto& s : an.configs) {
        const ConfigResult& c = *s.c;
        md << "| " << c.label << " | " << (c.measured ? ci_text(s.tokens_per_s, "%.0f") : std::string("—")) << " | "
           << (c.measured ? fmt("%.1f", s.step_ms) : std::string("—")) << " | " << mib(c.peak_rss) << " | "
           << mib(c.rss_delta()) << " | " << c.reps.size() << " | " << notes_of(c) << " |\n";
    }
    md << "\nRSS delta: the peak RSS less the RSS just before the model was built, each configuration in its own "
          "process.\n\n";

    if (!an.ratios.empty()) {
        md << "## Ratios: strata ÷ PyTorch, tokens/s\n\nThe median of the paired per-repetition ratios "
              "(repetition i of each), with its bootstrap 95 % interval.\n\n";
        md << "| strata | ÷ | ratio [95 % CI] | note |\n|---|---|---|---|\n";
        std::string shown_failed;  // a failed strata configuration gets one row, not one per comparison
        for (const auto& x : an.ratios) {
            const ConfigResult* s = r.find(x.strata_id);
            if (!s->measured) {
                if (shown_failed != s->id)
                    md << "| " << s->label << " | every PyTorch configuration | **failed** | not computed: " << s->label
                       << " failed |\n";
                shown_failed = s->id;
                continue;
            }
            const ConfigResult* pk = x.picked.empty() ? nullptr : r.find(x.picked);
            std::string note = x.ok && (x.vs == kFasterFp32 || x.vs == kFastest) && pk ? "picked: " + pk->label : "";
            if (!x.reason.empty()) note += (note.empty() ? "" : "; ") + std::string(x.ok ? "" : "not computed: ") + x.reason;
            md << "| " << s->label << " | " << x.vs_label << " | "
               << (x.ok ? ci_text(x.ratio, "%.2f") + "×" : std::string("**failed**")) << " | " << note << " |\n";
        }
        md << "\n";
    }

    if (!an.targets.empty()) {
        md << "## Targets\n\nSpeed: met when the interval's lower bound reaches the target, and only when every "
              "PyTorch configuration it is compared with was measured. Memory: met when the share is at most the "
              "target.\n\n";
        md << "| target | value [95 % CI] | needs | verdict |\n|---|---|---|---|\n";
        for (const auto& t : an.targets) {
            std::string value = !t.evaluated ? std::string("—")
                                : t.kind == "speed" ? fmt("%.2f", t.value) + " [" + fmt("%.2f", t.lo) + ", " + fmt("%.2f", t.hi) + "]×"
                                                    : fmt("%.2f", t.value) + "×";
            std::string needs = t.kind == "speed" ? "≥ " + fmt("%.2f", t.target) + "× (aim " + fmt("%.2f", t.aim) + "×)"
                                                  : "≤ " + fmt("%.2f", t.target) + "×";
            md << "| " << t.what << " | " << value << " | " << needs << " | " << verdict(t) << " |\n";
        }
        md << "\n";
    }

    md << "## Results\n\n| measurement | value |\n|---|---|\n";
    const ConfigResult* sf = r.find("strata-fp32");
    const ConfigSummary* sfs = sf ? an.find(sf->id) : nullptr;
    if (sf && sf->measured) {
        const Stats st = stats_of(sf->step_seconds());
        const double gflops = r.flops.total / (sfs->step_ms / 1e3) / 1e9;
        md << "| strata fp32 step time, all timed steps | " << fmt("%.1f", st.mean * 1e3) << " ± " << fmt("%.1f", st.std * 1e3)
           << " ms (min " << fmt("%.1f", st.min * 1e3) << ", max " << fmt("%.1f", st.max * 1e3) << ") |\n";
        md << "| strata fp32 achieved (at the median) | " << fmt("%.1f", gflops) << " GFLOP/s |\n";
        md << "| sgemm peak (best shape: " << best.s.what << ") | " << fmt("%.1f", peak) << " GFLOP/s |\n";
        md << "| **strata fp32 ÷ sgemm peak** | **" << fmt("%.1f", 100.0 * gflops / peak) << " %** |\n";
    } else {
        md << "| strata fp32 | " << (sf ? "failed: " + sf->failure : std::string("not requested (--precision)")) << " |\n";
        md << "| sgemm peak (best shape: " << best.s.what << ") | " << fmt("%.1f", peak) << " GFLOP/s |\n";
    }
    const ConfigResult* eager = r.find("pytorch-eager");
    if (o.no_peer) md << "| peer | not run: skipped (--no-peer) |\n";
    else if (eager && !eager->measured) md << "| peer (PyTorch eager fp32) | not run: " << eager->failure << " |\n";
    md << "| loss, first → last step (one repeated batch; ln V = " << fmt("%.3f", std::log(double(cfg.vocab_size))) << ") | ";
    std::vector<std::string> losses;
    for (const auto& c : r.configs)
        if (c.measured) losses.push_back(c.label + " " + fmt("%.4f", c.loss_first) + " → " + fmt("%.4f", c.loss_last));
    md << join(losses, "; ") << " |\n\n";

    const ConfigResult* ms = main_strata(r);
    if (ms != nullptr && !ms->phases.empty()) {
        std::array<std::vector<double>, kPhases> ph;
        for (const auto& rep : ms->phases)
            for (const auto& step : rep)
                for (int p = 0; p < kPhases; p++) ph[p].push_back(step[p]);
        const double mean = stats_of(ms->step_seconds()).mean;
        md << "## " << ms->label << " step phases (every timed step)\n\n| phase | ms (mean ± std) | share |\n|---|---|---|\n";
        for (int p = 0; p < kPhases; p++) {
            const Stats s = stats_of(ph[p]);
            md << "| " << kPhaseNames[p] << " | " << fmt("%.1f", s.mean * 1e3) << " ± " << fmt("%.1f", s.std * 1e3) << " | "
               << fmt("%.1f", 100.0 * s.mean / mean) << " % |\n";
        }
        md << "\n";
    }

    for (const ProfileResult& p : r.profiles) {
        const ConfigResult* c = r.find("strata-" + p.precision);
        markdown_profile(md, r, p, c && c->measured ? stats_of(c->step_seconds()).mean * 1e3 : 0.0);
    }

    md << "## sgemm (cblas_sgemm, " << o.threads << " threads, row-major, best and mean of repeated calls)\n\n";
    md << "| shape (M×K)·(K×N) | M, N, K | best GFLOP/s | mean GFLOP/s | calls |\n|---|---|---|---|---|\n";
    for (const auto& g : r.gemm)
        md << "| " << g.s.what << " | " << g.s.M << ", " << g.s.N << ", " << g.s.K << " | " << fmt("%.1f", g.best_gflops)
           << " | " << fmt("%.1f", g.mean_gflops) << " | " << g.reps << " |\n";
    md << "\n";
    auto gemm_table = [&](const char* title, const std::vector<GemmResult>& set) {
        if (set.empty()) return;
        md << "## " << title << " (" << o.threads << " threads, best and mean of repeated calls)\n\n";
        md << "| shape (M×K)·(K×N) | M, N, K | best GFLOP/s | mean GFLOP/s | calls |\n|---|---|---|---|---|\n";
        for (const auto& g : set)
            md << "| " << g.s.what << " | " << g.s.M << ", " << g.s.N << ", " << g.s.K << " | "
               << fmt("%.1f", g.best_gflops) << " | " << fmt("%.1f", g.mean_gflops) << " | " << g.reps << " |\n";
        md << "\n";
    };
    gemm_table("oneDNN f32 matmul", r.gemm_onednn);
    gemm_table(("bf16 GEMM: " + r.bf16_backend).c_str(), r.gemm_bf16);
    gemm_table(("bf16 GEMM, the path strata does not take on this CPU (for comparison, not in the peak): " +
                r.bf16_other_backend).c_str(),
               r.gemm_bf16_other);
    md << "Peaks by the protocol (the highest shape mean): fp32 " << fmt("%.1f", r.precision_peak("fp32"))
       << " GFLOP/s (OpenBLAS " << fmt("%.1f", highest_mean(r.gemm).mean_gflops) << ", oneDNN "
       << (r.gemm_onednn.empty() ? std::string("—") : fmt("%.1f", highest_mean(r.gemm_onednn).mean_gflops)) << ")";
    if (!r.gemm_bf16.empty()) md << "; bf16 " << fmt("%.1f", r.precision_peak("bf16")) << " GFLOP/s";
    if (!r.gemm_bf16_other.empty())
        md << " (the other bf16 path: " << fmt("%.1f", highest_mean(r.gemm_bf16_other).mean_gflops) << ")";
    md << ".\n\n";
    if (r.cpu_configs.others > 0.05 * r.cpu_configs.wall * o.threads)
        md << "**Warning:** other processes used more than 5 % of the CPU time during the measurements; the numbers "
              "may be noisy. Rerun on an idle machine.\n\n";
    return md.str();
}

json to_json(const TrainBenchResult& r) {
    const TrainBenchOptions& o = r.options;
    const MachineFacts& m = r.machine;
    const FlopCount& fl = r.flops;
    const GemmResult& best = best_of(r.gemm);
    const Analysis an = analyze(r);
    json j;
    j["suite"] = "train";
    j["date"] = m.date;
    j["command"] = m.command;
    j["commit"] = m.commit;
    j["machine"] = machine_json(m);
    j["threads"] = o.threads;
    j["model"] = r.model.to_json();
    j["batch"] = o.batch;
    j["seq"] = o.seq;
    j["flops_per_step"] = {{"matmul", fl.matmul},           {"attention", fl.attention},
                           {"moda_depth", fl.moda_depth},   {"attnres_mix", fl.attnres_mix},
                           {"total", fl.total},             {"matmul_params", fl.matmul_params},
                           {"moda_slots", fl.moda_slots},   {"attnres_sources", fl.attnres_sources}};
    j["protocol"] = {{"reps", o.reps},
                     {"steps_per_rep", o.steps},
                     {"warmup", o.warmup},
                     {"gemm_seconds", o.gemm_seconds},
                     {"order", "interleaved"},
                     {"precisions", o.precisions},
                     {"peers", o.no_peer ? std::vector<std::string>{} : o.peers},
                     {"ratio", "median of the paired per-repetition ratios of tokens/s"},
                     {"faster_fp32", "of PyTorch eager fp32 and torch.compile fp32, the one with the higher median tokens/s"},
                     {"fastest", "of the four PyTorch configurations, the one with the higher median tokens/s"},
                     {"bootstrap", {{"kind", "percentile"}, {"resamples", kBootstrapResamples}, {"level", kIntervalLevel},
                                    {"seed", kBootstrapSeed}}},
                     {"memory", "each configuration in its own process: VmHWM, and VmHWM less VmRSS just before the model "
                                "was built; torch.compile's code generation in-process (TORCHINDUCTOR_COMPILE_THREADS=1)"}};
    j["schedule"] = r.schedule;
    json configs = json::array();
    for (const auto& s : an.configs) {
        const ConfigResult& c = *s.c;
        json reps = json::array();
        const std::vector<double> tps = c.rep_tokens_per_s(r.tokens());
        for (size_t i = 0; i < c.reps.size(); i++) {
            json st = json::array();
            for (double t : c.reps[i]) st.push_back(t * 1e3);
            reps.push_back({{"position", i < c.order.size() ? c.order[i] : -1}, {"step_ms", st},
                            {"tokens_per_s", i < tps.size() ? tps[i] : 0.0}});
        }
        json cj = {{"id", c.id},
                   {"kind", c.kind},
                   {"config", c.which},
                   {"label", c.label},
                   {"status", c.measured ? "measured" : "failed"},
                   {"reps", reps},
                   {"info", c.info},
                   {"peak_rss_bytes", c.peak_rss},
                   {"rss_before_model_bytes", c.rss_before_model},
                   {"rss_delta_bytes", c.rss_delta()},
                   {"loss_first", c.loss_first},
                   {"loss_last", c.loss_last}};
        if (!c.measured) cj["reason"] = c.failure;
        if (c.measured) {
            cj["tokens_per_s"] = ci_json(s.tokens_per_s);
            cj["step_ms_at_median"] = s.step_ms;
        }
        configs.push_back(cj);
    }
    j["configs"] = configs;
    json ratios = json::array();
    for (const auto& x : an.ratios) {
        json rj = {{"strata", x.strata_id}, {"vs", x.vs}, {"vs_label", x.vs_label},
                   {"status", x.ok ? "measured" : "failed"}, {"complete", x.complete}};
        if (x.ok) {
            rj["median"] = x.ratio.median;
            rj["ci95"] = {x.ratio.lo, x.ratio.hi};
            rj["n"] = x.ratio.n;
        }
        if (!x.picked.empty()) rj["picked"] = x.picked;
        if (!x.reason.empty()) rj["reason"] = x.reason;
        ratios.push_back(rj);
    }
    j["ratios"] = ratios;
    json targets = json::array();
    for (const auto& t : an.targets) {
        json tj = {{"what", t.what}, {"kind", t.kind}, {"target", t.target}, {"met", t.met}};
        if (t.kind == "speed") tj["aim"] = t.aim, tj["aim_met"] = t.aim_met;
        if (t.evaluated) {
            tj["value"] = t.value;
            if (t.kind == "speed") tj["ci95"] = {t.lo, t.hi};
        }
        if (!t.reason.empty()) tj["reason"] = t.reason;
        targets.push_back(tj);
    }
    j["targets"] = targets;

    // The strata summary (the fp32 configuration when measured) and PyTorch eager fp32 as "peer".
    const ConfigResult* ms = main_strata(r);
    if (ms != nullptr) {
        const Stats st = stats_of(ms->step_seconds());
        const ConfigSummary* s = an.find(ms->id);
        json phases = json::object();
        std::array<std::vector<double>, kPhases> ph;
        for (const auto& rep : ms->phases)
            for (const auto& step : rep)
                for (int p = 0; p < kPhases; p++) ph[p].push_back(step[p]);
        for (int p = 0; p < kPhases; p++) {
            const Stats ps = stats_of(ph[p]);
            phases[kPhaseNames[p]] = {{"ms_mean", ps.mean * 1e3}, {"ms_std", ps.std * 1e3}};
        }
        j["strata"] = {{"config", ms->id}, {"step_ms_mean", st.mean * 1e3}, {"step_ms_std", st.std * 1e3},
                       {"step_ms_min", st.min * 1e3}, {"step_ms_max", st.max * 1e3},
                       {"tokens_per_s", s->tokens_per_s.median}, {"gflops", fl.total / (s->step_ms / 1e3) / 1e9},
                       {"warmup", o.warmup}, {"steps", o.steps}, {"reps", o.reps}, {"loss_first", ms->loss_first},
                       {"loss_last", ms->loss_last}, {"params", r.params}, {"phases", phases},
                       {"peak_rss_bytes", ms->peak_rss}, {"rss_delta_bytes", ms->rss_delta()}};
    } else {
        j["strata"] = {{"skipped", "no strata configuration was measured"}, {"params", r.params}};
    }
    j["cpu"] = {{"sgemm", cpu_use_json(r.cpu_gemm)}, {"configs", cpu_use_json(r.cpu_configs)}};
    json gj = json::array();
    for (const auto& g : r.gemm)
        gj.push_back({{"shape", g.s.what}, {"M", g.s.M}, {"N", g.s.N}, {"K", g.s.K}, {"trans_a", g.s.ta},
                      {"trans_b", g.s.tb}, {"best_gflops", g.best_gflops}, {"mean_gflops", g.mean_gflops}});
    j["sgemm"] = {{"peak_gflops", best.best_gflops}, {"peak_shape", best.s.what}, {"shapes", gj},
                  {"cpu", cpu_use_json(r.cpu_gemm)}};
    auto shapes_json = [](const std::vector<GemmResult>& set) {
        json a = json::array();
        for (const auto& g : set)
            a.push_back({{"shape", g.s.what}, {"M", g.s.M}, {"N", g.s.N}, {"K", g.s.K}, {"best_gflops", g.best_gflops},
                         {"mean_gflops", g.mean_gflops}, {"calls", g.reps}});
        return a;
    };
    j["gemm_peaks"] = {{"rule", "per precision, the highest shape mean over the libraries"},
                       {"fp32_gflops", r.precision_peak("fp32")},
                       {"bf16_gflops", r.precision_peak("bf16")},
                       {"fp32_backend", f32_gemm_backend()},
                       {"bf16_backend", r.bf16_backend.empty() ? std::string(bf16_gemm_backend()) : r.bf16_backend},
                       {"onednn_f32", shapes_json(r.gemm_onednn)},
                       {"bf16", shapes_json(r.gemm_bf16)}};
    if (!r.gemm_bf16_other.empty())
        j["gemm_peaks"]["bf16_other"] = {{"backend", r.bf16_other_backend}, {"shapes", shapes_json(r.gemm_bf16_other)}};
    const ConfigResult* sf = r.find("strata-fp32");
    if (sf && sf->measured) j["strata_over_sgemm_peak"] = fl.total / (an.find(sf->id)->step_ms / 1e3) / 1e9 / best.best_gflops;
    const ConfigResult* eager = r.find("pytorch-eager");
    if (o.no_peer) {
        j["peer"] = {{"skipped", "skipped (--no-peer)"}};
    } else if (eager == nullptr) {
        j["peer"] = {{"skipped", "PyTorch eager fp32 was not requested (--peers)"}};
    } else if (!eager->measured) {
        j["peer"] = {{"skipped", eager->failure}};
    } else {
        json pj = eager->info;
        pj["tokens_per_s"] = an.find(eager->id)->tokens_per_s.median;
        pj["step_ms_at_median"] = an.find(eager->id)->step_ms;
        pj["loss_first"] = eager->loss_first;
        pj["loss_last"] = eager->loss_last;
        j["peer"] = pj;
        for (const auto& x : an.ratios)
            if (ms && x.strata_id == ms->id && x.vs == eager->id && x.ok) j["strata_over_peer_tokens_per_s"] = x.ratio.median;
    }
    if (!r.profiles.empty()) {
        json profiles = json::object();
        for (const ProfileResult& p : r.profiles) {
            json fam = json::object();
            for (int f = 0; f < kOpFamilies; f++) {
                const double flops = family_flops(fl, OpFamily(f));
                fam[op_profile::family_name(OpFamily(f))] = {
                    {"ms_per_step", p.ms[f]},
                    {"calls_per_step", p.calls[f]},
                    {"share_of_step", p.step_ms > 0 ? p.ms[f] / p.step_ms : 0.0},
                    {"gflops", flops > 0 && p.ms[f] > 0 ? json(flops / (p.ms[f] / 1e3) / 1e9) : json(nullptr)}};
            }
            profiles[p.precision] = {{"steps", p.steps},
                                     {"step_ms", p.step_ms},
                                     {"families_ms", p.families_ms()},
                                     {"remainder_ms", p.remainder_ms()},
                                     {"families", fam}};
        }
        j["profiles"] = profiles;
    }
    return j;
}

}  // namespace strata::bench
