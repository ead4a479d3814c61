"""Every residual rule, and MoDA with several of them, through the CLI: one table. Each row trains,
checkpoints the rule's own tensors, resumes bit for bit, evaluates, generates and diagnoses; bad
configs are refused naming the key. (The ops are in the op table and every model against the PyTorch
reference in parity/test_model_parity.py; docs/residual.md, docs/attn_res.md and docs/moda.md say
what each rule and mode is.)"""
import json

import pytest

from clihelp import ckpt_content, feature_args, losses, run, tensor_names

L3 = ["--set", "model.n_layers=3"]
MODA = ["--set", "model.attention=moda", *L3]


def rule(name, *more):
    return ["--set", f"model.residual={name}", *more]


# name: (train overrides, tensors the checkpoint must hold, tensors it must not)
ROWS = {
    "standard": ([], set(), {"model.blocks.0.attn_alpha", "model.out_res_query"}),
    "attnres_full": (rule("attnres_full"),
                     {"model.blocks.0.attn_res_query", "model.blocks.0.mlp_res_norm", "model.out_res_query",
                      "model.out_res_norm"}, set()),
    "attnres_block": (rule("attnres_block", "--set", "model.attnres_block_size=3", *L3),
                      {"model.blocks.2.mlp_res_query", "model.out_res_norm"}, set()),
    "attnres_full-sigmoid": (rule("attnres_full", "--set", "model.attnres_gate=sigmoid"),
                             {"model.blocks.0.attn_res_norm"}, set()),
    "attnres_block-keynorm-none": (rule("attnres_block", "--set", "model.attnres_key_norm=none", *L3),
                                   {"model.blocks.0.attn_res_query"}, {"model.blocks.0.attn_res_norm",
                                                                       "model.out_res_norm"}),
    "attnres_block-input-query": (rule("attnres_block", "--set", "model.attnres_query=input", *L3),
                                  {"model.blocks.0.attn_res_wq", "model.out_res_query"}, {"model.blocks.0.attn_res_query"}),
    "rezero": (rule("rezero"), {"model.blocks.0.attn_alpha", "model.blocks.1.mlp_alpha"}, {"model.out_res_query"}),
    "layernorm_scaling": (rule("layernorm_scaling"), set(), {"model.blocks.0.attn_alpha"}),
    "denseformer": (rule("denseformer"), {"model.blocks.0.dwa", "model.blocks.1.dwa"}, {"model.blocks.0.attn_alpha"}),
    "moda": (MODA, {"model.blocks.0.w_ffn_k", "model.blocks.1.w_ffn_v"}, {"model.blocks.2.w_ffn_k"}),
    "moda-attnkv-only": ([*MODA, "--set", "model.moda_depth_source=attn_kv", "--set", "model.qk_norm=true"], set(),
                         {"model.blocks.0.w_ffn_k"}),
    # chunk visibility (generation keeps the chunk's depth slots in its cache) with a window of 2 slots
    "moda-chunk-window": ([*MODA, "--set", "model.moda_depth_visibility=chunk", "--set", "model.moda_chunk_size=4",
                           "--set", "model.moda_depth_window=2"], {"model.blocks.0.w_ffn_k"}, set()),
    "moda+attnres_block": ([*MODA, *rule("attnres_block", "--set", "model.attnres_block_size=2")],
                           {"model.blocks.0.w_ffn_k", "model.blocks.0.attn_res_query"}, set()),
    "moda+rezero": ([*MODA, *rule("rezero")], {"model.blocks.0.w_ffn_k", "model.blocks.2.mlp_alpha"}, set()),
    "moda+denseformer": ([*MODA, *rule("denseformer")], {"model.blocks.1.w_ffn_k", "model.blocks.2.dwa"}, set()),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return feature_args(tmp_path_factory.mktemp("rules"))


@pytest.mark.parametrize("row", ROWS)
def test_trains_resumes_evaluates_generates_and_diagnoses(base, tmp_path, row):
    overrides, present, absent = ROWS[row]
    args = [*base, *overrides]
    a, b = tmp_path / "a", tmp_path / "b"
    p = run("train", *args, "--set", "train.steps=16", "--set", f"train.out_dir={a}")
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("model.residual=")]
    assert f"residual {named[0] if named else 'standard'}" in p.stderr, p.stderr
    curve = losses(a)
    assert len(curve) == 16 and min(curve[-3:]) < curve[0] - 0.3, curve  # it learns
    names = tensor_names(a)
    assert present <= names and not (absent & names), sorted(names)

    # Stopped after 8 steps and resumed: the same curve and the same checkpoint, bit for bit.
    run("train", *args, "--set", "train.steps=8", "--set", "train.lr_decay_steps=16", "--set", f"train.out_dir={b}")
    run("train", *args, "--set", "train.steps=16", "--set", f"train.out_dir={b}")
    assert losses(b) == curve
    assert ckpt_content(b) == ckpt_content(a)

    assert "perplexity" in run("eval", "--ckpt", a, "--batches", "2").stdout
    gen = run("generate", "--ckpt", a, "--prompt", "The", "-n", "12", "--temperature", "1", "--seed", "1").stdout
    assert gen.startswith("The") and len(gen.strip()) > len("The"), repr(gen)
    js = tmp_path / "d.json"
    run("diagnose", "--ckpt", a, "--batches", "1", "--json-out", js)
    d = json.loads(js.read_text())
    n_layers = 3 if "model.n_layers=3" in overrides else 2
    assert len(d["sublayers"]) == 2 * n_layers
    assert ("alpha" in d) == any(o.startswith("model.residual=attnres") for o in overrides)


