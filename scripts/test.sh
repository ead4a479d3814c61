#!/usr/bin/env bash
# The tests: install, build, fetch the default corpus (the end-to-end smoke test trains on it), run
# the whole suite: the C++ tests under ASan + UBSan (scripts/sanitize.sh, build-asan/), the fuzzers
# over their seed corpora plus 10 s of fuzzing each (scripts/fuzz.sh --replay, build-fuzz/), and last
# the main ctest run (build/), whose summary closes the output.
# Pass ctest arguments to run only the main ctest, narrowed, e.g. scripts/test.sh -L op
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/get_corpus.sh
if [ $# -eq 0 ]; then
  bash scripts/sanitize.sh
  bash scripts/fuzz.sh --replay
fi
cd build
ctest --output-on-failure -j"$(nproc)" "$@"
