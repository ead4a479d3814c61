"""The engine's two builds (CMakeLists.txt, STRATA_CPU_LEVELS; docs/architecture.md): whichever one the
loader picks must serve every program linked against the other. Only the build the CPU runs can be
executed here, so what is checked is what would break on the other kind of CPU: a symbol that the
programs take from the x86-64-v3 build and that the x86-64-v4 build lacks would stop them at load time
on every AVX-512 machine ("undefined symbol"), and a v4 build compiled without AVX-512 would pass as
one. (Run with AVX-512 hidden, the op table covers the v3 build on an AVX-512 CPU: label op-v3.)"""
import pathlib
import subprocess

import pytest

from clihelp import BIN

BUILD = pathlib.Path(BIN).resolve().parent
V3 = BUILD / "lib" / "libstrata_core.so"
V4 = BUILD / "lib" / "glibc-hwcaps" / "x86-64-v4" / "libstrata_core.so"

pytestmark = pytest.mark.skipif(not V3.exists(), reason="one static engine (STRATA_CPU_LEVELS off)")


def dynamic_symbols(path, which):
    p = subprocess.run(["nm", "-D", f"--{which}-only", str(path)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in p.stdout.splitlines() if line.strip()}


def links_the_engine(path):
    p = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True)
    return "Shared library: [libstrata_core.so]" in p.stdout


def programs():
    """The CLI, the Python module and every GoogleTest binary that links the engine."""
    cli, module = pathlib.Path(BIN), sorted((BUILD / "python" / "strata").glob("_core*.so"))
    assert links_the_engine(cli) and module and all(links_the_engine(m) for m in module), (cli, module)
    tests = [p for p in sorted((BUILD / "tests").glob("*_test_*")) if p.is_file() and links_the_engine(p)]
    return [cli, *module, *tests]


def test_both_builds_are_there_under_one_name():
    assert V4.exists(), V4
    for lib in (V3, V4):
        p = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True)
        assert "Library soname: [libstrata_core.so]" in p.stdout, (lib, p.stdout)


def test_every_symbol_a_program_takes_from_the_v3_build_is_in_the_v4_build():
    v3, v4 = dynamic_symbols(V3, "defined"), dynamic_symbols(V4, "defined")
    progs = programs()
    assert len(progs) > 3, progs
    missing = {}
    for prog in progs:
        needed = dynamic_symbols(prog, "undefined") & v3
        if needed - v4:
            missing[prog.name] = sorted(needed - v4)[:5]
    assert not missing, f"symbols the x86-64-v4 build lacks: {missing}"


def functions_using_zmm(path):
    """The names of the functions whose code touches a 64-byte (zmm) register."""
    p = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                       check=True)
    names, current = set(), None
    for line in p.stdout.splitlines():
        if line.endswith(">:") and "<" in line:
            current = line[line.index("<") + 1:-2]
        elif "%zmm" in line and current:
            names.add(current)
    return names


def test_the_v4_build_runs_64_byte_vectors_and_the_v3_build_only_in_its_bf16_kernels():
    # The v3 build holds AVX-512 code only in the AVX512-BF16 kernels, compiled by a target pragma and
    # taken when cpuid reports the extension; the v4 build uses 64-byte registers throughout.
    v3 = functions_using_zmm(V3)
    assert v3 and all("bf16" in f.lower() for f in v3), sorted(f for f in v3 if "bf16" not in f.lower())[:5]
    v4_elsewhere = [f for f in functions_using_zmm(V4) if "bf16" not in f.lower()]
    assert len(v4_elsewhere) >= 50, v4_elsewhere
    assert any("attnres_forward<float>" in f for f in v4_elsewhere), v4_elsewhere[:20]
