#include "model/config.h"
#include "model/model.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <utility>

#include "core/error.h"
#include "core/json_fields.h"

namespace strata {

namespace {
template <typename E>
struct Names;  // Names<E>::table: every value of E with its name, in declaration order
template <>
struct Names<NormPlacement> {
    static constexpr std::pair<NormPlacement, const char*> table[] = {
        {NormPlacement::pre, "pre"}, {NormPlacement::post, "post"}, {NormPlacement::reordered, "reordered"}};
};
template <>
struct Names<Residual> {
    static constexpr std::pair<Residual, const char*> table[] = {
        {Residual::standard, "standard"},   {Residual::attnres_full, "attnres_full"},
        {Residual::attnres_block, "attnres_block"}, {Residual::rezero, "rezero"},
        {Residual::layernorm_scaling, "layernorm_scaling"}, {Residual::denseformer, "denseformer"}};
};
template <>
struct Names<AttnResKeyNorm> {
    static constexpr std::pair<AttnResKeyNorm, const char*> table[] = {{AttnResKeyNorm::learned, "learned"},
                                                                       {AttnResKeyNorm::none, "none"}};
};
template <>
struct Names<AttnResGate> {
    static constexpr std::pair<AttnResGate, const char*> table[] = {{AttnResGate::softmax, "softmax"},
                                                                    {AttnResGate::sigmoid, "sigmoid"}};
};
template <>
struct Names<AttnResQuery> {
    static constexpr std::pair<AttnResQuery, const char*> table[] = {{AttnResQuery::fixed, "static"},
                                                                     {AttnResQuery::input, "input"}};
};
template <>
struct Names<AttentionKind> {
    static constexpr std::pair<AttentionKind, const char*> table[] = {{AttentionKind::causal, "causal"},
                                                                      {AttentionKind::moda, "moda"}};
};

template <>
struct Names<ModaDepthSource> {
    static constexpr std::pair<ModaDepthSource, const char*> table[] = {{ModaDepthSource::attn_kv, "attn_kv"},
                                                                        {ModaDepthSource::attn_ffn_kv, "attn_ffn_kv"}};
};
template <>
struct Names<SeqMask> {
    static constexpr std::pair<SeqMask, const char*> table[] = {
        {SeqMask::causal, "causal"}, {SeqMask::noncausal, "noncausal"}, {SeqMask::none, "none"}};
};
template <>
struct Names<DepthVisibility> {
    static constexpr std::pair<DepthVisibility, const char*> table[] = {{DepthVisibility::own, "own"},
                                                                        {DepthVisibility::chunk, "chunk"}};
};

// Each table lists its enum's values in order, so the last one's index is the count less one: an
// enumerator added without a name stops the build here (as long as it is added last, as C++ numbers
// them).
template <typename E>
constexpr bool complete(E last) {
    long i = 0;
    for (const auto& [e, n] : Names<E>::table)
        if (long(e) != i++ || n == nullptr) return false;
    return long(last) == i - 1;
}
static_assert(complete(NormPlacement::reordered));
static_assert(complete(Residual::denseformer));
static_assert(complete(AttentionKind::moda));
static_assert(complete(AttnResKeyNorm::none));
static_assert(complete(AttnResGate::sigmoid));
static_assert(complete(AttnResQuery::input));
static_assert(complete(ModaDepthSource::attn_ffn_kv));
static_assert(complete(SeqMask::none));
static_assert(complete(DepthVisibility::chunk));

template <typename E>
const char* name_of(E e) {
    for (const auto& [v, n] : Names<E>::table)
        if (v == e) return n;
    return "?";
}
}  // namespace

const char* to_string(NormPlacement p) { return name_of(p); }
const char* to_string(Residual r) { return name_of(r); }
const char* to_string(AttentionKind a) { return name_of(a); }
const char* to_string(AttnResKeyNorm k) { return name_of(k); }
const char* to_string(AttnResGate g) { return name_of(g); }
const char* to_string(AttnResQuery q) { return name_of(q); }
const char* to_string(ModaDepthSource s) { return name_of(s); }
const char* to_string(SeqMask m) { return name_of(m); }
const char* to_string(DepthVisibility v) { return name_of(v); }

template <typename E>
std::string allowed_names() {
    std::string r;
    const size_t n = std::size(Names<E>::table);
    for (size_t i = 0; i < n; i++)
        r += (i == 0 ? "" : i + 1 == n ? " or " : ", ") + std::string("\"") + Names<E>::table[i].second + "\"";
    return r;
}

template <typename E>
E parse_name(const std::string& name, const std::string& what) {
    for (const auto& [v, n] : Names<E>::table)
        if (name == n) return v;
    throw Error(what + " must be " + allowed_names<E>() + ", not \"" + name + "\"");
}

template NormPlacement parse_name<NormPlacement>(const std::string&, const std::string&);
template Residual parse_name<Residual>(const std::string&, const std::string&);
template AttentionKind parse_name<AttentionKind>(const std::string&, const std::string&);
template AttnResKeyNorm parse_name<AttnResKeyNorm>(const std::string&, const std::string&);
template AttnResGate parse_name<AttnResGate>(const std::string&, const std::string&);
template AttnResQuery parse_name<AttnResQuery>(const std::string&, const std::string&);
template DepthVisibility parse_name<DepthVisibility>(const std::string&, const std::string&);
template SeqMask parse_name<SeqMask>(const std::string&, const std::string&);
template ModaDepthSource parse_name<ModaDepthSource>(const std::string&, const std::string&);
template std::string allowed_names<NormPlacement>();
template std::string allowed_names<Residual>();
template std::string allowed_names<AttentionKind>();
template std::string allowed_names<AttnResKeyNorm>();
template std::string allowed_names<AttnResGate>();
template std::string allowed_names<AttnResQuery>();
template std::string allowed_names<DepthVisibility>();
template std::string allowed_names<SeqMask>();
template std::string allowed_names<ModaDepthSource>();

int attnres_sublayers_per_block(const ModelConfig& c) {
    switch (c.residual) {
        case Residual::attnres_full: return 1;
        case Residual::attnres_block: return c.attnres_block_size;
        default: return 0;
    }
}

long moda_slots_read(const ModelConfig& c, long layer) {
    if (c.attention != AttentionKind::moda) return 0;
    return (moda_ffn_kv(c) ? 2 : 1) * layer;  // attention K/V (and FFN K/V) of each earlier layer
}

int attnres_max_sources(const ModelConfig& c) {
    const int S = attnres_sublayers_per_block(c);
    if (S == 0) return 0;
    const int n_sub = 2 * c.n_layers;
    return 1 + (n_sub + S - 1) / S;  // the embedding and every block; the output op sees the most
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& origin) {
    ModelConfig c;
    JsonFields f(j, origin);
    f.get("vocab_size", c.vocab_size);
    f.get("d_model", c.d_model);
    f.get("n_layers", c.n_layers);
    f.get("n_heads", c.n_heads);
    f.get("n_kv_heads", c.n_kv_heads);
    f.get("head_dim", c.head_dim);
    f.get("ffn_hidden", c.ffn_hidden);
    f.get("max_seq_len", c.max_seq_len);
    f.get("rope_theta", c.rope_theta);
    f.get("norm_eps", c.norm_eps);
    std::string np = to_string(c.norm_placement);
    f.get("norm_placement", np);
    c.norm_placement = parse_name<NormPlacement>(np, origin + ": norm_placement");
    f.get("qk_norm", c.qk_norm);
    std::string res = to_string(c.residual);
    f.get("residual", res);
    c.residual = parse_name<Residual>(res, origin + ": residual");
    f.get("attnres_block_size", c.attnres_block_size);
    std::string kn = to_string(c.attnres_key_norm);
    f.get("attnres_key_norm", kn);
    c.attnres_key_norm = parse_name<AttnResKeyNorm>(kn, origin + ": attnres_key_norm");
    std::string gate = to_string(c.attnres_gate);
    f.get("attnres_gate", gate);
    c.attnres_gate = parse_name<AttnResGate>(gate, origin + ": attnres_gate");
    std::string query = to_string(c.attnres_query);
    f.get("attnres_query", query);
    c.attnres_query = parse_name<AttnResQuery>(query, origin + ": attnres_query");
    std::string att = to_string(c.attention);
    f.get("attention", att);
    c.attention = parse_name<AttentionKind>(att, origin + ": attention");
    std::string src = to_string(c.moda_depth_source);
    f.get("moda_depth_source", src);
    c.moda_depth_source = parse_name<ModaDepthSource>(src, origin + ": moda_depth_source");
    if (j.contains("moda_ffn_kv")) {  // the key moda_depth_source replaced; old checkpoints hold it
        bool ffn_kv = true;
        f.get("moda_ffn_kv", ffn_kv);
        const ModaDepthSource old = ffn_kv ? ModaDepthSource::attn_ffn_kv : ModaDepthSource::attn_kv;
        if (j.contains("moda_depth_source") && old != c.moda_depth_source)
            throw Error(origin + ": moda_ffn_kv = " + (ffn_kv ? "true" : "false") + " contradicts moda_depth_source = \"" +
                        to_string(c.moda_depth_source) + "\"; give only moda_depth_source");
        c.moda_depth_source = old;
        std::fprintf(stderr, "note: %s: moda_ffn_kv is read as moda_depth_source = \"%s\" (the key that replaced it)\n",
                     origin.c_str(), to_string(old));
    }
    std::string mask = to_string(c.moda_sequence_mask);
    f.get("moda_sequence_mask", mask);
    c.moda_sequence_mask = parse_name<SeqMask>(mask, origin + ": moda_sequence_mask");
    std::string vis = to_string(c.moda_depth_visibility);
    f.get("moda_depth_visibility", vis);
    c.moda_depth_visibility = parse_name<DepthVisibility>(vis, origin + ": moda_depth_visibility");
    f.get("moda_chunk_size", c.moda_chunk_size);
    if (j.contains("moda_chunk_size") && c.moda_chunk_size <= 0 && c.moda_depth_visibility == DepthVisibility::chunk)
        throw Error(origin + ": moda_chunk_size must be a positive number of tokens, not " +
                    std::to_string(c.moda_chunk_size));
    if (!j.contains("moda_chunk_size") && c.moda_depth_visibility == DepthVisibility::chunk && c.n_kv_heads > 0)
        c.moda_chunk_size = std::max(1, 64 / std::max(1, c.n_heads / c.n_kv_heads));  // the official kernel's 64/G
    f.get("moda_depth_window", c.moda_depth_window);
    f.get("tie_embeddings", c.tie_embeddings);
    f.get("init_std", c.init_std);
    f.get("seed", c.seed);
    f.finish();
    c.validate(origin);
    return c;
}

nlohmann::json ModelConfig::to_json() const {
    return {{"vocab_size", vocab_size},   {"d_model", d_model},       {"n_layers", n_layers},
            {"n_heads", n_heads},         {"n_kv_heads", n_kv_heads}, {"head_dim", head_dim},
            {"ffn_hidden", ffn_hidden},   {"max_seq_len", max_seq_len}, {"rope_theta", rope_theta},
            {"norm_eps", norm_eps},       {"norm_placement", to_string(norm_placement)},
            {"qk_norm", qk_norm},         {"tie_embeddings", tie_embeddings}, {"init_std", init_std},
            {"seed", seed},               {"residual", to_string(residual)},
            {"attnres_block_size", attnres_block_size}, {"attnres_key_norm", to_string(attnres_key_norm)},
            {"attnres_gate", to_string(attnres_gate)},  {"attnres_query", to_string(attnres_query)},
            {"attention", to_string(attention)},
            {"moda_depth_source", to_string(moda_depth_source)},
            {"moda_sequence_mask", to_string(moda_sequence_mask)},
            {"moda_depth_visibility", to_string(moda_depth_visibility)},
            {"moda_chunk_size", moda_chunk_size},
            {"moda_depth_window", moda_depth_window}};
}

void ModelConfig::validate(const std::string& origin) const {
    auto positive = [&](const char* name, long v, long max) {
        if (v <= 0) throw Error(origin + ": " + name + " must be positive, got " + std::to_string(v));
        if (v > max)
            throw Error(origin + ": " + name + " = " + std::to_string(v) + " is absurdly large (limit " +
                        std::to_string(max) + ")");
    };
    positive("vocab_size", vocab_size, 1 << 20);
    positive("d_model", d_model, 1 << 16);
    positive("n_layers", n_layers, 1024);
    positive("n_heads", n_heads, 1024);
    positive("n_kv_heads", n_kv_heads, 1024);
    positive("head_dim", head_dim, 4096);
    positive("ffn_hidden", ffn_hidden, 1 << 18);
    positive("max_seq_len", max_seq_len, 1 << 20);
    if (d_model != n_heads * head_dim)
        throw Error(origin + ": d_model (" + std::to_string(d_model) + ") must equal n_heads * head_dim (" +
                    std::to_string(n_heads) + " * " + std::to_string(head_dim) + ")");
    if (n_heads % n_kv_heads != 0)
        throw Error(origin + ": n_heads (" + std::to_string(n_heads) + ") must be divisible by n_kv_heads (" +
                    std::to_string(n_kv_heads) + ")");
    if (head_dim % 2 != 0) throw Error(origin + ": head_dim must be even for RoPE");
    positive("attnres_block_size", attnres_block_size, 2048);
    residual_validate(*this, origin);
    moda_validate(origin);
    if (!(rope_theta > 0)) throw Error(origin + ": rope_theta must be positive");
    // The largest RoPE angle, position × theta^(-2i/head_dim), must be finite or the tables hold NaN.
    const double worst_freq = rope_theta >= 1 ? 1.0 : std::pow(rope_theta, -double(head_dim - 2) / double(head_dim));
    if (!std::isfinite(double(max_seq_len) * worst_freq))
        throw Error(origin + ": rope_theta " + std::to_string(rope_theta) + " is so small that the RoPE angles overflow");
    if (!(norm_eps > 0) || norm_eps > 1) throw Error(origin + ": norm_eps must be in (0, 1]");
    if (!(init_std > 0) || init_std > 10) throw Error(origin + ": init_std must be in (0, 10]");
    if (num_params() > 4e9) throw Error(origin + ": the model would have more than 4e9 parameters");
    // Weights, gradients and RoPE tables are allocated (and touched) when the model is built: a config
    // (or a checkpoint's header) describing a model larger than the machine is an error, not an OOM kill.
    check_memory(memory_bytes(0, 0, false), origin, "the model's weights, gradients and RoPE tables");
}

void ModelConfig::moda_validate(const std::string& origin) const {
    const bool moda = attention == AttentionKind::moda;
    auto only_moda = [&](bool used, const std::string& what) {
        if (used && !moda)
            throw Error(origin + ": " + what + " needs attention = \"moda\" (attention is \"" + to_string(attention) +
                        "\")");
    };
    only_moda(moda_sequence_mask != SeqMask::causal, std::string("moda_sequence_mask = \"") + to_string(moda_sequence_mask) + "\"");
    only_moda(moda_depth_visibility != DepthVisibility::own,
              std::string("moda_depth_visibility = \"") + to_string(moda_depth_visibility) + "\"");
    only_moda(moda_chunk_size != 0, "moda_chunk_size");
    only_moda(moda_depth_window != 0, "moda_depth_window");
    if (moda_depth_visibility == DepthVisibility::chunk) {
        if (moda_chunk_size <= 0)
            throw Error(origin + ": moda_chunk_size must be a positive number of tokens, not " +
                        std::to_string(moda_chunk_size));
        if (moda_chunk_size > max_seq_len)
            throw Error(origin + ": moda_chunk_size = " + std::to_string(moda_chunk_size) + " exceeds max_seq_len = " +
                        std::to_string(max_seq_len));
    } else if (moda_chunk_size != 0) {
        throw Error(origin + ": moda_chunk_size is used only with moda_depth_visibility = \"chunk\"");
    }
    if (moda_depth_window < 0)
        throw Error(origin + ": moda_depth_window must be 0 (every slot) or a positive slot count, not " +
                    std::to_string(moda_depth_window));
    if (moda && moda_depth_window > moda_slots(*this))
        throw Error(origin + ": moda_depth_window = " + std::to_string(moda_depth_window) +
                    " exceeds the model's depth slot count " + std::to_string(moda_slots(*this)) + " (" +
                    std::to_string(moda_ffn_kv(*this) ? 2 : 1) + " per layer before the last)");
}

double ModelConfig::num_params() const {
    const double V = vocab_size, D = d_model, H = n_heads, Hk = n_kv_heads, d = head_dim, F = ffn_hidden;
    const double per_layer = 2 * D + (H + 2 * Hk) * d * D + (qk_norm ? 2 * d : 0) + D * H * d + 3 * F * D;
    const double ffn_kv = moda_ffn_kv(*this) ? double(n_layers - 1) * 2 * Hk * d * D : 0;
    return V * D * (tie_embeddings ? 1 : 2) + double(n_layers) * per_layer + D + ffn_kv + residual_num_params(*this);
}

double ModelConfig::memory_bytes(long B, long T, bool training, Precision precision) const {
    // Parameters and gradients, the RoPE tables (cos and sin, d/2 each per position), the activation
    // arena exactly as the model plans it, and when training the two AdamW moments; all float, plus
    // under bf16 the parameters' bf16 copy.
    const double P = num_params(), rope = double(max_seq_len) * head_dim;
    double arena = 0;
    if (B > 0 && T > 0) {
        TensorPlan plan;
        if (precision == Precision::bf16) {
            Model<float>::ActsOf<bf16> scratch{};
            auto rule = make_residual_rule<float, bf16>(*this);
            Model<float>::describe_activations(plan, *this, B * T, training, scratch, *rule);
        } else {
            Model<float>::Acts scratch{};
            auto rule = make_residual_rule<float, float>(*this);
            Model<float>::describe_activations(plan, *this, B * T, training, scratch, *rule);
        }
        arena = double(plan.bytes());
    }
    const double lp = precision == Precision::bf16 ? 2.0 * P : 0.0;
    return 4.0 * (2 * P + rope + (training ? 2 * P : 0)) + lp + arena;
}

double usable_memory_bytes() {
    if (const char* v = std::getenv("STRATA_MEMORY_LIMIT"); v && *v) {
        char* end = nullptr;
        errno = 0;
        unsigned long long n = std::strtoull(v, &end, 10);
        if (errno != 0 || *end != '\0' || v[0] == '-' || n == 0)
            throw Error(std::string("STRATA_MEMORY_LIMIT must be a positive byte count, got '") + v + "'");
        return double(n);
    }
    double ram = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
    if (!(ram > 0)) ram = 1e300;  // unknown: do not guess
    std::ifstream cg("/sys/fs/cgroup/memory.max");  // cgroup v2; "max" when unlimited
    std::string lim;
    if (cg >> lim && !lim.empty() && lim != "max") {
        char* end = nullptr;
        double c = std::strtod(lim.c_str(), &end);
        if (end && *end == '\0' && c > 0) ram = std::min(ram, c);
    }
    return ram;
}

void check_memory(double bytes, const std::string& origin, const std::string& what) {
    const double have = usable_memory_bytes();
    if (bytes <= have) return;
    char buf[256];
    std::snprintf(buf, sizeof buf, ": %s need about %.2f GiB, more than the %.2f GiB of memory available", what.c_str(),
                  bytes / double(1ull << 30), have / double(1ull << 30));
    throw Error(origin + buf + " (STRATA_MEMORY_LIMIT or the machine's RAM); make the model or batch smaller");
}

}  // namespace strata
