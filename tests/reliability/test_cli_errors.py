"""Bad input gets a clear error naming the problem and the file, a non-zero exit, and loses nothing."""
import json
import os
import shutil

import pytest

from clihelp import TINY_MODEL, run, small_corpus, tiny_run  # noqa: F401  (tiny_run is a fixture)


def fails(*args, must_mention=(), env=None):
    p = run(*args, env=env, check=False)
    assert p.returncode != 0, f"expected failure for {args}\nstdout:{p.stdout}\nstderr:{p.stderr}"
    err = p.stderr + p.stdout
    for m in must_mention:
        assert str(m) in err, f"error does not mention {m!r}:\n{err}"
    assert "Traceback" not in err and "terminate called" not in err and "Segmentation" not in err
    return err


# ---- checkpoints ---------------------------------------------------------------------------------
def test_missing_checkpoint(tmp_path):
    fails("generate", "--ckpt", tmp_path / "nope.safetensors", must_mention=["nope.safetensors"])


def test_truncated_checkpoint(tiny_run, tmp_path):
    run_dir = tiny_run[0]
    bad = tmp_path / "trunc.safetensors"
    data = (run_dir / "checkpoint.safetensors").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    fails("eval", "--ckpt", bad, must_mention=[bad])


def test_corrupt_checkpoint_header(tiny_run, tmp_path):
    bad = tmp_path / "corrupt.safetensors"
    data = bytearray((tiny_run[0] / "checkpoint.safetensors").read_bytes())
    data[8:40] = b"#" * 32  # the JSON header is now garbage
    bad.write_bytes(bytes(data))
    fails("generate", "--ckpt", bad, must_mention=[bad])


def test_checkpoint_with_wrong_tensor_shape(tiny_run, tmp_path):
    # A valid safetensors file whose config disagrees with its tensors.
    import struct
    src = (tiny_run[0] / "checkpoint.safetensors").read_bytes()
    n = struct.unpack("<Q", src[:8])[0]
    header = json.loads(src[8 : 8 + n])
    cfg = json.loads(header["__metadata__"]["config"])
    cfg["model"]["ffn_hidden"] = 40
    header["__metadata__"]["config"] = json.dumps(cfg)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    bad = tmp_path / "shape.safetensors"
    bad.write_bytes(struct.pack("<Q", len(h)) + h + src[8 + n :])
    fails("eval", "--ckpt", bad, must_mention=[bad, "shape"])


def test_full_disk_keeps_previous_checkpoint(tiny_run, tmp_path):
    run_dir, corpus, data_dir, args = tiny_run
    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    before = (work / "checkpoint.safetensors").read_bytes()
    args = [a if not a.startswith("train.out_dir=") else f"train.out_dir={work}" for a in args]
    err = fails("train", "--set", "train.steps=9", "--set", "train.ckpt_every=3", *args,
                env={"STRATA_FAULT_DISK_FULL": "4096"}, must_mention=["checkpoint.safetensors"])
    assert "No space left" in err or "disk" in err.lower(), err
    assert (work / "checkpoint.safetensors").read_bytes() == before, "the previous checkpoint changed"
    assert not [p for p in os.listdir(work) if ".tmp" in p], os.listdir(work)
    # and the run resumes from the intact checkpoint afterwards
    p = run("train", "--set", "train.steps=9", "--set", "train.ckpt_every=3", *args)
    assert "resuming from" in p.stderr and "at step 6" in p.stderr


# ---- tokenizer and shards --------------------------------------------------------------------
def _copy_data(tiny_run, tmp_path):
    run_dir, corpus, data_dir, args = tiny_run
    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    out = tmp_path / "run"
    new = []
    for a in args:
        if a.startswith("train.data_dir="):
            a = f"train.data_dir={d}"
        elif a.startswith("train.out_dir="):
            a = f"train.out_dir={out}"
        new.append(a)
    return d, new


