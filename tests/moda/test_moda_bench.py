"""`strata bench train --attention moda`: the bench model with MoDA, and the PyTorch peer built the
same way (same parameter count, same starting loss scale)."""
import importlib.util
import json
import sys

import pytest

from clihelp import run

QUICK = ["bench", "train", "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "0", "--threads", "1",
         "--gemm-seconds", "0.005"]


def test_the_flop_model_counts_the_ffn_kv_projections_and_the_depth_scores(tmp_path):
    js = tmp_path / "r.json"
    p = run(*QUICK, "--no-peer", "--attention", "moda", "--json-out", js, timeout=300)
    f = json.loads(js.read_text())["flops_per_step"]
    assert f["matmul_params"] == 14155776 + 7 * 2 * 128 * 384  # the FFN K/V of 7 layers count as matmuls
    assert f["moda_slots"] == 2 * (0 + 1 + 2 + 3 + 4 + 5 + 6 + 7)  # layer l reads 2·l depth slots
    assert f["moda_depth"] == 12 * 8 * 6 * 64 * f["moda_slots"]  # N = 8 tokens, H = 6, d = 64
    assert f["total"] == pytest.approx(f["matmul"] + f["attention"] + f["moda_depth"])
    assert "| MoDA depth scores" in p.stdout


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_the_peer_builds_the_same_moda_model(tmp_path):
    js = tmp_path / "r.json"
    p = run(*QUICK, "--peer-python", sys.executable, "--attention", "moda", "--json-out", js, timeout=300)
    j = json.loads(js.read_text())
    assert j["model"]["attention"] == "moda" and "attention moda" in p.stdout
    # 7 of the 8 layers project their FFN input to K and V: 7 · 2 · (2·64) · 384 more parameters
    assert j["strata"]["params"] == 14162304 + 7 * 2 * 128 * 384
    assert j["peer"]["attention_kind"] == "moda" and j["peer"]["params"] == j["strata"]["params"]
    assert abs(j["peer"]["loss_first"] - j["strata"]["loss_first"]) < 0.5


@pytest.mark.parametrize("flags,mention", [
    (["--attention", "flash"], "--attention must be \"causal\" or \"moda\", not \"flash\""),
])
def test_bad_attention_flags(flags, mention):
    p = run(*QUICK, "--no-peer", *flags, check=False, timeout=60)
    assert p.returncode == 1 and mention in p.stderr and "sgemm peak" not in p.stderr, p.stderr


def test_bench_moda_reports_every_point_against_its_ideal(tmp_path):
    """`strata bench moda`: each (T, G, L) point's timings, the attention's rate, and the extra time
    over the ideal that the counted FLOPs and bytes give; bad lists are refused."""
    js, md = tmp_path / "m.json", tmp_path / "m.md"
    run("bench", "moda", "--seq", "65,130", "--groups", "1,4", "--slots", "3", "--kv-heads", "1", "--head-dim", "16",
        "--reps", "2", "--threads", "1", "--json-out", js, "--markdown-out", md, timeout=300)
    j = json.loads(js.read_text())
    assert j["suite"] == "moda" and len(j["points"]) == 4
    for p in j["points"]:
        T, G, L = p["T"], p["G"], p["L"]
        assert p["depth_flops"] == 12 * T * G * L * 16 and p["depth_bytes"] == 8 * T * L * 16 * 4
        assert p["attention_flops"] == 6 * G * T * T * 16
        for key in ("t_attention_s", "t_moda_s", "over_ideal", "attention_gflops"):
            assert len(p[key]["samples"]) == 2, key
        assert all(t > 0 for t in p["t_moda_s"]["samples"])
    assert "| 130 | 4 | 3 |" in md.read_text()
    p = run("bench", "moda", "--slots", "0", check=False)
    assert p.returncode == 1 and "--slots values must be in [1, 1024]" in p.stderr, p.stderr


def test_bench_moda_stages_compute_the_same_attention(tmp_path):
    """`--stages`: the paper's Table 7 stages (naive, flattened, chunk-aware, group-aware) and strata's op
    all give the same output and the same gradients, and each is timed forward and forward plus backward."""
    js = tmp_path / "s.json"
    run("bench", "moda", "--stages", "--seq", "70", "--groups", "4", "--slots", "3", "--kv-heads", "1",
        "--head-dim", "16", "--reps", "2", "--threads", "1", "--json-out", js, timeout=300)
    j = json.loads(js.read_text())
    assert j["suite"] == "moda-stages" and (j["T"], j["G"], j["L"]) == (70, 4, 3)
    assert [s["stage"] for s in j["stages"]][:4] == ["naive masked concatenation", "flash-compatible (flattened) layout",
                                                    "chunk-aware", "group-aware"]
    for s in j["stages"]:
        assert s["rel_l2_vs_moda_forward"] < 1e-5, s["stage"]
        assert s["grad_rel_l2_vs_moda_backward"] < 1e-5, s["stage"]
        for key in ("forward_seconds", "forward_backward_seconds"):
            assert len(s[key]["samples"]) == 2 and s[key]["median"] > 0, (s["stage"], key)
