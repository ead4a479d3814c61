// The names of the config enums go both ways through one table (model/config.cpp): every value's
// name parses back to it, a config written with it reads back equal, and an unknown name is an error
// that lists every allowed one.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "model/config.h"

using namespace strata;

namespace {
template <typename E>
void check_round_trip(std::initializer_list<E> values, const std::string& allowed) {
    for (E e : values) EXPECT_EQ(parse_name<E>(to_string(e), "key"), e) << to_string(e);
    EXPECT_EQ(allowed_names<E>(), allowed);
    try {
        parse_name<E>("bogus", "model.key");
        FAIL() << "an unknown name was accepted";
    } catch (const Error& err) {
        EXPECT_EQ(std::string(err.what()), "model.key must be " + allowed + ", not \"bogus\"");
    }
}
}  // namespace

TEST(ConfigNames, EveryValueRoundTrips) {
    check_round_trip({NormPlacement::pre, NormPlacement::post, NormPlacement::reordered},
                     "\"pre\", \"post\" or \"reordered\"");
    check_round_trip({Residual::standard, Residual::attnres_full, Residual::attnres_block, Residual::rezero,
                      Residual::layernorm_scaling, Residual::denseformer},
                     "\"standard\", \"attnres_full\", \"attnres_block\", \"rezero\", \"layernorm_scaling\" or "
                     "\"denseformer\"");
    check_round_trip({AttentionKind::causal, AttentionKind::moda}, "\"causal\" or \"moda\"");
}

// A config's JSON (what checkpoints store) reads back to the same kinds, for every rule.
TEST(ConfigNames, ConfigJsonKeepsTheKinds) {
    for (Residual res : {Residual::attnres_block, Residual::rezero, Residual::layernorm_scaling,
                         Residual::denseformer}) {
        ModelConfig c;
        c.residual = res;
        c.attention = AttentionKind::moda;
        const ModelConfig r = ModelConfig::from_json(c.to_json(), "test");
        EXPECT_EQ(r.residual, res);
        EXPECT_EQ(r.attention, AttentionKind::moda);
        EXPECT_EQ(r.to_json(), c.to_json());
    }
}
