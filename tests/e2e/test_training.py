"""Training-loop behaviour through the CLI: gradient accumulation, the lr schedule in the metrics,
determinism of repeated runs."""
import json
import math

from clihelp import run, tiny_run  # noqa: F401  (tiny_run is a fixture)


def _metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def _args(args, out):
    return [a if not a.startswith("train.out_dir=") else f"train.out_dir={out}" for a in args]


def test_gradient_accumulation_equals_the_larger_batch(tiny_run, tmp_path):
    # Batch k of size B draws rows k·B..k·B+B-1 of the sampler's stream, so 2 micro-batches of 4 see
    # exactly the windows of one batch of 8: the losses agree up to float rounding.
    _, _, _, args = tiny_run
    run("train", "--set", "train.steps=5", *_args(args, tmp_path / "big"), "--set", "train.batch_size=8")
    run("train", "--set", "train.steps=5", *_args(args, tmp_path / "acc"), "--set", "train.batch_size=4",
        "--set", "train.grad_accum=2")
    a, b = _metrics(tmp_path / "big"), _metrics(tmp_path / "acc")
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) / x["loss"] < 1e-5, (x, y)
        assert abs(x["grad_norm"] - y["grad_norm"]) / x["grad_norm"] < 1e-4, (x, y)


def test_warmup_then_cosine_schedule(tiny_run, tmp_path):
    _, _, _, args = tiny_run
    run("train", *_args(args, tmp_path / "r"), "--set", "train.steps=10", "--set", "train.warmup=4",
        "--set", "train.lr=0.01", "--set", "train.min_lr=0.001")
    lrs = [m["lr"] for m in _metrics(tmp_path / "r")]
    assert [round(x, 8) for x in lrs[:4]] == [0.0025, 0.005, 0.0075, 0.01]
    for step in range(4, 10):
        t = (step - 4) / 6
        want = 0.001 + 0.5 * 0.009 * (1 + math.cos(math.pi * t))
        assert abs(lrs[step] - want) < 1e-9, (step, lrs[step], want)


def test_same_seed_same_losses(tiny_run, tmp_path):
    _, _, _, args = tiny_run
    run("train", "--set", "train.steps=4", *_args(args, tmp_path / "x"))
    run("train", "--set", "train.steps=4", *_args(args, tmp_path / "y"))
    assert [m["loss"] for m in _metrics(tmp_path / "x")] == [m["loss"] for m in _metrics(tmp_path / "y")]
    run("train", "--set", "train.steps=4", "--set", "train.seed=99", *_args(args, tmp_path / "z"))
    assert [m["loss"] for m in _metrics(tmp_path / "x")] != [m["loss"] for m in _metrics(tmp_path / "z")]
