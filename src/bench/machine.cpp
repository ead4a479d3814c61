#include "bench/machine.h"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "bench/stats.h"
#include "core/error.h"
#include "ops/cpu/level.h"

namespace fs = std::filesystem;

namespace strata::bench {

namespace {
std::string read_file_or_empty(const std::string& path) {
    std::ifstream in(path);
    if (!in) return {};
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// The "flags" line of /proc/cpuinfo with a space on each side, or empty.
std::string cpu_flags_line() {
    std::istringstream in(read_file_or_empty("/proc/cpuinfo"));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("flags", 0) == 0) return " " + line + " ";
    return {};
}

bool has_flag(const std::string& flags, const char* f) { return flags.find(std::string(" ") + f + " ") != std::string::npos; }

std::string trim_right(std::string s) {
    while (!s.empty() && (s.back() == ' ' || s.back() == '\n')) s.pop_back();
    return s;
}
}  // namespace

const std::vector<const char*> kSimdFlags = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                                             "amx_bf16", "avx2", "fma", "avx"};

std::string cpu_model() {
    std::istringstream in(read_file_or_empty("/proc/cpuinfo"));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("model name", 0) == 0) {
            auto p = line.find(':');
            if (p != std::string::npos) {
                std::string s = line.substr(p + 1);
                s.erase(0, s.find_first_not_of(" \t"));
                return s;
            }
        }
    return "unknown CPU";
}

std::string cpu_simd() {
    const std::string flags = cpu_flags_line();
    if (flags.empty()) return "unknown";
    for (const char* f : {"avx512f", "avx2", "avx", "sse4_2"})
        if (has_flag(flags, f)) return f;
    return "none listed";
}

std::vector<std::string> cpu_simd_flags() {
    const std::string flags = cpu_flags_line();
    std::vector<std::string> out;
    for (const char* f : kSimdFlags)
        if (has_flag(flags, f)) out.emplace_back(f);
    return out;
}

std::string loadavg() {
    std::istringstream in(read_file_or_empty("/proc/loadavg"));
    std::string a, b, c;
    in >> a >> b >> c;
    return a.empty() ? "n/a" : a + " " + b + " " + c;
}

std::string command_line() {
    std::string raw = read_file_or_empty("/proc/self/cmdline");
    std::string out;
    for (char ch : raw) out += ch == '\0' ? ' ' : ch;
    out = trim_right(out);
    return out.empty() ? "strata bench train" : out;
}

// Environment variables that change how the threading runtimes and BLAS behave, as `NAME=value`.
std::string threading_env() {
    std::string out;
    for (char** e = environ; e && *e; e++) {
        std::string kv = *e;
        for (const char* pre : {"OMP_", "GOMP_", "OPENBLAS_", "GOTO_", "MKL_", "KMP_", "LD_LIBRARY_PATH=", "LD_PRELOAD="})
            if (kv.rfind(pre, 0) == 0) {
                out += (out.empty() ? "" : ", ") + ("`" + kv + "`");
                break;
            }
    }
    return out.empty() ? "none of OMP_*, GOMP_*, OPENBLAS_*, GOTO_*, MKL_*, KMP_*, LD_LIBRARY_PATH, LD_PRELOAD set" : out;
}

std::string now_string(const char* format) {
    std::time_t t = std::time(nullptr);
    char buf[64];
    std::strftime(buf, sizeof buf, format, std::localtime(&t));
    return buf;
}

MachineFacts machine_facts(const fs::path& repo) {
    MachineFacts m;
    m.cpu = cpu_model();
    m.online_cpus = sysconf(_SC_NPROCESSORS_ONLN);
    m.simd = cpu_simd();
    m.simd_flags = cpu_simd_flags();
    m.engine = engine_cpu_level();
    m.environment = threading_env();
    const char* core = std::getenv("OPENBLAS_CORETYPE");
    m.openblas_coretype = core ? core : "unset";
    m.openblas_config = trim_right(openblas_get_config());
    m.openblas_core = openblas_get_corename();
    m.date = now_string("%Y-%m-%d %H:%M:%S %Z");
    m.command = command_line();
    m.loadavg_before = loadavg();
    if (!repo.empty()) {
        const std::string git = "git -C " + shell_quote(repo.string());
        m.commit = trim_right(run_capture(git + " rev-parse --short HEAD 2>/dev/null"));
        if (!m.commit.empty() && !run_capture(git + " status --porcelain --untracked-files=no 2>/dev/null").empty())
            m.commit += " (working tree has uncommitted changes)";
    }
    if (m.commit.empty()) m.commit = "unknown";
    return m;
}

