#!/usr/bin/env bash
# Waits up to BENCH_IDLE_WAIT seconds (default 300) for the 1-minute load average to fall below 0.5,
# so that timings on a small machine are not shared with other work. `--check` only validates the
# variable (run_train.sh does that before its minutes of setup).
set -euo pipefail
wait_s="${BENCH_IDLE_WAIT:-300}"
if ! [[ "$wait_s" =~ ^[0-9]{1,6}$ ]]; then
    echo "wait_idle.sh: error: BENCH_IDLE_WAIT must be a whole number of seconds (0 to 999999), got '$wait_s'" >&2
    exit 2
fi
[ "${1:-}" = "--check" ] && exit 0
wait_s=$((10#$wait_s))
waited=0
while awk '{exit !($1 >= 0.5)}' /proc/loadavg && [ "$waited" -lt "$wait_s" ]; do
    [ "$waited" = 0 ] && echo "wait_idle.sh: load average $(cut -d' ' -f1-3 /proc/loadavg); waiting up to ${wait_s}s for an idle machine" >&2
    step=$((wait_s - waited < 10 ? wait_s - waited : 10))
    sleep "$step"
    waited=$((waited + step))
done
echo "wait_idle.sh: load average $(cut -d' ' -f1-3 /proc/loadavg) at start" >&2
