"""Resuming a run is honest about what changed (docs/workflow.md): a model change is refused naming
the keys, the data settings need train.allow_changes, every other change is printed and recorded in
history.jsonl, the lr schedule continues without a jump, a finished run says it trained nothing, and
train.resume=false never silently overwrites a run."""
import json
import math
import shutil

import pytest

from clihelp import TINY_MODEL, run, small_corpus


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A prepared tiny corpus and a finished 6-step run: (args without out_dir, run dir)."""
    d = tmp_path_factory.mktemp("resume")
    corpus = small_corpus(d / "corpus.txt")
    args = ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}", *TINY_MODEL,
            "--set", "train.eval_every=1000"]
    run("train", *args, "--set", "train.steps=6", "--set", f"train.out_dir={d / 'run'}")
    return args, d / "run"


def fresh_copy(base, tmp_path, name="r"):
    args, run_dir = base
    work = tmp_path / name
    shutil.copytree(run_dir, work)
    return [*args, "--set", f"train.out_dir={work}"], work


def history(run_dir):
    return [json.loads(l) for l in (run_dir / "history.jsonl").read_text().splitlines()]


def lrs(run_dir):
    return [json.loads(l)["lr"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"lr"' in l]


def fails(*args):
    p = run(*args, check=False)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.startswith("strata: error:") or "\nstrata: error:" in p.stderr, p.stderr
    return p.stderr


def test_a_model_change_is_refused_naming_each_key(base, tmp_path):
    args, work = fresh_copy(base, tmp_path)
    err = fails("train", *args, "--set", "train.steps=8", "--set", "model.ffn_hidden=40", "--set", "model.qk_norm=true")
    assert "model.ffn_hidden 48 → 40" in err and "model.qk_norm false → true" in err, err


@pytest.mark.parametrize("change", ["train.batch_size=2", "train.seq_len=16", "train.seed=7"])
def test_data_settings_need_allow_changes(base, tmp_path, change):
    args, work = fresh_copy(base, tmp_path)
    before = (work / "checkpoint.safetensors").read_bytes()
    err = fails("train", *args, "--set", "train.steps=8", "--set", change)
    key = change.split("=")[0]
    assert key in err and "train.allow_changes=true" in err, err
    assert (work / "checkpoint.safetensors").read_bytes() == before
    p = run("train", *args, "--set", "train.steps=8", "--set", change, "--set", "train.allow_changes=true")
    assert f"changed on resume: {key}" in p.stderr
    assert any(c["key"] == key for c in history(work)[-1]["changes"])


def test_a_changed_corpus_needs_allow_changes(base, tmp_path):
    args, work = fresh_copy(base, tmp_path)
    other = small_corpus(tmp_path / "other.txt", 50000)
    err = fails("train", *args, "--set", "train.steps=8", "--set", f"train.corpus={other}")
    assert "train.corpus" in err, err


def test_other_changes_are_printed_and_recorded(base, tmp_path):
    args, work = fresh_copy(base, tmp_path)
    p = run("train", *args, "--set", "train.steps=8", "--set", "train.grad_clip=0.5")
    assert "changed on resume: train.grad_clip 1.0 → 0.5" in p.stderr, p.stderr
    assert "changed on resume: train.steps 6 → 8" in p.stderr
    h = history(work)
    assert len(h) == 2, h  # one line per invocation
    assert h[0]["start_step"] == 0 and h[0]["changes"] == [] and not h[0]["resumed"]
    assert h[1]["start_step"] == 6 and h[1]["resumed"]
    assert {"key": "train.grad_clip", "old": 1.0, "new": 0.5} in h[1]["changes"]
    for e in h:
        assert e["version"] and e["time"].endswith("Z")
    assert json.loads((work / "config.json").read_text())["train"]["grad_clip"] == 0.5


def test_more_steps_continue_the_cosine_without_a_jump(base, tmp_path):
    """The first part decays to step 10 (lr_decay_steps) but stops at 6; the second raises the
    total to 14: the lr goes on down from where it was, never up."""
    args, _ = base
    work = tmp_path / "cos"
    run("train", *args, "--set", f"train.out_dir={work}", "--set", "train.steps=6", "--set", "train.lr_decay_steps=10")
    first = lrs(work)
    p = run("train", *args, "--set", f"train.out_dir={work}", "--set", "train.steps=14", "--set", "train.lr_decay_steps=0")
    assert "the lr continues from" in p.stderr, p.stderr
    lr = lrs(work)
    assert lr[:6] == first
    after = lr[6:]
    assert len(after) == 8
    # no jump: the first step after the resume has the lr the first part's schedule gave it, and
    # from there the lr only goes down
    warm, hi, lo = 2, 3e-3, 3e-4
    old7 = lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * (6 - warm) / (10 - warm)))
    assert math.isclose(after[0], old7, rel_tol=1e-6), (after[0], old7)
    assert all(b <= a for a, b in zip(lr[5:], lr[6:])), lr
    assert 3e-4 <= after[-1] < after[0]  # heading for min_lr at step 14
    # without the continuation the cosine over 14 steps would give step 7 a higher lr than step 6
    total = 14
    plain7 = lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * (6 - warm) / (total - warm)))
    assert plain7 > first[5] and after[0] < plain7


def test_a_finished_run_says_nothing_was_left_to_train(base, tmp_path):
    args, work = fresh_copy(base, tmp_path)
    p = run("train", *args, "--set", "train.steps=6", "--set", "train.lr=0.001")
    assert "nothing left to train" in p.stdout and "trained 6 steps" not in p.stdout, p.stdout
    assert "lr=0.003" in p.stdout, p.stdout  # the settings the result came from, not the new lr
    assert "changed on resume: train.lr 0.003 → 0.001" in p.stderr
    assert json.loads((work / "config.json").read_text())["train"]["lr"] == 0.003  # nothing was trained


def test_resume_false_refuses_an_existing_run_unless_overwrite(base, tmp_path):
    args, work = fresh_copy(base, tmp_path)
    before = {f.name: f.read_bytes() for f in work.iterdir()}
    err = fails("train", *args, "--set", "train.steps=2", "--set", "train.resume=false")
    assert "already holds a run" in err and "train.overwrite=true" in err, err
    assert {f.name: f.read_bytes() for f in work.iterdir()} == before
    p = run("train", *args, "--set", "train.steps=2", "--set", "train.resume=false", "--set", "train.overwrite=true")
    assert "train.overwrite: deleted the previous run" in p.stderr, p.stderr
    assert "resuming" not in p.stderr and "trained 2 steps" in p.stdout
    assert len(history(work)) == 1  # the old history went with the run
    assert len(lrs(work)) == 2


def test_an_allowed_corpus_change_keeps_the_checkpoints_tokenizer(base, tmp_path):
    args, work = fresh_copy(base, tmp_path)
    other = small_corpus(tmp_path / "other.txt", 50000)
    data = tmp_path / "data2"
    p = run("train", *args, "--set", "train.steps=8", "--set", f"train.corpus={other}",
            "--set", f"train.data_dir={data}", "--set", "train.allow_changes=true")
    assert "with the checkpoint's tokenizer" in p.stderr and "trained 2 steps" in p.stdout, p.stderr
    assert (data / "tokenizer.model").read_bytes() == (work / "tokenizer.model").read_bytes()


def test_init_from_starts_a_new_run_from_a_checkpoint(base, tmp_path):
    args, src = base
    other = small_corpus(tmp_path / "other.txt", 50000)
    new_args = [a for a in args if not a.startswith(("train.corpus=", "train.data_dir="))]
    new_args = [*new_args, "--set", f"train.corpus={other}", "--set", f"train.data_dir={tmp_path / 'd'}"]
    # drop the dangling "--set" of the removed pairs
    cleaned = []
    for a in new_args:
        if cleaned and cleaned[-1] == "--set" and a == "--set":
            continue
        cleaned.append(a)
    out = tmp_path / "ft"
    p = run("train", *cleaned, "--set", f"train.out_dir={out}", "--set", "train.steps=3",
            "--set", f"train.init_from={src}")
    assert "starting from the weights of" in p.stderr and "trained 3 steps (0 → 3)" in p.stdout, p.stderr
    assert (out / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()
    assert history(out)[0]["init_from"] == str(src)
    # the first loss is the trained model's, well below a fresh model's ln(320) ≈ 5.77
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    fresh = json.loads((src / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert first < fresh - 0.2, (first, fresh)
    # with the optimizer state too
    p = run("train", *cleaned, "--set", f"train.out_dir={tmp_path / 'ft2'}", "--set", "train.steps=2",
            "--set", f"train.init_from={src}", "--set", "train.init_optimizer=true")
    assert "weights and AdamW moments" in p.stderr
    # a model mismatch is refused, naming the key
    err = fails("train", *cleaned, "--set", f"train.out_dir={tmp_path / 'ft3'}", "--set", "train.steps=2",
                "--set", f"train.init_from={src}", "--set", "model.vocab_size=330")
    assert "model.vocab_size 320 → 330" in err, err
