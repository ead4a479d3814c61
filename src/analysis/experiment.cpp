// The experiment suites and their runner (analysis/experiment.h, docs/results.md).
#include "analysis/experiment.h"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "analysis/depth_report.h"
#include "analysis/usefulness.h"
#include "core/error.h"
#include "core/fileio.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace strata {

namespace fs = std::filesystem;

namespace {

// ---- the suites ----

// The model and schedule each suite starts from. Full size: d_model 128, heads 4 query / 2 kv of 32,
// seq 128, batch 16 (2048 tokens a step), bf16. Quick: a toy of the same shape.
std::vector<std::string> base_of(bool quick, int layers, long steps) {
    std::vector<std::string> b;
    if (quick) {
        b = {"model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.head_dim=16", "model.ffn_hidden=88",
             "model.max_seq_len=32", "train.batch_size=4", "train.seq_len=32", "train.warmup=2",
             "train.eval_batches=2", "train.log_every=2"};
    } else {
        b = {"model.d_model=128", "model.n_heads=4", "model.n_kv_heads=2", "model.head_dim=32", "model.ffn_hidden=352",
             "model.max_seq_len=128", "train.batch_size=16", "train.seq_len=128", "train.warmup=20",
             "train.eval_batches=40", "train.log_every=10"};
    }
    b.push_back("model.n_layers=" + std::to_string(layers));
    b.push_back("train.steps=" + std::to_string(steps));
    b.push_back("train.eval_every=" + std::to_string(steps));
    b.push_back("train.ckpt_every=" + std::to_string(std::max(1L, steps / 4)));
    b.insert(b.end(), {"train.lr=3e-3", "train.min_lr=3e-4", "train.precision=bf16", "train.keep_best=false"});
    return b;
}

Suite depth_rules(bool quick) {
    Suite s;
    s.name = "depth-rules";
    s.description = "every residual rule and MoDA mode on one deep, narrow model at equal tokens";
    const int layers = quick ? 4 : 16;
    const long steps = quick ? 6 : 200;
    s.base = base_of(quick, layers, steps);
    s.seeds = {1, 2, 3};
    const std::string moda = "model.attention=moda";
    // The variants the claims compare come first, so that a suite cut short has them.
    s.variants = {
        {"pre", {"model.norm_placement=pre"}, "standard residual, pre-norm (the baseline)"},
        {"attnres_full", {"model.residual=attnres_full"}, "Full AttnRes"},
        {"attnres_block", {"model.residual=attnres_block", "model.attnres_block_size=4"}, "Block AttnRes, S = 4"},
        {"post", {"model.norm_placement=post"}, "standard residual, post-norm"},
        {"moda_attnkv_pre", {moda, "model.moda_depth_source=attn_kv"}, "MoDA, attention K/V, pre-norm"},
        {"moda_attnkv_post", {moda, "model.moda_depth_source=attn_kv", "model.norm_placement=post"},
         "MoDA, attention K/V, post-norm"},
        {"moda_ffnkv_pre", {moda, "model.moda_depth_source=attn_ffn_kv"}, "MoDA, attention and FFN K/V, pre-norm"},
        {"moda_ffnkv_post", {moda, "model.moda_depth_source=attn_ffn_kv", "model.norm_placement=post"},
         "MoDA, attention and FFN K/V, post-norm"},
        {"reordered", {"model.norm_placement=reordered"}, "standard residual, norm on the sublayer output"},
        {"rezero", {"model.residual=rezero"}, "ReZero gates, pre-norm"},
        {"layernorm_scaling", {"model.residual=layernorm_scaling"}, "LayerNorm-Scaling, pre-norm"},
        {"denseformer", {"model.residual=denseformer"}, "DenseFormer depth-weighted averages"},
        {"attnres_block_moda", {"model.residual=attnres_block", "model.attnres_block_size=4", moda},
         "Block AttnRes with MoDA (attention and FFN K/V)"},
    };
    const std::string ar = "Attention Residuals (arXiv 2603.15031), Table 2";
    const std::string ar5 = "Attention Residuals (arXiv 2603.15031), Fig. 5";
    const std::string ar4 = "Attention Residuals (arXiv 2603.15031), Table 4: 1.737 Full, 1.767 DenseFormer, 1.766 pre-norm";
    const std::string md = "MoDA (arXiv 2603.15619), Table 6";
    s.claims = {
        {"Full AttnRes below the baseline", ar, "val_loss", "attnres_full", "pre", "", "", -1},
        {"Block AttnRes below the baseline", ar, "val_loss", "attnres_block", "pre", "", "", -1},
        {"Full AttnRes below Block AttnRes", ar, "val_loss", "attnres_full", "attnres_block", "", "", -1},
        {"MoDA attention K/V: post-norm gain larger than pre-norm gain", md, "val_loss", "moda_attnkv_post", "post",
         "moda_attnkv_pre", "pre", -1},
        {"MoDA with FFN K/V: post-norm gain larger than pre-norm gain", md, "val_loss", "moda_ffnkv_post", "post",
         "moda_ffnkv_pre", "pre", -1},
        {"MoDA attention K/V lowers the pre-norm loss", md, "val_loss", "moda_attnkv_pre", "pre", "", "", -1},
        {"MoDA with FFN K/V lowers the pre-norm loss", md, "val_loss", "moda_ffnkv_pre", "pre", "", "", -1},
        {"Full AttnRes: sublayer outputs grow less with depth (ln RMS slope)", ar5, "output_log_rms_slope",
         "attnres_full", "pre", "", "", -1},
        {"Block AttnRes: sublayer outputs grow less with depth (ln RMS slope)", ar5, "output_log_rms_slope",
         "attnres_block", "pre", "", "", -1},
        {"Full AttnRes below DenseFormer", ar4, "val_loss", "attnres_full", "denseformer", "", "", -1},
        {"DenseFormer on a par with pre-norm", ar4, "val_loss", "denseformer", "pre", "", "", 0},
        {"LayerNorm-Scaling below pre-norm", "Curse of depth (arXiv 2502.05795)", "val_loss", "layernorm_scaling",
         "pre", "", "", -1},
        {"ReZero gates against pre-norm", "ReZero (arXiv 2003.04887), a baseline of the AttnRes paper's Table 5",
         "val_loss", "rezero", "pre", "", "", 0},
    };
    s.budget = quick ? "toy size, seconds" : "13 variants x 3 seeds, 200 steps of 2048 tokens (410K tokens) each, bf16";
    return s;
}

Suite curse_of_depth(bool quick) {
    Suite s;
    s.name = "curse-of-depth";
    s.description = "the share of useful blocks against depth, for pre-norm, LayerNorm-Scaling and Block AttnRes";
    const long steps = quick ? 6 : 150;
    s.base = base_of(quick, 8, steps);
    s.seeds = {1, 2, 3};
    s.usefulness = true;
    s.fit_tokens = quick ? 4096 : 65536;  // at full size, 64K tokens as the usefulness score asks
    const std::vector<int> depths = quick ? std::vector<int>{2, 4} : std::vector<int>{8, 16, 24, 32};
    for (int L : depths) {
        const std::string n = "model.n_layers=" + std::to_string(L), d = std::to_string(L);
        s.variants.push_back({"pre-" + d, {n}, "pre-norm, " + d + " blocks"});
        s.variants.push_back({"layernorm_scaling-" + d, {n, "model.residual=layernorm_scaling"},
                              "LayerNorm-Scaling, " + d + " blocks"});
        s.variants.push_back({"attnres_block-" + d, {n, "model.residual=attnres_block", "model.attnres_block_size=4"},
                              "Block AttnRes (S = 4), " + d + " blocks"});
    }
    const std::string lo = std::to_string(depths.front()), hi = std::to_string(depths.back());
    // The variants the claims compare first (pre-norm at both ends, the two fixes at the deepest), so
    // that a suite cut short has them; then the depths in between.
    std::stable_partition(s.variants.begin(), s.variants.end(), [&](const SuiteVariant& v) {
        return v.name == "pre-" + lo || v.name.ends_with("-" + hi);
    });
    const std::string cd = "Curse of depth (arXiv 2502.05795; arXiv 2603.15389)";
    s.claims = {
        {"pre-norm: the useful share falls from " + lo + " to " + hi + " blocks", cd, "useful_share", "pre-" + hi,
         "pre-" + lo, "", "", -1},
        {"LayerNorm-Scaling keeps more blocks useful than pre-norm at " + hi + " blocks", cd, "useful_share",
         "layernorm_scaling-" + hi, "pre-" + hi, "", "", +1},
        {"Block AttnRes keeps more blocks useful than pre-norm at " + hi + " blocks", cd, "useful_share",
         "attnres_block-" + hi, "pre-" + hi, "", "", +1},
        {"pre-norm: deeper models can drop a larger share of blocks", cd, "removable_share", "pre-" + hi, "pre-" + lo, "",
         "", +1},
        {"pre-norm: a block's linear replacement costs less at " + hi + " blocks than at " + lo, cd,
         "mean_linear_excess", "pre-" + hi, "pre-" + lo, "", "", -1},
        {"LayerNorm-Scaling: blocks less replaceable than pre-norm's at " + hi, cd, "mean_linear_excess",
         "layernorm_scaling-" + hi, "pre-" + hi, "", "", +1},
        {"Block AttnRes: blocks less replaceable than pre-norm's at " + hi, cd, "mean_linear_excess",
         "attnres_block-" + hi, "pre-" + hi, "", "", +1},
    };
    s.budget = quick ? "toy size, seconds" : "12 variants x 3 seeds, 150 steps of 2048 tokens (307K tokens) each, bf16";
    return s;
}

Suite moda_window(bool quick) {
    Suite s;
    s.name = "moda-window";
    s.description = "MoDA with a bounded depth window W (slots each layer reads), 16 blocks";
    const long steps = quick ? 6 : 200;
    s.base = base_of(quick, quick ? 4 : 16, steps);
    s.base.insert(s.base.end(), {"model.attention=moda", "model.moda_depth_source=attn_ffn_kv"});
    s.seeds = {1, 2, 3};
    const std::vector<int> ws = quick ? std::vector<int>{2, 0} : std::vector<int>{2, 4, 8, 0};
    for (int w : ws) {
        const std::string name = w ? "W" + std::to_string(w) : "W-all";
        s.variants.push_back({name, {"model.moda_depth_window=" + std::to_string(w)},
                              w ? "each layer reads its " + std::to_string(w) + " most recent depth slots"
                                : "every earlier slot (the paper's MoDA)"});
    }
    for (size_t i = 0; i + 1 < s.variants.size(); i++)
        s.claims.push_back({s.variants[i].name + " against every slot", "strata's bounded window (MoDA §6.2 future work)",
                            "val_loss", s.variants[i].name, "W-all", "", "", 0});
    s.budget = quick ? "toy size, seconds" : "4 windows x 3 seeds, 200 steps of 2048 tokens (410K tokens) each, bf16";
    return s;
}

double non_embedding_params(const ModelConfig& c) {
    return c.num_params() - double(c.vocab_size) * c.d_model * (c.tie_embeddings ? 1 : 2);
}

std::string hex64(uint64_t h) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

// What decides a run's result: the resolved config less its paths and thread count.
std::string config_hash(const RunConfig& rc) {
    nlohmann::json j = rc.to_json();
    for (const char* k : {"out_dir", "corpus", "data_dir", "threads", "resume", "overwrite", "allow_changes"})
        j["train"].erase(k);
    const std::string s = j.dump();
    return hex64(XXH3_64bits(s.data(), s.size()));
}

nlohmann::json read_json_file(const fs::path& p) {
    std::ifstream in(p);
    if (!in) return nullptr;
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

double median_tokens_per_s(const fs::path& run_dir) {
    std::vector<double> v;
    std::ifstream in(run_dir / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_object() && j.contains("tokens_per_s") && j["tokens_per_s"].is_number()) v.push_back(j["tokens_per_s"]);
    }
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// The CPU's model name (/proc/cpuinfo), for the results' record.
std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("model name", 0) == 0) {
            const size_t c = line.find(':');
            return c == std::string::npos ? line : line.substr(c + 2);
        }
    return "unknown";
}

