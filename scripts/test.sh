#!/usr/bin/env bash
# The tests: install, build, fetch the default corpus (the end-to-end smoke test trains on it), run
# the whole suite. Pass ctest arguments to narrow it, e.g. scripts/test.sh -L op
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/get_corpus.sh
cd build
ctest --output-on-failure -j"$(nproc)" "$@"
