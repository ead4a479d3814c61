// Which build of the engine is running: the x86-64 level it was compiled for and its SIMD width.
// The engine is built once per level (CMakeLists.txt, STRATA_CPU_LEVELS) and the dynamic loader picks
// the build this CPU runs, so these are answered by the loaded library, not by the caller's flags.
#pragma once

namespace strata {

// "x86-64-v4" (AVX-512), "x86-64-v3" (AVX2 and FMA), or "native" for the single build of the checked
// builds (-march=native).
const char* engine_cpu_level();
// The bytes of the SIMD vectors the engine's kernels use: 64 with AVX-512, else 32.
int engine_vec_bytes();

}  // namespace strata
