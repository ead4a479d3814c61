"""`pip install .` into a fresh virtual environment, for every python3 on PATH: the package imports
from the environment (not the build tree), loads a tiny trained run and generates what the CLI does;
strata.torch works where torch is present. (Skipped, saying so, where pip cannot reach PyPI, which
the build requirements come from.) And a build without the Debian -dev packages stops with a
message naming them."""
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from clihelp import ROOT, pypi_or_skip, run, tiny_run  # noqa: F401  (tiny_run is a fixture)


def interpreters():
    """Each distinct python3 on PATH (by real path), the one running the tests first."""
    seen, out = set(), []
    for cand in [sys.executable, *(str(pathlib.Path(d) / "python3") for d in os.environ.get("PATH", "").split(os.pathsep))]:
        if not os.access(cand, os.X_OK):
            continue
        real = subprocess.run([cand, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True).stdout.strip()
        real = os.path.realpath(real or cand)
        if real not in seen:
            seen.add(real)
            out.append(cand)
    return out


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


@pytest.mark.parametrize("python", interpreters())
def test_pip_install_into_a_fresh_venv(python, tiny_run, tmp_path):
    have_venv = subprocess.run([python, "-c", "import venv, ensurepip"], capture_output=True).returncode == 0
    if not have_venv:
        pytest.skip(f"{python} has no venv/ensurepip module")
    pypi_or_skip(python)  # pip fetches the build requirements (scikit-build-core, pybind11)
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", "--system-site-packages", str(venv)], check=True, env=clean_env())
    vpy = venv / "bin" / "python"
    p = subprocess.run([str(vpy), "-m", "pip", "install", "--quiet", str(ROOT)], capture_output=True, text=True,
                       env=clean_env(), cwd=tmp_path, timeout=1800)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    cli = run("generate", "--ckpt", tiny_run[0], "--prompt", "the quick", "-n", "30", "-t", "0").stdout
    script = textwrap.dedent(f"""
        import importlib.util, sys
        import strata
        assert strata.__file__.startswith({str(venv)!r}), strata.__file__
        # the package carries both builds of the engine and loads one of its own, not the build tree's
        import os
        pkg = os.path.realpath(os.path.dirname(strata.__file__))
        for lib in ("libstrata_core.so", "glibc-hwcaps/x86-64-v4/libstrata_core.so"):
            assert os.path.isfile(os.path.join(pkg, lib)), lib
        loaded = sorted({{l.split()[-1] for l in open("/proc/self/maps") if l.rstrip().endswith("libstrata_core.so")}})
        assert len(loaded) == 1 and loaded[0].startswith(pkg), loaded
        cpu = {{"x86-64-v4": "glibc-hwcaps/x86-64-v4/libstrata_core.so", "x86-64-v3": "libstrata_core.so"}}
        assert loaded[0] == os.path.join(pkg, cpu[strata.cpu_capability()]), (loaded, strata.cpu_capability())
        m = strata.load({str(tiny_run[0])!r})
        sys.stdout.write("the quick" + m.generate("the quick", max_tokens=30, temperature=0) + "\\n")
        if importlib.util.find_spec("torch"):
            import torch, strata.torch as st
            x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
            w = torch.ones(8, dtype=torch.float64, requires_grad=True)
            assert torch.autograd.gradcheck(st.rms_norm, (x, w))
    """)
    out = subprocess.run([str(vpy), "-c", script], capture_output=True, text=True, env=clean_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == cli


def test_missing_debian_packages_are_named(tmp_path):
    """With pkg-config finding nothing, configuration stops naming the three packages it looks up that way."""
    env = {**os.environ, "PKG_CONFIG_LIBDIR": str(tmp_path / "none"), "PKG_CONFIG_PATH": ""}
    p = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b")], capture_output=True, text=True, env=env)
    assert p.returncode != 0
    text = " ".join(p.stderr.split())
    assert "Debian packages that are not installed: libopenblas-dev libsentencepiece-dev libxxhash-dev" in text
    assert "sudo apt-get install libopenblas-dev libsentencepiece-dev libxxhash-dev" in text
