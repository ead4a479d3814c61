"""AttnRes through the CLI: Full and Block models train, checkpoint, resume bit for bit, evaluate and
generate; the config keys are validated. (The op and the model are checked against the PyTorch
reference in op/test_ops.cpp and parity/test_model_parity.py.)"""
import pytest

from clihelp import ckpt_content, feature_args, losses, run, tensor_names

VARIANTS = {
    "full": ["--set", "model.residual=attnres_full"],
    "block": ["--set", "model.residual=attnres_block", "--set", "model.attnres_block_size=3",
              "--set", "model.n_layers=3"],
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return feature_args(tmp_path_factory.mktemp("attnres"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_trains_resumes_evaluates_and_generates(base, tmp_path, variant):
    args = [*base, *VARIANTS[variant]]
    a, b = tmp_path / "a", tmp_path / "b"
    p = run("train", *args, "--set", "train.steps=16", "--set", f"train.out_dir={a}")
    assert "residual attnres_" + variant in p.stderr, p.stderr
    curve = losses(a)
    assert len(curve) == 16 and min(curve[-3:]) < curve[0] - 0.3, curve  # it learns
    names = tensor_names(a)
    assert {"model.blocks.0.attn_res_query", "model.blocks.0.mlp_res_norm", "model.out_res_query",
            "model.out_res_norm"} <= names, sorted(names)

    # Stopped after 8 steps and resumed: the same curve and the same checkpoint, bit for bit.
    run("train", *args, "--set", "train.steps=8", "--set", "train.lr_decay_steps=16", "--set", f"train.out_dir={b}")
    run("train", *args, "--set", "train.steps=16", "--set", f"train.out_dir={b}")
    assert losses(b) == curve
    assert ckpt_content(b) == ckpt_content(a)

    out = run("eval", "--ckpt", a, "--batches", "2").stdout
    assert "perplexity" in out
    gen = run("generate", "--ckpt", a, "--prompt", "The", "-n", "12", "--temperature", "1", "--seed", "1").stdout
    assert gen.startswith("The") and len(gen.strip()) > len("The"), repr(gen)


@pytest.mark.parametrize("override,mention", [
    ("model.residual=\"attn\"", "residual must be"),
    ("model.attnres_block_size=0", "attnres_block_size must be positive"),
    ("model.attnres_block_size=2049", "attnres_block_size = 2049 is absurdly large"),
    ("model.norm_placement=\"post\"", "needs norm_placement \"pre\""),
])
def test_bad_attnres_config_is_refused(base, tmp_path, override, mention):
    p = run("train", *base, "--set", "model.residual=attnres_block", "--set", override,
            "--set", f"train.out_dir={tmp_path / 'r'}", check=False)
    assert p.returncode == 1 and mention in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()
