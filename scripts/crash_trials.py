#!/usr/bin/env python3
"""Crash trials: kill `strata train` with SIGKILL at random moments, resume, repeat until the run
completes, and check that nothing was lost.

Each trial trains a tiny model (a few seconds of work at most) into a fresh run directory. A seeded
random generator picks when to kill each attempt; the trainer is restarted after every kill until an
attempt finishes on its own. Checked per trial:

  * after every kill, RUN_DIR/checkpoint.safetensors is either absent (killed before the first
    checkpoint) or a complete checkpoint: its header parses, its tensors tile the file, its step is a
    checkpoint step no earlier than the last one seen, and `strata eval --ckpt RUN_DIR --batches 1`
    loads it and exits 0. Temporary files (NAME.tmp.PID) left by a kill during a write are counted;
  * at the end, metrics.jsonl holds exactly one line per step (the trainer drops the lines a killed
    run wrote after its last checkpoint), and every loss, lr, grad-norm and validation loss equals
    the uninterrupted reference run's bit for bit (metrics print them with 17 significant digits);
  * the final checkpoint's tensors and metadata are byte-identical to the reference run's, and no temporary file is left in
    the run or data directory.

Usage: python3 scripts/crash_trials.py [--trials N] [--seed S] [--out report.md] [--bin build/strata]

Exit status 0 when every trial passed, 1 otherwise. Only the Python standard library is used.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A tiny model and run: ~26k parameters, 40 steps, a checkpoint every 3 steps, an evaluation every 10.
TINY = {
    "model.vocab_size": 320, "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 4,
    "model.n_kv_heads": 2, "model.head_dim": 8, "model.ffn_hidden": 48, "model.max_seq_len": 64,
    "train.batch_size": 4, "train.seq_len": 32, "train.eval_batches": 2, "train.warmup": 2,
    "train.log_every": 1, "train.eval_every": 10,
}
# The metrics fields that must match bit for bit (timings naturally differ).
EXACT_FIELDS = ("step", "loss", "lr", "grad_norm", "val_loss", "skipped")


def write_corpus(path, n_bytes=60000):
    """The head of the default corpus when present, else generated prose."""
    default = ROOT / "data" / "corpus" / "default.txt"
    if default.exists():
        text = default.read_bytes()[:n_bytes].decode("utf-8", errors="ignore")
    else:
        words = "the quick brown fox jumps over the lazy dog while seven wise owls watch quietly".split()
        text = "\n".join(" ".join(words[(i * 3 + j) % len(words)] for j in range(12)) + "."
                         for i in range(n_bytes // 70))
    path.write_text(text, encoding="utf-8")


def read_header(path):
    """(metadata, ok, why) of a safetensors file, checked structurally."""
    raw = path.read_bytes()
    if len(raw) < 8:
        return None, False, f"{len(raw)} bytes"
    n = struct.unpack("<Q", raw[:8])[0]
    if 8 + n > len(raw):
        return None, False, "header runs past the end"
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError as e:
        return None, False, f"header is not JSON: {e}"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if max(ends, default=0) != len(raw) - 8 - n:
        return None, False, "tensors do not tile the file"
    return header.get("__metadata__", {}), True, ""


def checkpoint_content(path):
    """A checkpoint's tensors and metadata, less the run directory it names (trials differ only there)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = dict(header.pop("__metadata__", {}))
    cfg = json.loads(meta.pop("config", "{}"))
    cfg.get("train", {}).pop("out_dir", None)
    return header, meta, cfg, raw[8 + n:]


def metrics_lines(run_dir):
    lines = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        j = json.loads(line)
        lines.append({k: j[k] for k in EXACT_FIELDS if k in j})
    return lines


def temp_files(*dirs):
    return sorted(p.name for d in dirs if d.exists() for p in d.iterdir() if ".tmp." in p.name)


