#include "bench/attnres_bench.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "model/config.h"
#include "ops/ops.h"

namespace strata::bench {

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// The largest cache sysfs lists for cpu0, in bytes (0 when it cannot be read).
double last_level_cache_bytes() {
    double best = 0;
    for (int i = 0; i < 8; i++) {
        std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/size");
        std::string s;
        if (!(f >> s) || s.empty()) continue;
        double v = std::atof(s.c_str());
        const char unit = s.back();
        if (unit == 'K') v *= 1024;
        else if (unit == 'M') v *= 1024 * 1024;
        best = std::max(best, v);
    }
    return best;
}

// Touches every page once from the threads that will use it (first-touch placement, no page faults
// in the timed loops).
void first_touch(float* x, size_t n, float v) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = v;
}
}  // namespace

AttnResBenchResult run_attnres_bench(const AttnResBenchOptions& o) {
    if (o.sources < 1 || o.sources > 64) throw Error("--sources must be in [1, 64]");
    if (o.d_model < 1 || o.d_model > 65536) throw Error("--d-model must be in [1, 65536]");
    if (o.reps < 2) throw Error("--reps must be at least 2");
    AttnResBenchResult r;
    r.options = o;
    r.machine = machine_facts(find_repo(""));
    omp_set_num_threads(o.threads);
    r.llc_bytes = last_level_cache_bytes();
    const double llc = r.llc_bytes > 0 ? r.llc_bytes : 32.0 * 1024 * 1024;
    const long n = o.sources, D = o.d_model;
    r.rows = o.rows > 0 ? o.rows : long(std::ceil(4 * llc / (double(n) * D * 4)));
    const long N = r.rows;
    r.source_bytes = double(n) * N * D * 4;
    const size_t copy_n = size_t(std::max(4 * llc, r.source_bytes) / 4);
    r.copy_bytes = double(copy_n) * 4;
    const double need = r.source_bytes * 2 + 2 * r.copy_bytes + 4.0 * N * D * 3;
    if (need > 0.8 * usable_memory_bytes()) throw Error("bench attnres: the buffers would not fit in memory; lower --rows");

    // Sources, their gradients, the output and its gradient, the saved statistics.
    const size_t nND = static_cast<size_t>(n * N * D), ND = static_cast<size_t>(N * D), nN = static_cast<size_t>(n * N),
                 Nr = static_cast<size_t>(N), Dc = static_cast<size_t>(D);
    std::vector<float> src(nND), dsrc(nND), out(ND), dout(ND);
    std::vector<float> logit(nN), rstd(nN), lse(Nr), w(Dc), g(Dc), dw(Dc), dg(Dc);
    std::vector<float> copy_a(copy_n), copy_b(copy_n);
    first_touch(src.data(), src.size(), 0.f);
    first_touch(dsrc.data(), dsrc.size(), 0.f);
    first_touch(copy_a.data(), copy_n, 1.f);
    first_touch(copy_b.data(), copy_n, 0.f);
    Rng rng(7);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < src.size(); i++) src[i] = float(std::sin(double(i) * 0.37));
    for (auto& x : dout) x = float(rng.normal());
    for (long c = 0; c < D; c++) w[c] = float(0.1 * rng.normal()), g[c] = 1.f + float(0.1 * rng.normal());
    std::vector<const float*> sp(static_cast<size_t>(n));
    std::vector<float*> dsp(static_cast<size_t>(n));
    for (long i = 0; i < n; i++) sp[size_t(i)] = src.data() + i * N * D, dsp[size_t(i)] = dsrc.data() + i * N * D;

    // Bytes: the forward reads every source once and writes the mix, plus its saved logits, rstd and
    // lse; the backward reads the sources, the mix and its gradient, and reads and writes (adds into)
    // every source gradient.
    const double ND4 = double(N) * D * 4, stats = (2.0 * n * N + N) * 4;
    r.fwd_bytes = (n + 1) * ND4 + stats;
    r.bwd_bytes = (n + 2) * ND4 + 2.0 * n * ND4 + stats;
    auto copy = [&] { return memcpy_gbs(copy_b.data(), copy_a.data(), copy_n); };
    auto fwd = [&] {
        const double t0 = now();
        attnres_forward(out.data(), logit.data(), rstd.data(), lse.data(), sp.data(), int(n), w.data(), g.data(), N, D,
                        1e-5);
        return r.fwd_bytes / (now() - t0) / 1e9;
    };
    auto bwd = [&] {
        const double t0 = now();
        attnres_backward(dsp.data(), dw.data(), dg.data(), dout.data(), out.data(), logit.data(), rstd.data(),
                         lse.data(), sp.data(), int(n), w.data(), g.data(), N, D);
        return r.bwd_bytes / (now() - t0) / 1e9;
    };
    copy(), fwd(), bwd();  // warm-up
    for (int i = 0; i < o.reps; i++) {  // interleaved, the order rotated every repetition
        double c = 0, f = 0, b = 0;
        for (int k = 0; k < 3; k++) {
            switch ((i + k) % 3) {
                case 0: c = copy(); break;
                case 1: f = fwd(); break;
                case 2: b = bwd(); break;
            }
        }
        r.copy_gbs.push_back(c);
        r.fwd_gbs.push_back(f);
        r.bwd_gbs.push_back(b);
        r.fwd_share.push_back(f / c);
        r.bwd_share.push_back(b / c);
        std::fprintf(stderr, "rep %d: copy %.1f GB/s, forward %.1f GB/s, backward %.1f GB/s\n", i + 1, c, f, b);
    }
    r.machine.loadavg_after = loadavg();
    return r;
}

