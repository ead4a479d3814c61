#include "ops/profile.h"

#include <thread>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace strata {

namespace op_profile {
namespace detail {
std::atomic<bool> on{false};
}

namespace {
std::atomic<std::thread::id> owner{};  // the thread whose op calls are timed
std::array<std::atomic<int64_t>, kOpFamilies> g_ns{}, g_calls{};
thread_local int t_depth = 0;  // open timers on this thread (only the owner's are counted)

constexpr std::array<const char*, kOpFamilies> kNames = {
    "GEMM forward (matmul_forward)",
    "GEMM backward (matmul_backward)",
    "attention forward",
    "attention backward",
    "MoDA forward (moda_forward)",
    "MoDA backward (moda_backward)",
    "AttnRes forward (incl. phase 1, phase 2)",
    "AttnRes backward",
    "RMSNorm fwd+bwd",
    "RoPE fwd+bwd",
    "SwiGLU fwd+bwd",
    "cross-entropy fwd+bwd",
    "embedding fwd+bwd",
    "glue (copies, zero fills, residual adds, splits, depth slots, reductions)",
    "optimizer (AdamW, gradient norm, scale)",
};
}  // namespace

double Totals::total_seconds() const {
    double s = 0;
    for (double x : seconds) s += x;
    return s;
}

void enable() {
    owner.store(std::this_thread::get_id(), std::memory_order_relaxed);
    detail::on.store(true, std::memory_order_release);
}

void disable() {
    detail::on.store(false, std::memory_order_release);
    owner.store(std::thread::id(), std::memory_order_relaxed);
}

bool enabled() { return detail::on.load(std::memory_order_acquire); }

void reset() {
    for (int f = 0; f < kOpFamilies; f++) {
        g_ns[f].store(0, std::memory_order_relaxed);
        g_calls[f].store(0, std::memory_order_relaxed);
    }
}

Totals totals() {
    Totals t;
    for (int f = 0; f < kOpFamilies; f++) {
        t.seconds[f] = double(g_ns[f].load(std::memory_order_relaxed)) * 1e-9;
        t.calls[f] = long(g_calls[f].load(std::memory_order_relaxed));
    }
    return t;
}

const char* family_name(OpFamily f) {
    const int i = int(f);
    return i >= 0 && i < kOpFamilies ? kNames[i] : "unknown";
}

}  // namespace op_profile

void OpTimer::begin(OpFamily family) noexcept {
    if (op_profile::owner.load(std::memory_order_relaxed) != std::this_thread::get_id()) return;
#ifdef _OPENMP
    if (omp_in_parallel()) return;
#endif
    if (op_profile::t_depth++ > 0) {  // nested: the outer timer already covers this interval
        active_ = true;
        family_ = OpFamily::count;
        return;
    }
    active_ = true;
    family_ = family;
    t0_ = std::chrono::steady_clock::now();
}

void OpTimer::end() noexcept {
    op_profile::t_depth--;
    if (family_ == OpFamily::count) return;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0_).count();
    op_profile::g_ns[int(family_)].fetch_add(int64_t(ns), std::memory_order_relaxed);
    op_profile::g_calls[int(family_)].fetch_add(1, std::memory_order_relaxed);
}

}  // namespace strata
