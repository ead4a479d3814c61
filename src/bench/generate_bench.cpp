#include "bench/generate_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <sstream>

#include "bench/options.h"
#include "bench/stats.h"
#include "bench/train_bench.h"
#include "core/rng.h"
#include "infer/generate.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace strata::bench {

using json = nlohmann::json;

namespace {
using Clock = std::chrono::steady_clock;
double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// One configuration's model, cache and scratch; null model when its set-up failed.
struct Slot {
    std::unique_ptr<Model<float>> model;
    KVCache<float> cache;
    std::vector<float> logits;
    std::vector<int32_t> ids;
    std::vector<std::pair<float, int32_t>> scratch;
};

struct RepTimes {
    double prefill = 0, decode = 0;
};

// One repetition: the prompt through the model at once (prefill), then new_tokens decode steps, each
// choosing the next token by argmax over the last logits and running it through the model against
// the KV cache. Only engine calls are inside the timed region; the ids land in s.ids.
RepTimes decode_once(Slot& s, const std::vector<int32_t>& prompt, long new_tokens) {
    Model<float>& m = *s.model;
    const int V = m.cfg.vocab_size;
    const long P = long(prompt.size());
    SampleOptions greedy;
    greedy.temperature = 0;
    Rng rng(0);  // unused by greedy choice
    s.ids.clear();
    s.cache.len = 0;
    const Clock::time_point t0 = Clock::now();
    m.forward_cached(prompt.data(), 1, P, s.cache);
    m.logits_to_host(s.logits.data(), P - 1, 1);
    const Clock::time_point t1 = Clock::now();
    for (long i = 0; i < new_tokens; i++) {
        int32_t tok = sample_token(s.logits.data(), V, greedy, rng, s.scratch);
        s.ids.push_back(tok);
        m.forward_cached(&tok, 1, 1, s.cache);
        m.logits_to_host(s.logits.data(), 0, 1);
    }
    const Clock::time_point t2 = Clock::now();
    return {seconds_between(t0, t1), seconds_between(t1, t2)};
}

void fail(GenerateConfigResult& c, Slot& s, const std::string& msg) {
    c.measured = false;
    c.error = msg;
    s.model.reset();
    std::fprintf(stderr, "%s: failed: %s\n", to_string(c.precision), msg.c_str());
}

std::string join_ids(const std::vector<int32_t>& ids, size_t n) {
    std::string out;
    for (size_t i = 0; i < std::min(n, ids.size()); i++) out += (i ? ", " : "") + std::to_string(ids[i]);
    if (ids.size() > n) out += ", …";
    return out;
}

std::string ci_text(const MedianCI& c, const char* f) {
    return fmt(f, c.median) + " [" + fmt(f, c.lo) + ", " + fmt(f, c.hi) + "]";
}

json ci_json(const MedianCI& c, const std::vector<double>& samples, double scale) {
    std::vector<double> v;
    for (double x : samples) v.push_back(x * scale);
    return {{"median", c.median}, {"ci95_low", c.lo}, {"ci95_high", c.hi}, {"n", c.n}, {"samples", v}};
}
}  // namespace

