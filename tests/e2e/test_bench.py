"""`strata bench train` end to end, on a one-token-batch bench model so each run takes seconds: the
report on stdout and in --markdown-out/--json-out, --profile, --repo, --peer-python (missing,
failing, garbled, and a real PyTorch peer), and output paths that cannot be written."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from clihelp import ROOT, run

QUICK = ["bench", "train", "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "0", "--threads", "1"]


def bench(*flags, check=True):
    return run(*QUICK, *flags, check=check, timeout=300)


def refused(*flags, mention):
    p = bench(*flags, check=False)
    err = p.stderr + p.stdout
    assert p.returncode == 1, err
    assert "strata: error:" in err and mention in err, err
    assert "sgemm peak" not in err, "the bad path was found only after measuring"
    return err


def test_report_goes_to_stdout_and_both_output_files(tmp_path):
    md, js = tmp_path / "new" / "r.md", tmp_path / "other" / "deeper" / "r.json"  # folders are created
    p = bench("--no-peer", "--markdown-out", md, "--json-out", js)
    assert md.read_text() == p.stdout
    assert p.stdout.startswith("# strata bench train")
    assert "| peer | not run: skipped (--no-peer) |" in p.stdout
    assert "## Profile" not in p.stdout
    j = json.loads(js.read_text())
    assert j["suite"] == "train" and j["batch"] == 1 and j["seq"] == 8 and j["threads"] == 1
    assert j["peer"] == {"skipped": "skipped (--no-peer)"}
    assert "profile_ms_per_step" not in j and "strata_over_peer_tokens_per_s" not in j
    assert j["strata"]["steps"] == 1 and j["strata"]["tokens_per_s"] > 0
    assert 0 < j["strata_over_sgemm_peak"] and j["sgemm"]["peak_gflops"] > 0
    assert j["model"]["d_model"] == 384 and j["model"]["n_layers"] == 8  # the bench model
    assert [f.name for f in tmp_path.rglob("*.tmp.*")] == []


@pytest.mark.parametrize("model,own,calls", [
    ([], "attention backward", 8),  # one per layer
    (["--residual", "attnres_block", "--attnres-block-size", "3"], "AttnRes backward", 17),  # 16 sublayers, output
    (["--attention", "moda"], "MoDA backward (moda_backward)", 8),
])
def test_profile_adds_the_op_family_table(tmp_path, model, own, calls):
    js = tmp_path / "r.json"
    p = bench("--no-peer", "--profile", *model, "--json-out", js)
    assert "## Profile: the training step by op family (the model's own op calls" in p.stdout
    assert "| un-profiled remainder (step − sum) |" in p.stdout and f"| {own} |" in p.stdout
    j = json.loads(js.read_text())
    prof = j["profile_ms_per_step"]
    assert {"GEMM forward (matmul_forward)", "attention backward", "RMSNorm fwd+bwd"} <= set(prof)
    assert all(v >= 0 for v in prof.values()) and prof["GEMM forward (matmul_forward)"] > 0 and prof[own] > 0
    detail = j["profile"]
    assert detail["steps"] == 3 and 0 < detail["families_ms"] <= detail["step_ms"]
    assert detail["remainder_ms"] == pytest.approx(detail["step_ms"] - detail["families_ms"])
    assert detail["families"][own]["calls_per_step"] == calls
    assert detail["families"]["GEMM forward (matmul_forward)"]["gflops"] > 0
    assert detail["families"]["SwiGLU fwd+bwd"]["gflops"] is None  # not in the FLOP model


@pytest.mark.parametrize("flag", ["--json-out", "--markdown-out"])
def test_output_paths_that_cannot_be_written_fail_before_measuring(tmp_path, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refused("--no-peer", flag, blocker / "r.out", mention=flag)  # a parent that is a file
    refused("--no-peer", flag, tmp_path, mention=flag)  # a directory
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root can write anywhere
            refused("--no-peer", flag, ro / "r.out", mention=flag)
    finally:
        ro.chmod(0o700)


def test_a_failed_run_keeps_the_previous_report(tmp_path):
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    md.write_text("old report\n")
    js.write_text('{"old": true}\n')
    # Valid paths, then a batch too large for memory: the run fails after opening both outputs.
    p = run("bench", "train", "--no-peer", "--batch", "100000", "--seq", "256", "--markdown-out", md,
            "--json-out", js, check=False, timeout=60)
    assert p.returncode == 1 and "GiB" in p.stderr, p.stderr
    assert md.read_text() == "old report\n" and js.read_text() == '{"old": true}\n'
    assert sorted(f.name for f in tmp_path.iterdir()) == ["r.json", "r.md"]


def test_repo_flag(tmp_path):
    refused("--no-peer", "--repo", tmp_path, mention="--repo")  # no bench/ folder there
    js = tmp_path / "r.json"
    bench("--no-peer", "--repo", ROOT, "--json-out", js)
    commit = json.loads(js.read_text())["commit"]
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True) \
        if shutil.which("git") else None
    if git is not None and git.returncode == 0:
        assert commit.startswith(git.stdout.strip()), commit
    else:
        assert commit == "unknown"


def fake_python(tmp_path, body):
    exe = tmp_path / "python"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize("kind,note", [
    ("missing", "not found; create it with `bash bench/setup.sh` (or pass --peer-python)"),
    ("fails", "peer exited with status 3"),
    ("garbled", "could not read the peer's JSON line"),
])
def test_a_peer_that_cannot_run_is_skipped_with_a_note(tmp_path, kind, note):
    exe = {"missing": lambda: tmp_path / "no-such-python",
           "fails": lambda: fake_python(tmp_path, "echo boom >&2; exit 3"),
           "garbled": lambda: fake_python(tmp_path, "echo '{\"tokens_per_s\": '")}[kind]()
    js = tmp_path / "r.json"
    p = bench("--peer-python", exe, "--json-out", js)
    assert "| peer | not run: " in p.stdout and note in p.stdout, p.stdout
    assert note in json.loads(js.read_text())["peer"]["skipped"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_the_pytorch_peer_runs_on_the_same_batch(tmp_path):
    js = tmp_path / "r.json"
    p = bench("--peer-python", sys.executable, "--json-out", js)
    j = json.loads(js.read_text())
    assert j["peer"]["tokens_per_s"] > 0 and j["strata_over_peer_tokens_per_s"] > 0, j["peer"]
    assert "**strata ÷ peer tokens/s**" in p.stdout
    # Same bench model and initial scale: both start near ln(vocab) on the same shape of batch.
    assert abs(j["peer"]["loss_first"] - j["strata"]["loss_first"]) < 0.5, (j["peer"], j["strata"])
