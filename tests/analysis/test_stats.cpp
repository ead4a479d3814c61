// The statistics of strata experiment's claims (analysis/experiment.h): the t quantile, the paired
// interval and the seeds an effect would need; and log_slope (analysis/depth_report.h).
#include <gtest/gtest.h>

#include <cmath>

#include "analysis/depth_report.h"
#include "analysis/experiment.h"

namespace strata {
namespace {

TEST(TQuantile, KnownValuesAndLargeDf) {
    EXPECT_NEAR(t_quantile_975(1), 12.706, 1e-3);
    EXPECT_NEAR(t_quantile_975(2), 4.303, 1e-3);
    EXPECT_NEAR(t_quantile_975(30), 2.042, 1e-3);
    EXPECT_NEAR(t_quantile_975(40), 2.021, 2e-3);
    EXPECT_NEAR(t_quantile_975(120), 1.980, 2e-3);
    for (int df = 1; df < 200; df++) EXPECT_GT(t_quantile_975(df), t_quantile_975(df + 1)) << df;
}

TEST(PairedInterval, MeanIntervalAndVerdictInputs) {
    // values 1, 2, 3: mean 2, sd 1, half width 4.303 / √3
    const auto j = paired_interval({1.0, 2.0, 3.0});
    EXPECT_DOUBLE_EQ(j["mean"].get<double>(), 2.0);
    EXPECT_DOUBLE_EQ(j["sd"].get<double>(), 1.0);
    EXPECT_NEAR(j["lo"].get<double>(), 2.0 - 4.303 / std::sqrt(3.0), 1e-9);
    EXPECT_NEAR(j["hi"].get<double>(), 2.0 + 4.303 / std::sqrt(3.0), 1e-9);
    EXPECT_FALSE(j["excludes_zero"].get<bool>());  // 2 − 2.484 < 0
    EXPECT_EQ(j["seeds_needed"].get<long>(), 4);     // 3.182 · 1 / √4 = 1.59 < 2; 4 seeds would do
    const auto tight = paired_interval({1.9, 2.0, 2.1});
    EXPECT_TRUE(tight["excludes_zero"].get<bool>());
    EXPECT_EQ(tight["seeds_needed"].get<long>(), 0);
}

TEST(PairedInterval, SeedsNeededClearsZeroAndNoFewerDo) {
    const auto j = paired_interval({-0.01, 0.02, 0.005});  // mean 0.005, sd 0.015
    ASSERT_FALSE(j["excludes_zero"].get<bool>());
    const long k = j["seeds_needed"].get<long>();
    const double mean = j["mean"].get<double>(), sd = j["sd"].get<double>();
    ASSERT_GT(k, 3);
    EXPECT_LT(t_quantile_975(int(k - 1)) * sd / std::sqrt(double(k)), std::fabs(mean));
    EXPECT_GE(t_quantile_975(int(k - 2)) * sd / std::sqrt(double(k - 1)), std::fabs(mean));
}

TEST(PairedInterval, TooFewValues) {
    EXPECT_FALSE(paired_interval({}).contains("mean"));
    const auto one = paired_interval({0.5});
    EXPECT_DOUBLE_EQ(one["mean"].get<double>(), 0.5);
    EXPECT_FALSE(one.contains("lo"));
}

TEST(LogSlope, ExactOnAnExponential) {
    std::vector<double> x, y;
    for (int i = 0; i < 6; i++) x.push_back(0.5 * i), y.push_back(3.0 * std::exp(0.7 * 0.5 * i));
    EXPECT_NEAR(log_slope(x, y), 0.7, 1e-12);
    EXPECT_EQ(log_slope({1.0}, {2.0}), 0.0);
}

TEST(Suites, NamesAndParameterPlans) {
    const auto names = suite_names();
    EXPECT_EQ(names, (std::vector<std::string>{"depth-rules", "curse-of-depth", "moda-window"}));
    for (bool quick : {false, true})
        for (const Suite& s : experiment_suites(quick)) {
            EXPECT_GE(s.seeds.size(), 3u) << s.name;
            for (const SuiteClaim& c : s.claims) {  // every claim names variants of its suite
                for (const std::string* v : {&c.a, &c.b, &c.c, &c.d}) {
                    if (v->empty()) continue;
                    bool found = false;
                    for (const auto& var : s.variants) found |= var.name == *v;
                    EXPECT_TRUE(found) << s.name << ": " << c.name << " names " << *v;
                }
            }
        }
}

}  // namespace
}  // namespace strata
