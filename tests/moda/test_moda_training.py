"""MoDA through the CLI: models train, resume bit for bit, evaluate, generate and diagnose, alone and
with AttnRes; the config keys are validated. (The op is checked in op/test_ops.cpp and the model
against the PyTorch reference in parity/test_model_parity.py.)"""
import json

import pytest

from clihelp import ckpt_content, feature_args, losses, run, tensor_names

VARIANTS = {
    "moda": ["--set", "model.attention=moda", "--set", "model.n_layers=3"],
    "moda-attnkv-only": ["--set", "model.attention=moda", "--set", "model.moda_ffn_kv=false",
                         "--set", "model.n_layers=3", "--set", "model.qk_norm=true"],
    "moda+attnres": ["--set", "model.attention=moda", "--set", "model.residual=attnres_block",
                     "--set", "model.attnres_block_size=2", "--set", "model.n_layers=3"],
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return feature_args(tmp_path_factory.mktemp("moda"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_trains_resumes_evaluates_generates_and_diagnoses(base, tmp_path, variant):
    args = [*base, *VARIANTS[variant]]
    a, b = tmp_path / "a", tmp_path / "b"
    run("train", *args, "--set", "train.steps=16", "--set", f"train.out_dir={a}")
    curve = losses(a)
    assert len(curve) == 16 and min(curve[-3:]) < curve[0] - 0.3, curve
    names = tensor_names(a)
    ffn_kv = "attnkv-only" not in variant
    assert ("model.blocks.0.w_ffn_k" in names) == ffn_kv and ("model.blocks.1.w_ffn_v" in names) == ffn_kv
    assert "model.blocks.2.w_ffn_k" not in names  # the last layer's FFN K/V would never be read

    run("train", *args, "--set", "train.steps=8", "--set", "train.lr_decay_steps=16", "--set", f"train.out_dir={b}")
    run("train", *args, "--set", "train.steps=16", "--set", f"train.out_dir={b}")
    assert losses(b) == curve
    assert ckpt_content(b) == ckpt_content(a)

    assert "perplexity" in run("eval", "--ckpt", a, "--batches", "2").stdout
    gen = run("generate", "--ckpt", a, "--prompt", "The", "-n", "12", "--temperature", "1", "--seed", "1").stdout
    assert gen.startswith("The") and len(gen.strip()) > len("The"), repr(gen)
    js = tmp_path / "d.json"
    run("diagnose", "--ckpt", a, "--batches", "1", "--json-out", js)
    assert len(json.loads(js.read_text())["sublayers"]) == 6


@pytest.mark.parametrize("override,mention", [
    ("model.attention=\"flash\"", "attention must be \"causal\" or \"moda\""),
    ("model.moda_ffn_kv=1", "\"moda_ffn_kv\" must be a boolean"),
])
def test_bad_moda_config_is_refused(base, tmp_path, override, mention):
    p = run("train", *base, "--set", "model.attention=moda", "--set", override,
            "--set", f"train.out_dir={tmp_path / 'r'}", check=False)
    assert p.returncode == 1 and mention in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()
