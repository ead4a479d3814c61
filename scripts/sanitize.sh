#!/usr/bin/env bash
# The C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer (with LeakSanitizer), in build-asan/
# (configured once with -DSTRATA_SANITIZE=ON, then incremental). Any sanitizer report fails its test:
# undefined behaviour is compiled non-recoverable and ASan/LSan exit non-zero.
#
# What runs: every GoogleTest binary of every area (labels op, parity, reliability; e2e has none), i.e.
# all of tests/<area>/test_*.cpp. The pytest files are not registered in this build: python3 cannot
# import an ASan-instrumented extension module without preloading the ASan runtime into the
# interpreter (whose own allocations LSan then reports), so the parity-vs-PyTorch and CLI-level tests
# run in the main build only (scripts/test.sh). Extra arguments go to ctest, e.g. -L op.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ ! -f build-asan/CMakeCache.txt ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTRATA_SANITIZE=ON >/dev/null
fi
# Quiet on success; on a failed build show the end of the log and stop.
# Only the test binaries: nothing here runs the CLI or imports the Python module, and building them
# instrumented would add minutes.
if ! cmake --build build-asan -j"$(nproc)" --target strata_cpp_tests > build-asan/build.log 2>&1; then
  tail -n 60 build-asan/build.log >&2
  echo "sanitize.sh: the build-asan build failed" >&2
  exit 1
fi
# Third-party suppressions only (each entry says why); see the files.
export ASAN_OPTIONS="detect_leaks=1:strict_init_order=1:check_initialization_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="suppressions=$root/scripts/ubsan.supp:print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
cd build-asan
ctest --output-on-failure -j"$(nproc)" -L 'op|parity|reliability|e2e|attn_res|moda|precision' "$@"
