"""Corpus mixtures (train.corpus as a list of {"path", "weight"}) and the prepared-data cache keyed on
content: one tokenizer for all sources, shards per source, a validation loss per source, bit-exact
resume; another spelling of a corpus path, or a copy of the corpus, reuses what was prepared."""
import json
import os
import shutil

import pytest

from clihelp import ROOT, TINY_MODEL, ckpt_content, run, small_corpus

EXACT = ("step", "loss", "lr", "grad_norm", "val_loss", "val_loss_by_corpus")


def second_corpus(path):
    """A corpus unlike small_corpus's: other text, so the two sources' losses differ."""
    default = ROOT / "data" / "corpus" / "default.txt"
    if default.exists():
        text = default.read_bytes()[200000:240000].decode("utf-8", errors="ignore")
    else:
        words = "numbers follow letters as seven rivers cross one plain beneath grey hills".split()
        text = "\n".join(" ".join(words[(i * 5 + j) % len(words)] for j in range(9)) for i in range(600))
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    """Two sources weighted 3:1, and the arguments of a 6-step run with evaluations at 3 and 6."""
    d = tmp_path_factory.mktemp("mix")
    a, b = small_corpus(d / "a.txt"), second_corpus(d / "b.txt")
    corpus = json.dumps([{"path": str(a), "weight": 3}, {"path": str(b), "weight": 1}])
    args = ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}", *TINY_MODEL,
            "--set", "train.threads=1", "--set", "train.eval_every=3", "--set", "train.lr_decay_steps=6"]
    p = run("train", *args, "--set", "train.steps=6", "--set", f"train.out_dir={d / 'run'}")
    return d, a, b, args, p


