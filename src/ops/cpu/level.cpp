#include "ops/cpu/level.h"

#include "ops/cpu/vec_math.h"

#ifndef STRATA_CPU_LEVEL
#define STRATA_CPU_LEVEL "native"
#endif

namespace strata {

const char* engine_cpu_level() { return STRATA_CPU_LEVEL; }
int engine_vec_bytes() { return simd::kVecBytes; }

}  // namespace strata
