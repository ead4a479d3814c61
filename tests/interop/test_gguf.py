"""`strata export --format gguf`: the file (read back with the gguf package's reader) holds llama.cpp's
names, keys and vocabulary, and a forward written here in numpy the way llama.cpp computes the
`llama` architecture (interleaved RoPE pairs, on the reordered wq/wk rows) gives strata's logits; the
`qwen3` export (rotate-half RoPE, QK-norm) likewise. Loading it into llama.cpp itself and its decode
speed are in bench/llama_cpp.sh (a llama.cpp build takes longer than these tests may)."""
import json

import numpy as np
import pytest

import strata
from clihelp import TINY_MODEL, run, small_corpus, tiny_run  # noqa: F401  (tiny_run is a fixture)
from test_hf import hf_python, in_hf  # noqa: F401  (hf_python is a fixture: the venv has gguf too)

FORWARD = """
import numpy as np
from gguf import GGUFReader, GGUFValueType
r = GGUFReader(path)
kv = {f.name: f for f in r.fields.values()}
def val(name):
    f = kv[name]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0] == GGUFValueType.STRING else v.tolist()[0]
arch = val("general.architecture")
from gguf.quants import dequantize
T = {t.name: np.array(dequantize(t.data, t.tensor_type), dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
     for t in r.tensors}
types = {t.name: t.tensor_type.name for t in r.tensors}
L, H, Hk = val(arch + ".block_count"), val(arch + ".attention.head_count"), val(arch + ".attention.head_count_kv")
d, eps, theta = val(arch + ".attention.key_length"), val(arch + ".attention.layer_norm_rms_epsilon"), val(arch + ".rope.freq_base")
def rms(x, w): return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
n = len(ids)
ang = np.arange(n)[:, None] * theta ** (-2.0 * np.arange(d // 2) / d)
cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
def rope(x):  # llama: pairs (2i, 2i+1); qwen3 (NEOX): pairs (i, i + d/2)
    if arch == "llama":
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x); out[..., 0::2] = a * cos - b * sin; out[..., 1::2] = a * sin + b * cos
        return out
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], -1)
h = T["token_embd.weight"][ids]
for l in range(L):
    p = f"blk.{l}."
    x = rms(h, T[p + "attn_norm.weight"])
    q = (x @ T[p + "attn_q.weight"].T).reshape(n, H, d)
    k = (x @ T[p + "attn_k.weight"].T).reshape(n, Hk, d)
    v = (x @ T[p + "attn_v.weight"].T).reshape(n, Hk, d)
    if p + "attn_q_norm.weight" in T:
        q, k = rms(q, T[p + "attn_q_norm.weight"]), rms(k, T[p + "attn_k_norm.weight"])
    q, k = rope(q), rope(k)
    k, v = np.repeat(k, H // Hk, 1), np.repeat(v, H // Hk, 1)
    s = np.einsum("thd,uhd->htu", q, k) / np.sqrt(d) + np.triu(np.full((n, n), -np.inf), 1)
    a = np.exp(s - s.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
    h = h + np.einsum("htu,uhd->thd", a, v).reshape(n, H * d) @ T[p + "attn_output.weight"].T
    x = rms(h, T[p + "ffn_norm.weight"])
    g, u = x @ T[p + "ffn_gate.weight"].T, x @ T[p + "ffn_up.weight"].T
    h = h + (g / (1 + np.exp(-g)) * u) @ T[p + "ffn_down.weight"].T
out = T.get("output.weight", T["token_embd.weight"])
logits = rms(h, T["output_norm.weight"]) @ out.T
toks = [bytes(kv["tokenizer.ggml.tokens"].parts[i]).decode() for i in kv["tokenizer.ggml.tokens"].data]
print(json.dumps({"arch": arch, "logits": logits.tolist(), "tokens": toks, "names": sorted(T), "types": types,
                  "wv0": T["blk.0.attn_v.weight"].tolist(),
                  "bos": val("tokenizer.ggml.bos_token_id"), "eos": val("tokenizer.ggml.eos_token_id"),
                  "add_bos": bool(val("tokenizer.ggml.add_bos_token")), "model": val("tokenizer.ggml.model")}))
"""