// The ffn_hidden (a multiple of 8) that brings a config's non-embedding parameters closest to `target`.
int matched_ffn(ModelConfig c, double target) {
    const int best0 = c.ffn_hidden, top = 4 * c.ffn_hidden;
    int best = best0;
    double best_gap = 1e300;
    for (int f = 8; f <= top; f += 8) {
        c.ffn_hidden = f;
        const double gap = std::fabs(non_embedding_params(c) - target);
        if (gap < best_gap) best_gap = gap, best = f;
    }
    return best;
}

struct Planned {
    const SuiteVariant* v;
    uint64_t seed;
    RunConfig rc;
    std::string hash;
    fs::path run_dir, result;
};

}  // namespace

std::vector<Suite> experiment_suites(bool quick) { return {depth_rules(quick), curse_of_depth(quick), moda_window(quick)}; }

std::vector<std::string> suite_names() {
    std::vector<std::string> n;
    for (const Suite& s : experiment_suites(false)) n.push_back(s.name);
    return n;
}

double t_quantile_975(int df) {
    // The 0.975 quantile of Student's t for df = 1 .. 30; beyond, 1.96 + 2.4/df is within 0.002.
    static const double t[] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                               2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                               2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
    STRATA_CHECK(df >= 1, "t_quantile_975: df must be at least 1");
    return df <= 30 ? t[df - 1] : 1.96 + 2.4 / df;
}

