"""`strata bench train --residual`: the bench model with AttnRes, and the PyTorch peer built the same
way (same parameter count, same starting loss scale)."""
import importlib.util
import json
import sys

import pytest

from clihelp import run

QUICK = ["bench", "train", "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "0", "--threads", "1",
         "--gemm-seconds", "0.005"]


@pytest.mark.parametrize("residual", ["attnres_full", "attnres_block"])
def test_bench_reports_the_residual(tmp_path, residual):
    js = tmp_path / "r.json"
    p = run(*QUICK, "--no-peer", "--residual", residual, "--attnres-block-size", "3", "--json-out", js, timeout=300)
    j = json.loads(js.read_text())
    assert j["model"]["residual"] == residual and j["model"]["attnres_block_size"] == 3
    assert f"residual {residual}" in p.stdout
    # 8 layers: a query and a key-norm weight per sublayer and for the output, 34 vectors of 384
    assert j["strata"]["params"] == 14162304 + 34 * 384
    # The FLOP model counts the depth mixes: 17 ops over 1 + (completed blocks) + (partial) sources
    sources = 68 if residual == "attnres_block" else 153  # block size 3; attnres_full: 1 + 2 + ... + 17
    assert j["flops_per_step"]["attnres_sources"] == sources
    assert j["flops_per_step"]["attnres_mix"] == 12 * 8 * 384 * sources
    assert "| AttnRes depth mixes" in p.stdout


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_the_peer_builds_the_same_attnres_model(tmp_path):
    js = tmp_path / "r.json"
    run(*QUICK, "--peer-python", sys.executable, "--residual", "attnres_block", "--json-out", js, timeout=300)
    j = json.loads(js.read_text())
    assert j["peer"]["residual"] == "attnres_block (block size 4)"
    assert j["peer"]["params"] == j["strata"]["params"]
    assert abs(j["peer"]["loss_first"] - j["strata"]["loss_first"]) < 0.5


@pytest.mark.parametrize("flags,mention", [
    (["--residual", "bogus"], "--residual must be"),
    (["--residual", "attnres_block", "--attnres-block-size", "0"], "attnres_block_size must be positive"),
])
def test_bad_residual_flags(flags, mention):
    p = run(*QUICK, "--no-peer", *flags, check=False, timeout=60)
    assert p.returncode == 1 and mention in p.stderr and "sgemm peak" not in p.stderr, p.stderr