def test_a_checkpoint_of_another_rule_is_refused(base, tmp_path):
    run("train", *base, *rule("rezero"), "--set", "train.steps=2", "--set", f"train.out_dir={tmp_path / 'r'}")
    before = (tmp_path / "r" / "checkpoint.safetensors").read_bytes()
    p = run("train", *base, *rule("denseformer"), "--set", "train.steps=4", "--set", f"train.out_dir={tmp_path / 'r'}",
            check=False)
    assert p.returncode == 1 and "model.residual \"rezero\" → \"denseformer\"" in p.stderr, p.stderr
    assert (tmp_path / "r" / "checkpoint.safetensors").read_bytes() == before


def test_a_checkpoint_with_other_moda_keys_is_refused(base, tmp_path):
    chunk = [*MODA, "--set", "model.moda_depth_visibility=chunk", "--set", "model.moda_chunk_size=4"]
    run("train", *base, *chunk, "--set", "train.steps=2", "--set", f"train.out_dir={tmp_path / 'r'}")
    before = (tmp_path / "r" / "checkpoint.safetensors").read_bytes()
    for change, mention in ((["--set", "model.moda_chunk_size=8"], "model.moda_chunk_size 4 → 8"),
                            (["--set", "model.moda_depth_window=2"], "model.moda_depth_window 0 → 2")):
        p = run("train", *base, *chunk, *change, "--set", "train.steps=4", "--set", f"train.out_dir={tmp_path / 'r'}",
                check=False)
        assert p.returncode == 1 and mention in p.stderr, p.stderr
        assert (tmp_path / "r" / "checkpoint.safetensors").read_bytes() == before


def test_the_old_moda_ffn_kv_key_is_read_with_a_note(base, tmp_path):
    p = run("train", *base, *MODA, "--set", "model.moda_ffn_kv=false", "--set", "train.steps=2",
            "--set", f"train.out_dir={tmp_path / 'r'}")
    assert "moda_ffn_kv is read as moda_depth_source = \"attn_kv\"" in p.stderr, p.stderr
    assert "model.blocks.0.w_ffn_k" not in tensor_names(tmp_path / "r")


