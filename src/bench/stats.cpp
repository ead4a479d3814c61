#include "bench/stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace strata::bench {

Stats stats_of(const std::vector<double>& x) {
    Stats s;
    if (x.empty()) return s;
    double sum = 0;
    for (double v : x) sum += v;
    s.mean = sum / double(x.size());
    double ss = 0;
    for (double v : x) ss += (v - s.mean) * (v - s.mean);
    s.std = x.size() > 1 ? std::sqrt(ss / double(x.size() - 1)) : 0.0;
    s.min = *std::min_element(x.begin(), x.end());
    s.max = *std::max_element(x.begin(), x.end());
    return s;
}

std::string fmt(const char* format, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, format, v);
    return buf;
}

}  // namespace strata::bench
