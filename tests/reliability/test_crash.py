"""Crash safety: `strata train` killed with SIGKILL at any moment loses nothing but the steps after its
last checkpoint, and the resumed run ends exactly where an uninterrupted one does."""
import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time

import pytest

from clihelp import BIN, ROOT, TINY_MODEL, run, small_corpus

# ~19.5M parameters but only 16 tokens a step: steps are quick, a checkpoint (235 MB) takes a while
# to write, long enough to kill the trainer in the middle of it.
BIG_MODEL = ["--set", "model.d_model=256", "--set", "model.n_layers=3", "--set", "model.n_heads=4",
             "--set", "model.head_dim=64", "--set", "model.n_kv_heads=2", "--set", "model.ffn_hidden=8192",
             "--set", "train.batch_size=1", "--set", "train.seq_len=16"]


def test_crash_trials(tmp_path):
    """Five seeded trials of scripts/crash_trials.py: every checkpoint seen after a kill loads, the loss
    curve and the final checkpoint equal the uninterrupted run's bit for bit."""
    report = tmp_path / "report.md"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "crash_trials.py"), "--trials", "5", "--seed", "7",
                        "--bin", BIN, "--workdir", str(tmp_path / "work"), "--out", str(report)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    text = report.read_text()
    assert "| all loss curves and final checkpoints equal to the uninterrupted run | yes |" in text, text
    assert "| failed trials | 0 |" in text, text
    kills = int(text.split("| kills | ")[1].split(",")[0])
    assert kills >= 1, text


def _meta(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n])["__metadata__"]


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    """SIGKILL while checkpoint.safetensors.tmp.PID is being written: the previous checkpoint is
    untouched (same inode content as a hard link taken during the write), loads, and the next run
    removes the orphaned temporary file and resumes from it."""
    corpus = small_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    args = ["train", "--set", f"train.corpus={corpus}", "--set", f"train.data_dir={tmp_path / 'data'}",
            "--set", f"train.out_dir={out}", *TINY_MODEL, *BIG_MODEL, "--set", "train.threads=1",
            "--set", "train.ckpt_every=2", "--set", "train.eval_every=1000", "--set", "train.eval_batches=1"]
    run(*args, "--set", "train.steps=1")  # prepares the tokenizer and shards outside the timed part
    ck = out / "checkpoint.safetensors"
    ck.unlink()
    (out / "metrics.jsonl").unlink()
    snapshot = tmp_path / "snapshot.safetensors"
    for attempt in range(3):
        p = subprocess.Popen([BIN, *map(str, args), "--set", "train.steps=1000"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            cut = False
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and p.poll() is None:
                tmps = [f for f in os.listdir(out) if f.startswith("checkpoint.safetensors.tmp.")] if out.exists() else []
                if tmps and ck.exists():  # the second (or later) checkpoint is being written
                    if snapshot.exists():
                        snapshot.unlink()
                    os.link(ck, snapshot)
                    if (out / tmps[0]).exists():  # still unrenamed: the link holds the previous checkpoint
                        p.send_signal(signal.SIGKILL)
                        cut = True
                        break
                time.sleep(0.002)
            else:
                pytest.fail("no checkpoint write was seen")
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
        left = [f for f in os.listdir(out) if ".tmp." in f]
        if cut and left:
            break  # the kill landed inside the write, as wanted
    assert cut and left, "could not kill the trainer during a checkpoint write in 3 attempts"
    assert ck.read_bytes() == snapshot.read_bytes(), "the kill changed the previous checkpoint"
    step = int(_meta(ck)["step"])
    assert step >= 2 and step % 2 == 0
    run("eval", "--ckpt", out, "--batches", "1", "--threads", "1")
    p = run(*args, "--set", f"train.steps={step + 1}")
    assert "removed 1 temporary file" in p.stderr and f"resuming from {ck} at step {step}" in p.stderr, p.stderr
    assert not [f for f in os.listdir(out) if ".tmp." in f]
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert steps == list(range(1, step + 2)), steps  # no line of the killed run after the checkpoint survives