@pytest.mark.parametrize("overrides,mention", [
    (rule("attn"), "residual must be \"standard\", \"attnres_full\", \"attnres_block\", \"rezero\", "
                   "\"layernorm_scaling\" or \"denseformer\", not \"attn\""),
    (rule("attnres_block", "--set", "model.attnres_block_size=0"), "attnres_block_size must be positive"),
    (rule("attnres_block", "--set", "model.attnres_block_size=2049"), "attnres_block_size = 2049 is absurdly large"),
    (rule("attnres_full", "--set", "model.norm_placement=post"), "residual \"attnres_full\" needs norm_placement \"pre\""),
    (rule("rezero", "--set", "model.norm_placement=post"), "residual \"rezero\" needs norm_placement \"pre\", not \"post\""),
    (rule("denseformer", "--set", "model.norm_placement=reordered"), "residual \"denseformer\" needs norm_placement"),
    (rule("layernorm_scaling", "--set", "model.norm_placement=post"), "residual \"layernorm_scaling\" needs"),
    (rule("rezero", "--set", "model.attnres_gate=sigmoid"), "attnres_gate \"sigmoid\" is an AttnRes ablation; "
                                                          "residual \"rezero\" has no depth softmax"),
    (["--set", "model.attnres_key_norm=none"], "attnres_key_norm \"none\" is an AttnRes ablation"),
    (rule("denseformer", "--set", "model.attnres_query=input"), "attnres_query \"input\" is an AttnRes ablation"),
    (rule("attnres_block", "--set", "model.attnres_query=dynamic"), "attnres_query must be \"static\" or \"input\""),
    (rule("attnres_full", "--set", "model.attnres_gate=tanh"), "attnres_gate must be \"softmax\" or \"sigmoid\", "
                                                             "not \"tanh\""),
    (["--set", "model.attention=\"flash\""], "attention must be \"causal\" or \"moda\""),
    (["--set", "model.attention=moda", "--set", "model.moda_ffn_kv=1"], "\"moda_ffn_kv\" must be a boolean"),
    ([*MODA, "--set", "model.moda_depth_source=ffn"], "moda_depth_source must be \"attn_kv\" or \"attn_ffn_kv\""),
    ([*MODA, "--set", "model.moda_depth_visibility=all"], "moda_depth_visibility must be \"own\" or \"chunk\""),
    ([*MODA, "--set", "model.moda_sequence_mask=full"], "moda_sequence_mask must be \"causal\", \"noncausal\" or"),
    ([*MODA, "--set", "model.moda_depth_visibility=chunk", "--set", "model.moda_chunk_size=0"],
     "moda_chunk_size must be a positive number of tokens, not 0"),
    ([*MODA, "--set", "model.moda_chunk_size=4"], "moda_chunk_size is used only with moda_depth_visibility"),
    ([*MODA, "--set", "model.moda_depth_window=-1"], "moda_depth_window must be 0 (every slot) or a positive"),
    ([*MODA, "--set", "model.moda_depth_window=5"], "moda_depth_window = 5 exceeds the model's depth slot count 4"),
    (["--set", "model.moda_depth_visibility=chunk"], "moda_depth_visibility = \"chunk\" needs attention = \"moda\""),
    (["--set", "model.moda_depth_window=2"], "moda_depth_window needs attention = \"moda\""),
    ([*MODA, "--set", "model.moda_sequence_mask=noncausal"], "cannot train a language model"),
    ([*MODA, "--set", "model.moda_ffn_kv=false", "--set", "model.moda_depth_source=attn_ffn_kv"],
     "moda_ffn_kv = false contradicts moda_depth_source"),
])
def test_a_bad_config_is_refused(base, tmp_path, overrides, mention):
    p = run("train", *base, *overrides, "--set", f"train.out_dir={tmp_path / 'r'}", check=False)
    assert p.returncode == 1 and mention in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()
