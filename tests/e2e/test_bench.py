"""`strata bench train` end to end, on a one-token-batch bench model so each run takes seconds: the
report on stdout and in --markdown-out/--json-out, the interleaved repetitions of every configuration,
the ratios and their intervals, configurations that fail (a missing, failing or garbled peer, a peer
that dies mid-run, strata bf16 before it exists), --profile, --repo, the flag checks, and output paths
that cannot be written. Performance is never asserted: only the shape of what is reported."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from clihelp import ROOT, run

QUICK = ["bench", "train", "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "0", "--threads", "1",
         "--gemm-seconds", "0.005"]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def bench(*flags, check=True):
    reps = [] if "--reps" in flags else ["--reps", "2"]
    return run(*QUICK, *reps, *flags, check=check, timeout=300)


def refused(*flags, mention, code=1):
    p = bench(*flags, check=False)
    err = p.stderr + p.stdout
    assert p.returncode == code, err
    assert "strata: error:" in err and mention in err, err
    assert "sgemm peak" not in err, "the bad value was found only after measuring"
    return err


def configs(j):
    return {c["id"]: c for c in j["configs"]}


def test_report_goes_to_stdout_and_both_output_files(tmp_path):
    md, js = tmp_path / "new" / "r.md", tmp_path / "other" / "deeper" / "r.json"  # folders are created
    p = bench("--no-peer", "--markdown-out", md, "--json-out", js)
    assert md.read_text() == p.stdout
    assert p.stdout.startswith("# strata bench train")
    assert "| peer | not run: skipped (--no-peer) |" in p.stdout
    assert "## Configurations" in p.stdout and "## Targets" in p.stdout
    assert "## Profile" not in p.stdout
    j = json.loads(js.read_text())
    assert j["suite"] == "train" and j["batch"] == 1 and j["seq"] == 8 and j["threads"] == 1
    assert j["peer"] == {"skipped": "skipped (--no-peer)"}
    assert "profiles" not in j and "strata_over_peer_tokens_per_s" not in j
    assert j["strata"]["steps"] == 1 and j["strata"]["reps"] == 2 and j["strata"]["tokens_per_s"] > 0
    assert 0 < j["strata_over_sgemm_peak"] and j["sgemm"]["peak_gflops"] > 0
    assert j["model"]["d_model"] == 384 and j["model"]["n_layers"] == 8  # the bench model
    assert j["protocol"]["reps"] == 2 and j["protocol"]["steps_per_rep"] == 1 and j["protocol"]["peers"] == []
    assert j["protocol"]["bootstrap"]["resamples"] == 2000 and j["protocol"]["bootstrap"]["level"] == 0.95
    assert [c["kind"] for c in j["configs"]] == ["strata", "strata"]  # the default --precision fp32,bf16
    assert j["ratios"] == []
    # Without a peer no target against PyTorch can be met; they name what is missing. The share of the
    # GEMM peak needs no peer: it is evaluated for every measured precision.
    vs_torch = [t for t in j["targets"] if "PyTorch" in t["what"]]
    assert vs_torch and all(not t["met"] and t.get("reason") for t in vs_torch), j["targets"]
    peak = [t for t in j["targets"] if "GEMM peak" in t["what"]]
    assert [t["what"].split()[1] for t in peak] == ["fp32", "bf16"], peak
    assert all(t.get("value", 0) > 0 for t in peak), peak
    assert j["gemm_peaks"]["fp32_gflops"] > 0 and j["gemm_peaks"]["bf16_gflops"] > 0
    # Where the CPU multiplies bf16 natively both bf16 paths exist: the one not taken is measured too,
    # for comparison, and kept out of the peak.
    cpu = open("/proc/cpuinfo").read().split()
    other = j["gemm_peaks"].get("bf16_other")
    assert (other is not None) == ("avx512_bf16" in cpu or "amx_bf16" in cpu), j["gemm_peaks"]
    if other:
        assert other["backend"] != j["gemm_peaks"]["bf16_backend"]
        assert [s["shape"] for s in other["shapes"]] == [s["shape"] for s in j["gemm_peaks"]["bf16"]]
        assert "the path strata does not take on this CPU" in p.stdout
    assert [f.name for f in tmp_path.rglob("*.tmp.*")] == []


def test_strata_bf16_is_recorded_as_failed_with_its_message_or_measured(tmp_path):
    js = tmp_path / "r.json"
    p = bench("--no-peer", "--precision", "bf16,fp32", "--json-out", js)
    j = json.loads(js.read_text())
    assert [c["id"] for c in j["configs"]] == ["strata-bf16", "strata-fp32"]
    bf16, fp32 = configs(j)["strata-bf16"], configs(j)["strata-fp32"]
    assert fp32["status"] == "measured" and len(fp32["reps"]) == 2
    if bf16["status"] == "failed":
        assert "bf16" in bf16["reason"] and bf16["reps"] == [], bf16
        assert "| strata bf16 | — |" in p.stdout and bf16["reason"] in p.stdout
        assert j["schedule"] == ["strata-fp32", "strata-fp32"]
    else:
        assert bf16["status"] == "measured" and len(bf16["reps"]) == 2 and bf16["tokens_per_s"]["median"] > 0
        assert j["schedule"] == ["strata-bf16", "strata-fp32"] * 2
    assert j["strata"]["config"] == "strata-fp32"  # the summary is fp32's


@pytest.mark.parametrize("model,own,calls", [
    ([], "attention backward", 8),  # one per layer
    (["--residual", "attnres_block", "--attnres-block-size", "3"], "AttnRes backward", 17),  # 16 sublayers, output
    (["--attention", "moda"], "MoDA backward (moda_backward)", 8),
])
def test_profile_adds_the_op_family_table(tmp_path, model, own, calls):
    js = tmp_path / "r.json"
    p = bench("--no-peer", "--precision", "fp32", "--profile", *model, "--json-out", js)
    assert "## Profile: the fp32 training step by op family (the model's own op calls" in p.stdout
    assert "| un-profiled remainder (step − sum) |" in p.stdout and f"| {own} |" in p.stdout
    j = json.loads(js.read_text())
    assert set(j["profiles"]) == {"fp32"}
    detail = j["profiles"]["fp32"]
    prof = {k: v["ms_per_step"] for k, v in detail["families"].items()}
    assert {"GEMM forward (matmul_forward)", "attention backward", "RMSNorm fwd+bwd"} <= set(prof)
    assert all(v >= 0 for v in prof.values()) and prof["GEMM forward (matmul_forward)"] > 0 and prof[own] > 0
    assert detail["steps"] == 3 and 0 < detail["families_ms"] <= detail["step_ms"]
    assert detail["remainder_ms"] == pytest.approx(detail["step_ms"] - detail["families_ms"])
    assert detail["families"][own]["calls_per_step"] == calls
    assert detail["families"]["GEMM forward (matmul_forward)"]["gflops"] > 0
    assert detail["families"]["SwiGLU fwd+bwd"]["gflops"] is None  # not in the FLOP model


@pytest.mark.parametrize("flags,mention", [
    (["--peers", "eager,jit"], "--peers must be a comma list of eager, eager-bf16, compile, compile-bf16, not \"jit\""),
    (["--peers", "eager,eager"], "--peers must be a comma list naming each once, got \"eager\" twice"),
    (["--peers", "eager,"], "--peers must be a comma list of eager, eager-bf16, compile, compile-bf16 without empty names, got \"eager,\""),
    (["--precision", "fp16"], "--precision must be a comma list of fp32, bf16, not \"fp16\""),
    (["--precision", ""], "--precision must be a comma list of fp32, bf16 without empty names, got \"\""),
    (["--reps", "0"], "--reps must be ≥ 1, got 0"),
    (["--reps", "two"], "--reps must be a number"),
])
def test_bad_flag_values_are_usage_errors(flags, mention):
    refused("--no-peer", *flags, mention=mention, code=2)


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
    bench("--no-peer", "--precision", "fp32", "--repo", ROOT, "--json-out", js)
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
    ("fails", "exited with status 3"),
    ("garbled", "could not read its JSON line"),
])
def test_a_peer_that_cannot_run_is_recorded_as_failed_and_the_bench_goes_on(tmp_path, kind, note):
    exe = {"missing": lambda: tmp_path / "no-such-python",
           "fails": lambda: fake_python(tmp_path, "echo boom >&2; exit 3"),
           "garbled": lambda: fake_python(tmp_path, "echo '{\"ready\": '")}[kind]()
    js = tmp_path / "r.json"
    p = bench("--precision", "fp32", "--peer-python", exe, "--json-out", js)
    assert "| peer (PyTorch eager fp32) | not run: " in p.stdout and note in p.stdout, p.stdout
    j = json.loads(js.read_text())
    assert note in j["peer"]["skipped"]
    c = configs(j)
    assert c["strata-fp32"]["status"] == "measured" and len(c["strata-fp32"]["reps"]) == 2
    for peer in ("eager", "eager-bf16", "compile", "compile-bf16"):
        assert c["pytorch-" + peer]["status"] == "failed" and note in c["pytorch-" + peer]["reason"]
    assert all(r["status"] == "failed" for r in j["ratios"])
    assert not any(t["met"] for t in j["targets"])
    assert j["schedule"] == ["strata-fp32", "strata-fp32"]


# A stand-in for peer_train.py --serve: `eager` answers every command; `compile` dies after one
# repetition; `eager-bf16` fails at start-up the way a torch without a feature does.
PROTOCOL_PEER = r"""
config="$4"
case "$config" in
  eager-bf16) echo '{"error": "autocast is missing here"}'; exit 1 ;;