std::string attnres_markdown(const AttnResBenchResult& r) {
    const AttnResBenchOptions& o = r.options;
    const MachineFacts& m = r.machine;
    std::ostringstream md;
    md << op_report_header("strata bench attnres", m, o.threads,
                           ", last-level cache " + fmt("%.0f", r.llc_bytes / (1 << 20)) + " MiB");
    md << "The fp32 AttnRes op (`attnres_forward`/`attnres_backward`) over n = " << o.sources << " sources of (N, D) = ("
       << r.rows << ", " << o.d_model << "): " << fmt("%.0f", r.source_bytes / (1 << 20))
       << " MiB of sources, against a memcpy of " << fmt("%.0f", r.copy_bytes / (1 << 20))
       << " MiB (counted as its bytes read plus written), split over the threads. Bytes counted: the forward reads "
          "each source once and writes the mix and its saved logits, rstd and lse ("
       << fmt("%.1f", r.fwd_bytes / 1e6) << " MB); the backward reads the sources, the mix and its gradient, and "
          "reads and writes every source gradient, plus the statistics ("
       << fmt("%.1f", r.bwd_bytes / 1e6) << " MB). " << o.reps
       << " repetitions after one warm-up, the three measurements interleaved in rotated order; medians with a "
          "percentile-bootstrap 95 % interval.\n\n";
    md << "| | GB/s | ÷ copy (per repetition) |\n|---|---|---|\n";
    md << "| memcpy | " << median_ci_str(r.copy_gbs, "%.1f") << " | 1 |\n";
    md << "| attnres_forward | " << median_ci_str(r.fwd_gbs, "%.1f") << " | " << median_ci_str(r.fwd_share, "%.2f") << " |\n";
    md << "| attnres_backward | " << median_ci_str(r.bwd_gbs, "%.1f") << " | " << median_ci_str(r.bwd_share, "%.2f") << " |\n\n";
    const MedianCI f = bootstrap_median(r.fwd_share);
    md << "**Forward ÷ copy bandwidth: " << fmt("%.2f", f.median) << "** (target ≥ 0.80: "
       << (f.median >= 0.8 ? "met" : "not met") << ").\n";
    return md.str();
}

nlohmann::json attnres_json(const AttnResBenchResult& r) {
    const AttnResBenchOptions& o = r.options;
    auto ci = median_ci_json;
    return {{"suite", "attnres"},
            {"date", r.machine.date},
            {"command", r.machine.command},
            {"commit", r.machine.commit},
            {"machine", machine_json(r.machine)},
            {"threads", o.threads},
            {"sources", o.sources},
            {"d_model", o.d_model},
            {"rows", r.rows},
            {"llc_bytes", r.llc_bytes},
            {"source_bytes", r.source_bytes},
            {"copy_bytes", r.copy_bytes},
            {"forward_bytes", r.fwd_bytes},
            {"backward_bytes", r.bwd_bytes},
            {"copy_gbs", ci(r.copy_gbs)},
            {"forward_gbs", ci(r.fwd_gbs)},
            {"backward_gbs", ci(r.bwd_gbs)},
            {"forward_over_copy", ci(r.fwd_share)},
            {"backward_over_copy", ci(r.bwd_share)}};
}

}  // namespace strata::bench