nlohmann::json paired_interval(const std::vector<double>& x) {
    const size_t n = x.size();
    nlohmann::json j = {{"n", n}, {"values", x}};
    if (n == 0) return j;
    double mean = 0;
    for (double v : x) mean += v;
    mean /= double(n);
    j["mean"] = mean;
    if (n < 2) return j;
    double ss = 0;
    for (double v : x) ss += (v - mean) * (v - mean);
    const double sd = std::sqrt(ss / double(n - 1));
    const double half = t_quantile_975(int(n) - 1) * sd / std::sqrt(double(n));
    j["sd"] = sd;
    j["lo"] = mean - half;
    j["hi"] = mean + half;
    j["excludes_zero"] = mean - half > 0 || mean + half < 0;
    // The seeds at which this mean and spread would give an interval clear of zero.
    long need = 0;
    if (!(mean - half > 0 || mean + half < 0) && sd > 0 && mean != 0)
        for (long k = 2; k <= 100000; k++)
            if (t_quantile_975(int(k - 1)) * sd / std::sqrt(double(k)) < std::fabs(mean)) {
                need = k;
                break;
            }
    j["seeds_needed"] = need;
    return j;
}

bool run_suite(const Suite& s, const ExperimentOptions& o) {
    const fs::path runs = fs::path(o.runs_dir) / s.name, results = fs::path(o.results_dir) / s.name;
    // A missing corpus is the user's to fix, not a failed run for every variant.
    if (!o.report_only && !fs::exists(o.corpus) && !fs::exists(fs::path(o.data_dir) / "train.bin"))
        throw Error("experiment " + s.name + ": the corpus " + o.corpus + " is not there and " + o.data_dir +
                    " holds no prepared shards (bash scripts/get_corpus.sh builds the default corpus; --corpus "
                    "names another)");
    fs::create_directories(results);

    // Plan every run: its config, its hash, and the parameter match.
    std::vector<Planned> plan;
    std::map<int, double> reference_params;  // by n_layers: the first variant of that depth's parameters
    for (const SuiteVariant& v : s.variants) {
        std::vector<std::string> sets = s.base;
        sets.insert(sets.end(), v.sets.begin(), v.sets.end());
        const RunConfig rc = load_run_config("", sets);
        reference_params.emplace(rc.model.n_layers, non_embedding_params(rc.model));
    }
    for (const SuiteVariant& v : s.variants) {
        for (uint64_t seed : s.seeds) {
            std::vector<std::string> sets = s.base;
            sets.insert(sets.end(), v.sets.begin(), v.sets.end());
            RunConfig probe = load_run_config("", sets);
            // A variant that adds parameters (MoDA's FFN K/V projections) gets a narrower MLP, so that
            // every variant of a depth has the reference's non-embedding parameters within ±3 %.
            const double ref = reference_params.at(probe.model.n_layers);
            if (std::fabs(non_embedding_params(probe.model) / ref - 1) > 0.03)
                sets.push_back("model.ffn_hidden=" + std::to_string(matched_ffn(probe.model, ref)));
            const fs::path run_dir = runs / v.name / ("seed-" + std::to_string(seed));
            sets.insert(sets.end(), {"model.seed=" + std::to_string(seed), "train.seed=" + std::to_string(seed),
                                     "train.corpus=" + o.corpus, "train.data_dir=" + o.data_dir,
                                     "train.out_dir=" + run_dir.string(), "train.threads=" + std::to_string(o.threads)});
            Planned p{&v, seed, load_run_config("", sets), "", run_dir,
                      results / (v.name + "-seed-" + std::to_string(seed) + ".json")};
            const double ratio = non_embedding_params(p.rc.model) / ref;
            if (std::fabs(ratio - 1) > 0.03)
                throw Error("experiment " + s.name + ": variant " + v.name + " has " +
                            std::to_string(non_embedding_params(p.rc.model)) + " non-embedding parameters, " +
                            std::to_string(ratio) + "x the reference's: more than 3 % apart");
            p.hash = config_hash(p.rc);
            plan.push_back(std::move(p));
        }
    }

    long done = 0, index = 0;
    for (Planned& p : plan) {
        index++;
        const std::string tag = "[" + std::to_string(index) + "/" + std::to_string(plan.size()) + "] " + s.name + " " +
                                p.v->name + " seed " + std::to_string(p.seed);
        const nlohmann::json old = read_json_file(p.result);
        if (old.is_object() && old.value("config_hash", "") == p.hash &&
            !(o.retry_failed && old.value("status", "") == "failed")) {
            done += old.value("status", "") == "done";
            continue;  // up to date
        }
        if (o.report_only) continue;
        bool fresh = false;
        if (old.is_object()) {
            std::printf("%s: its result is stale (config hash %s, now %s): training it again\n", tag.c_str(),
                        old.value("config_hash", "?").c_str(), p.hash.c_str());
            fresh = true;
        }
        const fs::path marker = p.run_dir / "experiment.json";
        const nlohmann::json mk = read_json_file(marker);
        if (mk.is_object() && mk.value("config_hash", "") != p.hash) fresh = true;  // a run of an older config
        RunConfig rc = p.rc;
        if (fresh || !fs::exists(p.run_dir / "checkpoint.safetensors")) rc.train.resume = false, rc.train.overwrite = true;
        std::printf("%s: training (%ld steps) ...\n", tag.c_str(), rc.train.steps);
        std::fflush(stdout);
        fs::create_directories(p.run_dir);
        atomic_write_file(marker.string(), nlohmann::json({{"config_hash", p.hash}}).dump() + "\n");
        nlohmann::json r = {{"suite", s.name},
                            {"variant", p.v->name},
                            {"seed", p.seed},
                            {"config_hash", p.hash},
                            {"config", p.rc.to_json()},
                            {"non_embedding_params", non_embedding_params(p.rc.model)},
                            {"params", p.rc.model.num_params()}};
        r["config"]["train"].erase("out_dir");
        r["config"]["train"].erase("corpus");
        r["config"]["train"].erase("data_dir");
        const auto t0 = std::chrono::steady_clock::now();
        try {
            TrainOptions to;
            TrainResult tr = train(rc, to);
            r["train_wall_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            r["cpu"] = cpu_model();
            if (tr.interrupted) return false;
            if (tr.stopped_diverged) {
                r["status"] = "failed";
                r["reason"] = "diverged at step " + std::to_string(tr.diverged_at);
            } else {
                r["status"] = "done";
                r["steps"] = tr.step;
                r["tokens"] = tr.step * long(rc.train.batch_size) * rc.train.seq_len * rc.train.grad_accum;
                r["val_loss"] = tr.val_loss;
                r["train_loss"] = tr.train_loss;
                r["train_tokens_per_s"] = median_tokens_per_s(p.run_dir);
                if (!std::isfinite(tr.val_loss)) r["status"] = "failed", r["reason"] = "non-finite validation loss";
            }
        } catch (const Error& e) {
            r["status"] = "failed";
            r["reason"] = e.what();
        }
        if (r["status"] == "done") {
            LoadedCheckpoint lc = load_checkpoint(p.run_dir.string(), /*weights_only=*/true);
            Model<float>& m = *lc.model;
            const TokenShard val = TokenShard::open(o.data_dir + "/val.bin");
            DepthReportOptions ro;
            ro.batch_size = rc.train.batch_size, ro.seq_len = rc.train.seq_len, ro.batches = 4, ro.skip = false;
            nlohmann::json rep = depth_report(m, val, ro, p.run_dir.string());
            r["output_log_rms_slope"] = rep["log_rms_slope"]["output"];
            r["state_log_rms_slope"] = rep["log_rms_slope"]["state"];
            r["input_log_rms_slope"] = rep["log_rms_slope"]["input"];
            if (m.cfg.attention == AttentionKind::moda) {
                const long kvd = long(m.cfg.n_kv_heads) * m.cfg.head_dim;
                long read = 0;
                for (long l = 0; l < m.cfg.n_layers; l++) {
                    const long slots = moda_slots_read(m.cfg, l);
                    read += m.cfg.moda_depth_window > 0 ? std::min<long>(slots, m.cfg.moda_depth_window) : slots;
                }
                r["depth_bytes_read_per_token"] = read * 2 * kvd * long(sizeof(float));
                r["depth_buffer_bytes"] = 2.0 * 2.0 * rc.train.batch_size * rc.train.seq_len * moda_slots(m.cfg) * kvd *
                                          double(sizeof(float));
            }
            r["depth_report"] = rep;
            if (s.usefulness) {
                const TokenShard fit = TokenShard::open(o.data_dir + "/train.bin");
                UsefulnessOptions uo;
                uo.batch_size = rc.train.batch_size, uo.seq_len = rc.train.seq_len, uo.batches = 4;
                uo.fit_tokens = s.fit_tokens;
                uo.causal = false;
                nlohmann::json u = measure_usefulness(m, val, fit, uo);
                r["useful_share"] = u["linear"]["useful_share"];
                // The largest share of blocks that can go, least useful first, for ≤ 5 % more loss.
                const auto& rl = u["removal"]["loss"];
                long k = 0;
                for (size_t i = 1; i < rl.size(); i++)
                    if (rl[i].get<double>() <= 1.05 * rl[0].get<double>()) k = long(i);
                    else break;
                r["removable_share"] = double(k) / double(m.cfg.n_layers);
                r["usefulness"] = u;
            }
            done++;
        }
        atomic_write_file(p.result.string(), r.dump(2) + "\n");
        std::printf("%s: %s", tag.c_str(), r["status"].get<std::string>().c_str());
        if (r["status"] == "done") std::printf(", validation loss %.4f\n", r["val_loss"].get<double>());
        else std::printf(" (%s)\n", r["reason"].get<std::string>().c_str());
        std::fflush(stdout);
    }

    // The summary: each variant's per-seed values, and each claim's paired differences.
    nlohmann::json sum = {{"suite", s.name}, {"description", s.description}, {"budget", s.budget},
                          {"seeds", s.seeds}, {"base", s.base}, {"runs_done", done}, {"runs_planned", plan.size()}};
    std::map<std::string, std::map<uint64_t, nlohmann::json>> res;  // variant → seed → result
    nlohmann::json vars = nlohmann::json::array();
    for (const SuiteVariant& v : s.variants) {
        nlohmann::json vj = {{"name", v.name}, {"describe", v.describe}, {"sets", v.sets}};
        nlohmann::json seeds = nlohmann::json::array();
        for (uint64_t seed : s.seeds) {
            nlohmann::json r = read_json_file(results / (v.name + "-seed-" + std::to_string(seed) + ".json"));
            if (!r.is_object()) continue;
            // The mean over blocks of L_lin/L_base − 1: how much a block's linear replacement costs,
            // without the 1.1 threshold (small models can have no block above it at any depth).
            if (r.contains("usefulness") && !r["usefulness"]["linear"]["blocks"].empty()) {
                double sum = 0;
                for (const auto& b : r["usefulness"]["linear"]["blocks"]) sum += b["ratio"].get<double>() - 1;
                r["mean_linear_excess"] = sum / double(r["usefulness"]["linear"]["blocks"].size());
            }
            res[v.name][seed] = r;
            nlohmann::json e = {{"seed", seed}, {"status", r.value("status", "?")}};
            for (const char* k : {"val_loss", "train_tokens_per_s", "useful_share", "mean_linear_excess", "removable_share",
                                  "output_log_rms_slope", "state_log_rms_slope", "non_embedding_params",
                                  "depth_buffer_bytes", "depth_bytes_read_per_token", "reason", "config_hash"})
                if (r.contains(k)) e[k] = r[k];
            if (r.contains("usefulness")) {
                e["block_ratio"] = nlohmann::json::array();
                for (const auto& b : r["usefulness"]["linear"]["blocks"]) e["block_ratio"].push_back(b["ratio"]);
                e["angular_distance"] = r["usefulness"]["angular_distance"];
            }
            // per-sublayer profiles, in sublayer order: what the suite's profile figure compares
            if (r.contains("depth_report"))
                for (const char* k : {"output_rms", "state_rms", "grad_norm"}) {
                    nlohmann::json a = nlohmann::json::array();
                    for (const auto& sl : r["depth_report"]["sublayers"])
                        if (sl.contains(k)) a.push_back(sl[k]);
                    if (!a.empty()) e[k] = a;
                }
            seeds.push_back(e);
        }
        vj["runs"] = seeds;
        vars.push_back(vj);
    }
    sum["variants"] = vars;
    nlohmann::json claims = nlohmann::json::array();
    for (const SuiteClaim& c : s.claims) {
        std::vector<double> diff;
        std::vector<uint64_t> used;
        auto value = [&](const std::string& v, uint64_t seed, double* out) {
            auto it = res.find(v);
            if (it == res.end() || !it->second.count(seed)) return false;
            const auto& r = it->second.at(seed);
            if (r.value("status", "") != "done" || !r.contains(c.metric)) return false;
            *out = r[c.metric].get<double>();
            return true;
        };
        for (uint64_t seed : s.seeds) {
            double a, b, cc = 0, d = 0;
            if (!value(c.a, seed, &a) || !value(c.b, seed, &b)) continue;
            if (!c.c.empty() && (!value(c.c, seed, &cc) || !value(c.d, seed, &d))) continue;
            diff.push_back((a - b) - (cc - d));
            used.push_back(seed);
        }
        nlohmann::json cj = {{"name", c.name}, {"source", c.source}, {"metric", c.metric}, {"a", c.a}, {"b", c.b},
                             {"expected_sign", c.expected_sign}, {"seeds", used}};
        if (!c.c.empty()) cj["c"] = c.c, cj["d"] = c.d;
        cj["difference"] = paired_interval(diff);
        const auto& pi = cj["difference"];
        std::string verdict = "not measured";
        if (pi.contains("excludes_zero")) {
            const double lo = pi["lo"], hi = pi["hi"];
            if (c.expected_sign == 0) verdict = pi["excludes_zero"].get<bool>() ? "differs" : "no difference detected";
            else if ((c.expected_sign < 0 && hi < 0) || (c.expected_sign > 0 && lo > 0)) verdict = "reproduced";
            else if ((c.expected_sign < 0 && lo > 0) || (c.expected_sign > 0 && hi < 0)) verdict = "reversed";
            else verdict = "not reproduced at this scale";
        }
        cj["verdict"] = verdict;
        claims.push_back(cj);
    }
    sum["claims"] = claims;
    atomic_write_file((results / "summary.json").string(), sum.dump(2) + "\n");
    return true;
}

}  // namespace strata