def test_corrupt_tokenizer_file(tiny_run, tmp_path):
    d, args = _copy_data(tiny_run, tmp_path)
    (d / "tokenizer.model").write_bytes(b"\x00\x01garbage" * 10)
    fails("train", "--set", "train.steps=1", *args, must_mention=["tokenizer.model"])


def test_truncated_shard(tiny_run, tmp_path):
    # Shards are derived data: training names the damaged file, then prepares it again from the corpus.
    d, args = _copy_data(tiny_run, tmp_path)
    data = (d / "train.bin").read_bytes()
    (d / "train.bin").write_bytes(data[: len(data) - 100])
    p = run("train", "--set", "train.steps=1", *args)
    assert "train.bin" in p.stderr and "truncated" in p.stderr, p.stderr
    assert (d / "train.bin").read_bytes() == data


def test_truncated_shard_in_eval(tiny_run, tmp_path):
    # eval reads the validation shard directly: a damaged one is an error naming it.
    run_dir = tiny_run[0]
    d = tiny_run[2]
    work = tmp_path / "data"
    shutil.copytree(d, work)
    data = (work / "val.bin").read_bytes()
    (work / "val.bin").write_bytes(data[: len(data) - 10])
    ck = tmp_path / "run"
    shutil.copytree(run_dir, ck)
    # point the checkpoint's config at the damaged copy by re-training zero steps with it
    fails("eval", "--ckpt", ck, "--data-dir", work, must_mention=["val.bin", "truncated"])


def test_corrupt_shard_magic(tiny_run, tmp_path):
    d, args = _copy_data(tiny_run, tmp_path)
    data = bytearray((d / "val.bin").read_bytes())
    data[:8] = b"NOTTOKEN"
    (d / "val.bin").write_bytes(bytes(data))
    fails("eval", "--ckpt", tiny_run[0], "--data-dir", d, must_mention=["val.bin"])
    p = run("train", "--set", "train.steps=1", *args)
    assert "val.bin" in p.stderr and "warning" in p.stderr, p.stderr


# ---- corpora ---------------------------------------------------------------------------------
def _train_on(corpus, tmp_path, *extra):
    return ["train", "--set", f"train.corpus={corpus}", "--set", f"train.data_dir={tmp_path / 'd'}",
            "--set", f"train.out_dir={tmp_path / 'r'}", "--set", "train.steps=1", *TINY_MODEL, *extra]


def test_empty_corpus(tmp_path):
    c = tmp_path / "empty.txt"
    c.write_text("")
    fails(*_train_on(c, tmp_path), must_mention=["empty.txt"])


def test_empty_corpus_folder(tmp_path):
    c = tmp_path / "nothing"
    c.mkdir()
    fails(*_train_on(c, tmp_path), must_mention=["nothing"])


def test_missing_corpus(tmp_path):
    fails(*_train_on(tmp_path / "absent.txt", tmp_path), must_mention=["absent.txt"])


def test_invalid_utf8_corpus(tmp_path):
    c = small_corpus(tmp_path / "bad.txt", 20000)
    c.write_bytes(c.read_bytes() + b"\xff\xfe broken")
    fails(*_train_on(c, tmp_path), must_mention=["bad.txt", "UTF-8"])


def test_corpus_shorter_than_a_batch(tiny_run, tmp_path):
    # A usable tokenizer but a corpus far shorter than one sequence.
    d, args = _copy_data(tiny_run, tmp_path)
    c = tmp_path / "short.txt"
    c.write_text("In the beginning.\n")
    err = fails("train", "--set", "train.steps=1", *args, "--set", f"train.corpus={c}", "--set",
                "train.seq_len=64")
    assert "fewer than one sequence" in err or "short" in err, err


