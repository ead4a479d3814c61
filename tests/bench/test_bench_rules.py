"""The residual-rule benchmarks run: `bench attnres` (the AttnRes op against memcpy), `bench generate
--residual`, and bench/rules_bench.py's training-step and decode overheads, each at a tiny size."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from clihelp import BIN, ROOT, run  # noqa: E402

REPO = ROOT


def test_bench_attnres_counts_the_bytes_it_reports(tmp_path):
    js = tmp_path / "a.json"
    p = run("bench", "attnres", "--rows", "64", "--sources", "3", "--d-model", "40", "--reps", "2", "--threads", "1",
            "--json-out", js, timeout=300)
    j = json.loads(js.read_text())
    n, N, D = 3, 64, 40
    assert j["rows"] == N and j["source_bytes"] == n * N * D * 4
    assert j["forward_bytes"] == (n + 1) * N * D * 4 + (2 * n * N + N) * 4
    assert j["backward_bytes"] == (3 * n + 2) * N * D * 4 + (2 * n * N + N) * 4
    assert j["copy_bytes"] >= 4 * j["llc_bytes"] > 0
    assert len(j["forward_over_copy"]["samples"]) == 2 and j["forward_gbs"]["median"] > 0
    assert "Forward ÷ copy bandwidth" in p.stdout


def test_bench_attnres_refuses_bad_sizes():
    p = run("bench", "attnres", "--sources", "0", check=False)
    assert p.returncode != 0 and "--sources" in p.stderr


def test_bench_generate_times_the_rule_it_is_given(tmp_path):
    js = tmp_path / "g.json"
    run("bench", "generate", "--residual", "denseformer", "--precision", "fp32", "--reps", "1", "--new-tokens", "4",
        "--prompt-tokens", "4", "--json-out", js, timeout=300)
    j = json.loads(js.read_text())
    assert j["model"]["residual"] == "denseformer" and j["configs"][0]["status"] == "measured"
    p = run("bench", "generate", "--ckpt", tmp_path, "--residual", "rezero", check=False)
    assert p.returncode != 0 and "a --ckpt brings its own" in p.stderr


def test_bench_train_refuses_a_peer_for_a_rule_the_peer_does_not_build():
    p = run("bench", "train", "--residual", "rezero", "--batch", "1", "--seq", "8", "--steps", "1", check=False,
            timeout=120)
    assert p.returncode == 1 and "--no-peer" in p.stderr and "sgemm peak" not in p.stderr, p.stderr


def test_rules_bench_script_reports_every_rule(tmp_path):
    js = tmp_path / "r.json"
    cmd = [sys.executable, str(REPO / "bench" / "rules_bench.py"), "--binary", BIN, "--rules", "standard,moda",
           "--precision", "fp32", "--reps", "2", "--steps", "1", "--warmup", "0", "--batch", "1", "--seq", "8",
           "--decode-reps", "1", "--json-out", str(js)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert p.returncode == 0, p.stderr[-2000:]
    j = json.loads(js.read_text())
    assert set(j["train"]) == {"standard/fp32", "moda/fp32"}
    # the FLOP model's extra over standard: MoDA's FFN K/V projections and depth scores
    assert j["train"]["standard/fp32"]["flop_model_extra"] == 0 < j["train"]["moda/fp32"]["flop_model_extra"]
    assert j["train"]["standard/fp32"]["overhead"] == 0 and len(j["train"]["moda/fp32"]["step_ms"]) == 2
    assert len(j["train"]["moda/fp32"]["decode_tokens_per_s"]) == 2
    assert "| moda | fp32 |" in p.stdout
