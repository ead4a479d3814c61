"""The Python package as a user meets it: load a run, generate, logits and loss, parameters, the
tokenizer, training with a callback, Ctrl-C, and the errors of bad input."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import strata
from clihelp import ROOT, TINY_MODEL, run, small_corpus, tiny_run  # noqa: F401  (tiny_run is a fixture)


def overrides_of(args):
    """--set arguments as an overrides dict."""
    out = {}
    for flag, kv in zip(args[::2], args[1::2]):
        assert flag == "--set"
        k, v = kv.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def test_version_and_error_type():
    assert strata.__version__ == run("--version").stdout.split()[1]
    # the module and the CLI load the same build of the engine (CMakeLists.txt, STRATA_CPU_LEVELS)
    assert run("--version").stdout.splitlines()[1].startswith(f"engine: {strata.cpu_capability()}, ")
    assert issubclass(strata.Error, ValueError)


@pytest.mark.parametrize("prompt", ["The", "the quick brown", ""])
def test_greedy_generate_equals_the_cli(tiny_run, prompt):
    model = strata.load(tiny_run[0])
    cli = run("generate", "--ckpt", tiny_run[0], "--prompt", prompt, "-n", "40", "-t", "0").stdout
    text = model.generate(prompt, max_tokens=40, temperature=0)
    assert cli == prompt + text + "\n"
    # streaming yields the same text in pieces, each a complete string
    pieces = list(model.generate(prompt, max_tokens=40, temperature=0, stream=True))
    assert "".join(pieces) == text and all(pieces)


def test_sampled_generate_equals_the_cli_seed_for_seed(tiny_run):
    model = strata.load(tiny_run[0])
    flags = ["-n", "30", "-t", "0.9", "--top-k", "20", "--top-p", "0.95", "--seed", "7"]
    cli = run("generate", "--ckpt", tiny_run[0], "--prompt", "The", *flags).stdout
    text = model.generate("The", max_tokens=30, temperature=0.9, top_k=20, top_p=0.95, seed=7)
    assert cli == "The" + text + "\n"
    assert len(text) >= 6
    stopped = model.generate("The", max_tokens=30, temperature=0.9, top_k=20, top_p=0.95, seed=7, stop=text[3:6])
    assert stopped == text[:text.index(text[3:6])]


def test_generation_iterator_stops_early_and_reports_tokens(tiny_run):
    model = strata.load(tiny_run[0])
    # sampled at temperature 1 from a barely trained model: text comes out within 50 tokens
    g = model.generate("The", max_tokens=50, temperature=1.0, seed=3, stream=True)
    first = next(g)
    assert first and 1 <= len(g.tokens) <= 50 and g.text.startswith(first)
    rest = list(g)
    assert first + "".join(rest) == g.text == model.generate("The", max_tokens=50, temperature=1.0, seed=3)


def test_logits_and_loss_agree(tiny_run):
    model = strata.load(tiny_run[0])
    tok = model.tokenizer
    ids = np.array([tok.eos_id, *tok.encode("the quick brown fox jumps")], dtype=np.int64)
    x, y = ids[:-1], ids[1:]
    logits = model.logits(x)
    assert logits.shape == (len(x), tok.vocab_size) and logits.dtype == np.float32
    z = logits.astype(np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    ce = float(np.mean(lse - z[np.arange(len(y)), y]))
    assert abs(model.loss(x, y) - ce) < 1e-5
    # batched (B, T) gives the rows of each sequence
    both = model.logits(np.stack([x, x]))
    assert both.shape == (2, len(x), tok.vocab_size) and np.allclose(both[1], logits, atol=1e-5)
    # an ignored target (-1) leaves its row out of the mean
    y2 = y.copy()
    y2[0] = -1
    ce2 = float(np.mean((lse - z[np.arange(len(y)), np.maximum(y2, 0)])[1:]))
    assert abs(model.loss(x, y2) - ce2) < 1e-5


def test_params_are_named_copies(tiny_run):
    model = strata.load(tiny_run[0])
    p = model.params()
    assert set(p) == set(model.param_names())
    assert sum(a.size for a in p.values()) == model.num_params
    name = "blocks.0.attn_norm"
    before = model.logits(np.array([1, 2, 3]))
    p[name][:] = 0  # a copy: the model does not change
    assert np.array_equal(model.logits(np.array([1, 2, 3])), before)
    assert model.config["n_layers"] == 2 and model.run_config["train"]["steps"] == 6


def test_tokenizer_round_trip_and_special_ids(tiny_run):
    tok = strata.load(tiny_run[0]).tokenizer
    same = strata.Tokenizer(str(tiny_run[0] / "tokenizer.model"))
    s = "Tabs\tand emoji 🎉 and newlines\n"
    assert tok.encode(s) == same.encode(s) and tok.decode(tok.encode(s)) == s
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size, len(tok)) == (1, 2, 0, 320, 320)
    with pytest.raises(strata.Error, match="outside"):
        tok.decode([320])


def test_bad_inputs_are_named_errors(tiny_run, tmp_path):
    model = strata.load(tiny_run[0])
    with pytest.raises(strata.Error, match=r"tokens\[1\] = 320 is outside \[0, 320\)"):
        model.logits(np.array([1, 320]))
    with pytest.raises(strata.Error, match="tokens must have shape"):
        model.logits(np.zeros((1, 2, 3), dtype=np.int32))
    with pytest.raises(strata.Error, match="targets must have shape"):
        model.loss(np.array([1, 2, 3]), np.array([1, 2]))
    with pytest.raises(strata.Error, match="max_seq_len"):
        model.logits(np.ones(65, dtype=np.int32))
    with pytest.raises(strata.Error, match="top_p"):
        model.generate("The", top_p=0)
    with pytest.raises(strata.Error, match="no tokenizer"):
        strata.Model(model.config).generate("The")
    with pytest.raises(strata.Error, match="precision"):
        strata.load(tiny_run[0], precision="fp16")
    # a missing, a truncated and a non-finite checkpoint are refused, naming the file
    with pytest.raises(strata.Error, match="missing"):
        strata.load(tmp_path / "missing")
    raw = (tiny_run[0] / "checkpoint.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(strata.Error, match="cut.safetensors"):
        strata.load(tmp_path / "cut.safetensors")


def test_nonfinite_checkpoint_is_refused(tiny_run, tmp_path):
    """A checkpoint whose weights hold a NaN (checksums recomputed, so only the value is wrong)."""
    import struct
    from clihelp import xxh3_64
    raw = bytearray((tiny_run[0] / "checkpoint.safetensors").read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = "model.blocks.0.attn_norm"
    lo, hi = header[name]["data_offsets"]
    raw[8 + n + lo: 8 + n + lo + 4] = struct.pack("<f", float("nan"))
    meta = header["__metadata__"]
    sums = json.loads(meta["checksums"])
    sums[name] = xxh3_64(raw[8 + n + lo: 8 + n + hi])
    meta["checksums"] = json.dumps(sums)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the data offsets are relative to the data, so only the length changes
    out = tmp_path / "nan.safetensors"
    out.write_bytes(struct.pack("<Q", len(text)) + text + bytes(raw[8 + n:]))
    with pytest.raises(strata.Error, match="non-finite"):
        strata.load(out)


def test_train_with_a_dict_and_a_callback(tmp_path):
    corpus = small_corpus(tmp_path / "corpus.txt")
    cfg = {"model": {}, "train": {}}
    for k, v in overrides_of(TINY_MODEL).items():
        sec, key = k.split(".")
        cfg[sec][key] = v
    cfg["train"].update(corpus=str(corpus), data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"))
    seen = []
    ticks = []
    stop = threading.Event()

    def ticker():  # runs while the engine trains: the GIL is released during steps
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.001)

    th = threading.Thread(target=ticker)
    th.start()
    try:
        r = strata.train(cfg, overrides={"train.steps": 8, "train.eval_every": 4}, callback=seen.append)
    finally:
        stop.set()
        th.join()
    assert r["step"] == 8 and r["steps_run"] == 8 and not r["interrupted"]
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert seen == lines
    assert [m["step"] for m in seen if "loss" in m] == list(range(1, 9))
    assert any("val_loss" in m for m in seen)
    assert len(ticks) > 20
    # the model it wrote loads, and a second call resumes: nothing left to train
    assert strata.load(r["checkpoint"]).num_params > 0
    again = strata.train(cfg, overrides={"train.steps": 8})
    assert again["steps_run"] == 0 and again["step"] == 8


def test_train_errors(tmp_path):
    with pytest.raises(strata.Error, match="train.steps"):
        strata.train({"train": {"steps": -1}})
    with pytest.raises(strata.Error, match="cannot read config"):
        strata.train(tmp_path / "nope.json")
    with pytest.raises(strata.Error, match="unknown key \"bogus\""):
        strata.train(None, overrides={"model.bogus": 1})


def test_callback_exception_ends_the_run(tmp_path):
    corpus = small_corpus(tmp_path / "corpus.txt")
    ov = {**overrides_of(TINY_MODEL), "train.corpus": str(corpus), "train.data_dir": str(tmp_path / "data"),
          "train.out_dir": str(tmp_path / "run"), "train.steps": 20, "train.ckpt_every": 2}

    def boom(m):
        if m.get("step") == 5:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        strata.train(None, overrides=ov, callback=boom)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the checkpoint of step 4 is whole and resumes
    r = strata.train(None, overrides=ov)
    assert r["start_step"] == 4 and r["step"] == 20


def test_ctrl_c_checkpoints_then_raises_keyboard_interrupt(tmp_path):
    """SIGINT during strata.train: the step ends, the checkpoint is written, KeyboardInterrupt is raised,
    and Python's own handler is back (a second SIGINT later is an ordinary KeyboardInterrupt)."""
    corpus = small_corpus(tmp_path / "corpus.txt")
    ov = {**overrides_of(TINY_MODEL), "train.corpus": str(corpus), "train.data_dir": str(tmp_path / "data"),
          "train.out_dir": str(tmp_path / "run"), "train.steps": 1000, "train.ckpt_every": 1000}
    script = textwrap.dedent(f"""
        import json, os, signal, sys, time
        import strata
        ov = json.loads({json.dumps(json.dumps(ov))})
        def cb(m):
            if m.get("step") == 3:
                os.kill(os.getpid(), signal.SIGINT)
        try:
            strata.train(None, overrides=ov, callback=cb)
            print("no interrupt")
        except KeyboardInterrupt as e:
            print("interrupted:", e)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
            print("no second interrupt")
        except KeyboardInterrupt:
            print("second interrupt in python")
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert p.returncode == 0, p.stderr
    assert "interrupted: training interrupted at step" in p.stdout
    assert "second interrupt in python" in p.stdout
    step = int(p.stdout.split("at step ")[1].split(";")[0])
    assert 3 <= step < 1000
    m = strata.load(tmp_path / "run")
    assert m.run_config["train"]["steps"] == 1000
    last = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == step


def test_changing_precision_during_a_generation_is_an_error(tiny_run):
    model = strata.load(tiny_run[0])
    g = model.generate("The", max_tokens=50, temperature=1.0, seed=3, stream=True)
    next(g)
    model.precision = "bf16"
    with pytest.raises(strata.Error, match="precision changed during the generation"):
        list(g)
    model.precision = "fp32"
    assert model.generate("The", max_tokens=50, temperature=1.0, seed=3)  # a new generation is fine