std::vector<Precision> parse_precision_list(const std::string& list) {
    std::vector<Precision> out;
    size_t start = 0;
    while (true) {
        const size_t comma = list.find(',', start);
        const std::string item = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (item.empty()) throw Error("--precision: an empty entry in \"" + list + "\" (write e.g. fp32,bf16)");
        const Precision p = parse_precision(item, "--precision");
        if (std::find(out.begin(), out.end(), p) != out.end())
            throw Error("--precision: " + item + " is listed twice in \"" + list + "\"");
        out.push_back(p);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

std::vector<int32_t> bench_prompt(long n, int V) {
    Rng rng(kPromptSeed);
    std::vector<int32_t> p(size_t(std::max(0L, n)));
    for (auto& t : p) t = int32_t(rng.next_u64() % uint64_t(V));
    return p;
}

void check_lengths(const ModelConfig& cfg, long prompt_tokens, long new_tokens) {
    if (prompt_tokens < 1) throw LengthError("--prompt-tokens must be ≥ 1, got " + std::to_string(prompt_tokens));
    if (new_tokens < 1) throw LengthError("--new-tokens must be ≥ 1, got " + std::to_string(new_tokens));
    if (prompt_tokens + new_tokens > cfg.max_seq_len)
        throw LengthError("--prompt-tokens " + std::to_string(prompt_tokens) + " + --new-tokens " +
                          std::to_string(new_tokens) + " = " + std::to_string(prompt_tokens + new_tokens) +
                          " tokens do not fit in the model's max_seq_len " + std::to_string(cfg.max_seq_len));
}

const GenerateConfigResult* GenerateBenchResult::find(Precision p) const {
    for (const auto& c : configs)
        if (c.precision == p) return &c;
    return nullptr;
}

bool GenerateBenchResult::deterministic() const {
    for (const auto& c : configs)
        if (c.measured && !c.deterministic) return false;
    return true;
}

GenerateBenchResult run_generate_bench(const GenerateBenchOptions& o) {
    GenerateBenchResult r;
    r.options = o;
    const std::vector<Precision> precisions = parse_precision_list(o.precision);
    if (o.reps < 1) throw Error("--reps must be ≥ 1, got " + std::to_string(o.reps));
    set_threads(o.threads);

    // The model of every configuration: the same weights, built (or loaded) once per configuration so
    // each keeps its own precision from the start.
    TrainBenchOptions model_opts;
    model_opts.residual = o.residual;
    model_opts.attnres_block_size = o.attnres_block_size;
    model_opts.attention = o.attention;
    auto build = [&]() -> std::unique_ptr<Model<float>> {
        if (o.ckpt.empty()) return std::make_unique<Model<float>>(bench_model_config(model_opts));
        return std::move(load_checkpoint(o.ckpt, /*weights_only=*/true).model);
    };
    std::vector<Slot> slots(precisions.size());
    slots[0].model = build();
    r.model = slots[0].model->cfg;
    r.params = slots[0].model->num_params();
    check_lengths(r.model, o.prompt_tokens, o.new_tokens);
    r.prompt = bench_prompt(o.prompt_tokens, r.model.vocab_size);
    r.machine = machine_facts(find_repo(""));

    r.configs.resize(precisions.size());
    for (size_t i = 0; i < precisions.size(); i++) {
        GenerateConfigResult& c = r.configs[i];
        Slot& s = slots[i];
        c.precision = precisions[i];
        try {
            if (!s.model) s.model = build();
            s.model->set_precision(c.precision);
            s.model->init_cache(s.cache, 1, o.prompt_tokens + o.new_tokens);
            s.logits.resize(size_t(r.model.vocab_size));
            s.ids.reserve(size_t(o.new_tokens));
            c.measured = true;
        } catch (const Error& e) {
            fail(c, s, e.what());
        }
    }

    std::fprintf(stderr, "generate: %d warm-up + %d timed repetitions per configuration (prompt %ld, new %ld, threads %d)...\n",
                 kGenerateWarmup, o.reps, o.prompt_tokens, o.new_tokens, o.threads);
    const CpuSnapshot c0 = cpu_snapshot();
    for (int rep = -kGenerateWarmup; rep < o.reps; rep++) {
        for (size_t i = 0; i < slots.size(); i++) {
            GenerateConfigResult& c = r.configs[i];
            Slot& s = slots[i];
            if (!c.measured) continue;
            try {
                const RepTimes t = decode_once(s, r.prompt, o.new_tokens);
                if (rep == -kGenerateWarmup) c.ids = s.ids;
                else if (s.ids != c.ids) c.deterministic = false;
                if (rep < 0) continue;
                c.prefill_s.push_back(t.prefill);
                c.decode_s.push_back(t.decode);
                c.decode_tokens_per_s.push_back(double(o.new_tokens) / t.decode);
            } catch (const Error& e) {
                fail(c, s, e.what());
            }
        }
        if (rep >= 0) {
            std::string line;
            for (const auto& c : r.configs)
                if (c.measured)
                    line += std::string(line.empty() ? "" : ", ") + to_string(c.precision) + " " +
                            fmt("%.1f", c.decode_tokens_per_s.back()) + " tok/s";
            std::fprintf(stderr, "rep %d: %s\n", rep + 1, line.c_str());
        }
    }
    r.cpu = cpu_use(c0, cpu_snapshot());
    r.machine.loadavg_after = loadavg();

    // Untimed checks: the same ids as strata's own generation loop, and the statistics.
    for (size_t i = 0; i < slots.size(); i++) {
        GenerateConfigResult& c = r.configs[i];
        if (!c.measured) continue;
        SampleOptions greedy;
        greedy.temperature = 0;
        greedy.max_tokens = o.new_tokens;
        try {
            c.matches_generate = generate(*slots[i].model, r.prompt, greedy) == c.ids;
        } catch (const Error& e) {
            fail(c, slots[i], e.what());
            continue;
        }
        std::vector<double> ms;
        for (double s : c.prefill_s) ms.push_back(s * 1e3);
        c.prefill_ms = bootstrap_median(ms);
        c.decode_tps = bootstrap_median(c.decode_tokens_per_s);
    }
    const GenerateConfigResult* fp32 = r.find(Precision::fp32);
    if (fp32 && fp32->measured)
        for (auto& c : r.configs) {
            if (!c.measured || c.precision == Precision::fp32) continue;
            c.first_diff_vs_fp32 = -1;
            for (size_t k = 0; k < c.ids.size() && k < fp32->ids.size(); k++)
                if (c.ids[k] != fp32->ids[k]) {
                    c.first_diff_vs_fp32 = long(k);
                    break;
                }
            for (size_t k = 0; k < c.decode_tokens_per_s.size() && k < fp32->decode_tokens_per_s.size(); k++)
                c.ratio_vs_fp32.push_back(c.decode_tokens_per_s[k] / fp32->decode_tokens_per_s[k]);
            c.ratio_vs_fp32_ci = bootstrap_median(c.ratio_vs_fp32);
        }
    return r;
}

std::string generate_markdown(const GenerateBenchResult& r) {
    const GenerateBenchOptions& o = r.options;
    const MachineFacts& m = r.machine;
    const ModelConfig& cfg = r.model;
    std::ostringstream md;
    md << "# strata bench generate — " << m.date << "\n\n";
    md << "| | |\n|---|---|\n";
    md << "| machine | " << machine_cell(m) << " |\n";
    md << "| date | " << m.date << " |\n";
    md << "| command | `" << m.command << "` |\n";
    md << "| strata commit | " << m.commit << " |\n";
    md << "| BLAS | OpenBLAS (" << m.openblas_config << "), kernel " << m.openblas_core << ", OPENBLAS_CORETYPE "
       << m.openblas_coretype << " |\n";
    md << "| environment | " << m.environment << " |\n";
    md << "| threads | " << o.threads << " (OpenMP and OpenBLAS) |\n";
    md << "| load average before → after | " << m.loadavg_before << " → " << m.loadavg_after << " |\n";
    md << "| CPU used by other processes | " << cpu_use_str(r.cpu) << " |\n\n";

    if (o.ckpt.empty())
        md << "Model: the bench model (`strata bench train`), randomly initialised from seed " << cfg.seed;
    else
        md << "Model: the checkpoint `" << o.ckpt << "`";
    md << " — vocab " << cfg.vocab_size << ", d_model " << cfg.d_model << ", " << cfg.n_layers << " blocks, "
       << cfg.n_heads << " query / " << cfg.n_kv_heads << " kv heads × " << cfg.head_dim << ", SwiGLU hidden "
       << cfg.ffn_hidden << ", residual " << to_string(cfg.residual) << ", attention " << to_string(cfg.attention)
       << ", max_seq_len " << cfg.max_seq_len << "; " << r.params << " parameters.\n\n";
    md << "Decode: batch 1, a " << o.prompt_tokens << "-token prompt (ids from seed " << kPromptSeed << ": "
       << join_ids(r.prompt, kFirstIdsShown) << ") prefilled at once, then " << o.new_tokens
       << " greedy decode steps with the KV cache (each: argmax of the last logits, then that token through the "
          "model). A repetition is one whole decode; "
       << kGenerateWarmup << " warm-up and " << o.reps
       << " timed repetitions per configuration, interleaved. Medians with a percentile-bootstrap 95 % interval "
          "of the median ("
       << kBootstrapResamples << " resamples, seed " << kBootstrapSeed << ").\n\n";

    md << "| precision | status | prefill ms | decode tokens/s | ÷ fp32 decode (paired) | same ids every rep | "
          "= generate() | first ids |\n|---|---|---|---|---|---|---|---|\n";
    for (const auto& c : r.configs) {
        md << "| " << to_string(c.precision) << " | ";
        if (!c.measured) {
            md << "failed: " << c.error << " | | | | | | |\n";
            continue;
        }
        md << "measured | " << ci_text(c.prefill_ms, "%.2f") << " | " << ci_text(c.decode_tps, "%.1f") << " | ";
        if (!c.ratio_vs_fp32.empty()) md << ci_text(c.ratio_vs_fp32_ci, "%.3f");
        else if (c.precision == Precision::fp32) md << "1";
        md << " | " << (c.deterministic ? "yes" : "**no**") << " | " << (c.matches_generate ? "yes" : "**no**") << " | "
           << join_ids(c.ids, kFirstIdsShown);
        if (c.precision != Precision::fp32 && r.find(Precision::fp32) && r.find(Precision::fp32)->measured)
            md << (c.first_diff_vs_fp32 < 0 ? " (= fp32's)"
                                            : " (differs from fp32's at " + std::to_string(c.first_diff_vs_fp32) + ")");
        md << " |\n";
    }
    md << "\n";
    const GenerateConfigResult* bf = r.find(Precision::bf16);
    if (bf && bf->measured && !bf->ratio_vs_fp32.empty())
        md << "**bf16 ÷ fp32 decode tokens/s: " << ci_text(bf->ratio_vs_fp32_ci, "%.3f")
           << "** (median of the per-repetition ratios, 95 % bootstrap interval).\n\n";
    if (r.cpu.others > 0.05 * r.cpu.wall * o.threads)
        md << "**Warning:** other processes used more than 5 % of the CPU time during the measurement; the numbers "
              "may be noisy. Rerun on an idle machine.\n\n";
    return md.str();
}

json generate_json(const GenerateBenchResult& r) {
    const GenerateBenchOptions& o = r.options;
    const MachineFacts& m = r.machine;
    json j;
    j["suite"] = "generate";
    j["date"] = m.date;
    j["command"] = m.command;
    j["commit"] = m.commit;
    j["machine"] = machine_json(m);
    j["threads"] = o.threads;
    j["model"] = r.model.to_json();
    j["params"] = r.params;
    j["checkpoint"] = o.ckpt.empty() ? json(nullptr) : json(o.ckpt);
    j["batch"] = 1;
    j["prompt_tokens"] = o.prompt_tokens;
    j["new_tokens"] = o.new_tokens;
    j["prompt_seed"] = kPromptSeed;
    j["prompt_ids"] = r.prompt;
    j["warmup"] = kGenerateWarmup;
    j["reps"] = o.reps;
    j["bootstrap"] = {{"resamples", kBootstrapResamples}, {"seed", kBootstrapSeed}, {"level", 0.95},
                      {"method", "percentile, of the median"}};
    j["deterministic"] = r.deterministic();
    j["cpu"] = {{"wall_s", r.cpu.wall}, {"self_cpu_s", r.cpu.self}, {"others_cpu_s", r.cpu.others},
                {"steal_s", r.cpu.steal}};
    json cj = json::array();
    for (const auto& c : r.configs) {
        json e = {{"precision", to_string(c.precision)}, {"status", c.measured ? "measured" : "failed"}};
        if (!c.measured) {
            e["error"] = c.error;
        } else {
            e["prefill_ms"] = ci_json(c.prefill_ms, c.prefill_s, 1e3);
            e["decode_tokens_per_s"] = ci_json(c.decode_tps, c.decode_tokens_per_s, 1);
            e["decode_ms_per_token_at_median"] = c.decode_tps.median > 0 ? 1e3 / c.decode_tps.median : 0.0;
            e["deterministic"] = c.deterministic;
            e["matches_generate"] = c.matches_generate;
            e["first_ids"] = std::vector<int32_t>(c.ids.begin(), c.ids.begin() + long(std::min<size_t>(kFirstIdsShown, c.ids.size())));
            e["ids"] = c.ids;
            if (!c.ratio_vs_fp32.empty()) {
                e["decode_over_fp32"] = ci_json(c.ratio_vs_fp32_ci, c.ratio_vs_fp32, 1);
                e["first_diff_vs_fp32"] = c.first_diff_vs_fp32 < 0 ? json(nullptr) : json(c.first_diff_vs_fp32);
            }
        }
        cj.push_back(e);
    }
    j["configs"] = cj;
    const GenerateConfigResult* bf = r.find(Precision::bf16);
    if (bf && bf->measured && !bf->ratio_vs_fp32.empty())
        j["bf16_over_fp32_decode"] = ci_json(bf->ratio_vs_fp32_ci, bf->ratio_vs_fp32, 1);
    else
        j["bf16_over_fp32_decode"] = nullptr;
    return j;
}

}  // namespace strata::bench