def gguf_of(run_dir, out, hf_python):
    run("export", "--ckpt", run_dir, "--format", "gguf", "--out", out, env={"STRATA_PYTHON": hf_python})


def check_forward(run_dir, out, hf_python, arch):
    model = strata.load(run_dir)
    ids = [2, *model.tokenizer.encode("the quick brown fox jumps")]
    r = in_hf(hf_python, FORWARD, path=str(out), ids=ids)
    assert r["arch"] == arch and r["model"] == "llama" and not r["add_bos"]
    a, b = model.logits(np.array(ids)), np.array(r["logits"])
    assert np.abs(a - b).max() <= 1e-4 and np.linalg.norm(a - b) / np.linalg.norm(b) <= 1e-5
    tok = model.tokenizer
    assert r["tokens"][:3] == ["<unk>", "<s>", "</s>"] and len(r["tokens"]) == tok.vocab_size
    assert (r["bos"], r["eos"]) == (tok.bos_id, tok.eos_id)
    return r


def test_llama_gguf_computes_strata_logits(tiny_run, hf_python, tmp_path):
    out = tmp_path / "m.gguf"
    gguf_of(tiny_run[0], out, hf_python)
    r = check_forward(tiny_run[0], out, hf_python, "llama")
    assert "output.weight" not in r["names"] and "blk.1.attn_q.weight" in r["names"]  # tied embeddings


def test_qwen3_gguf_computes_strata_logits(hf_python, tmp_path):
    d = tmp_path
    corpus = small_corpus(d / "corpus.txt")
    run("train", *TINY_MODEL, "--set", "model.qk_norm=true", "--set", "model.tie_embeddings=false",
        "--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}",
        "--set", f"train.out_dir={d / 'run'}", "--set", "train.steps=3")
    out = d / "q.gguf"
    gguf_of(d / "run", out, hf_python)
    r = check_forward(d / "run", out, hf_python, "qwen3")
    assert "blk.0.attn_q_norm.weight" in r["names"] and "output.weight" in r["names"]


def bf16_round(a):
    """float32 to the nearest bfloat16 (ties to even), back as float32."""
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def test_bf16_gguf_holds_the_rounded_matrices(tiny_run, hf_python, tmp_path):
    out = tmp_path / "b.gguf"
    run("export", "--ckpt", tiny_run[0], "--format", "gguf", "--dtype", "bf16", "--out", out,
        env={"STRATA_PYTHON": hf_python})
    model = strata.load(tiny_run[0])
    ids = [2, *model.tokenizer.encode("the quick brown fox jumps")]
    r = in_hf(hf_python, FORWARD, path=str(out), ids=ids)
    assert r["types"]["blk.0.attn_q.weight"] == "BF16" and r["types"]["blk.0.attn_norm.weight"] == "F32"
    assert np.array_equal(np.array(r["wv0"], np.float32), bf16_round(model.get_param("blocks.0.wv")))
    a, b = model.logits(np.array(ids)), np.array(r["logits"])
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 2e-2  # bf16 weights: about 3 significant digits
    p = run("export", "--ckpt", tiny_run[0], "--format", "hf", "--dtype", "bf16", "--out", tmp_path / "h", check=False)
    assert p.returncode == 1 and "only --format gguf" in p.stderr


def test_gguf_refusals(tiny_run, tmp_path, hf_python):
    out = tmp_path / "m.gguf"
    out.write_text("old")
    p = run("export", "--ckpt", tiny_run[0], "--format", "gguf", "--out", out, check=False,
            env={"STRATA_PYTHON": hf_python})
    assert p.returncode == 1 and "pass --force" in p.stderr and out.read_text() == "old"
    # an interpreter without the gguf package: the error says what to install, nothing is left behind
    p = run("export", "--ckpt", tiny_run[0], "--format", "gguf", "--out", tmp_path / "n.gguf", check=False,
            env={"STRATA_PYTHON": "/usr/bin/python3", "PYTHONPATH": ""})
    assert p.returncode == 1 and "needs the Python packages gguf and numpy" in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.gguf"]
