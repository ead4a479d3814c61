"""Checkpoint integrity: per-tensor XXH3-64 checksums in the metadata. A few bytes changed inside a
tensor of a real checkpoint make eval, generate and a resuming train refuse it naming the tensor; a
format-1 checkpoint (no checksums) still loads, with a note that it is unverified."""
import json
import re
import shutil
import struct

import pytest

from clihelp import run, tiny_run, xxh3_64  # noqa: F401  (tiny_run is a fixture)


def parse(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])


def serialise(path, header, data):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + bytes(data))


def copy_run(run_dir, dst):
    shutil.copytree(run_dir, dst)
    return dst


def damage(ckpt, name, how):
    """Zeroes or flips 8 bytes in the middle of tensor `name`'s data, in place."""
    header, data = parse(ckpt)
    a, b = header[name]["data_offsets"]
    at = a + (b - a) // 2 - 4
    before = bytes(data[at:at + 8])
    data[at:at + 8] = bytes(8) if how == "zero" else bytes(x ^ 0xFF for x in before)
    assert bytes(data[at:at + 8]) != before
    serialise(ckpt, header, data)


def refused(p, *mention):
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "terminate called" not in p.stderr
    for m in mention:
        assert str(m) in p.stderr, f"{m!r} not in:\n{p.stderr}"


def eval_loss(ckpt):
    p = run("eval", "--ckpt", ckpt, "--batches", "1", "--threads", "1")
    return float(re.search(r"loss (\S+),", p.stdout).group(1)), p


def test_the_checkpoint_records_a_checksum_of_every_tensor(tiny_run):
    header, data = parse(tiny_run[0] / "checkpoint.safetensors")
    md = header.pop("__metadata__")
    assert md["format"] == "strata-checkpoint-2"
    sums = json.loads(md["checksums"])
    assert set(sums) == set(header) and any(k.startswith("adamw.v.") for k in sums) and "tokenizer" in sums
    for name, t in header.items():
        a, b = t["data_offsets"]
        assert sums[name] == xxh3_64(data[a:b]), name


@pytest.mark.parametrize("how", ["zero", "flip"])
def test_damaged_weight_is_refused_by_eval_generate_and_train(tiny_run, tmp_path, how):
    run_dir, _, _, args = tiny_run
    work = copy_run(run_dir, tmp_path / "run")
    ckpt = work / "checkpoint.safetensors"
    name = "model.blocks.0.wq"
    damage(ckpt, name, how)
    message = f"checkpoint {ckpt}: tensor {name} fails its checksum (the file is corrupt)"
    refused(run("eval", "--ckpt", work, "--batches", "1", check=False), message)
    refused(run("generate", "--ckpt", ckpt, "--prompt", "The", "-n", "3", check=False), message)
    before = ckpt.read_bytes()
    train_args = [a if not a.startswith("train.out_dir=") else f"train.out_dir={work}" for a in args]
    refused(run("train", *train_args, "--set", "train.steps=9", check=False), message)
    assert ckpt.read_bytes() == before, "the refused checkpoint was overwritten"


def test_damaged_moments_and_tokenizer(tiny_run, tmp_path):
    run_dir, _, _, args = tiny_run
    # The AdamW moments: eval and generate do not read them; resuming training refuses.
    work = copy_run(run_dir, tmp_path / "moments")
    damage(work / "checkpoint.safetensors", "adamw.m.blocks.1.w_down", "zero")
    assert eval_loss(work)[0] == eval_loss(run_dir)[0]
    train_args = [a if not a.startswith("train.out_dir=") else f"train.out_dir={work}" for a in args]
    refused(run("train", *train_args, "--set", "train.steps=9", check=False),
            "tensor adamw.m.blocks.1.w_down fails its checksum")
    # The tokenizer is read by every command.
    work = copy_run(run_dir, tmp_path / "tok")
    damage(work / "checkpoint.safetensors", "tokenizer", "flip")
    refused(run("generate", "--ckpt", work, "--prompt", "The", "-n", "3", check=False),
            "tensor tokenizer fails its checksum")


def test_format_1_checkpoint_loads_unverified_with_a_note(tiny_run, tmp_path):
    run_dir = tiny_run[0]
    old = copy_run(run_dir, tmp_path / "old")
    ckpt = old / "checkpoint.safetensors"
    header, data = parse(ckpt)
    header["__metadata__"]["format"] = "strata-checkpoint-1"
    del header["__metadata__"]["checksums"]
    serialise(ckpt, header, data)
    loss, p = eval_loss(old)
    assert loss == eval_loss(run_dir)[0]
    note = f"note: checkpoint {ckpt} is format 1 (no checksums): its tensors are not verified"
    assert p.stderr.count(note) == 1, p.stderr
    assert "note:" not in eval_loss(run_dir)[1].stderr
    p = run("generate", "--ckpt", old, "--prompt", "The", "-n", "3", "--seed", "1")
    assert note in p.stderr
    # and a format-2 checkpoint stripped of its checksums is not taken for one
    header["__metadata__"]["format"] = "strata-checkpoint-2"
    serialise(ckpt, header, data)
    refused(run("eval", "--ckpt", old, check=False), ckpt, "lacks the metadata field \"checksums\"")