# ---- configs and flags -----------------------------------------------------------------------
@pytest.mark.parametrize("override,mention", [
    ("model.d_model=30", "d_model"),
    ("model.n_kv_heads=3", "n_kv_heads"),
    ("model.bogus=1", "bogus"),
    ("model.n_layers=\"two\"", "n_layers"),
    ("train.seq_len=512", "max_seq_len"),
    ("train.steps=0", "steps"),
    ("train.batch_size=-4", "batch_size"),
    ("train.lr=0", "lr"),
    ("model.vocab_size=99999999999", "vocab_size"),
])
def test_bad_config_values(tmp_path, override, mention):
    c = small_corpus(tmp_path / "c.txt", 5000)
    fails(*_train_on(c, tmp_path), "--set", override, must_mention=[mention])


def test_bad_config_file(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"model": {"d_model": 64,, }')
    fails("train", "-c", cfg, must_mention=["cfg.json"])
    cfg.write_text(json.dumps({"model": {}, "trian": {}}))
    fails("train", "-c", cfg, must_mention=["cfg.json", "trian"])


@pytest.mark.parametrize("flags", [
    ["--max-tokens", "0"], ["--max-tokens", "-5"], ["--threads", "0"], ["--temperature", "-1"],
    ["--top-p", "0"], ["--top-p", "1.5"],
])
def test_bad_generate_flags(tiny_run, flags):
    fails("generate", "--ckpt", tiny_run[0], *flags)


def test_prompt_longer_than_max_seq_len(tiny_run):
    fails("generate", "--ckpt", tiny_run[0], "--prompt", "word " * 400, must_mention=["max_seq_len"])


def test_generate_and_eval_work_on_the_tiny_run(tiny_run):
    p = run("generate", "--ckpt", tiny_run[0], "--prompt", "The", "--max-tokens", "10", "--seed", "1")
    assert p.stdout.startswith("The")
    p = run("eval", "--ckpt", tiny_run[0])
    assert "perplexity" in p.stdout


# ---- determinism and resume ------------------------------------------------------------------
def _losses(run_dir):
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def test_resumed_run_matches_uninterrupted_run_bit_for_bit(tiny_run, tmp_path):
    _, corpus, data_dir, args = tiny_run
    def args_for(out):
        return [a if not a.startswith("train.out_dir=") else f"train.out_dir={out}" for a in args]
    common = ["--set", "train.lr_decay_steps=8", "--set", "train.ckpt_every=100"]
    run("train", "--set", "train.steps=8", *common, *args_for(tmp_path / "a"))
    run("train", "--set", "train.steps=5", *common, *args_for(tmp_path / "b"))
    p = run("train", "--set", "train.steps=8", *common, *args_for(tmp_path / "b"))
    assert "at step 5" in p.stderr
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == 8 and len(b) == 8
    assert a == b, f"resumed losses differ:\n{a}\n{b}"  # metrics hold every loss to 17 digits
    import struct
    def data_section(path):
        raw = path.read_bytes()
        return raw[8 + struct.unpack("<Q", raw[:8])[0]:]
    # weights, AdamW moments and tokenizer identical byte for byte (the headers differ: train.steps)
    assert data_section(tmp_path / "a" / "checkpoint.safetensors") == data_section(tmp_path / "b" / "checkpoint.safetensors")


def test_invalid_utf8_prompt(tiny_run):
    import subprocess
    from clihelp import BIN
    p = subprocess.run([BIN, "generate", "--ckpt", str(tiny_run[0]), "--prompt", b"caf\xe9 \xff".decode("latin-1").encode("latin-1")],
                       capture_output=True)
    assert p.returncode == 2 and p.stderr == b"strata: error: --prompt must be valid UTF-8: invalid byte at offset 3\n", p.stderr


def test_invalid_utf8_text_for_eval_names_the_file(tiny_run, tmp_path):
    bad = small_corpus(tmp_path / "bad.txt", 20000)
    n = len(bad.read_bytes())
    bad.write_bytes(bad.read_bytes() + b"caf\xe9\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    err = fails("eval", "--ckpt", tiny_run[0], "--text", bad, env={"TMPDIR": str(scratch)},
                must_mention=[f"corpus file {bad}: invalid UTF-8 at byte offset {n + 3}"])
    assert str(scratch) not in err and "strata-eval" not in err, err
