// Facts about the machine and the run that a benchmark report records, the CPU time other processes
// take during a measurement, and the few process helpers the bench needs (the repository root, a
// shell command's output).
#pragma once
#include <chrono>
#include <nlohmann/json.hpp>
#include <filesystem>
#include <string>
#include <vector>

namespace strata::bench {

struct MachineFacts {
    std::string cpu;                      // /proc/cpuinfo "model name"
    long online_cpus = 0;
    std::string simd;                     // the widest of avx512f, avx2, avx, sse4_2 the CPU lists
    std::vector<std::string> simd_flags;  // which of kSimdFlags the CPU lists, in that order
    std::string engine;                   // the engine build running (engine_cpu_level(), e.g. x86-64-v4)
    std::string environment;              // the threading and BLAS variables set, as `NAME=value`
    std::string openblas_coretype;        // OPENBLAS_CORETYPE, or "unset"
    std::string openblas_config, openblas_core;  // openblas_get_config(), openblas_get_corename()
    std::string commit;                   // short hash, "unknown", or with a note on uncommitted changes
    std::string date;                     // local time at the start
    std::string command;                  // this process's command line
    std::string loadavg_before, loadavg_after;
};

// The CPU flags a report lists when present (vector widths and the bf16 / VNNI / FMA extensions).
extern const std::vector<const char*> kSimdFlags;

// Everything but loadavg_after, which the caller fills when the measurements are done. `repo` (may
// be empty) is the strata source tree the commit is read from.
MachineFacts machine_facts(const std::filesystem::path& repo);
// A report's machine cell: the CPU, its online CPUs, its widest SIMD and the engine build running.
std::string machine_cell(const MachineFacts& m);
// The facts a JSON report records about the machine (cpu, SIMD, OpenBLAS, environment, load).
nlohmann::json machine_json(const MachineFacts& m);
// The opening of an op benchmark's markdown report (bench attnres, bench moda): its title and the
// table of the machine (with `machine_extra` appended), command, commit, environment, threads and load.
std::string op_report_header(const std::string& title, const MachineFacts& m, int threads,
                             const std::string& machine_extra = "");
// memcpy of n floats from src to dst, split over the OpenMP threads: GB/s, counting the bytes read
// plus the bytes written (the op benchmarks' yardstick).
double memcpy_gbs(float* dst, const float* src, size_t n);
// {"median", "ci95_low", "ci95_high", "samples"} of x (bootstrap_median).
nlohmann::json median_ci_json(const std::vector<double>& x);

std::string cpu_model();
std::string cpu_simd();
std::vector<std::string> cpu_simd_flags();
std::string loadavg();  // "1m 5m 15m", or "n/a"
std::string command_line();
std::string threading_env();
std::string now_string(const char* strftime_format);

// CPU time spent on the whole machine versus by this process (and its waited-for children, i.e. the
// peer), from /proc/stat and /proc/self/stat: whatever else ran during a measurement shows up as
// "others". Steal is time the hypervisor gave to other guests.
struct CpuSnapshot {
    double busy = 0, steal = 0, self = 0;  // seconds
    std::chrono::steady_clock::time_point t;
};
CpuSnapshot cpu_snapshot();
struct CpuUse {
    double wall = 0, self = 0, others = 0, steal = 0;  // seconds (CPU seconds for self and others)
};
CpuUse cpu_use(const CpuSnapshot& a, const CpuSnapshot& b);
std::string cpu_use_str(const CpuUse& u);

// The repository root: `flag` (--repo) when given (it must hold bench/), else where this file was
// compiled from, else above the executable, else the working directory; empty when none has
// bench/peer_train.py.
std::filesystem::path find_repo(const std::string& flag);

// A shell command's stdout; *status gets pclose's status (−1 when it could not start).
std::string run_capture(const std::string& cmd, int* status = nullptr);
std::string shell_quote(const std::string& s);

}  // namespace strata::bench
