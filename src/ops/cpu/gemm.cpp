// The GEMMs of gemm.h that are not plain CBLAS: oneDNN's matmul (f32 where it is the faster library,
// bf16 on CPUs with native bf16) and the widening bf16 emulation.
#include "ops/cpu/gemm.h"

#include <cpuid.h>
#include <oneapi/dnnl/dnnl.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/error.h"

namespace strata {

bool cpu_has_avx512_bf16() {
    static const bool has = [] {
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return false;
        if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
        return bool((a >> 5) & 1u);
    }();
    return has;
}

bool cpu_has_native_bf16() {
    static const bool has = [] {
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (!__builtin_cpu_supports("avx512f")) return false;
        __get_cpuid_count(7, 0, &a, &b, &c, &d);
        const bool amx_bf16 = (d >> 22) & 1u;
        return cpu_has_avx512_bf16() || amx_bf16;
    }();
    return has;
}

namespace {
// −1: not decided yet (read STRATA_BF16_NATIVE once); 0: emulated; 1: native where the CPU has it;
// 2: native where it is the faster path (cpu_prefers_native_bf16).
std::atomic<int> g_native_allowed{-1};
// −1: not decided yet (read STRATA_F32_GEMM once); 0: OpenBLAS; 1: oneDNN; 2: by cpu_prefers_onednn_f32.
std::atomic<int> g_f32_mode{-1};
std::atomic<int> g_in_library{0};
struct InLibrary {
    InLibrary() { g_in_library.fetch_add(1, std::memory_order_relaxed); }
    ~InLibrary() { g_in_library.fetch_sub(1, std::memory_order_relaxed); }
};

#define STRATA_DNNL(call)                                                                               \
    do {                                                                                                \
        const dnnl_status_t s_ = (call);                                                                \
        if (s_ != dnnl_success) throw Error(std::string("oneDNN: ") + #call + " failed (status " +       \
                                            std::to_string(int(s_)) + ")");                              \
    } while (0)

// One oneDNN matmul for one shape, created on first use and kept.
struct Matmul {
    dnnl_primitive_t prim = nullptr;
    dnnl_memory_t a = nullptr, b = nullptr, c = nullptr, scratch = nullptr;
    size_t scratch_bytes = 0;
};
using Key = std::tuple<bool, bool, long, long, long, long, long, long, int, int, float, float>;

struct Dnnl {
    std::mutex mu;
    dnnl_engine_t engine = nullptr;
    dnnl_stream_t stream = nullptr;
    std::map<Key, Matmul> cache;
    void* scratch = nullptr;  // shared by every primitive (calls never overlap: mu is held)
    size_t scratch_bytes = 0;

