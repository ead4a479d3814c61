#!/usr/bin/env python3
"""What each residual rule costs over the standard one, side by side in one run, on the bench model.

Training step: one `strata bench train --serve` worker per (rule, precision) — the worker
`strata bench train` itself drives, running `strata train`'s training step on a fixed batch — kept
alive for the whole run and asked for one repetition each per round, the order rotated every round,
so drift and noise hit every configuration alike. A repetition is the mean of --steps timed steps
after --warmup untimed ones.

Decode: `strata bench generate --residual R` processes (the bench model, batch 1, greedy, KV cache),
one per rule per round, rotated likewise; each reports its median decode tokens/s per precision.

For each configuration it reports the median with a distribution-free 95 % interval for the median,
and the overhead over `standard` of the same precision as the median of the per-round ratios − 1,
with its interval. Usage (about 25 minutes on 2 cores with the defaults):

    python3 bench/rules_bench.py --binary build/strata --reps 10 --markdown-out bench/results/rules-DATE.md

The machine, the thread count and OPENBLAS_CORETYPE go into the report; quote nothing from one round.
"""
import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("ab_step", HERE / "ab_step.py")
_ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ab)
median_ci = _ab.median_ci

# name: bench flags
RULES = {
    "standard": [],
    "attnres_full": ["--residual", "attnres_full"],
    "attnres_block": ["--residual", "attnres_block", "--attnres-block-size", "4"],
    "rezero": ["--residual", "rezero"],
    "layernorm_scaling": ["--residual", "layernorm_scaling"],
    "denseformer": ["--residual", "denseformer"],
    "moda": ["--attention", "moda"],  # MoDA (attention and FFN K/V) under the standard rule
}


