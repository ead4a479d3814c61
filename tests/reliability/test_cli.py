"""The command line itself: --version, help, unknown subcommands, one error format and the exit codes
(docs/limits.md, "Exit codes"), range messages that state their bounds, the flag spellings, and
`strata config --print` with the embedded default config and its documentation (docs/config.md)."""
import json
import os
import re
import subprocess

import pytest

from clihelp import BIN, ROOT, run

EXIT_ERROR, EXIT_USAGE = 1, 2


def subcommands(help_text):
    """The subcommand names listed in a help text's "Subcommands:" section."""
    names, inside = [], False
    for line in help_text.splitlines():
        if line.startswith("Subcommands:"):
            inside = True
        elif inside and line.startswith("  ") and line.strip():
            names.append(line.split()[0])
        elif inside and line.strip():
            break
    return names


def usage_error(*args):
    """Runs strata, expects a usage error, returns its one-line message (without the prefix)."""
    p = run(*args, check=False, timeout=60)
    assert p.returncode == EXIT_USAGE, (args, p.returncode, p.stdout, p.stderr)
    assert p.stderr.startswith("strata: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert p.stdout == "", p.stdout
    return p.stderr[len("strata: error: "):].rstrip("\n")


# ---- the top level ---------------------------------------------------------------------------------
def test_version_prints_the_project_version():
    version = re.search(r"project\(strata VERSION (\d+\.\d+\.\d+)", (ROOT / "CMakeLists.txt").read_text()).group(1)
    p = run("--version")
    assert re.fullmatch(rf"strata {re.escape(version)}( \(commit [0-9a-f]{{7,40}}\))?\n"
                        r"engine: (x86-64-v4, 64|x86-64-v3, 32|native, (32|64))-byte vectors\n", p.stdout), p.stdout
    assert p.stderr == ""


def engine_line(env=None):
    p = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()[1]


def test_the_loader_runs_the_engine_build_this_cpu_runs_and_the_mask_forces_v3():
    """CMakeLists.txt builds the engine for x86-64-v3 and x86-64-v4; glibc loads the best this CPU runs."""
    line = engine_line()
    if line.startswith("engine: native"):
        pytest.skip("one engine built with -march=native (STRATA_CPU_LEVELS off)")
    flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    v4 = all(f in flags for f in ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"))
    assert line == ("engine: x86-64-v4, 64-byte vectors" if v4 else "engine: x86-64-v3, 32-byte vectors")
    masked = engine_line({**os.environ, "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
    assert masked == "engine: x86-64-v3, 32-byte vectors"


def test_no_subcommand_prints_the_help_and_exits_with_the_usage_code():
    p = run("--help")
    bare = subprocess.run([BIN], capture_output=True, text=True, timeout=60)
    assert bare.returncode == EXIT_USAGE, bare
    assert bare.stdout == p.stdout and "Usage: strata" in bare.stdout
    names = subcommands(bare.stdout)
    assert {"train", "generate", "eval", "diagnose", "bench", "config"} <= set(names), names
    bench = run("bench", check=False)
    assert bench.returncode == EXIT_USAGE and "Usage: strata bench" in bench.stdout, bench
    assert subcommands(bench.stdout) == ["train", "generate", "attnres", "moda"]


def test_unknown_subcommand_lists_the_real_ones():
    names = subcommands(run("--help").stdout)
    msg = usage_error("frobnicate")
    assert msg == 'unknown subcommand "frobnicate"; the subcommands are: ' + ", ".join(names), msg
    assert usage_error("bench", "frob") == 'unknown subcommand "frob" of bench; the subcommands are: train, generate, attnres, moda'


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["generate", "-h"], ["bench", "train", "--help"],
                                  ["config", "--help"], ["eval", "--help"], ["diagnose", "--help"]])
def test_help_goes_to_stdout_and_exits_0(args):
    p = run(*args)
    assert "Usage: strata" in p.stdout and p.stderr == "", (p.stdout, p.stderr)


@pytest.mark.parametrize("args,mention", [
    (["generate", "--bogus"], "--bogus"),
    (["--bogus"], "--bogus"),
    (["train", "-c", "/nonexistent/c.json"], "/nonexistent/c.json"),
    (["eval", "--threads"], "--threads"),
    (["generate", "-n", "1.5"], "--max-tokens"),
    (["config"], "--print"),
    (["bench", "train", "--no-peer", "--steps", "x"], "--steps"),
])
def test_command_line_errors_exit_with_the_usage_code(args, mention):
    assert mention in usage_error(*args)


def test_other_errors_exit_1():
    p = run("config", "--print", "--set", "train.steps=0", check=False)
    assert p.returncode == EXIT_ERROR and p.stderr.startswith("strata: error: ") and "train.steps" in p.stderr


# ---- range messages --------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["generate", "--max-tokens", "0"], "--max-tokens must be ≥ 1, got 0"),
    (["generate", "-n", "-5"], "--max-tokens must be ≥ 1, got -5"),
    (["generate", "--temperature", "-1"], "--temperature must be ≥ 0, got -1"),
    (["generate", "-t", "inf"], "--temperature must be a finite number, got inf"),
    (["generate", "--top-k", "-1"], "--top-k must be in [0, 2147483647], got -1"),
    (["generate", "--top-p", "0"], "--top-p must be in [1e-09, 1], got 0"),
    (["generate", "--top-p", "1.5"], "--top-p must be in [1e-09, 1], got 1.5"),
    (["generate", "--threads", "0"], "--threads must be in [1, 4096], got 0"),
    (["generate", "-n", "abc"], '--max-tokens must be a number, got "abc"'),
    (["eval", "--batches", "-1"], "--batches must be ≥ 0, got -1"),
    (["eval", "--batch-size", "-1"], "--batch-size must be ≥ 0, got -1"),
    (["eval", "--threads", "4097"], "--threads must be in [1, 4096], got 4097"),
    (["diagnose", "--batches", "-1"], "--batches must be in [0, 1000000], got -1"),
    (["diagnose", "--batch-size", "-2"], "--batch-size must be ≥ 0, got -2"),
    (["diagnose", "--threads", "0"], "--threads must be in [1, 4096], got 0"),
    (["bench", "train", "--threads", "0"], "--threads must be in [1, 4096], got 0"),
    (["bench", "train", "--steps", "0"], "--steps must be ≥ 1, got 0"),
    (["bench", "train", "--warmup", "-1"], "--warmup must be ≥ 0, got -1"),
    (["bench", "train", "--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
    (["bench", "train", "--batch", "0"], "--batch-size must be ≥ 1, got 0"),
    (["bench", "train", "--seq-len", "0"], "--seq-len must be ≥ 1, got 0"),
    (["bench", "train", "--seq", "-3"], "--seq-len must be ≥ 1, got -3"),
])
def test_range_errors_state_the_bounds(args, message):
    assert usage_error(*args) == message


def test_bench_takes_both_spellings_of_batch_size_and_seq_len():
    # A batch too large for memory is refused before any work, naming the batch and sequence it got.
    for flags, shape in [(["--batch-size", "100000", "--seq-len", "256"], "batch 100000 x seq 256"),
                         (["--batch", "90000", "--seq", "200"], "batch 90000 x seq 200"),
                         (["--batch-size", "80000", "--seq", "128"], "batch 80000 x seq 128")]:
        p = run("bench", "train", "--no-peer", *flags, check=False, timeout=60)
        assert p.returncode == EXIT_ERROR and shape in p.stderr, (flags, p.stderr)


# ---- config keys -----------------------------------------------------------------------------------
@pytest.mark.parametrize("override,suggestion", [
    ("model.n_layer=3", '[model]: unknown key "n_layer"; did you mean "n_layers"?'),
    ("model.dmodel=3", 'unknown key "dmodel"; did you mean "d_model"?'),
    ("train.step=3", '[train]: unknown key "step"; did you mean "steps"?'),
    ("train.batchsize=3", 'unknown key "batchsize"; did you mean "batch_size"?'),
    ("trian.steps=3", 'unknown key "trian"; did you mean "train"?'),
    ("model.bogus=1", 'unknown key "bogus"'),
    ("train.zzz=1", 'unknown key "zzz"'),
])
def test_unknown_config_keys_suggest_a_close_one(override, suggestion):
    p = run("config", "--print", "--set", override, check=False)
    assert p.returncode == EXIT_ERROR and suggestion in p.stderr, p.stderr
    if "did you mean" not in suggestion:
        assert "did you mean" not in p.stderr, p.stderr


def test_unknown_key_in_a_config_file_suggests_a_close_one(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"train": {"stpes": 3}}')
    p = run("config", "--print", "-c", cfg, check=False)
    assert p.returncode == EXIT_ERROR and f'{cfg} [train]: unknown key "stpes"; did you mean "steps"?' in p.stderr


# ---- the default config and `strata config --print` ------------------------------------------------
def printed(*args):
    return json.loads(run("config", "--print", *args).stdout)


def test_without_a_config_file_the_default_config_applies():
    c = printed()
    assert (c["model"]["d_model"], c["model"]["n_layers"], c["train"]["steps"]) == (256, 6, 800)
    default = json.loads((ROOT / "configs" / "default.json").read_text())
    for section, keys in default.items():
        for key, value in keys.items():
            if section == "train" and key in ("corpus", "data_dir", "out_dir"):
                continue
            assert c[section][key] == value, (section, key)
    # its paths are the built-in ones, under the working directory (recorded absolute)
    cwd = ROOT  # run() works in the source tree
    assert (c["train"]["corpus"], c["train"]["data_dir"], c["train"]["out_dir"]) == (
        str(cwd / "data/corpus/default.txt"), str(cwd / "data/prepared/default"), str(cwd / "runs/default"))


def test_config_print_applies_the_file_then_the_overrides(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"train": {"steps": 5, "lr": 0.01}}')
    c = printed("-c", cfg, "--set", "train.lr=0.002", "--set", "model.qk_norm=true")
    assert (c["train"]["steps"], c["train"]["lr"], c["model"]["qk_norm"]) == (5, 0.002, True)
    assert printed("--set", "train.steps=7")["train"]["steps"] == 7


def documented_keys():
    """The keys in the first column of docs/config.md's table for each section."""
    keys, section = {}, None
    for line in (ROOT / "docs" / "config.md").read_text().splitlines():
        m = re.match(r"## `(\w+)`", line)
        if m:
            section = m.group(1)
            keys[section] = set()
        elif section and line.startswith("| `"):
            keys[section].update(re.findall(r"`(\w+)`", line.split("|")[1]))
    return keys


def test_every_config_key_is_documented():
    doc = documented_keys()
    c = printed()
    for section in ("model", "train"):
        missing = set(c[section]) - doc.get(section, set())
        assert not missing, f"docs/config.md lacks rows for {section}: {sorted(missing)}"
        stale = doc.get(section, set()) - set(c[section])
        assert not stale, f"docs/config.md documents {section} keys that do not exist: {sorted(stale)}"
