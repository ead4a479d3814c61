"""strata generate on the tiny run (max_seq_len 64): going on past the context, --num-samples,
--prompt-file (a file or stdin), --stop, the timing line on stderr, and identical text per seed."""
import re
import subprocess

from clihelp import BIN, run, tiny_run  # noqa: F401  (tiny_run is a fixture)


def gen(run_dir, *flags, **kw):
    return run("generate", "--ckpt", run_dir, "--threads", "1", *flags, **kw)


def timing(stderr):
    m = re.search(r"generated (\d+) tokens in [0-9.]+ s \((\d+) tokens/s; prefill (\d+) tokens", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(3))


def test_generation_goes_on_past_the_context(tiny_run):
    # greedy: a 6-step model never ranks end-of-text first, so all 150 tokens come out
    p = gen(tiny_run[0], "--prompt", "The", "-n", "150", "-t", "0")
    n, prefill = timing(p.stderr)
    assert n == 150 and prefill >= 2
    assert "capped" not in p.stderr and "context crop" in p.stderr
    assert p.stdout.startswith("The") and len(p.stdout) > 150
    # the text is deterministic across the crops
    assert gen(tiny_run[0], "--prompt", "The", "-n", "150", "-t", "0").stdout == p.stdout


def test_stdout_carries_only_the_text_and_stderr_the_timing(tiny_run):
    p = gen(tiny_run[0], "--prompt", "The", "-n", "10", "-t", "0")
    assert "tokens/s" not in p.stdout and "tokens/s" in p.stderr
    assert p.stdout.startswith("The") and p.stdout.endswith("\n")


def test_same_seed_same_samples_and_seed_i_for_sample_i(tiny_run):
    flags = ["--prompt", "The", "-n", "20", "-t", "1.0", "--seed", "7", "--num-samples", "3"]
    a, b = gen(tiny_run[0], *flags), gen(tiny_run[0], *flags)
    assert a.stdout == b.stdout
    samples = a.stdout.split("\n---\n")
    assert len(samples) == 3 and all(s.startswith("The") for s in samples)
    assert timing(a.stderr)[0] <= 60 and "3 samples" in a.stderr
    # sample i is the single sample with seed + i
    for i, s in enumerate(samples):
        single = gen(tiny_run[0], "--prompt", "The", "-n", "20", "-t", "1.0", "--seed", str(7 + i)).stdout
        assert single.rstrip("\n") == s.rstrip("\n")
    assert len(set(samples)) > 1


def test_num_samples_must_be_positive(tiny_run):
    p = gen(tiny_run[0], "--prompt", "The", "--num-samples", "0", check=False)
    assert p.returncode not in (0, 1) and "--num-samples" in p.stderr


def test_prompt_file_and_stdin_equal_the_prompt_flag(tiny_run, tmp_path):
    text = "The sea and\nthe"
    f = tmp_path / "prompt.txt"
    f.write_text(text, encoding="utf-8")
    ref = gen(tiny_run[0], "--prompt", text, "-n", "12", "-t", "0").stdout
    assert ref.startswith(text)
    assert gen(tiny_run[0], "--prompt-file", f, "-n", "12", "-t", "0").stdout == ref
    p = subprocess.run([BIN, "generate", "--ckpt", str(tiny_run[0]), "--threads", "1", "--prompt-file", "-",
                        "-n", "12", "-t", "0"], input=text, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ref


def test_prompt_file_errors_name_the_file(tiny_run, tmp_path):
    missing = tmp_path / "nope.txt"
    p = gen(tiny_run[0], "--prompt-file", missing, check=False)
    assert p.returncode == 1 and "strata: error:" in p.stderr and str(missing) in p.stderr
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9\n")
    p = gen(tiny_run[0], "--prompt-file", bad, check=False)
    assert p.returncode == 1 and str(bad) in p.stderr and "UTF-8" in p.stderr and "byte offset 3" in p.stderr
    p = gen(tiny_run[0], "--prompt-file", tmp_path, check=False)  # a directory
    assert p.returncode == 1 and str(tmp_path) in p.stderr
    p = subprocess.run([BIN, "generate", "--ckpt", str(tiny_run[0]), "--prompt-file", "-"], input=b"\xff\xfe",
                       capture_output=True, timeout=120)
    assert p.returncode == 1 and b"standard input" in p.stderr and b"UTF-8" in p.stderr


def test_prompt_and_prompt_file_exclude_each_other(tiny_run, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("The")
    p = gen(tiny_run[0], "--prompt", "The", "--prompt-file", f, check=False)
    assert p.returncode not in (0, 1) and "excludes" in p.stderr


def test_stop_string_ends_the_sample_and_is_not_printed(tiny_run):
    flags = ["--prompt", "The", "-n", "60", "-t", "1.0", "--seed", "11"]  # a fixed seed: the same tokens
    full = gen(tiny_run[0], *flags).stdout.rstrip("\n")
    cont = full[len("The"):]
    # a two-character string the continuation contains, first seen a few characters in
    stop = next(cont[k:k + 2] for k in range(3, len(cont) - 1) if cont.index(cont[k:k + 2]) >= 3)
    cut = cont.index(stop)
    p = gen(tiny_run[0], *flags, "--stop", stop)
    assert p.stdout == "The" + cont[:cut] + "\n"
    n, _ = timing(p.stderr)
    assert n < 60
    # of several stop strings the first to appear wins; one that never appears changes nothing
    p = gen(tiny_run[0], *flags, "--stop", "\x07never", "--stop", stop)
    assert p.stdout == "The" + cont[:cut] + "\n"
    p = gen(tiny_run[0], *flags, "--stop", "\x07never")
    assert p.stdout == full + "\n"
    # a stop string in the prompt does not count, only in the generated text
    p = gen(tiny_run[0], *flags, "--stop", "The")
    assert p.stdout == "The" + (cont[:cont.index("The")] if "The" in cont else cont) + "\n"


def test_stop_applies_to_each_sample(tiny_run):
    flags = ["--prompt", "The", "-n", "40", "-t", "1.0", "--seed", "3", "--num-samples", "3"]
    samples = gen(tiny_run[0], *flags).stdout.split("\n---\n")
    stop = "e"
    stopped = gen(tiny_run[0], *flags, "--stop", stop).stdout.split("\n---\n")
    assert len(stopped) == 3
    for s, t in zip(samples, stopped):
        cont, tcont = s.rstrip("\n")[3:], t.rstrip("\n")[3:]
        assert stop not in tcont
        assert tcont == (cont[:cont.index(stop)] if stop in cont else cont)


def test_empty_stop_string_is_a_usage_error(tiny_run):
    p = gen(tiny_run[0], "--prompt", "The", "--stop", "", check=False)
    assert p.returncode not in (0, 1) and "--stop" in p.stderr
