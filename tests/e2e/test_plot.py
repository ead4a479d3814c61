"""strata plot: PNG curves of two tiny runs overlaid, the default output folder, working from another
directory with the binary copied elsewhere, matplotlib missing, and bad run directories. Also the
plotting module itself (python/strata_tools/plot.py), which other commands reuse."""
import json
import os
import shutil
import struct
import sys

import pytest

from clihelp import BIN, ROOT, run, tiny_run  # noqa: F401  (tiny_run is a fixture)

sys.path.insert(0, str(ROOT / "python"))
from strata_tools import plot as plotmod  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The interpreter running the tests has matplotlib; `python3` first on PATH may be another one.
WITH_MPL = {"STRATA_PYTHON": sys.executable}


def plot(*args, env=None, check=True):
    return run("plot", *args, env={**WITH_MPL, **(env or {})}, check=check)


def png_size(path):
    """(width, height) of a PNG file, after checking its signature and that it is not trivial."""
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE, path
    assert raw[12:16] == b"IHDR" and len(raw) > 5000, (path, len(raw))
    return struct.unpack(">II", raw[16:24])


@pytest.fixture(scope="module")
def two_runs(tiny_run, tmp_path_factory):
    """The tiny run and a second one trained 4 steps with another learning rate (validation every 2)."""
    d = tmp_path_factory.mktemp("plot")
    _, _, _, args = tiny_run
    other = d / "lr_high"
    args = [a if not a.startswith("train.out_dir=") else f"train.out_dir={other}" for a in args]
    run("train", "--set", "train.steps=4", "--set", "train.lr=0.01", "--set", "train.eval_every=2", *args)
    return tiny_run[0], other


def test_two_runs_overlaid_into_pngs(two_runs, tmp_path):
    a, b = two_runs
    out = tmp_path / "plots"
    p = plot(a, b, "--out", out)
    for m in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss"):
        f = out / f"{m}.png"
        assert f.exists(), p.stdout + p.stderr
        assert str(f) in p.stdout
        w, h = png_size(f)
        assert w >= 400 and h >= 300
    assert sorted(os.listdir(out)) == sorted(f"{m}.png" for m in plotmod.METRICS)  # no temporary left


def test_default_out_is_the_first_runs_plots_folder_and_metrics_can_be_chosen(two_runs, tmp_path):
    a, b = two_runs
    target = tmp_path / "first"
    shutil.copytree(a, target)
    plot(target, b, "--metrics", "loss,step_ms")
    assert sorted(os.listdir(target / "plots")) == ["loss.png", "step_ms.png"]
    png_size(target / "plots" / "loss.png")


def test_works_from_another_directory_with_the_binary_copied(two_runs, tmp_path):
    binary = tmp_path / "bin" / "strata"
    binary.parent.mkdir()
    shutil.copy2(BIN, binary)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    import subprocess
    p = subprocess.run([str(binary), "plot", str(two_runs[0]), "--out", "figs", "--metrics", "loss"],
                       cwd=elsewhere, capture_output=True, text=True, timeout=300, env={**os.environ, **WITH_MPL})
    assert p.returncode == 0, p.stderr
    png_size(elsewhere / "figs" / "loss.png")


