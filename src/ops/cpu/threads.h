// Splitting work inside an OpenMP parallel region.
#pragma once
#include <utility>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace strata {

// This thread's share [lo, hi) of n columns inside a parallel region: a fixed split, so each
// column's sum is accumulated in row order by one thread whatever the schedule.
inline std::pair<long, long> thread_slice(long n) {
    int nt = 1, id = 0;
#ifdef _OPENMP
    nt = omp_get_num_threads();
    id = omp_get_thread_num();
#endif
    return {n * id / nt, n * (id + 1) / nt};
}

}  // namespace strata
