// The op profiler: a process-wide tally of wall time and calls per op family, off by default.
//
// Every public op (ops.h) opens with one OpTimer naming its family. Off, the timer costs one relaxed
// atomic load. On (op_profile::enable), only calls made on the thread that enabled it are timed (the
// ops are called from one thread; their OpenMP workers are inside the timed interval), and only the
// outermost timer of a thread counts, so nested scopes never add the same time twice. Calls made
// inside an OpenMP parallel region are not timed either: their intervals would overlap.
#pragma once
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace strata {

enum class OpFamily : int {
    gemm_fwd,     // matmul_forward
    gemm_bwd,     // matmul_backward
    attn_fwd,     // attention_forward
    attn_bwd,     // attention_backward
    moda_fwd,     // moda_forward
    moda_bwd,     // moda_backward
    attnres_fwd,  // attnres_forward, attnres_phase1, attnres_phase2
    attnres_bwd,  // attnres_backward
    rmsnorm,      // rmsnorm_forward, rmsnorm_backward
    rope,         // rope_table, rope_forward, rope_backward
    swiglu,       // swiglu_forward, swiglu_backward
    xent,         // crossentropy_forward, crossentropy_backward
    embedding,    // embedding_forward, embedding_backward
    glue,         // copies, zero fills, residual adds, qkv split, depth slots, KV append, reductions
    optimizer,    // adamw_update, sum_squares, scale_forward
    count
};
constexpr int kOpFamilies = int(OpFamily::count);

namespace op_profile {

// Per family: seconds of wall time and number of calls since the last reset().
struct Totals {
    std::array<double, kOpFamilies> seconds{};
    std::array<long, kOpFamilies> calls{};
    double total_seconds() const;
};

// Turns timing on for ops called by this thread (and off for any other thread that had it).
void enable();
void disable();
bool enabled();
void reset();  // zeroes the totals
Totals totals();
// Display name of a family, e.g. "GEMM forward (matmul_forward)".
const char* family_name(OpFamily f);

namespace detail {
extern std::atomic<bool> on;
}

}  // namespace op_profile

// Times its scope into `family` when the profiler is on. Put one as the first statement of an op.
class OpTimer {
public:
    explicit OpTimer(OpFamily family) noexcept {
        if (op_profile::detail::on.load(std::memory_order_relaxed)) [[unlikely]]
            begin(family);
    }
    ~OpTimer() {
        if (active_) [[unlikely]]
            end();
    }
    OpTimer(const OpTimer&) = delete;
    OpTimer& operator=(const OpTimer&) = delete;

private:
    void begin(OpFamily family) noexcept;
    void end() noexcept;
    bool active_ = false;
    OpFamily family_ = OpFamily::glue;
    std::chrono::steady_clock::time_point t0_;
};

}  // namespace strata
