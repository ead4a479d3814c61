// The residual rules' dispatch: from the config's rule to its file's factory and config hooks.
#include "model/residual/rule.h"

namespace strata {

void residual_layer_params(const ModelConfig& c, int l, const ParamAdd& add) {
    switch (c.residual) {
        case Residual::standard:
        case Residual::layernorm_scaling: return;
        case Residual::rezero: return rezero_layer_params(c, l, add);
        case Residual::attnres_full:
        case Residual::attnres_block: return attnres_layer_params(c, l, add);
        case Residual::denseformer: return denseformer_layer_params(c, l, add);
    }
}

void residual_model_params(const ModelConfig& c, const ParamAdd& add) {
    if (is_attnres(c)) attnres_model_params(c, add);
}

double residual_num_params(const ModelConfig& c) {
    double n = 0;
    const ParamAdd count = [&](const std::string&, std::vector<long> shape, int, ParamSpec::Init) {
        double e = 1;
        for (long x : shape) e *= double(x);
        n += e;
    };
    for (int l = 0; l < c.n_layers; l++) residual_layer_params(c, l, count);
    residual_model_params(c, count);
    return n;
}

bool residual_scaled_init(const ModelConfig& c) { return c.residual != Residual::layernorm_scaling; }

void residual_validate(const ModelConfig& c, const std::string& origin) {
    auto ablation = [&](const char* key, bool set, const char* value) {
        if (set && !is_attnres(c))
            throw Error(origin + ": " + key + " \"" + value + "\" is an AttnRes ablation; residual \"" +
                        to_string(c.residual) + "\" has no depth softmax (use attnres_full or attnres_block)");
    };
    ablation("attnres_key_norm", c.attnres_key_norm != AttnResKeyNorm::learned, to_string(c.attnres_key_norm));
    ablation("attnres_gate", c.attnres_gate != AttnResGate::softmax, to_string(c.attnres_gate));
    ablation("attnres_query", c.attnres_query != AttnResQuery::fixed, to_string(c.attnres_query));
    if (c.residual != Residual::standard && c.norm_placement != NormPlacement::pre)
        throw Error(origin + ": residual \"" + to_string(c.residual) + "\" needs norm_placement \"pre\", not \"" +
                    to_string(c.norm_placement) + "\" (each sublayer normalises its own input)");
}

template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_residual_rule(const ModelConfig& c) {
    switch (c.residual) {
        case Residual::standard: return make_standard_rule<T, A>(c);
        case Residual::rezero: return make_rezero_rule<T, A>(c);
        case Residual::layernorm_scaling: return make_layernorm_scaling_rule<T, A>(c);
        case Residual::attnres_full:
        case Residual::attnres_block: return make_attnres_rule<T, A>(c);
        case Residual::denseformer: return make_denseformer_rule<T, A>(c);
    }
    throw Error("unknown residual rule");
}

#define STRATA_MAKE_RULE(T, A) template std::unique_ptr<ResidualRule<T, A>> make_residual_rule<T, A>(const ModelConfig&);
STRATA_RULE_TYPES(STRATA_MAKE_RULE)

}  // namespace strata
