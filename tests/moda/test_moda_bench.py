"""`strata bench train --attention moda`: the bench model with MoDA, and the PyTorch peer built the
same way (same parameter count, same starting loss scale)."""
import importlib.util
import json
import sys

import pytest

from clihelp import run

QUICK = ["bench", "train", "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "0", "--threads", "1"]


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
    (["--attention", "flash"], "--attention must be causal or moda"),
    (["--attention", "moda", "--profile"], "--profile replays the standard residual's and causal attention's"),
])
def test_bad_attention_flags(flags, mention):
    p = run(*QUICK, "--no-peer", *flags, check=False, timeout=60)
    assert p.returncode == 1 and mention in p.stderr and "sgemm peak" not in p.stderr, p.stderr