def test_the_default_interpreter_is_python3_on_path(two_runs, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "STRATA_PYTHON"}
    env["PATH"] = f"{bindir}:{env.get('PATH', '')}"
    import subprocess
    p = subprocess.run([BIN, "plot", str(two_runs[0]), "--out", str(tmp_path / "o"), "--metrics", "lr"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    png_size(tmp_path / "o" / "lr.png")
    (bindir / "python3").unlink()  # a python3 without matplotlib first on PATH
    (bindir / "python3").write_text(f"#!/bin/sh\nPYTHONPATH={fake_matplotlib(tmp_path)} exec {sys.executable} \"$@\"\n")
    (bindir / "python3").chmod(0o755)
    p = subprocess.run([BIN, "plot", str(two_runs[0]), "--out", str(tmp_path / "o2")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "needs matplotlib" in p.stderr, p.stderr


def fake_matplotlib(tmp_path):
    """A folder holding a package `matplotlib` whose import fails, as when it is not installed."""
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    return fake.parent


def test_a_metric_no_run_has_is_skipped_and_none_at_all_is_an_error(two_runs, tmp_path):
    p = plot(two_runs[0], "--out", tmp_path, "--metrics", "loss,nonesuch")
    assert "no run has nonesuch" in p.stderr and (tmp_path / "loss.png").exists()
    assert not (tmp_path / "nonesuch.png").exists()
    p = plot(two_runs[0], "--out", tmp_path, "--metrics", "nonesuch", check=False)
    assert p.returncode == 1 and "strata: error:" in p.stderr and "nonesuch" in p.stderr


def test_without_matplotlib_the_error_says_how_to_install_it(two_runs, tmp_path):
    fake = fake_matplotlib(tmp_path)
    wrapper = tmp_path / "python-without-matplotlib"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={fake}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    p = plot(two_runs[0], "--out", tmp_path / "o", env={"STRATA_PYTHON": str(wrapper)}, check=False)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == ("strata: error: strata plot needs matplotlib: install python3-matplotlib (apt) "
                                "or pip install matplotlib")
    assert not (tmp_path / "o").exists()


def test_missing_interpreter_is_an_error(two_runs, tmp_path):
    p = plot(two_runs[0], env={"STRATA_PYTHON": str(tmp_path / "no-python")}, check=False)
    assert p.returncode == 1 and "STRATA_PYTHON" in p.stderr and "no-python" in p.stderr


def test_bad_run_directories_are_named(two_runs, tmp_path):
    missing = tmp_path / "gone"
    p = plot(two_runs[0], missing, "--out", tmp_path / "o", check=False)
    assert p.returncode == 1 and p.stderr.startswith("strata: error:") and str(missing) in p.stderr
    no_metrics = tmp_path / "empty_dir"
    no_metrics.mkdir()
    p = plot(no_metrics, check=False)
    assert p.returncode == 1 and str(no_metrics / "metrics.jsonl") in p.stderr and "not found" in p.stderr
    (no_metrics / "metrics.jsonl").write_text("")
    p = plot(no_metrics, check=False)
    assert p.returncode == 1 and str(no_metrics / "metrics.jsonl") in p.stderr and "empty" in p.stderr
    p = plot(check=False)
    assert p.returncode not in (0, 1) and ("RUN_DIR" in p.stderr or "run_dirs" in p.stderr), p.stderr


# ---- the module ---------------------------------------------------------------------------------
def test_read_metrics_ignores_unknown_fields_skipped_steps_and_a_cut_line(tmp_path, capsys):
    lines = [{"step": 1, "loss": 5.0, "lr": 1e-3, "grad_norm": 2.0, "tokens_per_s": 100.0, "step_ms": 3.0,
              "new_field": "text"},
             {"step": 2, "skipped": True, "nonfinite": "grad"},
             {"step": 2, "val_loss": 4.5},
             {"step": 3, "loss": 4.0, "lr": 2e-3, "grad_norm": 1.5, "tokens_per_s": 110.0, "step_ms": 2.9}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + '\n{"step": 4, "lo')
    m = plotmod.read_metrics(tmp_path)
    assert m["loss"] == [(1, 5.0), (3, 4.0)]
    assert m["val_loss"] == [(2, 4.5)]
    assert "skipped" not in m and "new_field" not in m and "nonfinite" not in m
    assert "skipped 1 unreadable line" in capsys.readouterr().err


def test_run_labels_are_the_directory_names_made_unique():
    assert plotmod.run_labels(["/x/a", "/y/b"]) == ["a", "b"]
    assert plotmod.run_labels(["/x/run", "/y/run"]) == ["x/run", "y/run"]
    assert plotmod.run_labels(["/x/run", "/x/run/"]) == ["run", "run (2)"]  # one directory given twice
    assert plotmod.run_labels(["/a/x/run", "/b/x/run", "/c/y/run"]) == ["a/x/run", "b/x/run", "y/run"]


def test_plot_curves_writes_one_png(tmp_path):
    out = plotmod.plot_curves({"a": [(1, 3.0), (2, 2.5)], "b": [(1, 3.2), (2, 2.0), (3, 1.9)]}, "loss",
                              tmp_path / "loss.png")
    png_size(tmp_path / "loss.png")
    assert out == str(tmp_path / "loss.png")
    with pytest.raises(plotmod.PlotError, match="no run has lr"):
        plotmod.plot_curves({"a": []}, "lr", tmp_path / "lr.png")
