// Summary statistics and number formatting for the bench reports.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace strata::bench {

struct Stats {
    double mean = 0, std = 0, min = 0, max = 0;  // std: the sample standard deviation
};
Stats stats_of(const std::vector<double>& x);

// The median (the mean of the middle two for an even count); 0 for an empty list.
double median_of(std::vector<double> x);

// The q-quantile (0 ≤ q ≤ 1) of sorted values, interpolating linearly between order statistics.
double quantile_sorted(const std::vector<double>& sorted, double q);

// A median with its percentile-bootstrap interval: `resamples` draws of x.size() values with
// replacement (a fixed seed, so a report is reproducible from its numbers), the median of each, and
// the (1 − level)/2 and (1 + level)/2 quantiles of those medians.
struct MedianCI {
    double median = 0, lo = 0, hi = 0;
    int n = 0;
};
inline constexpr int kBootstrapResamples = 2000;
inline constexpr double kIntervalLevel = 0.95;
inline constexpr uint64_t kBootstrapSeed = 20261202;
MedianCI bootstrap_median(const std::vector<double>& x, int resamples = kBootstrapResamples,
                          double level = kIntervalLevel, uint64_t seed = kBootstrapSeed);

// snprintf of one number, e.g. fmt("%.1f", 3.14159) == "3.1".
std::string fmt(const char* format, double v);

// "median [lo, hi]" of bootstrap_median(x · scale), each number formatted with `format`.
std::string median_ci_str(const std::vector<double>& x, const char* format, double scale = 1);

}  // namespace strata::bench
