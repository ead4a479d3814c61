"""SIGINT during training: the first interrupt finishes the step, saves a checkpoint and exits 130 (an
evaluation in progress is cut short and redone on resume); a second interrupt exits at once and
leaves the previous checkpoint whole, even in the middle of a checkpoint write."""
import json
import os
import signal
import struct
import subprocess
import time

import pytest

from clihelp import ckpt_content, BIN, TINY_MODEL, run, small_corpus

# ~19.5M parameters but only 16 tokens a step: a step takes ~0.1 s, a checkpoint (235 MB) several
# tenths, and an evaluation batch ~20 ms, so signals can be aimed at each phase.
BIG_MODEL = ["--set", "model.d_model=256", "--set", "model.n_layers=3", "--set", "model.n_heads=4",
             "--set", "model.head_dim=64", "--set", "model.n_kv_heads=2", "--set", "model.ffn_hidden=8192",
             "--set", "train.batch_size=1", "--set", "train.seq_len=16"]
EXACT = ("step", "loss", "lr", "grad_norm", "val_loss", "skipped")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Train arguments (without out_dir) on a prepared tiny corpus, one thread."""
    d = tmp_path_factory.mktemp("signals")
    corpus = small_corpus(d / "corpus.txt")
    args = ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}", *TINY_MODEL,
            "--set", "train.threads=1"]
    run("train", *args, "--set", f"train.out_dir={d / 'prep'}", "--set", "train.steps=1")
    return args


def metrics(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in EXACT if k in r} for r in rows]


def loss_steps(run_dir):
    return [m["step"] for m in metrics(run_dir) if "loss" in m]


def ckpt_step(run_dir):
    raw = (run_dir / "checkpoint.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return int(json.loads(raw[8:8 + n])["__metadata__"]["step"])


def start(args, out, err_path):
    err = open(err_path, "w")
    p = subprocess.Popen([BIN, "train", *map(str, args), "--set", f"train.out_dir={out}"], stdout=subprocess.PIPE,
                         stderr=err, text=True)
    p.err_file = err
    return p


def wait_until(p, pred, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (FileNotFoundError, ValueError, json.JSONDecodeError):
            pass
        if p.poll() is not None:
            pytest.fail(f"strata exited {p.returncode} before {what}")
        time.sleep(0.002)
    p.kill()
    pytest.fail(f"timed out waiting for {what}")


def finish(p, timeout=120):
    out, _ = p.communicate(timeout=timeout)
    p.err_file.close()
    return p.returncode, out, open(p.err_file.name).read()


def test_sigint_saves_the_step_reached_and_resume_reproduces_the_curve(base, tmp_path):
    sched = ["--set", "train.lr_decay_steps=20", "--set", "train.ckpt_every=100000", "--set", "train.eval_every=100000"]
    a = tmp_path / "a"
    p = start([*base, *sched, "--set", "train.steps=1000000"], a, tmp_path / "a.err")
    wait_until(p, lambda: len(loss_steps(a)) >= 3, what="three steps")
    p.send_signal(signal.SIGINT)
    rc, out, err = finish(p)
    assert rc == 130, err
    n = loss_steps(a)[-1]
    assert "strata: interrupt:" in err and f"checkpoint saved at step {n}" in err, err
    assert f"interrupted at step {n}" in out, out
    assert ckpt_step(a) == n  # the checkpoint holds exactly the last step in the metrics
    run("eval", "--ckpt", a, "--batches", "1", "--threads", "1")
    p2 = run("train", *base, *sched, "--set", f"train.steps={n + 3}", "--set", f"train.out_dir={a}")
    assert f"at step {n}" in p2.stderr
    ref = tmp_path / "ref"
    run("train", *base, *sched, "--set", f"train.steps={n + 3}", "--set", f"train.out_dir={ref}")
    assert metrics(a) == metrics(ref)
    assert ckpt_content(a) == ckpt_content(ref)


def test_sigint_during_an_evaluation_cuts_it_short_and_resume_redoes_it(base, tmp_path):
    # An evaluation of 40 batches of the big model takes most of a second; the interrupt arrives right
    # after step 2's metrics line, i.e. during the evaluation that follows it.
    args = [*base, *BIG_MODEL, "--set", "train.eval_every=2", "--set", "train.eval_batches=40",
            "--set", "train.ckpt_every=1000", "--set", "train.steps=4"]
    a = tmp_path / "a"
    p = start(args, a, tmp_path / "a.err")
    wait_until(p, lambda: 2 in loss_steps(a), what="step 2")
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    rc, out, err = finish(p)
    assert rc == 130, err
    assert "step 2: evaluation interrupted" in err and "checkpoint saved at step 2" in err, err
    assert ckpt_step(a) == 2
    assert not [m for m in metrics(a) if "val_loss" in m]  # the cut evaluation wrote nothing
    run("train", *args, "--set", f"train.out_dir={a}")
    assert [m["step"] for m in metrics(a) if "val_loss" in m] == [2, 4]  # redone, then the final one
    ref = tmp_path / "ref"
    run("train", *args, "--set", f"train.out_dir={ref}")
    assert metrics(a) == metrics(ref)
    assert ckpt_content(a) == ckpt_content(ref)
    assert time.monotonic() - t0 < 120


def test_double_sigint_exits_at_once(base, tmp_path):
    args = [*base, *BIG_MODEL, "--set", "train.ckpt_every=2", "--set", "train.eval_every=1000",
            "--set", "train.eval_batches=1", "--set", "train.steps=1000"]
    a = tmp_path / "a"
    p = start(args, a, tmp_path / "a.err")
    wait_until(p, lambda: (a / "checkpoint.safetensors").exists() and len(loss_steps(a)) >= 3, what="a checkpoint")
    p.send_signal(signal.SIGINT)
    # the second interrupt once the first was handled (two at once could merge into one signal)
    wait_until(p, lambda: "strata: interrupt:" in open(tmp_path / "a.err").read(), what="the first interrupt")
    p.send_signal(signal.SIGINT)
    rc, out, err = finish(p)
    assert rc == 130, err
    assert "second interrupt: exiting now" in err, err
    assert "interrupted at step" not in out  # no orderly shutdown: _Exit right away
    step = ckpt_step(a)
    assert step % 2 == 0 and step >= 2
    run("eval", "--ckpt", a, "--batches", "1", "--threads", "1")
    p2 = run("train", *args[:-2], "--set", f"train.steps={step + 1}", "--set", f"train.out_dir={a}")
    assert f"at step {step}" in p2.stderr
    assert not [f for f in os.listdir(a) if ".tmp." in f]


def test_double_sigint_during_a_checkpoint_write_keeps_the_previous_checkpoint(base, tmp_path):
    args = [*base, *BIG_MODEL, "--set", "train.ckpt_every=2", "--set", "train.eval_every=1000",
            "--set", "train.eval_batches=1", "--set", "train.steps=1000"]
    snapshot = tmp_path / "snapshot.safetensors"
    for attempt in range(3):
        a = tmp_path / f"a{attempt}"
        ck = a / "checkpoint.safetensors"
        p = start(args, a, tmp_path / "a.err")

        def writing():
            tmps = [f for f in os.listdir(a) if f.startswith("checkpoint.safetensors.tmp.")]
            if not (tmps and ck.exists()):  # wait for a write that replaces an earlier checkpoint
                return False
            if snapshot.exists():
                snapshot.unlink()
            os.link(ck, snapshot)  # a hard link keeps the old file even after a rename over ck
            return (a / tmps[0]).exists()

        wait_until(p, writing, what="a checkpoint write")
        p.send_signal(signal.SIGINT)
        wait_until(p, lambda: "strata: interrupt:" in open(tmp_path / "a.err").read(), what="the first interrupt")
        p.send_signal(signal.SIGINT)
        rc, out, err = finish(p)
        assert rc == 130, err
        left = [f for f in os.listdir(a) if f.startswith("checkpoint.safetensors.tmp.")]
        if left:
            break  # the exit cut the write short, as wanted
    assert left, "could not interrupt a checkpoint write in 3 attempts"
    assert "second interrupt" in err
    assert ck.read_bytes() == snapshot.read_bytes(), "the interrupted write changed the previous checkpoint"
    step = ckpt_step(a)
    run("eval", "--ckpt", a, "--batches", "1", "--threads", "1")
    p2 = run("train", *args[:-2], "--set", f"train.steps={step + 1}", "--set", f"train.out_dir={a}")
    assert "removed 1 temporary file" in p2.stderr and f"at step {step}" in p2.stderr, p2.stderr
    assert not [f for f in os.listdir(a) if ".tmp." in f]


def syllable_corpus(path, n_bytes, seed=5):
    """Made-up prose with a large vocabulary, so tokenizer training and sharding take a while."""
    import random
    r = random.Random(seed)
    syl = ["ka", "to", "ri", "men", "sha", "lo", "pe", "dru", "qua", "vin", "el", "or", "ta", "su", "bex", "nim"]
    words = ["".join(r.choice(syl) for _ in range(r.randint(1, 4))) for _ in range(5000)]
    lines, n = [], 0
    while n < n_bytes:
        line = " ".join(r.choice(words) for _ in range(r.randint(5, 15))) + "."
        lines.append(line)
        n += len(line) + 1
    path.write_text("\n".join(lines))
    return path


@pytest.mark.parametrize("stage", ["training a 2048-token SentencePiece tokenizer", "tokenizing the corpus"])
def test_sigint_while_preparing_the_corpus_ends_at_once_and_leaves_only_whole_files(tmp_path, stage):
    # Before training starts, SIGINT keeps its default action. A rerun then finds whole files or none,
    # removes the killed writer's temporary file, and ends where an uninterrupted run ends.
    corpus = syllable_corpus(tmp_path / "corpus.txt", 4_000_000)
    args = lambda d: ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}", *TINY_MODEL,
                      "--set", "model.vocab_size=2048", "--set", "train.threads=1", "--set", "train.steps=2"]
    ref = tmp_path / "ref"
    run("train", *args(ref), "--set", f"train.out_dir={ref / 'run'}")

    a = tmp_path / "a"
    p = start(args(a), a / "run", tmp_path / "a.err")
    wait_until(p, lambda: stage in open(tmp_path / "a.err").read(), what=stage)
    time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    rc, out, err = finish(p)
    assert rc == -signal.SIGINT, f"not killed while preparing (rc {rc}): the stage ended too soon\n{err}"
    assert "corpus:" not in err, err  # the preparation had not finished
    assert not (a / "run" / "checkpoint.safetensors").exists()
    whole = {f.name for f in (a / "data").iterdir() if ".tmp." not in f.name}
    if stage.startswith("training"):
        assert not whole, whole  # the tokenizer is written only once trained

    p2 = run("train", *args(a), "--set", f"train.out_dir={a / 'run'}")
    assert not [f for f in (a / "data").iterdir() if ".tmp." in f.name]
    for name in ("tokenizer.model", "train.bin", "val.bin"):
        assert (a / "data" / name).read_bytes() == (ref / "data" / name).read_bytes(), name
    strip = lambda c: (c[0], c[1], {k: {kk: vv for kk, vv in v.items() if kk != "data_dir"} for k, v in c[2].items()}, c[3])
    assert strip(ckpt_content(a / "run")) == strip(ckpt_content(ref / "run"))
    assert "prepared now" in p2.stderr
