"""Input limits (docs/limits.md): every input strata accepts, at and beyond its limits. Beyond a limit
the result is an error that names the input (key, flag, file or variable), a non-zero exit and no
crash; the rows already covered elsewhere (test_cli_errors.py, test_io.cpp, test_data.cpp,
test_nonfinite.py) are not repeated here."""
import copy
import json
import os
import shutil
import struct
import subprocess

import pytest

from clihelp import BIN, TINY_MODEL, run, small_corpus, xxh3_64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A prepared tiny corpus and a 3-step run: (dir, base train args without out_dir, run dir)."""
    d = tmp_path_factory.mktemp("limits")
    corpus = small_corpus(d / "corpus.txt")
    args = ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}", *TINY_MODEL,
            "--set", "train.threads=1"]
    run("train", *args, "--set", f"train.out_dir={d / 'run'}", "--set", "train.steps=3")
    return d, args, d / "run"


def fails(*args, mention=(), env=None, timeout=120):
    p = run(*args, env=env, check=False, timeout=timeout)
    err = p.stderr + p.stdout
    assert p.returncode not in (0, 130) and p.returncode > 0, f"expected an error for {args}: rc {p.returncode}\n{err}"
    for m in mention:
        assert str(m) in err, f"error does not mention {m!r}:\n{err}"
    for crash in ("Traceback", "terminate called", "Segmentation", "Aborted", "core dumped"):
        assert crash not in err, err
    return err


def train_args(tmp_path, *extra):
    """A train command that fails on the missing corpus if validation lets the config through."""
    return ["train", "--set", f"train.corpus={tmp_path / 'no-corpus'}", "--set", f"train.data_dir={tmp_path / 'd'}",
            "--set", f"train.out_dir={tmp_path / 'r'}", *TINY_MODEL, *extra]


# ---- model section -----------------------------------------------------------------------------
@pytest.mark.parametrize("override,mention", [
    ("model.vocab_size=0", "vocab_size must be positive"),
    ("model.vocab_size=1048577", "vocab_size = 1048577 is absurdly large"),
    ("model.vocab_size=2147483648", "an integer in range"),
    ("model.d_model=0", "d_model must be positive"),
    ("model.d_model=65540", "d_model = 65540 is absurdly large"),
    ("model.n_layers=0", "n_layers must be positive"),
    ("model.n_layers=1025", "n_layers = 1025 is absurdly large"),
    ("model.n_heads=0", "n_heads must be positive"),
    ("model.n_heads=1025", "n_heads = 1025 is absurdly large"),
    ("model.n_kv_heads=0", "n_kv_heads must be positive"),
    ("model.head_dim=0", "head_dim must be positive"),
    ("model.head_dim=4098", "head_dim = 4098 is absurdly large"),
    ("model.head_dim=7", "d_model (32) must equal n_heads * head_dim"),
    ("model.ffn_hidden=0", "ffn_hidden must be positive"),
    ("model.ffn_hidden=262145", "ffn_hidden = 262145 is absurdly large"),
    ("model.max_seq_len=0", "max_seq_len must be positive"),
    ("model.max_seq_len=1048577", "max_seq_len = 1048577 is absurdly large"),
    ("model.rope_theta=0", "rope_theta must be positive"),
    ("model.rope_theta=-5", "rope_theta must be positive"),
    ("model.norm_eps=0", "norm_eps must be in (0, 1]"),
    ("model.norm_eps=1.5", "norm_eps must be in (0, 1]"),
    ("model.norm_placement=\"middle\"", "norm_placement must be"),
    ("model.qk_norm=1", "\"qk_norm\" must be a boolean"),
    ("model.tie_embeddings=\"yes\"", "\"tie_embeddings\" must be a boolean"),
    ("model.init_std=0", "init_std must be in (0, 10]"),
    ("model.init_std=11", "init_std must be in (0, 10]"),
    ("model.seed=-1", "\"seed\" must be a non-negative integer"),
    ("model.seed=1.5", "\"seed\" must be an integer"),
    ("model.d_model=1.5", "\"d_model\" must be an integer"),
])
def test_model_key_limits(tmp_path, override, mention):
    fails(*train_args(tmp_path, "--set", override), mention=[mention])


def test_model_rope_theta_so_small_the_angles_overflow(tmp_path):
    # position × theta^(-(d-2)/d) must stay finite; 1e-320 (a denormal) with head_dim 64 overflows
    fails(*train_args(tmp_path, "--set", "model.rope_theta=1e-320", "--set", "model.d_model=64", "--set",
                      "model.n_heads=1", "--set", "model.n_kv_heads=1", "--set", "model.head_dim=64"),
          mention=["RoPE angles overflow"])


def test_model_head_dim_must_be_even(tmp_path):
    fails(*train_args(tmp_path, "--set", "model.d_model=36", "--set", "model.head_dim=9"), mention=["head_dim must be even"])


def test_model_parameter_count_limit(tmp_path):
    fails(*train_args(tmp_path, "--set", "model.n_layers=1000", "--set", "model.d_model=1024", "--set", "model.n_heads=16",
                      "--set", "model.head_dim=64", "--set", "model.ffn_hidden=262144"),
          mention=["more than 4e9 parameters"])


def test_model_larger_than_memory(tmp_path):
    # 26k parameters: 0.2 MB of weights and gradients, over a 100 kB budget.
    fails(*train_args(tmp_path), env={"STRATA_MEMORY_LIMIT": "100000"},
          mention=["weights, gradients and RoPE tables need about", "STRATA_MEMORY_LIMIT"])


def test_training_activations_larger_than_memory(tiny, tmp_path):
    _, args, _ = tiny
    fails("train", *args, "--set", "train.batch_size=65536", "--set", f"train.out_dir={tmp_path / 'r'}",
          env={"STRATA_MEMORY_LIMIT": str(1 << 30)}, mention=["training with batch 65536 x 32", "GiB"])


@pytest.mark.parametrize("value", ["abc", "-1", "0", "1.5"])
def test_malformed_memory_limit(tmp_path, value):
    fails(*train_args(tmp_path), env={"STRATA_MEMORY_LIMIT": value}, mention=["STRATA_MEMORY_LIMIT", value])


@pytest.mark.parametrize("var,value,accepted", [
    ("STRATA_F32_GEMM", "mkl", "openblas, onednn"),
    ("STRATA_F32_GEMM", "", "openblas, onednn"),
    ("STRATA_BF16_NATIVE", "yes", "0, 1"),
])
def test_malformed_gemm_library_choice(tmp_path, var, value, accepted):
    fails(*train_args(tmp_path), env={var: value}, mention=[var, f'"{value}"', accepted])
    assert not (tmp_path / "r").exists()


# ---- train section -----------------------------------------------------------------------------
@pytest.mark.parametrize("override,mention", [
    ("train.batch_size=0", "train.batch_size must be positive"),
    ("train.batch_size=65537", "train.batch_size = 65537.000000 is absurdly large"),
    ("train.seq_len=0", "train.seq_len must be positive"),
    ("train.grad_accum=0", "train.grad_accum must be positive"),
    ("train.grad_accum=65537", "train.grad_accum = 65537.000000 is absurdly large"),
    ("train.steps=1000000000001", "train.steps = 1000000000001.000000 is absurdly large"),
    ("train.steps=1.5", "\"steps\" must be an integer"),
    ("train.lr=11", "train.lr = 11.000000 is absurdly large"),
    ("train.lr=-0.1", "train.lr must be positive"),
    ("train.min_lr=-1", "train.min_lr must not be negative"),
    ("train.min_lr=0.01", "train.min_lr (0.010000) must not exceed train.lr"),
    ("train.warmup=-1", "train.warmup must not be negative"),
    ("train.lr_decay_steps=-1", "train.lr_decay_steps must not be negative"),
    ("train.weight_decay=-0.1", "train.weight_decay must not be negative"),
    ("train.weight_decay=400", "train.lr * train.weight_decay must be below 1"),
    ("train.beta1=1", "train.beta1 must be in [0, 1)"),
    ("train.beta1=-0.5", "train.beta1 must be in [0, 1)"),
    ("train.beta2=1", "train.beta2 must be in [0, 1)"),
    ("train.eps=0", "train.eps must be positive"),
    ("train.eps=2", "train.eps = 2.000000 is absurdly large"),
    ("train.grad_clip=-1", "train.grad_clip must not be negative"),
    ("train.seed=-1", "\"seed\" must be a non-negative integer"),
    ("train.seed=18446744073709551616", "\"seed\" must be an integer"),
    ("train.threads=0", "train.threads must be positive"),
    ("train.threads=4097", "train.threads = 4097.000000 is absurdly large"),
    ("train.eval_every=0", "train.eval_every must be positive"),
    ("train.eval_batches=0", "train.eval_batches must be positive"),
    ("train.eval_batches=1000000001", "train.eval_batches = 1000000001.000000 is absurdly large"),
    ("train.ckpt_every=0", "train.ckpt_every must be positive"),
    ("train.log_every=0", "train.log_every must be positive"),
    ("train.val_fraction=0", "train.val_fraction must be in (0, 0.5)"),
    ("train.val_fraction=0.5", "train.val_fraction must be in (0, 0.5)"),
    ("train.no_decay=[1]", "train.no_decay must be an array of strings"),
    ("train.no_decay=\"norm\"", "train.no_decay must be an array of strings"),
    ("train.no_decay=[\"\"]", "train.no_decay entries must be non-empty"),
    ("train.resume=1", "\"resume\" must be a boolean"),
    ("train.on_nonfinite=\"maybe\"", "train.on_nonfinite must be \"stop\" or \"skip\""),
    ("train.device=\"cuda\"", "train.device must be one of \"cpu\", not \"cuda\""),
    ("train.device=3", "\"device\" must be a string"),
    ("train.precision=\"fp16\"", "train.precision must be one of \"fp32\", \"bf16\", not \"fp16\""),
    ("train.on_divergence=\"halt\"", "train.on_divergence must be \"warn\" or \"stop\""),
    ("train.overwrite=1", "\"overwrite\" must be a boolean"),
    ("train.allow_changes=\"yes\"", "\"allow_changes\" must be a boolean"),
    ("train.peak_gflops=-1", "train.peak_gflops must not be negative"),
    ("train.peak_gflops=1e12", "train.peak_gflops = "),
    ("train.sample_every=-1", "train.sample_every must not be negative"),
    ("train.keep_every=-2", "train.keep_every must not be negative"),
    ("train.keep_best=2", "\"keep_best\" must be a boolean"),
    ("train.init_optimizer=true", "train.init_optimizer needs train.init_from"),
    ("train.init_from=5", "\"init_from\" must be a string"),
    ("train.corpus=", "train.corpus must name a file or folder"),
    ("train.out_dir=", "train.out_dir and train.data_dir must be set"),
    ("train.data_dir=", "train.out_dir and train.data_dir must be set"),
    ("train.out_dir=\"a\\u0000b\"", "train.out_dir contains a NUL character"),
    ("train.corpus=5", "\"corpus\" must be a string"),
    ("train.bogus=1", "unknown key \"bogus\""),
])
def test_train_key_limits(tmp_path, override, mention):
    fails(*train_args(tmp_path, "--set", override), mention=[mention])


def test_train_paths_must_be_utf8(tmp_path):
    # the config is saved as JSON (config.json, checkpoint metadata), which holds UTF-8 only
    args = [a.encode() for a in train_args(tmp_path)] + [b"--set", b"train.out_dir=" + bytes(tmp_path) + b"/\xff"]
    p = subprocess.run([BIN.encode(), *args], capture_output=True)
    assert p.returncode == 1 and b"train.out_dir is not valid UTF-8" in p.stderr, p.stderr


def test_train_values_at_the_limits_are_accepted(tiny, tmp_path):
    """The edges that are allowed: min_lr = lr, warmup longer than the run, grad_clip 0, threads 1,
    a seed of 2^64-1, eval_batches far beyond the validation split."""
    _, args, _ = tiny
    p = run("train", *args, "--set", f"train.out_dir={tmp_path / 'r'}", "--set", "train.steps=2",
            "--set", "train.lr=0.001", "--set", "train.min_lr=0.001", "--set", "train.warmup=1000000",
            "--set", "train.grad_clip=0", "--set", "train.seed=18446744073709551615",
            "--set", "train.eval_batches=1000000000", "--set", "train.eps=1")
    assert "trained 2 steps" in p.stdout


# ---- the config file and --set ---------------------------------------------------------------------
def test_config_file_limits(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text("[1, 2]")
    fails("train", "-c", cfg, mention=[cfg, "expected a JSON object"])
    cfg.write_text("{" + " " * (1 << 20) + "}")
    fails("train", "-c", cfg, mention=[cfg, "at most 1048576 bytes"])
    cfg.write_text("[" * 100000 + "]" * 100000)
    fails("train", "-c", cfg, mention=[cfg, "expected a JSON object"])
    cfg.write_bytes(b'{"train": {"out_dir": "\xff"}}')
    p = subprocess.run([BIN, "train", "-c", str(cfg)], capture_output=True)  # the message quotes the raw byte
    assert p.returncode == 1 and str(cfg).encode() in p.stderr and b"not valid JSON" in p.stderr, p.stderr
    fails("train", "-c", tmp_path / "missing.json", mention=["missing.json"])
    fails("train", "-c", tmp_path, mention=["directory"])


def test_config_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "c.json"
    os.mkfifo(fifo)
    fails("train", "-c", fifo, mention=[fifo, "not a regular file"], timeout=20)


def test_config_duplicate_keys_last_one_wins(tiny, tmp_path):
    _, args, _ = tiny
    cfg = tmp_path / "c.json"
    cfg.write_text('{"train": {"steps": 0, "steps": 2}}')
    p = run("train", "-c", cfg, *args, "--set", f"train.out_dir={tmp_path / 'r'}")
    assert "trained 2 steps" in p.stdout


@pytest.mark.parametrize("overrides,mention", [
    (["train.steps"], "expected SECTION.KEY=VALUE"),
    (["=5"], "expected SECTION.KEY=VALUE"),
    ([".steps=5"], "empty key segment"),
    (["train..steps=5"], "empty key segment"),
    (["train.steps=5", "train.steps.x=5"], "train.steps. is not a section"),
    (["train.steps.x=5"], "train.steps. is not a section"),  # the default config sets train.steps
    (["train.grad_accum.x=5"], "\"grad_accum\" must be an integer, got {\"x\":5}"),
    (["model=5"], "expected a JSON object"),
    (["bogus.x=1"], "unknown key \"bogus\""),
    (["train.steps="], "\"steps\" must be an integer, got \"\""),
])
def test_set_syntax(tmp_path, overrides, mention):
    fails(*train_args(tmp_path, *[x for o in overrides for x in ("--set", o)]), mention=[mention])


# ---- files: corpus -----------------------------------------------------------------------------
def _train_on(corpus, tmp_path, *extra):
    return ["train", "--set", f"train.corpus={corpus}", "--set", f"train.data_dir={tmp_path / 'd'}",
            "--set", f"train.out_dir={tmp_path / 'r'}", "--set", "train.steps=1", *TINY_MODEL, *extra]


def test_corpus_that_is_a_fifo(tmp_path):
    fifo = tmp_path / "corpus"
    os.mkfifo(fifo)
    fails(*_train_on(fifo, tmp_path), mention=[fifo, "neither a file nor a folder"], timeout=20)


def test_corpus_too_small_for_the_vocabulary(tmp_path):
    c = tmp_path / "spaces.txt"
    c.write_text(" " * 5000)
    fails(*_train_on(c, tmp_path), mention=[c, "too small for a vocabulary of 320 pieces", "at most 260"])


def test_corpus_with_more_distinct_characters_than_the_vocabulary(tmp_path):
    c = tmp_path / "cjk.txt"
    c.write_text("".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(30000)), encoding="utf-8")
    fails(*_train_on(c, tmp_path), mention=[c, "distinct characters", "model.vocab_size"])


def test_one_sentence_corpus_names_its_real_character_count_and_a_vocabulary_that_fits(tmp_path):
    sentence = "The quick brown fox jumps ok."
    c = tmp_path / "tiny.txt"
    c.write_text(sentence + "\n")
    chars = len(set(sentence))  # the newline ends the line: it is no character of the text
    need = chars + 259  # 3 special ids and 256 byte pieces
    err = fails(*_train_on(c, tmp_path), "--set", f"model.vocab_size={need - 10}",
                mention=[c, f"the corpus has {chars} distinct characters",
                         f"raise model.vocab_size to at least {need}"])
    assert f"{need} + 259" not in err, err
    # the remedy works: with that vocabulary the tokenizer trains (the corpus is then too short to train on)
    p = run(*_train_on(c, tmp_path), "--set", f"model.vocab_size={need}", check=False)
    assert p.returncode == 1 and "tokenizing the corpus" in p.stderr and "distinct characters" not in p.stderr, p.stderr


def test_corpus_larger_than_memory(tiny, tmp_path):
    _, _, run_dir = tiny
    big = small_corpus(tmp_path / "big.txt", 2_000_000)
    fails("eval", "--ckpt", run_dir, "--text", big, env={"STRATA_MEMORY_LIMIT": "1500000"},
          mention=["corpus file " + str(big), "STRATA_MEMORY_LIMIT"])


def test_corpus_with_nul_bytes_and_a_folder_with_special_files(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    text = small_corpus(tmp_path / "base.txt").read_text()
    (folder / "a.txt").write_text(text.replace("e", "e\0", 100))
    os.mkfifo(folder / "pipe")  # not a regular file: skipped, never opened
    p = run(*_train_on(folder, tmp_path))
    assert "trained 1 steps" in p.stdout


# ---- files: data dir, shards, tokenizer ------------------------------------------------------------
def test_out_dir_and_data_dir_that_are_files(tiny, tmp_path):
    _, args, _ = tiny
    f = tmp_path / "file"
    f.write_text("x")
    fails("train", *args, "--set", f"train.out_dir={f}", "--set", "train.steps=1", mention=[f, "output directory"])
    other = [a if not a.startswith("train.data_dir=") else f"train.data_dir={f}" for a in args]
    fails("train", *other, "--set", f"train.out_dir={tmp_path / 'r'}", mention=[f, "data directory"])


def test_damaged_tokenizer_record_and_shard_metadata_are_rebuilt(tiny, tmp_path):
    d, args, _ = tiny
    data = tmp_path / "data"
    shutil.copytree(d / "data", data)
    (data / "tokenizer.json").write_text("{broken")
    (data / "meta.json").write_text("[]")
    other = [a if not a.startswith("train.data_dir=") else f"train.data_dir={data}" for a in args]
    p = run("train", *other, "--set", f"train.out_dir={tmp_path / 'r'}", "--set", "train.steps=1")
    assert "training a 320-token" in p.stderr and "prepared now" in p.stderr, p.stderr
    assert (data / "tokenizer.model").read_bytes() == (d / "data" / "tokenizer.model").read_bytes()
    assert (data / "train.bin").read_bytes() == (d / "data" / "train.bin").read_bytes()


def test_run_dir_config_and_tokenizer_copies_are_never_read(tiny, tmp_path):
    _, args, run_dir = tiny
    r = tmp_path / "run"
    shutil.copytree(run_dir, r)
    (r / "config.json").write_text("{not json")
    (r / "tokenizer.model").write_bytes(b"\0garbage")
    before = run("eval", "--ckpt", run_dir, "--batches", "1", "--threads", "1").stdout
    assert run("eval", "--ckpt", r, "--batches", "1", "--threads", "1").stdout == before
    run("generate", "--ckpt", r, "--prompt", "The", "-n", "3", "--threads", "1")
    p = run("train", *args, "--set", f"train.out_dir={r}", "--set", "train.steps=4")
    assert "at step 3" in p.stderr
    assert json.loads((r / "config.json").read_text())["train"]["steps"] == 4  # rewritten whole


def test_shard_from_a_larger_vocabulary(tiny, tmp_path):
    d, _, run_dir = tiny
    data = tmp_path / "data"
    data.mkdir()
    toks = [(i * 37) % 1000 for i in range(5000)]
    (data / "val.bin").write_bytes(b"STRTOKS1" + struct.pack("<IIQII", 1, 1000, len(toks), 2, 0) +
                                   struct.pack(f"<{len(toks)}H", *toks))
    # its meta.json claims the run's tokenizer, so what stops it is the shard's own vocabulary
    meta = json.loads((d / "data" / "meta.json").read_text())
    meta["n_val"] = len(toks)
    (data / "meta.json").write_text(json.dumps(meta))
    fails("eval", "--ckpt", run_dir, "--data-dir", data, mention=[data / "val.bin", "1000-token vocabulary"])


# ---- files: checkpoints ----------------------------------------------------------------------------
def rewrite(src, dst, meta=None, config=None, patch=None):
    """A copy of checkpoint `src` with metadata fields replaced (None deletes), the config's sections
    updated, or the data of one tensor replaced by patch=(name, function of bytes)."""
    raw = (src / "checkpoint.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = bytearray(raw[8 + n:])
    md = header["__metadata__"]
    for k, v in (meta or {}).items():
        if v is None:
            md.pop(k, None)
        else:
            md[k] = v
    if config:
        cfg = json.loads(md["config"])
        for section, kv in config.items():
            cfg[section].update(kv)
        md["config"] = json.dumps(cfg)
    if patch:
        name, fn = patch
        a, b = header[name]["data_offsets"]
        data[a:b] = fn(bytes(data[a:b]))
        if "checksums" in md:  # a consistent file: what is tested is the tensor's content, not its checksum
            sums = json.loads(md["checksums"])
            sums[name] = xxh3_64(data[a:b])
            md["checksums"] = json.dumps(sums)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "tokenizer.model", "metrics.jsonl"):
        if (src / f).exists():
            shutil.copy(src / f, dst / f)
    (dst / "checkpoint.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + bytes(data))
    return dst


@pytest.mark.parametrize("meta,mention", [
    ({"step": None}, "lacks the metadata field \"step\""),
    ({"sampler_position": None}, "lacks the metadata field \"sampler_position\""),
    ({"step": "-1"}, "bad \"step\" field: -1"),
    ({"step": "abc"}, "bad \"step\" field: abc"),
    ({"step": "99999999999999999999999"}, "bad \"step\" field"),
    ({"format": "other"}, "is not a strata checkpoint"),
    ({"format": None}, "is not a strata checkpoint"),
    ({"config": None}, "lacks its config"),
    ({"config": "{"}, "has a corrupt config"),
    ({"checksums": None}, "lacks the metadata field \"checksums\""),
    ({"checksums": "[1, 2]"}, "has a corrupt \"checksums\" field"),
    ({"checksums": "{}"}, "has no checksum"),
])
def test_checkpoint_metadata_limits(tiny, tmp_path, meta, mention):
    _, _, run_dir = tiny
    bad = rewrite(run_dir, tmp_path / "bad", meta=meta)
    fails("eval", "--ckpt", bad, "--batches", "1", mention=[bad, mention])


def test_checkpoint_with_an_invalid_config(tiny, tmp_path):
    _, _, run_dir = tiny
    bad = rewrite(run_dir, tmp_path / "bad", config={"model": {"bogus": 1}})
    fails("generate", "--ckpt", bad, "--prompt", "x", mention=[bad, "unknown key \"bogus\""])
    bad = rewrite(run_dir, tmp_path / "bad2", config={"train": {"lr": -1}})
    fails("generate", "--ckpt", bad, "--prompt", "x", mention=[bad, "train.lr must be positive"])


def test_checkpoint_with_a_corrupt_tokenizer(tiny, tmp_path):
    _, _, run_dir = tiny
    bad = rewrite(run_dir, tmp_path / "bad", patch=("tokenizer", lambda b: b"\x07" * len(b)))
    fails("generate", "--ckpt", bad, "--prompt", "x", mention=[bad, "is corrupt"])


def test_checkpoint_with_inconsistent_counters_is_not_trained_from(tiny, tmp_path):
    d, args, run_dir = tiny
    bad = rewrite(run_dir, tmp_path / "bad", meta={"adamw_step": "7"})  # more updates than steps (3)
    fails("train", *args, "--set", f"train.out_dir={bad}", "--set", "train.steps=5",
          mention=["inconsistent step counters", "adamw_step 7"])
    bad = rewrite(run_dir, tmp_path / "bad2", meta={"step": "18446744073709551615"})
    fails("train", *args, "--set", f"train.out_dir={bad}", "--set", "train.steps=5",
          mention=["inconsistent step counters"])


def test_checkpoint_with_nan_weights_is_not_trained_from(tiny, tmp_path):
    _, args, run_dir = tiny
    nan = struct.pack("<f", float("nan"))
    bad = rewrite(run_dir, tmp_path / "bad", patch=("model.blocks.1.wo", lambda b: nan + b[4:]))
    fails("train", *args, "--set", f"train.out_dir={bad}", "--set", "train.steps=5",
          mention=["model.blocks.1.wo", "non-finite"])
    bad = rewrite(run_dir, tmp_path / "bad2", patch=("adamw.v.final_norm", lambda b: nan + b[4:]))
    fails("train", *args, "--set", f"train.out_dir={bad}", "--set", "train.steps=5",
          mention=["AdamW moments of final_norm"])


def test_resume_with_a_different_model_config(tiny, tmp_path):
    _, args, run_dir = tiny
    work = tmp_path / "r"
    shutil.copytree(run_dir, work)
    fails("train", *args, "--set", f"train.out_dir={work}", "--set", "model.ffn_hidden=40",
          mention=[work / "checkpoint.safetensors", "different model config"])
    fails("train", *args, "--set", f"train.out_dir={work}", "--set", "model.ffn_hidden=40",
          "--set", "train.resume=false", "--set", "train.steps=1", mention=["already holds a run", "train.overwrite"])
    p = run("train", *args, "--set", f"train.out_dir={work}", "--set", "model.ffn_hidden=40",
            "--set", "train.resume=false", "--set", "train.overwrite=true", "--set", "train.steps=1")
    assert "resuming" not in p.stderr and "train.overwrite: deleted" in p.stderr


def test_run_dir_without_a_checkpoint(tmp_path):
    fails("eval", "--ckpt", tmp_path, mention=[tmp_path / "checkpoint.safetensors"])


def test_checkpoint_that_is_a_fifo(tmp_path):
    fifo = tmp_path / "checkpoint.safetensors"
    os.mkfifo(fifo)
    try:
        p = subprocess.run([BIN, "eval", "--ckpt", str(tmp_path)], capture_output=True, text=True, timeout=2)
    except subprocess.TimeoutExpired:
        pytest.fail("strata eval blocked on a FIFO")
    assert p.returncode == 1 and "regular file" in p.stderr


# ---- CLI flags -------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,mention", [
    (["--top-k", "-1"], "--top-k"),
    (["--top-k", "99999999999"], "--top-k"),
    (["-t", "nan"], "temperature"),
    (["--top-p", "nan"], "--top-p must be a finite number, got nan"),
    (["--threads", "4097"], "--threads must be in [1, 4096], got 4097"),
    (["--seed", "x"], "--seed"),
    (["--bogus"], "--bogus"),
])
def test_generate_flag_limits(tiny, flags, mention):
    _, _, run_dir = tiny
    fails("generate", "--ckpt", run_dir, "--prompt", "The", "-n", "3", *flags, mention=[mention])


def test_generate_flags_at_their_limits(tiny):
    _, _, run_dir = tiny
    # max-tokens beyond the model's context goes on past it (no cap); top-k beyond the vocabulary keeps all
    p = run("generate", "--ckpt", run_dir, "--prompt", "The", "-n", "200", "--top-k", "100000", "--seed", "1")
    assert "capped" not in p.stderr and p.stdout.startswith("The")
    p = run("generate", "--ckpt", run_dir, "--prompt", "", "-n", "5", "-t", "0", "--top-p", "1e-9")
    assert p.returncode == 0


def test_prompt_length_limit_is_max_seq_len_minus_one(tiny):
    # \x01 is not in the corpus: byte fallback makes it one token. With the leading end-of-text token,
    # 63 of them fill the 64 positions (generation then goes on past the context); 64 do not fit.
    _, _, run_dir = tiny
    p = run("generate", "--ckpt", run_dir, "--prompt", "\x01" * 63, "-n", "5", "-t", "0")
    assert "prefill 64 tokens" in p.stderr and "capped" not in p.stderr
    fails("generate", "--ckpt", run_dir, "--prompt", "\x01" * 64, "-n", "5", mention=["65 tokens", "max_seq_len 64"])


@pytest.mark.parametrize("flags,mention", [
    (["--batches", "-1"], "--batches"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--batch-size", "100000000"], "evaluation with batch 100000000 x 32"),
    (["--threads", "0"], "--threads"),
    (["--threads", "4097"], "--threads must be in [1, 4096], got 4097"),
    (["--text", "/nonexistent/corpus"], "/nonexistent/corpus"),
    (["--data-dir", "/nonexistent/data"], "/nonexistent/data/val.bin"),
])
def test_eval_flag_limits(tiny, flags, mention):
    _, _, run_dir = tiny
    fails("eval", "--ckpt", run_dir, *flags, mention=[mention])


def test_eval_text_shorter_than_one_sequence(tiny, tmp_path):
    _, _, run_dir = tiny
    t = tmp_path / "short.txt"
    t.write_text("In the beginning.\n")
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    err = fails("eval", "--ckpt", run_dir, "--text", t, mention=[f"{t} has", "fewer than one sequence"],
                env={"TMPDIR": str(scratch)})
    assert str(scratch) not in err, err  # the user's file, not the scratch shard it was tokenized into
    assert list(scratch.iterdir()) == [], "eval --text left its scratch folder behind"


@pytest.mark.parametrize("flags,mention", [
    (["--threads", "0"], "--threads must be in [1, 4096], got 0"),
    (["--steps", "0"], "--steps must be ≥ 1, got 0"),
    (["--warmup", "-1"], "--warmup must be ≥ 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
    (["--batch", "0"], "--batch-size must be ≥ 1, got 0"),
    (["--seq-len", "0"], "--seq-len must be ≥ 1, got 0"),
    (["--seq", "-3"], "--seq-len must be ≥ 1, got -3"),
])
def test_bench_flag_limits(flags, mention):
    fails("bench", "train", "--no-peer", *flags, mention=[mention])


def test_cli_without_a_subcommand_or_with_an_unknown_one():
    p = subprocess.run([BIN], capture_output=True, text=True)
    assert p.returncode == 2 and "Usage: strata" in p.stdout and "Subcommands:" in p.stdout
    fails("frobnicate", mention=['unknown subcommand "frobnicate"; the subcommands are: train, generate'])


# ---- environment variables -------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "-5"])
def test_malformed_disk_full_fault(tiny, tmp_path, value):
    _, args, _ = tiny
    fails("train", *args, "--set", f"train.out_dir={tmp_path / 'r'}", "--set", "train.steps=1",
          env={"STRATA_FAULT_DISK_FULL": value}, mention=["STRATA_FAULT_DISK_FULL"])


def test_omp_and_openblas_thread_variables_do_not_override_train_threads(tiny, tmp_path):
    _, args, _ = tiny
    run("train", *args, "--set", "train.threads=2", "--set", "train.steps=3", "--set", f"train.out_dir={tmp_path / 'a'}")
    run("train", *args, "--set", "train.threads=2", "--set", "train.steps=3", "--set", f"train.out_dir={tmp_path / 'b'}",
        env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    losses = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


@pytest.mark.parametrize("seed", ["-1", "18446744073709551616"])
def test_generate_seed_out_of_range_is_rejected(tiny, seed):
    _, _, run_dir = tiny
    fails("generate", "--ckpt", run_dir, "--prompt", "The", "-n", "3", "--seed", seed, mention=["--seed"])


def test_checkpoint_with_non_finite_weights_is_refused(tiny, tmp_path):
    _, _, run_dir = tiny
    # a whole file (its checksums recomputed by rewrite) whose weights are not finite
    bad = rewrite(run_dir, tmp_path / "nan", patch=("model.final_norm", lambda b: struct.pack("<f", float("nan")) + b[4:]))
    fails("eval", "--ckpt", bad, mention=[str(bad), "model.final_norm", "non-finite"])
    fails("generate", "--ckpt", bad, "--prompt", "The", mention=[str(bad), "non-finite"])


def test_bench_batch_beyond_memory_is_refused_before_any_work():
    fails("bench", "train", "--no-peer", "--batch", "100000", "--seq", "256", mention=["bench train", "GiB"],
          timeout=30)
