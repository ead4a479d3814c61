"""NaN/Inf in training: detected at the step it appears, named (step and tensor), and never written
to a checkpoint. Faults are injected with STRATA_FAULT_NONFINITE=STEP[:PARAM] (NaN in a gradient
after the backward of STEP) or STEP:weights[:PARAM] (NaN in the weights after the update of STEP)."""
import array
import json
import math
import re
import struct

import pytest

from clihelp import TINY_MODEL, run, small_corpus

EXACT = ("step", "loss", "lr", "grad_norm", "val_loss", "skipped")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("nonfinite")
    corpus = small_corpus(d / "corpus.txt")
    args = ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}", *TINY_MODEL,
            "--set", "train.threads=1", "--set", "train.ckpt_every=3", "--set", "train.steps=10"]
    run("train", *args, "--set", f"train.out_dir={d / 'prep'}", "--set", "train.steps=1")
    return args


def train(base, out, fault=None, *extra, check=True):
    env = {"STRATA_FAULT_NONFINITE": fault} if fault else {"STRATA_FAULT_NONFINITE": ""}
    return run("train", *base, "--set", f"train.out_dir={out}", *extra, env=env, check=check)


def fails(p):
    assert p.returncode not in (0, 130) and p.returncode > 0, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "terminate called" not in p.stderr
    return p.stderr


def header(run_dir):
    raw = (run_dir / "checkpoint.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def all_tensors_finite(run_dir):
    h, data = header(run_dir)
    for name, t in h.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        a, b = t["data_offsets"]
        vals = array.array("f")
        vals.frombytes(data[a:b])
        if not all(math.isfinite(v) for v in vals):
            return name
    return None


def metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def eval_loss(run_dir):
    p = run("eval", "--ckpt", run_dir, "--batches", "2", "--threads", "1")
    return float(re.search(r"loss (\S+),", p.stdout).group(1))


def test_stop_names_the_step_and_tensor_and_keeps_the_previous_checkpoint(base, tmp_path):
    out = tmp_path / "r"
    err = fails(train(base, out, "6", check=False))  # step 6 would also have been a checkpoint step
    assert "non-finite value in the gradient of tok_emb at step 6" in err, err
    assert "stopping without writing a checkpoint" in err and "checkpoint of step 3 is kept" in err, err
    h, _ = header(out)
    assert h["__metadata__"]["step"] == "3"
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4, 5]
    before = (out / "checkpoint.safetensors").read_bytes()
    # The same fault again, resuming from step 3: the failing run leaves the checkpoint byte-identical.
    err = fails(train(base, out, "6:blocks.1.w_up", check=False))
    assert "gradient of blocks.1.w_up at step 6" in err, err
    assert (out / "checkpoint.safetensors").read_bytes() == before
    assert math.isfinite(eval_loss(out))
    # Without the fault the run resumes from step 3 and ends where a clean run does.
    train(base, out)
    clean = tmp_path / "clean"
    train(base, clean)
    strip = lambda ms: [{k: m[k] for k in EXACT if k in m} for m in ms]
    assert strip(metrics(out)) == strip(metrics(clean))


def test_skip_skips_the_step_and_the_weights_stay_finite(base, tmp_path):
    out = tmp_path / "r"
    p = train(base, out, "5:blocks.0.wq", "--set", "train.on_nonfinite=skip")
    assert "non-finite value in the gradient of blocks.0.wq at step 5; step skipped" in p.stderr, p.stderr
    ms = metrics(out)
    assert {"step": 5, "skipped": True, "nonfinite": "the gradient of blocks.0.wq"} in ms
    assert [m["step"] for m in ms if "loss" in m] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert all(math.isfinite(m["loss"]) for m in ms if "loss" in m)
    h, _ = header(out)
    assert h["__metadata__"]["step"] == "10" and h["__metadata__"]["adamw_step"] == "9"  # one update fewer
    assert all_tensors_finite(out) is None
    assert math.isfinite(eval_loss(out))


def test_skip_on_a_checkpoint_step_and_on_the_last_step_still_checkpoints(base, tmp_path):
    out = tmp_path / "r"
    p = train(base, out, "6", "--set", "train.on_nonfinite=skip", "--set", "train.steps=6")
    assert "step 6; step skipped" in p.stderr, p.stderr
    h, _ = header(out)
    assert h["__metadata__"]["step"] == "6" and h["__metadata__"]["adamw_step"] == "5"
    assert all_tensors_finite(out) is None


def test_nan_in_the_weights_is_caught_at_the_next_step(base, tmp_path):
    out = tmp_path / "r"
    err = fails(train(base, out, "4:weights", check=False))
    # the update of step 4 poisons tok_emb; the loss of step 5 is NaN and the weights are named
    assert "non-finite value in the weights of tok_emb at step 5" in err, err
    assert "checkpoint of step 3 is kept" in err
    assert header(out)[0]["__metadata__"]["step"] == "3" and all_tensors_finite(out) is None
    # skipping cannot repair poisoned weights: skip mode stops too
    out2 = tmp_path / "r2"
    err = fails(train(base, out2, "4:weights:final_norm", "--set", "train.on_nonfinite=skip", check=False))
    assert "weights of final_norm at step 5" in err and "cannot repair" in err, err
    assert header(out2)[0]["__metadata__"]["step"] == "3" and all_tensors_finite(out2) is None


def test_nan_in_the_weights_before_a_checkpoint_is_not_saved(base, tmp_path):
    out = tmp_path / "r"
    err = fails(train(base, out, "6:weights", check=False))
    assert "non-finite value in the weights of tok_emb after step 6; not writing a checkpoint" in err, err
    assert header(out)[0]["__metadata__"]["step"] == "3" and all_tensors_finite(out) is None


@pytest.mark.parametrize("value,mention", [("x", "STEP"), ("0", "STEP"), ("3:nope", "nope"),
                                           ("3:weights:nope", "nope")])
def test_malformed_fault_spec_is_an_error(base, tmp_path, value, mention):
    err = fails(train(base, tmp_path / "r", value, check=False))
    assert "STRATA_FAULT_NONFINITE" in err and mention in err, err
