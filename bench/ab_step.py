#!/usr/bin/env python3
"""Two strata builds' training step, side by side in one run: `strata bench train --no-peer` of
binary A and binary B, interleaved (A B, B A, A B, ...) so drift and noise hit both alike.

For each binary it reports the median step time over the repetitions with a distribution-free 95 %
interval for the median (order statistics of the binomial), and the same for the per-pair ratio
A/B (> 1: B is faster). Use it for before/after numbers of a change:

    python3 bench/ab_step.py --a /tmp/strata-before --b build/strata --reps 10 [-- --residual attnres_full]

Flags after `--` go to both `bench train` runs. The machine, the thread count and OPENBLAS_CORETYPE
are printed with the result; quote none of it from a single repetition.
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile


def median_ci(xs, level=0.95):
    """Median and the order-statistic interval (x_(k), x_(n+1-k)) that covers it with ≥ level."""
    xs = sorted(xs)
    n = len(xs)
    best = (xs[0], xs[-1])
    for k in range(1, n // 2 + 1):  # widest-first: keep the narrowest interval that still covers
        cover = sum(math.comb(n, i) for i in range(k, n - k + 1)) / 2 ** n
        if cover >= level:
            best = (xs[k - 1], xs[n - k])
        else:
            break
    return statistics.median(xs), best


def step_ms(binary, extra, threads, steps, warmup, precision):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [binary, "bench", "train", "--no-peer", "--precision", precision, "--reps", "1", "--threads", str(threads), "--steps", str(steps),
               "--warmup", str(warmup), "--json-out", f.name, *extra]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
        j = json.load(open(f.name))
    return j["strata"]["step_ms_mean"], j["machine"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="the strata binary before")
    ap.add_argument("--b", required=True, help="the strata binary after")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per bench run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("extra", nargs="*", help="flags for bench train (after --)")
    a = ap.parse_args()
    if a.reps < 2:
        sys.exit("--reps must be at least 2")
    ms = {"a": [], "b": []}
    machine = None
    for r in range(a.reps):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        for which in order:
            t, machine = step_ms(getattr(a, which), a.extra, a.threads, a.steps, a.warmup, a.precision)
            ms[which].append(t)
        print(f"rep {r + 1}/{a.reps}: A {ms['a'][-1]:.1f} ms, B {ms['b'][-1]:.1f} ms", file=sys.stderr)
    ratios = [x / y for x, y in zip(ms["a"], ms["b"])]
    (ma, ia), (mb, ib), (mr, ir) = median_ci(ms["a"]), median_ci(ms["b"]), median_ci(ratios)
    print(f"machine: {machine['cpu']}, {machine['online_cpus']} CPUs, SIMD {machine['simd']}, "
          f"engine {machine.get('engine', '(not recorded)')}, OpenBLAS kernel {machine['openblas_core']}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"{a.threads} threads, {platform.node()}")
    print(f"command: {' '.join(sys.argv)}")
    print(f"| build | median step (ms) | 95 % interval |\n|---|---|---|")
    print(f"| A {a.a} | {ma:.1f} | {ia[0]:.1f} – {ia[1]:.1f} |")
    print(f"| B {a.b} | {mb:.1f} | {ib[0]:.1f} – {ib[1]:.1f} |")
    print(f"| A ÷ B (per interleaved pair) | {mr:.3f} | {ir[0]:.3f} – {ir[1]:.3f} |")
    print(f"{a.reps} repetitions of {a.warmup} warm-up + {a.steps} timed steps each; "
          f"the step time of one repetition is the mean of its timed steps.")


if __name__ == "__main__":
    main()
