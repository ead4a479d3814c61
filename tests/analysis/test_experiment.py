"""strata experiment --quick: every suite's outputs (a result per run, summary.json, report.md and its
figures), paired seeds, resuming (nothing retrained when up to date), stale results found by config
hash, failed runs recorded while the suite goes on, and an unknown suite's error."""
import json
import sys

import pytest

from clihelp import run, small_corpus

WITH_MPL = {"STRATA_PYTHON": sys.executable}
SUITES = {"depth-rules": 13, "curse-of-depth": 6, "moda-window": 2}  # variants at quick size


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    d = tmp_path_factory.mktemp("experiment")
    corpus = small_corpus(d / "corpus.txt", n_bytes=200000)
    args = ["--quick", "--runs", d / "runs", "--results", d / "results", "--corpus", corpus, "--data-dir", d / "data",
            "--threads", "1"]
    p = run("experiment", "all", *args, env=WITH_MPL)
    return d, args, p


def test_every_output_is_produced(quick):
    d, _, p = quick
    for suite, n_variants in SUITES.items():
        res = d / "results" / suite
        sm = json.loads((res / "summary.json").read_text())
        assert len(sm["variants"]) == n_variants
        assert sm["runs_planned"] == 3 * n_variants and sm["runs_done"] == 3 * n_variants, suite
        for v in sm["variants"]:
            assert [r["seed"] for r in v["runs"]] == [1, 2, 3]
            for r in v["runs"]:
                assert r["status"] == "done", (suite, v["name"], r)
                one = json.loads((res / f"{v['name']}-seed-{r['seed']}.json").read_text())
                assert one["config"]["model"]["seed"] == one["config"]["train"]["seed"] == r["seed"]
                assert one["val_loss"] == r["val_loss"]
                subs = one["depth_report"]["sublayers"]
                for k in ("output_rms", "state_rms", "grad_norm"):  # the profile figure's numbers
                    assert r[k] == [s[k] for s in subs] and len(r[k]) == 2 * one["config"]["model"]["n_layers"]
        for c in sm["claims"]:
            assert c["difference"]["n"] == 3 and "lo" in c["difference"], c
            assert c["verdict"] in ("reproduced", "reversed", "not reproduced at this scale", "differs",
                                    "no difference detected")
        figures = {"val_loss.png", "claims.png", "rms_slope.png", "profiles.png"}
        if suite == "curse-of-depth":
            figures |= {"useful_share.png", "useful_share_vs_depth.png", "linear_excess_vs_depth.png",
                        "block_linearity.png"}
            for v in sm["variants"]:
                for r in v["runs"]:
                    assert r["mean_linear_excess"] == pytest.approx(sum(b - 1 for b in r["block_ratio"]) /
                                                                    len(r["block_ratio"]), rel=1e-12)
        assert figures <= {f.name for f in res.iterdir()}, suite
        md = (res / "report.md").read_text()
        assert "## Claims" in md and "![claims](claims.png)" in md
        assert p.stdout.count(f"suite {suite}: ") == 2


def test_parameters_match_within_three_percent(quick):
    d, _, _ = quick
    sm = json.loads((d / "results" / "depth-rules" / "summary.json").read_text())
    params = {v["name"]: v["runs"][0]["non_embedding_params"] for v in sm["variants"]}
    for name, n in params.items():
        assert abs(n / params["pre"] - 1) <= 0.03, (name, n, params["pre"])
    ffn = json.loads((d / "results" / "depth-rules" / "moda_ffnkv_pre-seed-1.json").read_text())
    assert ffn["config"]["model"]["ffn_hidden"] < 88  # narrowed to pay for the FFN K/V projections


def test_paired_differences_are_per_seed(quick):
    d, _, _ = quick
    res = d / "results" / "depth-rules"
    sm = json.loads((res / "summary.json").read_text())
    claim = next(c for c in sm["claims"] if c["a"] == "attnres_full" and c["b"] == "pre")
    loss = {(v, s): json.loads((res / f"{v}-seed-{s}.json").read_text())["val_loss"]
            for v in ("attnres_full", "pre") for s in (1, 2, 3)}
    want = [loss[("attnres_full", s)] - loss[("pre", s)] for s in (1, 2, 3)]
    assert claim["difference"]["values"] == pytest.approx(want, rel=1e-12)
    assert claim["difference"]["mean"] == pytest.approx(sum(want) / 3, rel=1e-12)


def test_rerun_trains_nothing_and_a_stale_result_is_retrained(quick):
    d, args, _ = quick
    res = d / "results" / "moda-window"
    before = (res / "summary.json").read_text()
    p = run("experiment", "moda-window", *args, "--no-plots")
    assert "training" not in p.stdout, p.stdout
    assert (res / "summary.json").read_text() == before
    one = res / "W2-seed-2.json"
    j = json.loads(one.read_text())
    j["config_hash"] = "0000000000000000"
    one.write_text(json.dumps(j))
    p = run("experiment", "moda-window", *args, "--no-plots")
    assert p.stdout.count("training (") == 1 and "W2 seed 2: its result is stale" in p.stdout, p.stdout
    assert json.loads(one.read_text())["val_loss"] == j["val_loss"]  # the same run, the same result


def test_a_failed_run_is_recorded_and_the_suite_goes_on(quick, tmp_path):
    d, _, _ = quick
    args = ["--quick", "--runs", tmp_path / "runs", "--results", tmp_path / "results", "--corpus",
            d / "corpus.txt", "--data-dir", d / "data", "--threads", "1", "--no-plots"]
    p = run("experiment", "moda-window", *args, env={"STRATA_FAULT_NONFINITE": "2"})
    sm = json.loads((tmp_path / "results" / "moda-window" / "summary.json").read_text())
    runs = [r for v in sm["variants"] for r in v["runs"]]
    assert len(runs) == 6 and all(r["status"] == "failed" and "non-finite" in r["reason"] for r in runs), runs
    assert all(c["verdict"] == "not measured" for c in sm["claims"])
    assert p.stdout.count(": failed") == 6
    p = run("experiment", "moda-window", *args)  # recorded: not retried ...
    assert "training" not in p.stdout
    p = run("experiment", "moda-window", *args, "--retry-failed")  # ... unless asked
    assert p.stdout.count(": done") == 6, p.stdout


def test_a_missing_corpus_is_an_error_not_failed_runs(tmp_path):
    p = run("experiment", "moda-window", "--quick", "--corpus", tmp_path / "none.txt", "--data-dir", tmp_path / "d",
            "--runs", tmp_path / "r", "--results", tmp_path / "s", check=False)
    assert p.returncode == 1 and "none.txt" in p.stderr and "get_corpus.sh" in p.stderr, p.stderr
    assert not (tmp_path / "s" / "moda-window").exists()


def test_unknown_suite_lists_the_suites():
    p = run("experiment", "depth-rulez", check=False)
    assert p.returncode == 1, p.stderr
    assert 'unknown suite "depth-rulez"' in p.stderr and "depth-rules, curse-of-depth, moda-window" in p.stderr
