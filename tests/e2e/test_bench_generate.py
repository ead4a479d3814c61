"""`strata bench generate` end to end, on a few tokens and repetitions so each run takes seconds: the
JSON and Markdown reports and their fields, the determinism check, bf16 as measured or failed with
its message, a trained checkpoint, and the flags it refuses. Timings are never asserted."""
import json

import pytest

from clihelp import run, tiny_run  # noqa: F401  (tiny_run is a fixture)

QUICK = {"--reps": "2", "--new-tokens": "4", "--prompt-tokens": "3", "--threads": "1"}


def gen(*flags, check=True):
    """bench generate with the flags given and QUICK's values for the ones not given."""
    defaults = [x for k, v in QUICK.items() if k not in flags for x in (k, v)]
    return run("bench", "generate", *defaults, *flags, check=check, timeout=300)


def check_ci(c):
    assert c["n"] == 2 and len(c["samples"]) == 2
    assert c["ci95_low"] <= c["median"] <= c["ci95_high"]


def test_default_precisions_report_json_and_markdown(tmp_path):
    md, js = tmp_path / "out" / "g.md", tmp_path / "g.json"
    p = gen("--json-out", js, "--markdown-out", md)
    assert md.read_text() == p.stdout
    assert p.stdout.startswith("# strata bench generate")
    j = json.loads(js.read_text())
    assert j["suite"] == "generate" and j["threads"] == 1 and j["batch"] == 1
    assert j["prompt_tokens"] == 3 and j["new_tokens"] == 4 and j["reps"] == 2 and j["warmup"] == 1
    assert len(j["prompt_ids"]) == 3 and all(0 <= t < 4096 for t in j["prompt_ids"])
    assert j["model"]["d_model"] == 384 and j["model"]["n_layers"] == 8  # the bench model
    assert j["checkpoint"] is None
    for key in ("cpu", "openblas_coretype", "openblas_core", "environment", "loadavg_before", "loadavg_after"):
        assert key in j["machine"]
    assert j["date"] and "bench generate" in j["command"] and j["bootstrap"]["resamples"] > 0
    assert j["deterministic"] is True
    assert [c["precision"] for c in j["configs"]] == ["fp32", "bf16"]

    fp32, bf16 = j["configs"]
    assert fp32["status"] == "measured"
    assert fp32["deterministic"] is True and fp32["matches_generate"] is True
    assert len(fp32["ids"]) == 4 and fp32["first_ids"] == fp32["ids"]
    check_ci(fp32["prefill_ms"])
    check_ci(fp32["decode_tokens_per_s"])
    assert all(v > 0 for v in fp32["decode_tokens_per_s"]["samples"])
    assert "| fp32 | measured |" in p.stdout

    # bf16: measured once the build has it, until then failed with the engine's message.
    assert bf16["status"] in ("measured", "failed")
    if bf16["status"] == "failed":
        assert bf16["error"], bf16
        assert f"| bf16 | failed: {bf16['error']} |" in p.stdout
        assert j["bf16_over_fp32_decode"] is None
    else:
        assert bf16["deterministic"] is True and bf16["matches_generate"] is True
        check_ci(bf16["decode_over_fp32"])
        assert j["bf16_over_fp32_decode"]["median"] > 0
        assert "bf16 ÷ fp32 decode tokens/s" in p.stdout


def test_same_ids_across_runs_and_a_single_precision(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    gen("--precision", "fp32", "--json-out", a)
    gen("--precision", "fp32", "--json-out", b)
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    assert [c["precision"] for c in ja["configs"]] == ["fp32"]
    assert ja["prompt_ids"] == jb["prompt_ids"]
    assert ja["configs"][0]["ids"] == jb["configs"][0]["ids"]


def test_a_trained_checkpoint(tmp_path, tiny_run):
    run_dir = tiny_run[0]
    js = tmp_path / "c.json"
    gen("--precision", "fp32", "--ckpt", run_dir, "--json-out", js)
    j = json.loads(js.read_text())
    assert j["checkpoint"] == str(run_dir) and j["model"]["d_model"] == 32
    c = j["configs"][0]
    assert c["status"] == "measured" and c["deterministic"] and c["matches_generate"]
    assert all(0 <= t < 320 for t in c["ids"])
    # The tiny model's context is 64 tokens: a usage error, found after loading it.
    p = gen("--ckpt", run_dir, "--prompt-tokens", "60", "--new-tokens", "5", check=False)
    assert p.returncode == 2, p.stderr
    assert "max_seq_len 64" in p.stderr


@pytest.mark.parametrize("flags,mention", [
    (["--precision", "fp16"], '--precision must be one of "fp32", "bf16", not "fp16"'),
    (["--precision", "fp32,"], "--precision: an empty entry"),
    (["--precision", "fp32,fp32"], "listed twice"),
    (["--reps", "0"], "--reps must be ≥ 1, got 0"),
    (["--new-tokens", "0"], "--new-tokens must be ≥ 1, got 0"),
    (["--prompt-tokens", "0"], "--prompt-tokens must be ≥ 1, got 0"),
    (["--threads", "0"], "--threads must be in [1, 4096], got 0"),
    (["--prompt-tokens", "200", "--new-tokens", "57"], "do not fit in the model's max_seq_len 256"),
])
def test_bad_flags_are_usage_errors(flags, mention):
    p = gen(*flags, check=False)
    assert p.returncode == 2, p.stderr
    assert "strata: error:" in p.stderr and mention in p.stderr, p.stderr
    assert "warm-up" not in p.stderr  # refused before measuring


def test_prompt_and_new_tokens_may_fill_the_context_exactly(tmp_path):
    js = tmp_path / "full.json"
    gen("--precision", "fp32", "--prompt-tokens", "250", "--new-tokens", "6", "--json-out", js)
    assert json.loads(js.read_text())["configs"][0]["matches_generate"] is True