esac
echo "{\"ready\": true, \"torch\": \"fake\", \"config\": \"$config\", \"params\": 1}"
n=0
while read cmd; do
  case "$cmd" in
    rep)
      n=$((n + 1))
      if [ "$config" = compile ] && [ $n -ge 2 ]; then echo 'dying' >&2; exit 5; fi
      echo "not json, skipped"
      echo '{"step_s": [0.5], "loss": 1.5}' ;;
    quit)
      echo '{"quit": true, "loss_first": 2.0, "loss_last": 1.5, "rss_before_model_bytes": 1000000, "peak_rss_bytes": 900000000}'
      exit 0 ;;
  esac
done
"""


def test_configurations_that_fail_at_start_or_mid_run_are_recorded_while_the_others_are_measured(tmp_path):
    exe = fake_python(tmp_path, PROTOCOL_PEER)
    js = tmp_path / "r.json"
    p = bench("--precision", "fp32", "--peers", "eager,eager-bf16,compile", "--reps", "3", "--peer-python", exe,
              "--json-out", js)
    j = json.loads(js.read_text())
    c = configs(j)
    assert list(c) == ["strata-fp32", "pytorch-eager", "pytorch-eager-bf16", "pytorch-compile"]
    assert c["pytorch-eager"]["status"] == "measured" and len(c["pytorch-eager"]["reps"]) == 3
    assert c["pytorch-eager"]["tokens_per_s"]["median"] == pytest.approx(16.0)  # 8 tokens per 0.5 s step
    assert c["pytorch-eager"]["rss_delta_bytes"] == 899000000
    assert c["pytorch-eager-bf16"]["status"] == "failed" and "autocast is missing here" in c["pytorch-eager-bf16"]["reason"]
    bad = c["pytorch-compile"]
    assert bad["status"] == "failed" and len(bad["reps"]) == 1, bad
    assert "rep 2" in bad["reason"] and "exited with status 5" in bad["reason"], bad["reason"]
    assert "**failed**: " in p.stdout and "autocast is missing here" in p.stdout
    # Interleaved: round by round, the failed configuration dropping out after its one repetition.
    assert j["schedule"] == ["strata-fp32", "pytorch-eager", "pytorch-compile",
                             "strata-fp32", "pytorch-eager", "strata-fp32", "pytorch-eager"]
    assert [r["position"] for r in c["strata-fp32"]["reps"]] == [0, 3, 5]
    ratios = {r["vs"]: r for r in j["ratios"] if r["strata"] == "strata-fp32"}
    assert ratios["pytorch-eager"]["status"] == "measured" and ratios["pytorch-eager"]["n"] == 3
    assert ratios["pytorch-compile"]["status"] == "failed"
    faster = ratios["faster-fp32"]
    assert faster["picked"] == "pytorch-eager" and not faster["complete"] and "failed" in faster["reason"]
    speed = [t for t in j["targets"] if t["kind"] == "speed"][0]
    assert not speed["met"] and "failed" in speed["reason"]  # a failed peer never counts as beaten


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_the_pytorch_peer_runs_interleaved_on_the_same_batch(tmp_path):
    js = tmp_path / "r.json"
    p = bench("--precision", "fp32", "--peers", "eager,eager-bf16", "--reps", "3", "--peer-python", sys.executable,
              "--json-out", js)
    j = json.loads(js.read_text())
    c = configs(j)
    ids = ["strata-fp32", "pytorch-eager", "pytorch-eager-bf16"]
    assert list(c) == ids and all(c[i]["status"] == "measured" for i in ids), j["configs"]
    assert j["schedule"] == ids * 3
    for i in ids:
        reps = c[i]["reps"]
        assert len(reps) == 3 and all(len(r["step_ms"]) == 1 and r["tokens_per_s"] > 0 for r in reps)
        t = c[i]["tokens_per_s"]
        assert t["ci95"][0] <= t["median"] <= t["ci95"][1] and t["n"] == 3
        assert c[i]["peak_rss_bytes"] > c[i]["rss_delta_bytes"] > 0
    assert "for-loop" in c["pytorch-eager"]["info"]["adamw"] or "foreach" in c["pytorch-eager"]["info"]["adamw"] \
        or "fused" in c["pytorch-eager"]["info"]["adamw"]
    ratios = {r["vs"]: r for r in j["ratios"]}
    for vs in ("pytorch-eager", "pytorch-eager-bf16", "faster-fp32", "fastest"):
        r = ratios[vs]
        assert r["status"] == "measured" and r["n"] == 3 and r["ci95"][0] <= r["median"] <= r["ci95"][1], r
    assert ratios["faster-fp32"]["picked"] == "pytorch-eager" and not ratios["faster-fp32"]["complete"]
    assert j["strata_over_peer_tokens_per_s"] == ratios["pytorch-eager"]["median"]
    assert "## Ratios: strata ÷ PyTorch, tokens/s" in p.stdout and "| strata fp32 | PyTorch eager fp32 |" in p.stdout
    # Same bench model and initial scale: both start near ln(vocab) on the same shape of batch.
    assert j["peer"]["params"] == j["strata"]["params"]
    assert abs(j["peer"]["loss_first"] - j["strata"]["loss_first"]) < 0.5, (j["peer"], j["strata"])


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_torch_compile_without_torch_2_is_recorded_as_failed(tmp_path):
    import torch
    if hasattr(torch, "compile"):
        pytest.skip("this torch has torch.compile (compiling takes minutes; the bench itself covers it)")
    js = tmp_path / "r.json"
    bench("--precision", "fp32", "--peers", "compile,eager", "--reps", "1", "--peer-python", sys.executable,
          "--json-out", js)
    c = configs(json.loads(js.read_text()))
    assert c["pytorch-compile"]["status"] == "failed"
    assert "torch.compile needs torch >= 2.0" in c["pytorch-compile"]["reason"]
    assert c["pytorch-eager"]["status"] == "measured"
