"""What a run writes and says (docs/metrics.md, docs/workflow.md): metrics fields, the final
validation loss, divergence, kept checkpoints, samples during training, and paths that mean the
same files from any working directory."""
import json
import os
import shutil

import pytest

from clihelp import TINY_MODEL, losses, run, small_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("outputs")
    c = small_corpus(d / "corpus.txt")
    return ["--set", f"train.corpus={c}", "--set", f"train.data_dir={d / 'data'}", *TINY_MODEL], d


def rows(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_metrics_fields_and_the_final_validation_loss(corpus, tmp_path):
    args, _ = corpus
    out = tmp_path / "m"
    p = run("train", *args, "--set", f"train.out_dir={out}", "--set", "train.steps=6", "--set", "train.log_every=3",
            "--set", "train.eval_every=4", "--set", "train.peak_gflops=50")
    assert p.stderr.count("config: {") == 1 and "FLOPs per token" in p.stderr, p.stderr
    assert "model: 2" in p.stderr  # the parameter count
    r = rows(out)
    steps = [x for x in r if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2, 3, 4, 5, 6]
    tokens = 4 * 32
    for x in steps:
        assert x["tokens"] == x["step"] * tokens
        assert 0 < x["mfu"] < 1 and x["time"] > 1.7e9
    # per-sublayer gradient norms on the logged steps (1 and every log_every): 2 layers = 4 sublayers
    logged = {x["step"]: x.get("sublayer_grad_norms") for x in steps}
    assert all(len(logged[s]) == 4 and all(v > 0 for v in logged[s]) for s in (1, 3, 6)), logged
    assert logged[2] is None and logged[4] is None
    vals = [x for x in r if "val_loss" in x]
    assert [x["step"] for x in vals] == [4, 6] and vals[-1].get("final") is True
    assert f"validation loss {vals[-1]['val_loss']:.4f}" in p.stdout
    # resuming the finished run writes no second final line
    run("train", *args, "--set", f"train.out_dir={out}", "--set", "train.steps=6", "--set", "train.log_every=3",
        "--set", "train.eval_every=4", "--set", "train.peak_gflops=50")
    assert [x["step"] for x in rows(out) if "val_loss" in x] == [4, 6]


def test_mfu_without_a_peak_uses_a_measured_sgemm(corpus, tmp_path):
    args, _ = corpus
    p = run("train", *args, "--set", f"train.out_dir={tmp_path / 'q'}", "--set", "train.steps=2")
    assert "(measured sgemm)" in p.stderr, p.stderr
    assert all(0 < x["mfu"] < 1 for x in rows(tmp_path / "q") if "loss" in x)


@pytest.mark.parametrize("policy", ["warn", "stop"])
def test_divergence(corpus, tmp_path, policy):
    """At lr 10 the loss leaves max(ln V + 1, 1.5 × the first logged loss) and stays there."""
    args, _ = corpus
    out = tmp_path / policy
    p = run("train", *args, "--set", f"train.out_dir={out}", "--set", "train.steps=30", "--set", "train.lr=10",
            "--set", "train.min_lr=10", "--set", "train.weight_decay=0", "--set", "train.warmup=0",
            "--set", "train.grad_clip=0", "--set", "train.ckpt_every=5", "--set", f"train.on_divergence={policy}",
            "--set", "train.on_nonfinite=skip", check=False)
    assert "the loss has diverged" in p.stderr, p.stderr[-2000:]
    if policy == "warn":
        assert p.returncode == 0, p.stderr[-2000:]
        assert "warning: the loss diverged at step" in p.stdout
        assert "perplexity overflow" in p.stdout or "perplexity" in p.stdout
        assert max(x["step"] for x in rows(out) if "loss" in x or "skipped" in x) == 30
    else:
        assert p.returncode == 3, (p.returncode, p.stdout, p.stderr[-2000:])
        assert "stopped: the loss diverged" in p.stdout
        assert max(x["step"] for x in rows(out) if "loss" in x) < 30


def test_perplexity_that_overflows_prints_overflow(corpus, tmp_path):
    """A loss above ln(DBL_MAX) ≈ 709.8: the perplexity prints as 'overflow', not inf."""
    args, _ = corpus
    out = tmp_path / "ovf"
    p = run("train", *args, "--set", f"train.out_dir={out}", "--set", "train.steps=40", "--set", "train.lr=10",
            "--set", "train.min_lr=10", "--set", "train.weight_decay=0", "--set", "train.warmup=0",
            "--set", "train.grad_clip=0", "--set", "train.on_nonfinite=skip", check=False)
    vl = [x["val_loss"] for x in rows(out) if "val_loss" in x]
    if vl and vl[-1] > 709.8:
        assert "perplexity overflow" in p.stdout, p.stdout
    else:
        pytest.skip(f"this run's final loss ({vl}) did not overflow exp()")


def test_keep_every_and_keep_best(corpus, tmp_path):
    args, _ = corpus
    out = tmp_path / "k"
    run("train", *args, "--set", f"train.out_dir={out}", "--set", "train.steps=6", "--set", "train.keep_every=2",
        "--set", "train.keep_best=true", "--set", "train.eval_every=2")
    names = sorted(f.name for f in out.iterdir() if f.suffix == ".safetensors")
    assert names == ["checkpoint-2.safetensors", "checkpoint-4.safetensors", "checkpoint-6.safetensors",
                     "checkpoint-best.safetensors", "checkpoint.safetensors"], names
    vals = {x["step"]: x["val_loss"] for x in rows(out) if "val_loss" in x}
    best_step = min(vals, key=vals.get)
    # --ckpt takes a file as well as a run directory; the kept files are whole checkpoints of their step
    for step in (2, 4, 6):
        assert ckpt_step(out / f"checkpoint-{step}.safetensors") == step
    assert ckpt_step(out / "checkpoint-best.safetensors") == best_step
    eb = run("eval", "--ckpt", out / "checkpoint-best.safetensors", "--batches", "2").stdout
    ek = run("eval", "--ckpt", out / f"checkpoint-{best_step}.safetensors", "--batches", "2").stdout
    assert eb.split("loss")[-1] == ek.split("loss")[-1]


def ckpt_step(path):
    import struct
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return int(json.loads(raw[8:8 + n])["__metadata__"]["step"])


def test_samples_during_training_leave_the_run_unchanged(corpus, tmp_path):
    args, _ = corpus
    run("train", *args, "--set", f"train.out_dir={tmp_path / 'plain'}", "--set", "train.steps=6")
    p = run("train", *args, "--set", f"train.out_dir={tmp_path / 's'}", "--set", "train.steps=6",
            "--set", "train.sample_every=2")
    assert p.stderr.count("sample at step") == 3, p.stderr
    assert losses(tmp_path / "s") == losses(tmp_path / "plain")


def test_config_paths_resolve_against_the_config_file(corpus, tmp_path):
    """A config's relative paths mean files beside it, whatever the working directory; --set paths
    mean the working directory; the run records them absolute."""
    _, d = corpus
    cfgdir = tmp_path / "cfg"
    cfgdir.mkdir()
    shutil.copy(d / "corpus.txt", cfgdir / "text.txt")
    model = {k.split("=")[0].split(".")[1]: json.loads(k.split("=")[1]) for k in TINY_MODEL[1::2] if k.startswith("model.")}
    train = {k.split("=")[0].split(".")[1]: json.loads(k.split("=")[1]) for k in TINY_MODEL[1::2] if k.startswith("train.")}
    train.update({"corpus": "text.txt", "data_dir": "prep", "out_dir": "out", "steps": 2})
    (cfgdir / "c.json").write_text(json.dumps({"model": model, "train": train}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run("train", "-c", cfgdir / "c.json", cwd=elsewhere)
    assert (cfgdir / "out" / "checkpoint.safetensors").exists() and (cfgdir / "prep" / "train.bin").exists()
    assert not list(elsewhere.iterdir())
    rec = json.loads((cfgdir / "out" / "config.json").read_text())["train"]
    assert rec["corpus"] == str(cfgdir / "text.txt") and rec["out_dir"] == str(cfgdir / "out")
    # --set paths are relative to the working directory
    run("train", "-c", cfgdir / "c.json", "--set", "train.out_dir=here", cwd=elsewhere)
    assert (elsewhere / "here" / "checkpoint.safetensors").exists()
    rec = json.loads((elsewhere / "here" / "config.json").read_text())["train"]
    assert os.path.isabs(rec["out_dir"]) and rec["out_dir"] == str(elsewhere / "here")