    Dnnl() {
        STRATA_DNNL(dnnl_engine_create(&engine, dnnl_cpu, 0));
        STRATA_DNNL(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
    }
    // Leaked on purpose at exit: destroying primitives after OpenMP has shut down is not safe.

    Matmul& get(bool ta, bool tb, long M, long N, long K, long lda, long ldb, long ldc, dnnl_data_type_t abdt,
                dnnl_data_type_t cdt, float alpha, float beta) {
        const Key key{ta, tb, M, N, K, lda, ldb, ldc, int(abdt), int(cdt), alpha, beta};
        auto it = cache.find(key);
        if (it != cache.end()) return it->second;
        dnnl_memory_desc_t am, bm, cm;
        dnnl_dims_t ad = {M, K}, bd = {K, N}, cd = {M, N};
        dnnl_dims_t as = {ta ? 1 : lda, ta ? lda : 1};  // op(A) is M×K
        dnnl_dims_t bs = {tb ? 1 : ldb, tb ? ldb : 1};  // op(B) is K×N
        dnnl_dims_t cs = {ldc, 1};
        STRATA_DNNL(dnnl_memory_desc_init_by_strides(&am, 2, ad, abdt, as));
        STRATA_DNNL(dnnl_memory_desc_init_by_strides(&bm, 2, bd, abdt, bs));
        STRATA_DNNL(dnnl_memory_desc_init_by_strides(&cm, 2, cd, cdt, cs));
        dnnl_matmul_desc_t desc;
        STRATA_DNNL(dnnl_matmul_desc_init(&desc, &am, &bm, nullptr, &cm));
        dnnl_primitive_attr_t attr;
        STRATA_DNNL(dnnl_primitive_attr_create(&attr));
        STRATA_DNNL(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
        if (alpha != 1.0f) STRATA_DNNL(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha));
        dnnl_post_ops_t po = nullptr;
        if (beta != 0.0f) {
            STRATA_DNNL(dnnl_post_ops_create(&po));
            STRATA_DNNL(dnnl_post_ops_append_sum(po, beta));
            STRATA_DNNL(dnnl_primitive_attr_set_post_ops(attr, po));
        }
        dnnl_primitive_desc_t pd;
        STRATA_DNNL(dnnl_primitive_desc_create(&pd, &desc, attr, engine, nullptr));
        Matmul m;
        const dnnl_memory_desc_t* sm = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        m.scratch_bytes = sm ? dnnl_memory_desc_get_size(sm) : 0;
        STRATA_DNNL(dnnl_primitive_create(&m.prim, pd));
        STRATA_DNNL(dnnl_memory_create(&m.a, &am, engine, DNNL_MEMORY_NONE));
        STRATA_DNNL(dnnl_memory_create(&m.b, &bm, engine, DNNL_MEMORY_NONE));
        STRATA_DNNL(dnnl_memory_create(&m.c, &cm, engine, DNNL_MEMORY_NONE));
        if (m.scratch_bytes) STRATA_DNNL(dnnl_memory_create(&m.scratch, sm, engine, DNNL_MEMORY_NONE));
        dnnl_primitive_desc_destroy(pd);
        if (po) dnnl_post_ops_destroy(po);
        dnnl_primitive_attr_destroy(attr);
        if (m.scratch_bytes > scratch_bytes) {
            std::free(scratch);
            scratch_bytes = (m.scratch_bytes + 4095) / 4096 * 4096;
            scratch = std::aligned_alloc(64, scratch_bytes);
            if (!scratch) throw Error("oneDNN: out of memory for a GEMM scratchpad");
        }
        return cache.emplace(key, m).first->second;
    }

    void run(bool ta, bool tb, long M, long N, long K, float alpha, const void* A, long lda, const void* B, long ldb,
             float beta, void* C, long ldc, dnnl_data_type_t abdt, dnnl_data_type_t cdt) {
        std::lock_guard<std::mutex> lock(mu);
        Matmul& m = get(ta, tb, M, N, K, lda, ldb, ldc, abdt, cdt, alpha, beta);
        STRATA_DNNL(dnnl_memory_set_data_handle(m.a, const_cast<void*>(A)));
        STRATA_DNNL(dnnl_memory_set_data_handle(m.b, const_cast<void*>(B)));
        STRATA_DNNL(dnnl_memory_set_data_handle(m.c, C));
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, m.a}, {DNNL_ARG_WEIGHTS, m.b}, {DNNL_ARG_DST, m.c},
                                   {DNNL_ARG_SCRATCHPAD, m.scratch}};
        if (m.scratch) STRATA_DNNL(dnnl_memory_set_data_handle(m.scratch, scratch));
        InLibrary in_library;
        STRATA_DNNL(dnnl_primitive_execute(m.prim, stream, m.scratch ? 4 : 3, args));
        STRATA_DNNL(dnnl_stream_wait(stream));
    }
};

Dnnl& dnnl() {
    static Dnnl* d = new Dnnl();
    return *d;
}

// The emulation: widen to float, sgemm, round. Its buffers only grow.
struct Emulated {
    std::mutex mu;
    std::vector<float> a, b, c;

    static void widen(std::vector<float>& dst, const bf16* src, long rows, long cols, long ld) {
        if (dst.size() < size_t(rows * cols)) dst.resize(size_t(rows * cols));
        float* d = dst.data();
#pragma omp parallel for schedule(static) if (rows * cols >= 65536)
        for (long r = 0; r < rows; r++)
            for (long c = 0; c < cols; c++) d[r * cols + c] = float(src[r * ld + c]);
    }

    template <typename C>
    void run(bool ta, bool tb, long M, long N, long K, float alpha, const bf16* A, long lda, const bf16* B, long ldb,
             float beta, C* Cm, long ldc) {
        std::lock_guard<std::mutex> lock(mu);
        const long ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        widen(a, A, ar, ac, lda);
        widen(b, B, br, bc, ldb);
        if constexpr (std::is_same_v<C, float>) {
            gemm_openblas(ta, tb, M, N, K, alpha, a.data(), ac, b.data(), bc, beta, Cm, ldc);
        } else {
            if (c.size() < size_t(M * N)) c.resize(size_t(M * N));
            float* cf = c.data();
            if (beta != 0.0f) widen(c, Cm, M, N, ldc);
            gemm_openblas(ta, tb, M, N, K, alpha, a.data(), ac, b.data(), bc, beta, cf, N);
#pragma omp parallel for schedule(static) if (M * N >= 65536)
            for (long r = 0; r < M; r++)
                for (long j = 0; j < N; j++) Cm[r * ldc + j] = bf16(cf[r * N + j]);
        }
    }
};

Emulated& emulated() {
    static Emulated* e = new Emulated();
    return *e;
}
}  // namespace

bool inside_gemm_library() { return g_in_library.load(std::memory_order_relaxed) > 0; }

static bool cpu_is_amd() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    __get_cpuid(0, &a, &b, &c, &d);  // vendor string in ebx, edx, ecx
    return b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;  // "AuthenticAMD"
}

