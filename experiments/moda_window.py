#!/usr/bin/env python3
"""MoDA with a bounded depth window (`model.moda_depth_window`), on a model of 16 blocks.

The MoDA paper (arXiv 2603.15619, §6.2) leaves bounded depth-KV slots as future work: caching every
earlier layer's K/V grows linearly with depth. strata's window W lets each layer read only its W most
recent slots (2 per layer with FFN K/V, so W = 2 is the previous layer only). This script trains the
same 16-block model once per W in --windows (0 = every slot, the paper's MoDA) and reports:

  1. the validation loss at equal steps (one seed per W unless --seeds says more);
  2. training and decode tokens/s, measured side by side: --reps rounds, each timing every W once in
     a rotated order (training: a short `strata train` run's step rate; decode: `strata bench generate
     --ckpt`), reported as the median with a 95 % interval over the rounds;
  3. the depth-buffer bytes: what training stores (every slot, whatever W: an earlier layer's backward
     needs its slot's gradient), and what the layers read per token in a forward.

    python3 experiments/moda_window.py [--windows 2,4,8,0] [--steps N] [--seeds K] [--reps R]

Run `bash scripts/main.sh` first (build/strata and data/corpus/default.txt). Each training run
resumes if its run directory holds a checkpoint. Writes bench/results/moda-window-DATE.md and .json.
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

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = ROOT / "build" / "strata"
_spec = importlib.util.spec_from_file_location("ab_step", ROOT / "bench" / "ab_step.py")
_ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ab)
median_ci = _ab.median_ci


def sh(*args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"{args[0]} {args[1]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def model_args(a, window, seed):
    return ["-c", "configs/default.json", "--set", f"model.n_layers={a.layers}", "--set", "model.attention=moda",
            "--set", f"model.moda_depth_window={window}", "--set", f"model.seed={seed}",
            "--set", f"train.seed={seed}", "--set", f"train.threads={a.threads}", "--set", f"train.batch_size={a.batch}"]


def train_rate(a, window, tmp, rep):
    """tokens/s of a short training run from scratch (the median step of its last three quarters)."""
    out = pathlib.Path(tmp) / f"w{window}-r{rep}"
    sh(BIN, "train", *model_args(a, window, 1337), "--set", f"train.steps={a.time_steps}",
       "--set", f"train.eval_every={a.time_steps}", "--set", f"train.ckpt_every={a.time_steps}",
       "--set", f"train.out_dir={out}")
    m = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    tps = sorted(x["tokens_per_s"] for x in m if "tokens_per_s" in x)[len(m) // 4:]
    return tps[len(tps) // 2]


def decode_rate(a, run_dir):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        sh(BIN, "bench", "generate", "--ckpt", run_dir, "--threads", a.threads, "--reps", "3", "--precision", "fp32",
           "--prompt-tokens", "64", "--new-tokens", "128", "--json-out", f.name)
        j = json.load(open(f.name))
    return next(c["decode_tokens_per_s"]["median"] for c in j["configs"] if c["status"] == "measured")


def depth_bytes(window, layers, kvd, B, T):
    """Training's depth buffer (K and V, fp32, with their gradients) and the bytes the layers read per token."""
    slots = 2 * (layers - 1)
    stored = 2 * 2 * B * T * slots * kvd * 4  # K, V and their gradients
    read = sum(min(window or 2 * l, 2 * l) for l in range(layers)) * 2 * kvd * 4
    return stored, read


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", default="2,4,8,0", help="comma list of windows (0 = every slot)")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300, help="training steps per run")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step (of the config's 128 tokens)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per window (1337, 1338, ...)")
    ap.add_argument("--reps", type=int, default=10, help="interleaved timing rounds")
    ap.add_argument("--time-steps", type=int, default=8, help="steps of each timed training run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-batches", type=int, default=40)
    ap.add_argument("--out", default="runs/moda-window")
    a = ap.parse_args()
    if not BIN.exists() or not (ROOT / "data/corpus/default.txt").exists():
        sys.exit("build/strata or data/corpus/default.txt is missing: run `bash scripts/main.sh` first")
    windows = [int(w) for w in a.windows.split(",")]
    cfg = json.loads((ROOT / "configs/default.json").read_text())
    kvd = cfg["model"]["n_kv_heads"] * cfg["model"]["head_dim"]
    B, T = a.batch, cfg["train"]["seq_len"]

    results = {w: {"val_loss": []} for w in windows}
    for w in windows:
        for s in range(a.seeds):
            run_dir = pathlib.Path(a.out) / f"w{w}-s{s}"
            sh(BIN, "train", *model_args(a, w, 1337 + s), "--set", f"train.steps={a.steps}",
               "--set", f"train.out_dir={run_dir}")
            ev = sh(BIN, "eval", "--ckpt", run_dir, "--batches", a.eval_batches, "--threads", a.threads).stdout
            results[w]["val_loss"].append(float(ev.split("loss ")[1].split(",")[0]))
            print(f"W={w} seed {s}: validation loss {results[w]['val_loss'][-1]:.4f}", file=sys.stderr)
    train_tps = {w: [] for w in windows}
    decode_tps = {w: [] for w in windows}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.reps):
            order = windows[r % len(windows):] + windows[:r % len(windows)]
            for w in order:
                train_tps[w].append(train_rate(a, w, tmp, r))
                decode_tps[w].append(decode_rate(a, pathlib.Path(a.out) / f"w{w}-s0"))
            print(f"timing round {r + 1}/{a.reps}", file=sys.stderr)

    day = datetime.date.today().isoformat()
    out_md = ROOT / "bench" / "results" / f"moda-window-{day}.md"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    full = sum(results[0]["val_loss"]) / len(results[0]["val_loss"]) if 0 in results else None
    L = [f"# MoDA with a bounded depth window — {day}\n",
         f"Command: `python3 experiments/moda_window.py --windows {a.windows} --layers {a.layers} --steps {a.steps} "
         f"--batch {a.batch} --seeds {a.seeds} --reps {a.reps} --threads {a.threads}`; strata {commit}; {cpu}, {a.threads} threads; "
         f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; {platform.platform()}.\n",
         f"Model: `configs/default.json` with {a.layers} layers and MoDA (attention and FFN K/V, "
         f"{2 * (a.layers - 1)} slots), fp32, batch {B} × {T}, {a.steps} steps, on the default corpus; only "
         "`model.moda_depth_window` changes. Timings: median [95 % interval] over the interleaved rounds.\n",
         "| W (slots) | validation loss | Δ vs W = 0 | training tokens/s | decode tokens/s | training depth buffer | "
         "depth bytes read per token |", "|---|---|---|---|---|---|---|"]
    js = {"command": sys.argv, "commit": commit, "cpu": cpu, "windows": {}}
    for w in windows:
        vl = results[w]["val_loss"]
        v = sum(vl) / len(vl)
        tm, tci = median_ci(train_tps[w])
        dm, dci = median_ci(decode_tps[w])
        stored, read = depth_bytes(w, a.layers, kvd, B, T)
        delta = f"{v - full:+.4f}" if full is not None else "—"
        L.append(f"| {w or 'all'} | {v:.4f}" + (f" ({', '.join(f'{x:.4f}' for x in vl)})" if len(vl) > 1 else "") +
                 f" | {delta} | {tm:.0f} [{tci[0]:.0f}, {tci[1]:.0f}] | {dm:.1f} [{dci[0]:.1f}, {dci[1]:.1f}] | "
                 f"{stored / 2**20:.1f} MiB | {read / 1024:.1f} KiB |")
        js["windows"][str(w)] = {"val_loss": vl, "train_tokens_per_s": train_tps[w], "decode_tokens_per_s": decode_tps[w],
                                 "depth_buffer_bytes": stored, "depth_bytes_read_per_token": read}
    L.append("\nThe training depth buffer does not shrink with W: every slot is written once and read by the next W/2 "
             "layers, and its gradient flows back to the layer that wrote it. Decoding under own-token visibility keeps "
             "no depth cache at all (each token's slots are made in its own forward), so W bounds what each layer "
             "reads, not what is kept.\n")
    out_md.write_text("\n".join(L) + "\n")
    out_md.with_suffix(".json").write_text(json.dumps(js, indent=1) + "\n")
    print(out_md)


if __name__ == "__main__":
    main()
