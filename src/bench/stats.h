// Summary statistics and number formatting for the bench reports.
#pragma once
#include <string>
#include <vector>

namespace strata::bench {

struct Stats {
    double mean = 0, std = 0, min = 0, max = 0;  // std: the sample standard deviation
};
Stats stats_of(const std::vector<double>& x);

// snprintf of one number, e.g. fmt("%.1f", 3.14159) == "3.1".
std::string fmt(const char* format, double v);

}  // namespace strata::bench