bool cpu_prefers_onednn_f32() {
    static const bool prefers = __builtin_cpu_supports("avx512f") && cpu_is_amd();
    return prefers;
}

// A mode from an environment variable: the index of its value in `allowed`, `fallback` when unset;
// any other value is an error naming the variable and what it accepts.
static int env_mode(const char* var, std::initializer_list<const char*> allowed, int fallback) {
    const char* env = std::getenv(var);
    if (env == nullptr) return fallback;
    int i = 0;
    std::string list;
    for (const char* a : allowed) {
        if (std::strcmp(env, a) == 0) return i;
        list += (i ? ", " : "") + std::string(a);
        i++;
    }
    throw Error(std::string(var) + " = \"" + env + "\" is not one of " + list + " (or unset)");
}

// A mode held in `slot`: read from the environment (env_mode, 2 when unset) the first time, unless a
// setter stored one first.
static int cached_mode(std::atomic<int>& slot, const char* var, std::initializer_list<const char*> allowed) {
    int mode = slot.load(std::memory_order_relaxed);
    if (mode < 0) {
        mode = env_mode(var, allowed, 2);
        slot.store(mode, std::memory_order_relaxed);
    }
    return mode;
}

static int f32_mode() { return cached_mode(g_f32_mode, "STRATA_F32_GEMM", {"openblas", "onednn"}); }

bool f32_onednn() {
    const int mode = f32_mode();
    return mode == 1 || (mode == 2 && cpu_prefers_onednn_f32());
}

void set_f32_onednn(bool on) { g_f32_mode.store(on ? 1 : 0, std::memory_order_relaxed); }

static const std::string& onednn_version() {
    static const std::string v = [] {
        const dnnl_version_t* x = dnnl_version();
        return std::to_string(x->major) + "." + std::to_string(x->minor) + "." + std::to_string(x->patch);
    }();
    return v;
}

const char* f32_gemm_backend() {
    static const std::string onednn = "oneDNN " + onednn_version() + " matmul (f32; OpenBLAS below 64 on a side)";
    return f32_onednn() ? onednn.c_str() : "OpenBLAS sgemm";
}

bool cpu_prefers_native_bf16() {
    static const bool prefers = [] {
        if (!cpu_has_native_bf16()) return false;
        unsigned a = 0, b = 0, c = 0, d = 0;
        __get_cpuid_count(7, 0, &a, &b, &c, &d);
        if ((d >> 22) & 1u) return true;  // AMX-BF16
        return cpu_is_amd();
    }();
    return prefers;
}

static int bf16_mode() { return cached_mode(g_native_allowed, "STRATA_BF16_NATIVE", {"0", "1"}); }

bool bf16_native() {
    const int mode = bf16_mode();
    return mode == 1 ? cpu_has_native_bf16() : mode == 2 ? cpu_prefers_native_bf16() : false;
}

void check_gemm_environment() {
    f32_mode();
    bf16_mode();
}

void set_bf16_native(bool allowed) { g_native_allowed.store(allowed ? 1 : 0, std::memory_order_relaxed); }

const char* bf16_gemm_backend() {
    static const std::string native = "oneDNN " + onednn_version() + " matmul (native bf16)";
    return bf16_native() ? native.c_str() : "emulated: widened to float, OpenBLAS sgemm";
}

std::string bf16_speed_note() {
    if (bf16_native()) return "";
    if (cpu_has_native_bf16() && bf16_mode() == 0)
        return "note: bf16 runs emulated (STRATA_BF16_NATIVE=0): correct, but slower than fp32";
    if (cpu_has_native_bf16())
        return "note: bf16 GEMMs widen to float and run in sgemm: this CPU's AVX512-BF16 without AMX is slower "
               "than its fp32 GEMMs (docs/precision.md); STRATA_BF16_NATIVE=1 uses it anyway";
    return "note: this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 is emulated, correct but slower than fp32";
}

void gemm(bool ta, bool tb, long M, long N, long K, float alpha, const bf16* A, long lda, const bf16* B, long ldb,
          float beta, float* C, long ldc) {
    if (M <= 0 || N <= 0) return;
    if (bf16_native() && K > 0) dnnl().run(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dnnl_bf16, dnnl_f32);
    else emulated().run(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_onednn(bool ta, bool tb, long M, long N, long K, float alpha, const float* A, long lda, const float* B,
                 long ldb, float beta, float* C, long ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    dnnl().run(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dnnl_f32, dnnl_f32);
}

void gemm(bool ta, bool tb, long M, long N, long K, float alpha, const bf16* A, long lda, const bf16* B, long ldb,
          float beta, bf16* C, long ldc) {
    if (M <= 0 || N <= 0) return;
    if (bf16_native() && K > 0) dnnl().run(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dnnl_bf16, dnnl_bf16);
    else emulated().run(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace strata