CpuSnapshot cpu_snapshot() {
    CpuSnapshot s;
    s.t = std::chrono::steady_clock::now();
    const double hz = double(sysconf(_SC_CLK_TCK));
    {
        std::istringstream in(read_file_or_empty("/proc/stat"));
        std::string cpu;
        double user = 0, nice = 0, sys = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
        in >> cpu >> user >> nice >> sys >> idle >> iowait >> irq >> softirq >> steal;
        s.busy = (user + nice + sys + irq + softirq) / hz;
        s.steal = steal / hz;
    }
    {
        std::string st = read_file_or_empty("/proc/self/stat");
        auto p = st.rfind(')');
        if (p != std::string::npos) {
            std::istringstream in(st.substr(p + 2));
            std::vector<std::string> f;
            std::string tok;
            while (in >> tok) f.push_back(tok);
            // fields after the name start at field 3 (state): utime is field 14, cstime field 17
            if (f.size() > 14) s.self = (std::stod(f[11]) + std::stod(f[12]) + std::stod(f[13]) + std::stod(f[14])) / hz;
        }
    }
    return s;
}

CpuUse cpu_use(const CpuSnapshot& a, const CpuSnapshot& b) {
    CpuUse u;
    u.wall = std::chrono::duration<double>(b.t - a.t).count();
    u.self = b.self - a.self;
    u.others = std::max(0.0, (b.busy - a.busy) - u.self);
    u.steal = b.steal - a.steal;
    return u;
}

std::string cpu_use_str(const CpuUse& u) {
    return fmt("%.2f", u.others) + " core-s others, " + fmt("%.2f", u.steal) + " s steal over " +
           fmt("%.1f", u.wall) + " s";
}

fs::path find_repo(const std::string& flag) {
    if (!flag.empty()) {
        fs::path r = fs::absolute(flag);
        if (!fs::exists(r / "bench"))
            throw Error("--repo " + flag + ": no bench/ folder there (expected the strata source tree)");
        return r;
    }
    auto ok = [](const fs::path& r) { return !r.empty() && fs::exists(r / "bench" / "peer_train.py"); };
    // 1. where this file was compiled from (CMake passes absolute source paths): <repo>/src/bench/
    fs::path src(__FILE__);
    if (src.is_absolute()) {
        fs::path r = src.parent_path().parent_path().parent_path();
        if (ok(r)) return r;
    }
    // 2. the executable's location: <repo>/build/strata
    std::error_code ec;
    fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        for (fs::path r = exe.parent_path(); !r.empty() && r != r.root_path(); r = r.parent_path())
            if (ok(r)) return r;
    }
    // 3. the working directory
    if (ok(fs::current_path())) return fs::current_path();
    return {};
}

std::string run_capture(const std::string& cmd, int* status) {
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) {
        if (status) *status = -1;
        return out;
    }
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int st = pclose(p);
    if (status) *status = st;
    return out;
}

std::string shell_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

std::string machine_cell(const MachineFacts& m) {
    return m.cpu + ", " + std::to_string(m.online_cpus) + " online CPUs, widest SIMD " + m.simd + ", engine " +
           m.engine;
}

std::string op_report_header(const std::string& title, const MachineFacts& m, int threads,
                             const std::string& machine_extra) {
    std::ostringstream md;
    md << "# " << title << " — " << m.date << "\n\n";
    md << "| | |\n|---|---|\n";
    md << "| machine | " << machine_cell(m) << machine_extra << " |\n";
    md << "| command | `" << m.command << "` |\n";
    md << "| strata commit | " << m.commit << " |\n";
    md << "| environment | " << m.environment << " (OPENBLAS_CORETYPE " << m.openblas_coretype << ") |\n";
    md << "| threads | " << threads << " |\n";
    md << "| load average before → after | " << m.loadavg_before << " → " << m.loadavg_after << " |\n\n";
    return md.str();
}

double memcpy_gbs(float* dst, const float* src, size_t n) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel
    {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const size_t per = (n + size_t(nt) - 1) / size_t(nt), lo = std::min(n, per * size_t(id)), hi = std::min(n, lo + per);
        std::memcpy(dst + lo, src + lo, (hi - lo) * 4);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return 2.0 * double(n) * 4 / s / 1e9;
}

nlohmann::json median_ci_json(const std::vector<double>& x) {
    const MedianCI m = bootstrap_median(x);
    return {{"median", m.median}, {"ci95_low", m.lo}, {"ci95_high", m.hi}, {"samples", x}};
}

nlohmann::json machine_json(const MachineFacts& m) {
    return {{"cpu", m.cpu},
            {"online_cpus", m.online_cpus},
            {"simd", m.simd},
            {"simd_flags", m.simd_flags},
            {"engine", m.engine},
            {"openblas_config", m.openblas_config},
            {"openblas_core", m.openblas_core},
            {"openblas_coretype", m.openblas_coretype},
            {"environment", m.environment},
            {"loadavg_before", m.loadavg_before},
            {"loadavg_after", m.loadavg_after}};
}

}  // namespace strata::bench
