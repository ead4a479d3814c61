#include "bench/stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/rng.h"

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

double median_of(std::vector<double> x) {
    if (x.empty()) return 0;
    std::sort(x.begin(), x.end());
    const size_t n = x.size();
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

double quantile_sorted(const std::vector<double>& s, double q) {
    if (s.empty()) return 0;
    const double pos = std::clamp(q, 0.0, 1.0) * double(s.size() - 1);
    const size_t i = size_t(pos);
    if (i + 1 >= s.size()) return s.back();
    return s[i] + (pos - double(i)) * (s[i + 1] - s[i]);
}

MedianCI bootstrap_median(const std::vector<double>& x, int resamples, double level, uint64_t seed) {
    MedianCI r;
    r.n = int(x.size());
    if (x.empty()) return r;
    r.median = median_of(x);
    Rng rng(seed);
    std::vector<double> meds(size_t(std::max(1, resamples))), draw(x.size());
    for (double& m : meds) {
        for (double& d : draw) d = x[size_t(rng.next_u64() % uint64_t(x.size()))];
        m = median_of(draw);
    }
    std::sort(meds.begin(), meds.end());
    r.lo = quantile_sorted(meds, (1 - level) / 2);
    r.hi = quantile_sorted(meds, (1 + level) / 2);
    return r;
}

std::string fmt(const char* format, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, format, v);
    return buf;
}

std::string median_ci_str(const std::vector<double>& x, const char* format, double scale) {
    std::vector<double> y;
    for (double v : x) y.push_back(v * scale);
    const MedianCI m = bootstrap_median(y);
    return fmt(format, m.median) + " [" + fmt(format, m.lo) + ", " + fmt(format, m.hi) + "]";
}

}  // namespace strata::bench
