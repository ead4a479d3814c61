"""strata diagnose on tiny trained runs: the per-sublayer table, the skip ablation, AttnRes weights,
MoDA's depth and sink mass, the JSON record (identical when run twice), and bad arguments."""
import json
import math

import pytest

from clihelp import TINY_MODEL, run, small_corpus


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("diagnose")
    corpus = small_corpus(d / "corpus.txt")
    base = ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}", *TINY_MODEL,
            "--set", "train.steps=12", "--set", "train.lr=0.01", "--set", "train.threads=1"]
    out = {}
    for name, extra in [("standard", []),
                        ("block", ["--set", "model.residual=attnres_block", "--set", "model.attnres_block_size=3"]),
                        ("moda", ["--set", "model.attention=moda", "--set", "model.moda_depth_visibility=chunk",
                                  "--set", "model.moda_chunk_size=3"])]:
        out[name] = d / name
        run("train", *base, *extra, "--set", f"train.out_dir={out[name]}")
    return out


def diagnose(run_dir, tmp_path, *flags):
    js = tmp_path / "d.json"
    p = run("diagnose", "--ckpt", run_dir, "--batches", "2", "--threads", "1", "--json-out", js, *flags)
    return p.stdout, json.loads(js.read_text())


def test_standard_residual_stream_and_skip_ablation(runs, tmp_path):
    out, j = diagnose(runs["standard"], tmp_path)
    subs = j["sublayers"]
    assert [s["sublayer"] for s in subs] == ["attn 0", "mlp 0", "attn 1", "mlp 1"]
    for s in subs:
        assert s["sublayer"] in out
    # the residual stream after sublayer j is the input of sublayer j+1, and the final norm's input
    for a, b in zip(subs, subs[1:]):
        assert b["input_rms"] == pytest.approx(a["state_rms"], rel=1e-9)
    assert j["final_input_rms"] == pytest.approx(subs[-1]["state_rms"], rel=1e-9)
    assert all(math.isfinite(s["skip_delta_loss"]) and s["skip_loss"] > 0 for s in subs)
    assert all(s["grad_norm"] > 0 and math.isfinite(s["grad_norm"]) for s in subs)
    assert any(abs(s["skip_delta_loss"]) > 1e-4 for s in subs)
    assert "alpha" not in j and "AttnRes mean weights" not in out


def test_attnres_weights_and_determinism(runs, tmp_path):
    out, j = diagnose(runs["block"], tmp_path)
    assert j["alpha_columns"] == ["emb", "block 0", "block 1", "partial"]
    rows = {r["mix"]: r["weights"] for r in j["alpha"]}
    assert list(rows) == ["attn 0", "mlp 0", "attn 1", "mlp 1", "output"]
    for name, w in rows.items():
        assert sum(w) == pytest.approx(1.0, abs=1e-6), name
    assert rows["attn 0"] == [1.0, 0.0, 0.0, 0.0]  # the first sublayer sees only the embedding
    assert rows["attn 1"][1] == 0 and rows["attn 1"][3] > 0  # block 0 (sublayers 0-2) is not done yet
    assert rows["mlp 1"][1] > 0 and rows["mlp 1"][3] == 0  # sublayer 3 starts block 1: no partial yet
    assert rows["output"][2] > 0  # the short last block
    assert "AttnRes mean weights" in out
    _, again = diagnose(runs["block"], tmp_path)
    assert again == j


def test_no_skip_and_bad_arguments(runs, tmp_path):
    _, j = diagnose(runs["standard"], tmp_path, "--no-skip")
    assert all("skip_loss" not in s for s in j["sublayers"])
    p = run("diagnose", "--ckpt", runs["standard"], "--json-out", tmp_path, check=False)
    assert p.returncode == 1 and "--json-out" in p.stderr, p.stderr
    p = run("diagnose", "--ckpt", tmp_path / "nothing", check=False)
    assert p.returncode == 1 and "nothing" in p.stderr, p.stderr
    p = run("diagnose", "--ckpt", runs["standard"], "--batches", "-1", check=False)
    assert p.returncode != 0 and "--batches" in p.stderr, p.stderr


def test_moda_depth_and_sink_mass(runs, tmp_path):
    out, j = diagnose(runs["moda"], tmp_path, "--no-skip")
    assert j["attention"] == {"kind": "moda", "moda_depth_source": "attn_ffn_kv", "moda_sequence_mask": "causal",
                              "moda_depth_visibility": "chunk", "moda_chunk_size": 3, "moda_depth_window": 0}
    assert "attention moda (depth attn_ffn_kv, mask causal, visibility chunk of 3 tokens, window all)" in out
    assert "MoDA softmax mass" in out
    layers = j["moda"]
    assert [r["layer"] for r in layers] == [0, 1] and [r["depth_slots"] for r in layers] == [0, 2]
    assert layers[0]["depth_mass"] == [0.0] * 4  # layer 0 has no depth slots
    for r in layers:
        for dm, seq, sink in zip(r["depth_mass"], r["sequence_mass"], r["sink_mass"]):
            assert 0 <= dm <= 1 and seq == pytest.approx(1 - dm) and 0 < sink <= seq + 1e-12
    assert all(0 < dm < 1 for dm in layers[1]["depth_mass"])
    assert "moda" not in diagnose(runs["standard"], tmp_path, "--no-skip")[1]