class Worker:
    """One `strata bench train --serve PRECISION` process (its line protocol: bench/README.md)."""

    def __init__(self, binary, rule, precision, a):
        self.rule, self.precision = rule, precision
        cmd = [binary, "bench", "train", "--serve", precision, "--threads", str(a.threads), "--warmup",
               str(a.warmup), "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq), *RULES[rule]]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True, bufsize=1)
        self.ready = self.read()
        if "ready" not in self.ready:
            sys.exit(f"{rule} {precision}: the worker did not start: {self.ready}")
        self.reps = []

    def read(self):
        line = self.p.stdout.readline()
        if not line:
            sys.exit(f"{self.rule} {self.precision}: the worker exited (code {self.p.wait()})")
        j = json.loads(line)
        if "error" in j:
            sys.exit(f"{self.rule} {self.precision}: {j['error']}")
        return j

    def rep(self):
        self.p.stdin.write("rep\n")
        j = self.read()
        self.reps.append(1e3 * sum(j["step_s"]) / len(j["step_s"]))
        return self.reps[-1]

    def quit(self):
        self.p.stdin.write("quit\n")
        self.read()
        self.p.wait()


def decode_once(binary, rule, a):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [binary, "bench", "generate", "--threads", str(a.threads), "--reps", str(a.decode_reps),
               "--precision", ",".join(a.precisions), "--json-out", f.name, *RULES[rule]]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
        j = json.load(open(f.name))
    return {c["precision"]: c["decode_tokens_per_s"]["median"] for c in j["configs"] if c["status"] == "measured"}


def rotated(items, r):
    k = r % len(items)
    return items[k:] + items[:k]


def fmt_ci(m, ci, f="{:.1f}"):
    return f"{f.format(m)} [{f.format(ci[0])}, {f.format(ci[1])}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="build/strata")
    ap.add_argument("--rules", default=",".join(RULES), help="comma list; standard is always included")
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--reps", type=int, default=10, help="rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per repetition")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--decode-reps", type=int, default=2, help="timed decodes per bench generate process")
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--markdown-out")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    rules = ["standard"] + [r for r in a.rules.split(",") if r and r != "standard"]
    for r in rules:
        if r not in RULES:
            sys.exit(f"--rules: unknown rule {r!r} (known: {', '.join(RULES)})")
    a.precisions = [p for p in a.precision.split(",") if p]
    if a.reps < 2:
        sys.exit("--reps must be at least 2")

    configs = [(r, p) for p in a.precisions for r in rules]
    print(f"starting {len(configs)} workers...", file=sys.stderr)
    workers = {c: Worker(a.binary, c[0], c[1], a) for c in configs}
    for r in range(a.reps):
        for c in rotated(configs, r):
            workers[c].rep()
        print(f"round {r + 1}/{a.reps}: " + ", ".join(f"{c[0]} {c[1]} {workers[c].reps[-1]:.0f} ms" for c in configs),
              file=sys.stderr)
    for w in workers.values():
        w.quit()

    decode = {(r, p): [] for r in rules for p in a.precisions}
    if not a.no_decode:
        for k in range(a.reps):
            for rule in rotated(rules, k):
                for p, tps in decode_once(a.binary, rule, a).items():
                    decode[(rule, p)].append(tps)
            print(f"decode round {k + 1}/{a.reps}", file=sys.stderr)

    rows, out = [], {"train": {}, "decode": {}}
    for p in a.precisions:
        base = workers[("standard", p)].reps
        for rule in rules:
            ms = workers[(rule, p)].reps
            m, ci = median_ci(ms)
            ratios = [x / y - 1 for x, y in zip(ms, base)]
            om, oci = median_ci(ratios)
            # the FLOP model's extra over standard (for MoDA: the FFN K/V projections and the depth scores)
            fl, fl0 = workers[(rule, p)].ready.get("flops_per_step"), workers[("standard", p)].ready.get("flops_per_step")
            flop_extra = fl / fl0 - 1 if fl and fl0 else None
            entry = {"step_ms": ms, "median_ms": m, "ci95_ms": ci, "overhead": om, "overhead_ci95": oci,
                     "flop_model_extra": flop_extra}
            if not a.no_decode:
                d = decode[(rule, p)]
                dm, dci = median_ci(d)
                dr = [1 - x / y for x, y in zip(d, decode[("standard", p)])]  # the share of tokens/s lost
                drm, drci = median_ci(dr)
                entry.update(decode_tokens_per_s=d, decode_median=dm, decode_ci95=dci, decode_loss=drm,
                             decode_loss_ci95=drci)
            out["train"][f"{rule}/{p}"] = entry
            rows.append((rule, p, entry))

    j0 = workers[("standard", a.precisions[0])].ready
    machine = {
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "online_cpus": os.cpu_count(), "host": platform.node(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
    }
    md = [f"# Residual rules: overhead over the standard rule — {datetime.date.today()}", "",
          f"Machine: {machine['cpu']}, {machine['online_cpus']} CPUs, host {machine['host']}, "
          f"OPENBLAS_CORETYPE={machine['OPENBLAS_CORETYPE']}, {a.threads} threads.", "",
          f"Command: `python3 bench/rules_bench.py {' '.join(sys.argv[1:])}` (commit "
          f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=HERE).stdout.strip()}).", "",
          f"The bench model (`strata bench train`; {j0.get('params', '?')} parameters with the standard rule), batch "
          f"{a.batch} × {a.seq}; Block AttnRes with S = 4. Training: {a.reps} rounds, each one repetition of every "
          f"configuration in rotated order, a repetition being the mean of {a.steps} steps after {a.warmup} warm-up "
          f"steps, in long-lived workers. Decode: {a.reps} rounds of one `strata bench generate` process per rule "
          f"(batch 1, 64-token prompt, 128 greedy tokens, the median of {a.decode_reps} decodes per process). "
          "Medians with a distribution-free 95 % interval; overheads are medians of per-round ratios.", "",
          "| rule | precision | step ms | step overhead | FLOP-model extra | decode tokens/s | decode tokens/s lost |",
          "|---|---|---|---|---|---|---|"]
    for rule, p, e in rows:
        flop = "—" if e["flop_model_extra"] is None else f"{100 * e['flop_model_extra']:+.1f} %"
        dec = ("—", "—") if a.no_decode else (fmt_ci(e["decode_median"], e["decode_ci95"]),
                                              fmt_ci(100 * e["decode_loss"], [100 * x for x in e["decode_loss_ci95"]],
                                                     "{:+.1f}") + " %")
        md.append(f"| {rule} | {p} | {fmt_ci(e['median_ms'], e['ci95_ms'])} | "
                  f"{fmt_ci(100 * e['overhead'], [100 * x for x in e['overhead_ci95']], '{:+.1f}')} % | {flop} | "
                  f"{dec[0]} | {dec[1]} |")
    text = "\n".join(md) + "\n"
    print(text)
    if a.markdown_out:
        pathlib.Path(a.markdown_out).write_text(text)
    if a.json_out:
        pathlib.Path(a.json_out).write_text(json.dumps({"machine": machine, "args": vars(a), **out}, indent=1))


if __name__ == "__main__":
    main()