def rows(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r or "val_loss" in r:
            out.append({k: r[k] for k in EXACT if k in r})
    return out


def test_mixture_trains_and_reports_each_corpus(mix):
    d, a, b, _, p = mix
    data = d / "data"
    assert (data / "tokenizer.model").exists()
    for i in (0, 1):
        assert (data / f"corpus{i}" / "train.bin").exists() and (data / f"corpus{i}" / "val.bin").exists()
    assert not (data / "train.bin").exists()  # a list keeps no shards at the top
    assert f"corpus: {a} (weight 0.75)" in p.stderr and f"corpus: {b} (weight 0.25)" in p.stderr, p.stderr
    vals = [r for r in rows(d / "run") if "val_loss" in r]
    assert [r["step"] for r in vals] == [3, 6]
    for r in vals:
        by = r["val_loss_by_corpus"]
        assert list(by) == [str(a), str(b)]
        assert by[str(a)] != by[str(b)]
        assert r["val_loss"] == pytest.approx(0.75 * by[str(a)] + 0.25 * by[str(b)], rel=1e-12)
    final = vals[-1]["val_loss_by_corpus"]
    assert f"validation loss on {a}: {final[str(a)]:.4f}" in p.stdout, p.stdout
    assert f"validation loss on {b}: {final[str(b)]:.4f}" in p.stdout, p.stdout
    # The run records the list as given: a list of paths and weights.
    cfg = json.loads((d / "run" / "config.json").read_text())
    assert cfg["train"]["corpus"] == [{"path": str(a), "weight": 3.0}, {"path": str(b), "weight": 1.0}]


def test_mixture_resumes_bit_exactly(mix, tmp_path):
    d, _, _, args, _ = mix
    out = tmp_path / "split"
    run("train", *args, "--set", "train.steps=3", "--set", f"train.out_dir={out}")
    p = run("train", *args, "--set", "train.steps=6", "--set", f"train.out_dir={out}")
    assert "resuming from" in p.stderr and "prepared earlier" in p.stderr, p.stderr
    assert rows(out) == rows(d / "run")
    assert ckpt_content(out)[3] == ckpt_content(d / "run")[3]  # weights and moments, bit for bit


def test_weights_change_the_batches(mix, tmp_path):
    d, a, b, args, _ = mix
    flipped = json.dumps([{"path": str(a), "weight": 1}, {"path": str(b), "weight": 3}])
    run("train", *args, "--set", f"train.corpus={flipped}", "--set", "train.steps=6",
        "--set", f"train.out_dir={tmp_path / 'r'}")
    ours = [r["loss"] for r in rows(tmp_path / "r") if "loss" in r]
    assert ours != [r["loss"] for r in rows(d / "run") if "loss" in r]


@pytest.mark.parametrize("corpus,needles", [
    ("[]", ["train.corpus must list at least one"]),
    ('[{"path": "A", "weight": 1}, {"path": "B", "weight": 0}]', ["train.corpus[1].weight", "positive finite"]),
    ('[{"path": "A", "weight": -2}]', ["train.corpus[0].weight"]),
    ('[{"path": "A", "weight": "heavy"}]', ["train.corpus[0]", '"weight" must be a number']),
    ('[{"path": "A"}, {"path": ""}]', ["train.corpus[1].path must name a file or folder"]),
    ('[{"path": "A"}, {"path": "B"}, {"path": "A"}]', ["train.corpus[2]", "same path as train.corpus[0]"]),
    ('[{"path": "A"}, {"weight": 1}]', ["train.corpus[1]", '"path" is missing']),
    ('[{"path": "A", "wieght": 1}]', ["train.corpus[0]", 'unknown key "wieght"']),
    ('[{"path": 5}]', ["train.corpus[0]", '"path" must be a string']),
    ('["A"]', ["train.corpus[0]", "expected a JSON object"]),
    ('{"path": "A"}', ['"corpus" must be a string or a list']),
    (json.dumps([{"path": f"s{i}.txt"} for i in range(257)]), ["train.corpus lists 257 sources; at most 256"]),
])
def test_bad_corpus_lists_are_refused_naming_the_entry(tmp_path, corpus, needles):
    corpus = corpus.replace('"A"', json.dumps(str(tmp_path / "a.txt"))).replace('"B"', json.dumps(str(tmp_path / "b.txt")))
    p = run("train", "--set", f"train.corpus={corpus}", "--set", f"train.data_dir={tmp_path / 'd'}",
            "--set", f"train.out_dir={tmp_path / 'r'}", *TINY_MODEL, "--set", "train.steps=1", check=False)
    assert p.returncode != 0
    for n in needles:
        assert n in p.stderr, (n, p.stderr)
    assert not (tmp_path / "d").exists()  # refused before anything was prepared


def test_prepared_data_is_reused_by_content_whatever_the_path(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    corpus = small_corpus(work / "corpus.txt")
    data = tmp_path / "data"
    base = ["train", "--set", f"train.data_dir={data}", *TINY_MODEL, "--set", "train.steps=1",
            "--set", "train.eval_batches=1"]
    first = run(*base, "--set", "train.corpus=corpus.txt", "--set", f"train.out_dir={tmp_path / 'r1'}", cwd=work)
    assert "training a 320-token" in first.stderr and "(prepared now)" in first.stderr, first.stderr
    made = {f: os.stat(data / f).st_mtime_ns for f in ("tokenizer.model", "train.bin", "val.bin")}
    copy_dir = tmp_path / "elsewhere"
    copy_dir.mkdir()
    copy = copy_dir / "same.txt"
    shutil.copyfile(corpus, copy)  # a new path and a new mtime, the same bytes
    for i, path in enumerate([corpus, copy]):
        p = run(*base, "--set", f"train.corpus={path}", "--set", f"train.out_dir={tmp_path / f'r{i + 2}'}")
        assert "corpus: " in p.stderr and "(prepared earlier)" in p.stderr, p.stderr
        assert "training a" not in p.stderr and "tokenizing" not in p.stderr, p.stderr
    assert {f: os.stat(data / f).st_mtime_ns for f in made} == made
    # Other content under the copy's path: trained and tokenized again.
    copy.write_text(corpus.read_text(encoding="utf-8")[::-1], encoding="utf-8")
    p = run(*base, "--set", f"train.corpus={copy}", "--set", f"train.out_dir={tmp_path / 'r9'}")
    assert "training a 320-token" in p.stderr and "(prepared now)" in p.stderr, p.stderr


def test_eval_and_diagnose_of_a_mixture_ask_which_split(tmp_path):
    """A mixture has one validation split per source: without --data-dir the commands say so."""
    a = small_corpus(tmp_path / "a.txt", 40000)
    b = small_corpus(tmp_path / "b.txt", 30000)
    out = tmp_path / "run"
    run("train", *TINY_MODEL, "--set", f'train.corpus=[{{"path": "{a}"}}, {{"path": "{b}"}}]',
        "--set", f"train.data_dir={tmp_path / 'd'}", "--set", f"train.out_dir={out}", "--set", "train.steps=2")
    for cmd in ("eval", "diagnose"):
        p = run(cmd, "--ckpt", out, "--batches", "1", check=False)
        assert p.returncode == 1 and "--data-dir" in p.stderr and "corpus<i>" in p.stderr, p.stderr
        run(cmd, "--ckpt", out, "--batches", "1", "--data-dir", tmp_path / "d" / "corpus1")
