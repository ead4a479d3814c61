#!/usr/bin/env bash
# libFuzzer runs of strata's parsers and validators (fuzz/fuzz_<target>.cpp, seeds in fuzz/corpus/<target>/).
#
#   scripts/fuzz.sh --replay          every target over its saved corpus, then 10 s of fuzzing each (CI)
#   scripts/fuzz.sh --long N [T...]   N executions (-runs=N) of each target (or of the targets T...);
#                                     writes executions, exec/s, crashes and coverage gained to
#                                     bench/results/fuzz-YYYY-MM-DD.md
#
# Builds first, with clang++, in build-fuzz/ (configured once, then incremental). Inputs found while
# fuzzing go to build-fuzz/corpus/<target>/ (the committed seeds are never written to); a crash stops
# the script and leaves its input in build-fuzz/artifacts/, to rerun with build-fuzz/fuzz/fuzz_<target> FILE.
# A failure is a crash, a sanitizer report, an uncaught exception other than strata::Error, a failed
# FUZZ_CHECK, a leak, an input that runs over 60 s, or one that allocates over 2 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

# The whole script is one function, read in full before it runs: a long run then survives edits to
# this file (bash otherwise reads a script as it goes).
main() {
usage() { echo "usage: scripts/fuzz.sh --replay | --long N [target ...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
mode=$1; shift
runs=0
case "$mode" in
  --replay) [ $# -eq 0 ] || usage ;;
  --long) [ $# -ge 1 ] && [[ $1 =~ ^[0-9]+$ ]] || usage; runs=$1; shift ;;
  *) usage ;;
esac

all_targets=()
for f in fuzz/fuzz_*.cpp; do t=${f#fuzz/fuzz_}; all_targets+=("${t%.cpp}"); done
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
for t in "${targets[@]}"; do
  [ -f "fuzz/fuzz_$t.cpp" ] || { echo "fuzz: no target '$t' (have: ${all_targets[*]})" >&2; exit 2; }
done

# ---- build ------------------------------------------------------------------------------------------
if [ ! -f build-fuzz/CMakeCache.txt ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTRATA_FUZZ=ON >/dev/null
fi
# Quiet on success; on a failed build show the end of the log and stop.
if ! cmake --build build-fuzz -j"$(nproc)" --target "${all_targets[@]/#/fuzz_}" > build-fuzz/build.log 2>&1; then
  tail -n 60 build-fuzz/build.log >&2
  echo "fuzz.sh: the build-fuzz build failed" >&2
  exit 1
fi
for t in "${targets[@]}"; do [ -x "build-fuzz/fuzz/fuzz_$t" ] || { echo "fuzz: build failed" >&2; exit 1; }; done

# One thread per fuzzer; undefined behaviour is fatal (it is compiled so, this also prints its stack).
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export UBSAN_OPTIONS="suppressions=$(pwd)/scripts/ubsan.supp:print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
common=(-timeout=60 -rss_limit_mb=2048 -malloc_limit_mb=2048)
mkdir -p build-fuzz/artifacts

fail() {
  echo "fuzz: $1 FAILED; the output ends:" >&2
  tail -n 40 "$2" >&2
  echo "fuzz: reproduce with build-fuzz/fuzz/fuzz_$1 on the input named above (build-fuzz/artifacts/)" >&2
  exit 1
}

# ---- replay (CI) -----------------------------------------------------------------------------------
if [ "$mode" = --replay ]; then
  for t in "${targets[@]}"; do
    bin=build-fuzz/fuzz/fuzz_$t
    log=build-fuzz/artifacts/$t.log
    seeds=(fuzz/corpus/"$t"/*)
    start=$(date +%s)
    "$bin" "${common[@]}" -artifact_prefix="build-fuzz/artifacts/$t-" "${seeds[@]}" >"$log" 2>&1 || fail "$t" "$log"
    mkdir -p "build-fuzz/corpus/$t"
    "$bin" "${common[@]}" -max_total_time=10 -artifact_prefix="build-fuzz/artifacts/$t-" \
      "build-fuzz/corpus/$t" "fuzz/corpus/$t" >>"$log" 2>&1 || fail "$t" "$log"
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
    execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$done_line")
    echo "fuzz: $t: ${#seeds[@]} seeds replayed, then ${execs:-?} executions in 10 s, no crash ($(( $(date +%s) - start )) s)"
  done
  exit 0
fi

# ---- long runs -------------------------------------------------------------------------------------
date_tag=$(date +%Y-%m-%d)
report=bench/results/fuzz-$date_tag.md
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
rows=()
for t in "${targets[@]}"; do
  bin=build-fuzz/fuzz/fuzz_$t
  log=build-fuzz/artifacts/$t-long.log
  mkdir -p "build-fuzz/corpus/$t"
  echo "fuzz: $t: $runs executions ..."
  start=$(date +%s)
  "$bin" "${common[@]}" -runs="$runs" -print_final_stats=1 -artifact_prefix="build-fuzz/artifacts/$t-" \
    "build-fuzz/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1 || fail "$t" "$log"
  secs=$(( $(date +%s) - start ))
  final_stat() { sed -nE "s/^stat::$1:[[:space:]]*([0-9]+).*/\1/p" "$log" | tail -n 1; }
  execs=$(final_stat number_of_executed_units)
  rate=$(final_stat average_exec_per_sec)
  new_units=$(final_stat new_units_added)
  rss=$(final_stat peak_rss_mb)
  cov0=$(sed -nE 's/^#[0-9]+[[:space:]]+INITED.* cov: ([0-9]+) ft: ([0-9]+).*/\1 \2/p' "$log" | head -n 1)
  cov1=$(sed -nE 's/^#[0-9]+[[:space:]]+DONE.* cov: ([0-9]+) ft: ([0-9]+).*/\1 \2/p' "$log" | tail -n 1)
  read -r e0 f0 <<<"${cov0:-0 0}"
  read -r e1 f1 <<<"${cov1:-0 0}"
  seeds=$(ls "fuzz/corpus/$t" | wc -l)
  rows+=("| $t | $execs | $rate | $secs | 0 | $e0 → $e1 | $f0 → $f1 | $new_units | $seeds | $rss |")
  echo "fuzz: $t: $execs executions, $rate exec/s, $secs s, no crash; edges $e0 -> $e1, $new_units new inputs"
done

mkdir -p bench/results
{
  echo "# Fuzzing run, $date_tag"
  echo
  echo "- command: \`scripts/fuzz.sh --long $runs${*:+ $*}\`"
  echo "- machine: $cpu, $(nproc) cores; $(uname -sr); $(clang++ --version | head -n 1)"
  echo "- commit: $commit$dirty"
  echo "- build: build-fuzz (clang++ -O3 -march=native, -fsanitize=fuzzer,address,undefined, UB fatal), one thread per target, targets run one after another"
  echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "Each target starts from its committed seeds (fuzz/corpus/<target>/) plus whatever earlier runs"
  echo "kept in build-fuzz/corpus/<target>/. Coverage is libFuzzer's count of instrumented edges (cov) and"
  echo "features (ft) after loading that corpus (INITED) and at the end (DONE); new inputs are the units this"
  echo "run added to the corpus. SentencePiece, OpenBLAS and the C++ library are not instrumented, so their"
  echo "code adds no coverage (a crash inside them would still stop the run)."
  echo
  echo "| target | executions | exec/s | seconds | crashes | edges (cov) | features (ft) | new inputs | seeds | peak RSS MB |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >"$report"
echo "fuzz: wrote $report"
}

main "$@"
