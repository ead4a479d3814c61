"""Shared helpers for the CLI-level tests (e2e, reliability): run the binary, make a tiny run."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(os.environ.get("STRATA_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[1]))
BIN = os.environ.get("STRATA_BIN", str(ROOT / "build" / "strata"))


def run(*args, env=None, check=True, timeout=600, cwd=None):
    """Runs the strata CLI (or a script when args[0] ends in .sh); returns the CompletedProcess."""
    cmd = ["bash", *map(str, args)] if str(args[0]).endswith(".sh") else [BIN, *map(str, args)]
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout, cwd=cwd or ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def small_corpus(path: pathlib.Path, n_bytes=60000):
    """A small English corpus: the head of the default corpus when present, else generated prose."""
    default = ROOT / "data" / "corpus" / "default.txt"
    if default.exists():
        text = default.read_bytes()[:n_bytes].decode("utf-8", errors="ignore")
    else:
        words = "the quick brown fox jumps over the lazy dog while seven wise owls watch quietly".split()
        text = "\n".join(" ".join(words[(i * 3 + j) % len(words)] for j in range(12)) + "." for i in range(n_bytes // 70))
    path.write_text(text, encoding="utf-8")
    return path


TINY_MODEL = [
    "--set", "model.vocab_size=320", "--set", "model.d_model=32", "--set", "model.n_layers=2",
    "--set", "model.n_heads=4", "--set", "model.n_kv_heads=2", "--set", "model.head_dim=8",
    "--set", "model.ffn_hidden=48", "--set", "model.max_seq_len=64",
    "--set", "train.batch_size=4", "--set", "train.seq_len=32", "--set", "train.eval_batches=2",
    "--set", "train.warmup=2", "--set", "train.log_every=1",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny model trained for 6 steps on a small corpus: (run_dir, corpus, data_dir, base args)."""
    d = tmp_path_factory.mktemp("tiny")
    corpus = small_corpus(d / "corpus.txt")
    args = ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}",
            "--set", f"train.out_dir={d / 'run'}", *TINY_MODEL]
    run("train", "--set", "train.steps=6", "--set", "train.ckpt_every=3", *args)
    return d / "run", corpus, d / "data", args


def ckpt_content(run_dir):
    """A checkpoint's tensors index, metadata, config (less the run directory it names) and data bytes."""
    import json
    import struct
    raw = (run_dir / "checkpoint.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    cfg = json.loads(meta.pop("config"))
    del cfg["train"]["out_dir"]
    return header, meta, cfg, raw[8 + n:]


def feature_args(d):
    """Train arguments for the feature tests (AttnRes, MoDA): a small corpus in folder d, the tiny
    model, a learning rate at which 16 steps visibly learn, no evaluation during training."""
    corpus = small_corpus(d / "corpus.txt")
    return ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}", *TINY_MODEL,
            "--set", "train.threads=2", "--set", "train.lr=0.01", "--set", "train.eval_every=1000"]


def losses(run_dir):
    """The training losses of a run, in step order."""
    import json
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def tensor_names(run_dir):
    """The names of the tensors in a run's checkpoint."""
    import json
    import struct
    raw = (run_dir / "checkpoint.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return set(json.loads(raw[8:8 + n])) - {"__metadata__"}


def xxh3_64(data):
    """The XXH3-64 digest of `data` in the form checkpoints record it (16 lowercase hex digits), computed
    by the xxHash library strata links."""
    import ctypes
    import ctypes.util
    lib = ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0")
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return "%016x" % lib.XXH3_64bits(bytes(data), len(data))


_PYPI = {}


def pypi_or_skip(python=None):
    """Skips the calling test when pip cannot reach its package index: no network, or a TLS proxy
    whose certificate this machine does not trust. (The tests that install from PyPI, the package's
    build requirements and transformers, cannot run there; everything else runs.) Any other pip
    failure is not a skip: the test goes on and fails on it."""
    import sys
    import tempfile
    python = python or sys.executable
    if python not in _PYPI:
        with tempfile.TemporaryDirectory() as d:
            p = subprocess.run([python, "-m", "pip", "download", "--no-deps", "--quiet", "--retries", "1",
                                "--timeout", "20", "-d", d, "packaging"], capture_output=True, text=True, timeout=300)
        out = p.stdout + p.stderr
        unreachable = p.returncode != 0 and any(s in out for s in (
            "SSLError", "CERTIFICATE_VERIFY_FAILED", "Could not fetch URL", "NewConnectionError",
            "Temporary failure in name resolution", "Network is unreachable", "ConnectTimeout",
            "No matching distribution found for packaging"))
        _PYPI[python] = (p.returncode == 0, out.strip().splitlines()[-1] if unreachable and out.strip() else "")
        if p.returncode != 0 and not unreachable:
            raise AssertionError(f"pip download failed for another reason than the network:\n{out[-3000:]}")
    ok, why = _PYPI[python]
    if not ok:
        pytest.skip(f"pip cannot reach its package index from here ({why})")
