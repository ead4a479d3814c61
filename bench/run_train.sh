#!/usr/bin/env bash
# The training benchmark in one command: set up the PyTorch peer's venv, build strata, wait briefly
# for an idle machine, then run `strata bench train` and keep the report in bench/results/.
#
#   bash bench/run_train.sh                 # defaults: 2 threads, 2 warm-up + 10 timed steps
#   bash bench/run_train.sh --steps 20      # extra flags go to `strata bench train`
#   BENCH_IDLE_WAIT=0 bash bench/run_train.sh   # do not wait for the load average to drop
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash bench/wait_idle.sh --check  # a bad BENCH_IDLE_WAIT fails now, not after the setup

if ! bash bench/setup.sh; then
    echo "run_train.sh: bench/setup.sh failed; the PyTorch peer will be skipped" >&2
fi

cmake -S . -B build -G Ninja >/dev/null
cmake --build build -j2 --target strata

mkdir -p bench/results
day="$(date +%Y-%m-%d)"
md="bench/results/train-$day.md"
js="bench/results/train-$day.json"

# Timings on a 2-core machine are only meaningful when nothing else runs: wait (up to
# BENCH_IDLE_WAIT seconds, default 300) for the 1-minute load average to fall below 0.5. The report
# records the load average before and after and the CPU time other processes took during each part.
bash bench/wait_idle.sh

build/strata bench train --profile --json-out "$js" --markdown-out "$md" "$@"
echo "run_train.sh: report written to $md (raw numbers: $js)" >&2
