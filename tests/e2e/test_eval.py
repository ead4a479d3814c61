"""strata eval and diagnose: the tokens they score, --seq-len / --batch-size / --batches, --ckpt as a
file or a run directory, and a data dir re-prepared with another tokenizer being refused."""
import json
import re
import shutil
import struct

import pytest

from clihelp import TINY_MODEL, run, small_corpus

LINE = re.compile(r"eval on (.+): (\d+) tokens scored \(of (\d+) in the shard; seq (\d+)\): loss (\S+), perplexity (\S+)")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Run A (vocab 340) trained on a data dir that run B (vocab 320, so its tokens all fit A's model)
    then re-prepared with its own tokenizer; and a run C with a data dir of its own.
    Returns (dir, a, b, c, corpus, the perplexity C's training reported)."""
    d = tmp_path_factory.mktemp("eval")
    corpus = small_corpus(d / "corpus.txt")
    base = ["--set", f"train.corpus={corpus}", *TINY_MODEL, "--set", "train.threads=1", "--set", "train.steps=2"]
    p = run("train", *base, "--set", f"train.data_dir={d / 'data_c'}", "--set", f"train.out_dir={d / 'c'}")
    c_ppl = re.search(r"validation loss \S+, perplexity (\S+)", p.stdout).group(1)
    run("train", *base, "--set", "model.vocab_size=340", "--set", f"train.data_dir={d / 'data'}",
        "--set", f"train.out_dir={d / 'a'}")
    a_meta = (d / "data" / "meta.json").read_text()
    run("train", *base, "--set", f"train.data_dir={d / 'data'}", "--set", f"train.out_dir={d / 'b'}")
    assert json.loads(a_meta)["tokenizer_hash"] != json.loads((d / "data" / "meta.json").read_text())["tokenizer_hash"]
    return d, d / "a", d / "b", d / "c", corpus, c_ppl


def evaluate(*args):
    p = run("eval", *args, "--threads", "1")
    m = LINE.search(p.stdout)
    assert m, p.stdout
    return {"what": m.group(1), "scored": int(m.group(2)), "shard": int(m.group(3)), "seq": int(m.group(4)),
            "loss": float(m.group(5)), "perplexity": m.group(6)}


def shard_tokens(path):
    return struct.unpack("<Q", path.read_bytes()[16:24])[0]


def test_eval_and_diagnose_refuse_a_data_dir_prepared_with_another_tokenizer(shared, tmp_path):
    d, a, b, _, corpus, _ = shared
    val = d / "data" / "val.bin"
    for cmd in (["eval"], ["diagnose", "--batches", "1"]):
        p = run(*cmd, "--ckpt", a, check=False)
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        assert f"{val} was made with a different tokenizer than checkpoint {a}" in p.stderr, p.stderr
        assert "re-run strata train with this run's config to re-prepare it" in p.stderr, p.stderr
        assert p.stdout == ""
    assert "or pass --text FILE" in run("eval", "--ckpt", a, check=False).stderr
    # the same through --data-dir; the run that prepared it evaluates it; raw text needs no check
    p = run("eval", "--ckpt", a / "checkpoint.safetensors", "--data-dir", d / "data", check=False)
    assert p.returncode == 1 and "different tokenizer" in p.stderr, p.stderr
    assert evaluate("--ckpt", b)["scored"] > 0
    assert evaluate("--ckpt", a, "--text", corpus)["scored"] > 0
    run("diagnose", "--ckpt", b, "--batches", "1", "--no-skip")


def test_a_data_dir_without_a_readable_meta_json_is_refused(shared, tmp_path):
    d, _, _, c, _, _ = shared
    data = tmp_path / "data"
    shutil.copytree(d / "data_c", data)
    assert evaluate("--ckpt", c, "--data-dir", data)["scored"] > 0
    meta = json.loads((data / "meta.json").read_text())
    meta["n_val"] += 1  # the shard no longer holds what was recorded
    (data / "meta.json").write_text(json.dumps(meta))
    p = run("eval", "--ckpt", c, "--data-dir", data, check=False)
    assert p.returncode == 1 and f"records {meta['n_val']}" in p.stderr, p.stderr
    (data / "meta.json").write_text("{\"format\": 1, \"tokenizer_hash\": ")
    for cmd in (["eval"], ["diagnose"]):
        p = run(*cmd, "--ckpt", c, "--data-dir", data, check=False)
        assert p.returncode == 1 and f"{data / 'meta.json'} is corrupt" in p.stderr, p.stderr
    (data / "meta.json").unlink()
    p = run("eval", "--ckpt", c, "--data-dir", data, check=False)
    assert p.returncode == 1 and f"{data / 'meta.json'} is missing" in p.stderr, p.stderr
    assert str(data / "val.bin") in p.stderr


def test_eval_reports_the_tokens_it_scored(shared):
    d, _, _, c, _, c_ppl = shared
    n = shard_tokens(d / "data_c" / "val.bin")
    r = evaluate("--ckpt", c)  # every window of the run's seq_len (32), batch 4
    assert r["shard"] == n and r["seq"] == 32
    assert r["scored"] == (n - 1) // 32 * 32 and r["scored"] < n
    r = evaluate("--ckpt", c, "--seq-len", "16", "--batch-size", "3", "--batches", "0")
    assert r["seq"] == 16 and r["scored"] == (n - 1) // 16 * 16
    assert (n - 1) // 16 >= 2
    r = evaluate("--ckpt", c, "--seq-len", "16", "--batch-size", "1", "--batches", "2")
    assert r["scored"] == 2 * 16
    # over the run's own evaluation batches (train.eval_batches = 2) it is the validation loss of training
    assert evaluate("--ckpt", c, "--batches", "2")["perplexity"] == c_ppl


def test_seq_len_fits_short_texts_and_is_bounded(shared, tmp_path):
    _, _, _, c, _, _ = shared
    short = tmp_path / "short.txt"
    short.write_text("In the beginning was the word.\n")  # about 28 tokens: fewer than seq_len 32 + 1
    p = run("eval", "--ckpt", c, "--text", short, check=False)
    assert p.returncode == 1 and "fewer than one sequence" in p.stderr and "--seq-len" in p.stderr, p.stderr
    r = evaluate("--ckpt", c, "--text", short, "--seq-len", "8")
    assert r["what"] == str(short) and r["seq"] == 8 and r["scored"] == (r["shard"] - 1) // 8 * 8 > 0
    for cmd in ("eval", "diagnose"):
        p = run(cmd, "--ckpt", c, "--seq-len", "65", check=False)
        assert p.returncode == 1 and "--seq-len 65 exceeds the model's max_seq_len (64)" in p.stderr, p.stderr
        p = run(cmd, "--ckpt", c, "--seq-len", "0", check=False)
        assert p.returncode not in (0, 1) and "--seq-len" in p.stderr, p.stderr  # a usage error (CLI11's)
    r = evaluate("--ckpt", c, "--seq-len", "64", "--batches", "1")
    assert r["seq"] == 64


def test_diagnose_seq_len_batch_size_and_all_batches(shared, tmp_path):
    d, _, _, c, _, _ = shared
    n = shard_tokens(d / "data_c" / "val.bin")
    js = tmp_path / "d.json"
    p = run("diagnose", "--ckpt", c, "--seq-len", "16", "--batch-size", "2", "--batches", "0", "--no-skip",
            "--threads", "1", "--json-out", js)
    j = json.loads(js.read_text())
    windows = (n - 1) // 16
    assert j["seq_len"] == 16 and j["batch_size"] == 2 and j["batches"] == (windows + 1) // 2
    assert f"validation: {j['batches']} batches of 2 x 16 tokens" in p.stdout
    # its loss over all windows is eval's
    assert abs(j["loss"] - evaluate("--ckpt", c, "--seq-len", "16", "--batch-size", "2")["loss"]) < 1e-4


def test_ckpt_is_a_file_or_a_run_directory(shared, tmp_path):
    _, _, _, c, _, _ = shared
    assert evaluate("--ckpt", c)["loss"] == evaluate("--ckpt", c / "checkpoint.safetensors")["loss"]
    empty = tmp_path / "empty_run"
    empty.mkdir()
    for cmd in ("eval", "diagnose", "generate"):
        p = run(cmd, "--ckpt", empty, *(["--prompt", "x"] if cmd == "generate" else []), check=False)
        assert p.returncode == 1, (cmd, p.stderr)
        assert f"no checkpoint in {empty} (expected {empty / 'checkpoint.safetensors'})" in p.stderr, p.stderr
