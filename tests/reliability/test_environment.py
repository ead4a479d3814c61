"""The environment variables of docs/limits.md not covered elsewhere: OPENBLAS_CORETYPE, the test
harness's STRATA_BIN and STRATA_SOURCE_DIR, and the benchmark's BENCH_IDLE_WAIT. (STRATA_CONFIG and
STRATA_OUT are tested with the main job in e2e/test_pipeline.py.)"""
import json
import os
import subprocess
import sys
import time

import pytest

from clihelp import BIN, ROOT, TINY_MODEL, run, small_corpus

QUICK_BENCH = ["bench", "train", "--no-peer", "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "0",
               "--threads", "1", "--gemm-seconds", "0.005"]


def without(*names):
    return {k: v for k, v in os.environ.items() if k not in names}


def blas_core(tmp_path, env):
    js = tmp_path / f"core-{len(list(tmp_path.iterdir()))}.json"
    p = subprocess.run([BIN, *QUICK_BENCH, "--json-out", str(js)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(js.read_text())["machine"]["openblas_core"]


# ---- OPENBLAS_CORETYPE -------------------------------------------------------------------------
def test_openblas_coretype_selects_the_kernels_and_an_unknown_name_still_runs(tmp_path):
    detected = blas_core(tmp_path, without("OPENBLAS_CORETYPE"))
    assert detected
    # Prescott (SSE3) and Core2 run on every x86-64 CPU OpenBLAS supports.
    assert blas_core(tmp_path, {**without(), "OPENBLAS_CORETYPE": "Prescott"}) == "Prescott"
    assert blas_core(tmp_path, {**without(), "OPENBLAS_CORETYPE": "Core2"}) == "Core2"
    # An unknown name is not an error: OpenBLAS picks a kernel set itself. Which one is its business:
    # 0.3.21 on an Intel Xeon it cannot name reports Prescott with the variable unset but Cooperlake
    # (from the CPU's feature flags) with an unknown name, so only "some real kernel" is asserted.
    fallback = blas_core(tmp_path, {**without(), "OPENBLAS_CORETYPE": "NoSuchCore"})
    assert fallback and fallback != "NoSuchCore"


def test_openblas_coretype_changes_rounding_not_results(tmp_path):
    corpus = small_corpus(tmp_path / "corpus.txt")
    args = ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={tmp_path / 'data'}", *TINY_MODEL,
            "--set", "train.threads=1", "--set", "train.steps=5"]

    def losses(name, core):
        env = without("OPENBLAS_CORETYPE") if core is None else {**os.environ, "OPENBLAS_CORETYPE": core}
        out = tmp_path / name
        p = subprocess.run([BIN, "train", *map(str, args), "--set", f"train.out_dir={out}"], capture_output=True,
                           text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr
        return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]

    auto, prescott, prescott2 = losses("auto", None), losses("prescott", "Prescott"), losses("prescott2", "Prescott")
    assert prescott == prescott2  # one kernel set: bit for bit
    assert len(auto) == len(prescott) == 5
    assert auto == pytest.approx(prescott, rel=1e-4, abs=1e-5)  # another: the same numbers up to rounding


# ---- STRATA_BIN, STRATA_SOURCE_DIR (the Python test harness, tests/clihelp.py) -----------------------
def harness(env, code):
    tests = ROOT / "tests"
    e = {**without("STRATA_BIN", "STRATA_SOURCE_DIR"), "PYTHONPATH": str(tests), **env}
    p = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=60, cwd=tests)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_harness_defaults_to_the_source_tree_and_its_build():
    root, binary = harness({}, "import clihelp; print(clihelp.ROOT); print(clihelp.BIN)").split()
    assert os.path.samefile(root, ROOT)
    assert binary == os.path.join(root, "build", "strata")


def test_harness_variables_choose_the_binary_and_the_source_tree(tmp_path):
    fake = tmp_path / "fake-strata"
    fake.write_text('#!/bin/sh\necho "fake strata: $*"\n')
    fake.chmod(0o755)
    src = tmp_path / "src"
    src.mkdir()
    out = harness({"STRATA_BIN": str(fake), "STRATA_SOURCE_DIR": str(src)},
                  "import pathlib, clihelp\n"
                  "print(clihelp.ROOT)\n"
                  "print(clihelp.run('eval', '--help').stdout.strip())\n"
                  f"p = clihelp.small_corpus(pathlib.Path({str(tmp_path / 'c.txt')!r}), 2000)\n"
                  "print(len(p.read_text()) > 0)\n")
    lines = out.splitlines()
    assert lines[0] == str(src)
    assert lines[1] == "fake strata: eval --help"  # run() calls STRATA_BIN
    assert lines[2] == "True"  # without data/corpus/default.txt under the source tree: generated prose
    assert "the quick brown fox" in (tmp_path / "c.txt").read_text()


# ---- BENCH_IDLE_WAIT (bench/run_train.sh, bench/wait_idle.sh) ---------------------------------------
@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "1234567", " 5"])
def test_bench_idle_wait_must_be_whole_seconds(value):
    env = {"BENCH_IDLE_WAIT": value}
    for script in ("bench/wait_idle.sh", "bench/run_train.sh"):
        t0 = time.monotonic()
        p = subprocess.run(["bash", script], env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT,
                           timeout=60)
        assert p.returncode == 2, (script, p.returncode, p.stderr)
        assert "BENCH_IDLE_WAIT must be a whole number of seconds" in p.stderr, p.stderr
        assert time.monotonic() - t0 < 10  # refused before the setup and the build
        assert p.stdout == "", p.stdout


@pytest.mark.parametrize("seconds", [0, 2])
def test_bench_idle_wait_bounds_the_wait_for_an_idle_machine(seconds):
    t0 = time.monotonic()
    p = subprocess.run(["bash", "bench/wait_idle.sh"], env={**os.environ, "BENCH_IDLE_WAIT": str(seconds)},
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    assert "at start" in p.stderr
    assert took < seconds + 5
    if f"waiting up to {seconds}s" in p.stderr:  # the machine was busy: it waited the whole time
        assert took >= seconds
    if seconds == 0:
        assert "waiting" not in p.stderr