class Trials:
    def __init__(self, args):
        self.a = args
        self.bin = str(pathlib.Path(args.bin).resolve())
        self.work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="strata-crash-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.corpus = self.work / "corpus.txt"
        self.data = self.work / "data"
        write_corpus(self.corpus)
        cfg = dict(TINY)
        cfg.update({"train.corpus": str(self.corpus), "train.data_dir": str(self.data),
                    "train.steps": args.steps, "train.ckpt_every": args.ckpt_every,
                    "train.threads": args.threads})
        self.sets = [x for k, v in cfg.items() for x in ("--set", f"{k}={v}")]
        self.log = open(self.work / "trials.log", "w")

    def train_cmd(self, out):
        return [self.bin, "train", *self.sets, "--set", f"train.out_dir={out}"]

    def say(self, msg):
        print(msg, flush=True)
        self.log.write(msg + "\n")
        self.log.flush()

    def reference(self):
        """The uninterrupted run, three times: its metrics and checkpoint (all equal), and how long it takes."""
        runs = []
        for name in ("reference", "reference-again", "reference-third"):
            out = self.work / name
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.monotonic()
            p = subprocess.run(self.train_cmd(out), capture_output=True, text=True)
            dt = time.monotonic() - t0
            if p.returncode != 0:
                sys.exit(f"the reference run failed ({p.returncode}):\n{p.stderr}")
            runs.append((metrics_lines(out), checkpoint_content(out / "checkpoint.safetensors"), dt))
        if any(r[:2] != runs[0][:2] for r in runs[1:]):
            sys.exit("two uninterrupted runs differ: training is not deterministic here; trials are meaningless")
        self.ref_metrics, self.ref_ckpt = runs[0][0], runs[0][1]
        self.duration = (runs[1][2] + runs[2][2]) / 2  # the first run also prepared the data
        steps = [m["step"] for m in self.ref_metrics if "loss" in m]
        assert steps == list(range(1, self.a.steps + 1)), steps

    def check_checkpoint(self, out, last_step, problems):
        """After a kill: the checkpoint is absent or whole; returns its step (or last_step)."""
        ck = out / "checkpoint.safetensors"
        if not ck.exists():
            if last_step > 0:
                problems.append(f"the checkpoint of step {last_step} disappeared")
            return last_step
        meta, ok, why = read_header(ck)
        if not ok:
            problems.append(f"checkpoint is not whole: {why}")
            return last_step
        step = int(meta.get("step", -1))
        if step < last_step or not (step % self.a.ckpt_every == 0 or step == self.a.steps):
            problems.append(f"checkpoint step {step} after {last_step} (ckpt_every {self.a.ckpt_every})")
        p = subprocess.run([self.bin, "eval", "--ckpt", str(out), "--batches", "1", "--threads", "1"],
                           capture_output=True, text=True)
        self.evals += 1
        if p.returncode != 0:
            problems.append(f"strata eval rejects the checkpoint of step {step}: {p.stderr.strip()}")
        return step

    @staticmethod
    def reached(metrics_path, step, stale_inode):
        """Whether this attempt wrote the metrics line of `step`. A killed attempt may have left lines past
        the checkpoint; the resumed trainer replaces the file (a new inode) without them, and until it
        has, the file's lines are not this attempt's."""
        try:
            if stale_inode is not None and metrics_path.stat().st_ino == stale_inode:
                return False
            text = metrics_path.read_text()
        except OSError:
            return False
        return f'{{"step": {step}, "loss"' in text or f'{{"step": {step}, "skipped"' in text

    def kill_after(self, p, metrics_path, start, target, extra, stale_inode):
        """SIGKILLs p `extra` seconds after it wrote the metrics line of step `target` (after its start
        when target is the checkpoint's step `start`); returns p's exit status, or None when p finished
        first."""
        while target > start and p.poll() is None and not self.reached(metrics_path, target, stale_inode):
            time.sleep(0.0005)
        if p.poll() is not None:
            return p.returncode
        try:
            p.wait(timeout=extra)
            return p.returncode
        except subprocess.TimeoutExpired:
            p.kill()  # SIGKILL: no handler, no cleanup, no flush
            return p.wait()

    def trial(self, i):
        rng = random.Random(f"{self.a.seed}/{i}")
        out = self.work / f"trial-{i}"
        shutil.rmtree(out, ignore_errors=True)
        kills = mid_write = before_first = attempts = 0
        last_step = 0
        problems = []
        while True:
            attempts += 1
            cmd = self.train_cmd(out)
            # The kill moment follows the run's progress, not the wall clock (which the machine's load
            # stretches): a step drawn from the checkpoint's step to the last, then a random delay of up
            # to two step-times after that step's metrics line (after the start when it is the
            # checkpoint's step), so kills land in steps, evaluations, checkpoint writes and the start-up
            # (loading, resuming) alike. Drawing the last step lets the attempt finish.
            start = last_step
            target = rng.randint(start, self.a.steps)
            extra = rng.uniform(0.0, 2.0 * self.duration / self.a.steps)
            stale_inode = None
            m = out / "metrics.jsonl"
            if m.exists() and any(json.loads(l)["step"] > start for l in m.read_text().splitlines()
                                  if l.endswith("}")):
                stale_inode = m.stat().st_ino
            with open(self.work / "attempt.err", "w") as err:
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
                rc = None
                if attempts <= self.a.max_kills and target < self.a.steps:
                    rc = self.kill_after(p, m, start, target, extra, stale_inode)
                if rc is None:
                    rc = p.wait()
            if rc == 0:
                break
            if rc != -9:
                problems.append(f"attempt {attempts} exited {rc}: {(self.work / 'attempt.err').read_text()[-2000:]}")
                break
            kills += 1
            tmp = temp_files(out, self.data)
            if tmp:
                mid_write += 1
            if not (out / "checkpoint.safetensors").exists():
                before_first += 1
            last_step = self.check_checkpoint(out, last_step, problems)
            if problems:
                break
        if not problems:
            got = metrics_lines(out)
            if got != self.ref_metrics:
                diff = next((k for k, (x, y) in enumerate(zip(got, self.ref_metrics)) if x != y), min(len(got), len(self.ref_metrics)))
                problems.append(f"metrics differ from the uninterrupted run at line {diff + 1}: "
                                f"{got[diff] if diff < len(got) else 'missing'} vs "
                                f"{self.ref_metrics[diff] if diff < len(self.ref_metrics) else 'missing'} "
                                f"({len(got)} vs {len(self.ref_metrics)} lines)")
            if checkpoint_content(out / "checkpoint.safetensors") != self.ref_ckpt:
                problems.append("the final checkpoint differs from the uninterrupted run's")
            left = temp_files(out, self.data)
            if left:
                problems.append(f"temporary files left after completion: {left}")
        if not problems and not self.a.keep:
            shutil.rmtree(out, ignore_errors=True)
        return {"trial": i, "attempts": attempts, "kills": kills, "mid_write": mid_write,
                "before_first": before_first, "ok": not problems, "problems": problems}

    def run(self):
        t0 = time.monotonic()
        self.load_before = f"{os.getloadavg()[0]:.2f}"
        self.evals = 0
        self.reference()
        self.say(f"reference: {self.a.steps} steps in {self.duration:.3f} s")
        results = []
        for i in range(self.a.trials):
            r = self.trial(i)
            results.append(r)
            self.say(f"trial {i}: {r['attempts']} attempt(s), {r['kills']} kill(s) ({r['mid_write']} with a write in "
                     f"progress, {r['before_first']} before the first checkpoint): {'ok' if r['ok'] else 'FAIL'}"
                     + "".join(f"\n    {p}" for p in r["problems"]))
        self.elapsed = time.monotonic() - t0
        return results

    def report(self, results):
        a = self.a
        kills = sum(r["kills"] for r in results)
        ok = all(r["ok"] for r in results)
        cpu = "unknown CPU"
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        try:
            git = lambda *c: subprocess.run(["git", "-C", str(ROOT), *c], capture_output=True, text=True).stdout.strip()
            commit = git("rev-parse", "--short", "HEAD") or "unknown"
            if git("status", "--porcelain", "--untracked-files=no"):
                commit += " (with uncommitted changes in the working tree)"
        except OSError:
            commit = "unknown"
        cmd = "python3 scripts/crash_trials.py " + " ".join(sys.argv[1:])
        md = [f"# Crash trials — {datetime.date.today().isoformat()}", "",
              "`strata train` killed with SIGKILL at random moments and resumed until the run completes "
              "(scripts/crash_trials.py).", "",
              "| | |", "|---|---|",
              f"| machine | {cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; load average "
              f"{self.load_before} before, {os.getloadavg()[0]:.2f} after |",
              f"| date | {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} |",
              f"| commit | {commit}; binary `{self.bin}` |",
              f"| command | `{cmd}` |",
              f"| run | tiny model (26k parameters), {a.steps} steps, checkpoint every {a.ckpt_every} steps, "
              f"evaluation every {TINY['train.eval_every']}, {a.threads} thread(s); uninterrupted run "
              f"{self.duration:.3f} s |",
              f"| kill times | per attempt, a step s drawn uniformly from [checkpoint step, {a.steps}]; s < {a.steps}: SIGKILL a random 0–2 step-times (of the uninterrupted run) after the attempt logs step s (after its start when s is the checkpoint step); s = {a.steps}: the attempt may finish. Seed {a.seed}; after {a.max_kills} kills a trial's run is left to finish |",
              f"| trials | {len(results)} |",
              f"| kills | {kills}, {kills / len(results):.1f} per trial ({sum(r['mid_write'] for r in results)} with a write in progress — a temporary "
              f"file left behind; {sum(r['before_first'] for r in results)} before the first checkpoint) |",
              f"| checkpoints checked after a kill | {self.evals} (all loaded by `strata eval`: "
              f"{'yes' if ok else 'no'}) |",
              f"| all loss curves and final checkpoints equal to the uninterrupted run | {'yes' if ok else 'NO'} |",
              f"| failed trials | {sum(not r['ok'] for r in results)} |",
              f"| time | {self.elapsed:.1f} s |", "",
              "| trial | attempts | kills | with a write in progress | before the first checkpoint | result |",
              "|---|---|---|---|---|---|"]
        for r in results:
            md.append(f"| {r['trial']} | {r['attempts']} | {r['kills']} | {r['mid_write']} | {r['before_first']} | "
                      f"{'ok' if r['ok'] else 'FAIL: ' + '; '.join(r['problems']).replace('|', '/')} |")
        return "\n".join(md) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write the markdown report here")
    ap.add_argument("--bin", default=os.environ.get("STRATA_BIN", str(ROOT / "build" / "strata")))
    ap.add_argument("--workdir", help="work here (default: a new temporary folder, removed afterwards)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--ckpt-every", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-kills", type=int, default=100, help="after this many attempts, let the run finish")
    ap.add_argument("--keep", action="store_true", help="keep every trial's run directory")
    a = ap.parse_args()
    if a.trials < 1 or a.steps < 1 or a.ckpt_every < 1 or a.threads < 1:
        ap.error("--trials, --steps, --ckpt-every and --threads must be positive")
    t = Trials(a)
    try:
        results = t.run()
        report = t.report(results)
    finally:
        t.log.close()
        if not a.workdir and not a.keep:
            shutil.rmtree(t.work, ignore_errors=True)
    if a.out:
        pathlib.Path(a.out).write_text(report)
    print(report)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
