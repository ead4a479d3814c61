"""Hugging Face interop: `strata export --format hf` loads into transformers (LlamaForCausalLM) with
the same logits, greedy ids and tokenizer ids; export then import gives the same model; a Qwen3
(QK-norm) export round-trips; models without an HF class, existing outputs and configs outside the
import subset are refused by name; `--format safetensors` writes any model.

transformers runs in a venv (--system-site-packages, so Debian's torch 1.13, numpy and sentencepiece
are reused) under the build folder, made once: transformers 4.44.2, the last release we found that
imports with torch 1.13. Qwen3 needs transformers ≥ 4.51, which needs torch ≥ 2, so here the Qwen3
export is checked by its round trip and its tensor names only (docs/interop.md). The tests that need
the venv are skipped, saying so, where pip cannot reach PyPI; the others need nothing from it."""
import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import strata
from clihelp import BIN, TINY_MODEL, pypi_or_skip, run, small_corpus, tiny_run  # noqa: F401  (tiny_run is a fixture)

TRANSFORMERS = ["transformers==4.44.2", "gguf"]


@pytest.fixture(scope="session")
def hf_python():
    """The venv's interpreter, with transformers and gguf (made under the build folder once, then reused)."""
    venv = pathlib.Path(BIN).resolve().parent / "hf-venv"
    py = venv / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import transformers, torch, sentencepiece, gguf"],
                                        capture_output=True).returncode == 0
    if not ok:
        pypi_or_skip()
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--clear", str(venv)], check=True)
        p = subprocess.run([str(py), "-m", "pip", "install", "--quiet", *TRANSFORMERS], capture_output=True,
                           text=True, timeout=900)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return str(py)


def in_hf(hf_python, script, **values):
    """Runs `script` (with `values` as JSON globals) in the transformers venv; returns its JSON output."""
    pre = "import json\n" + "".join(f"{k} = json.loads({json.dumps(json.dumps(v))})\n" for k, v in values.items())
    p = subprocess.run([hf_python, "-c", pre + textwrap.dedent(script)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def export(ckpt, out, *flags, fmt="hf", check=True):
    return run("export", "--ckpt", ckpt, "--format", fmt, "--out", out, *flags, check=check)


def test_transformers_gives_strata_logits_greedy_ids_and_tokens(tiny_run, hf_python, tmp_path):
    out = tmp_path / "hf"
    assert "LlamaForCausalLM" in export(tiny_run[0], out).stdout
    model = strata.load(tiny_run[0])
    tok = model.tokenizer
    text = "the quick brown fox\n jumps over 12 lazy dogs 🎉"
    ids = [tok.eos_id, *tok.encode(text)]
    gen = model.generate(text, max_tokens=24, temperature=0, stream=True)
    list(gen)
    r = in_hf(hf_python, """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = m(x).logits[0].tolist()
        g = m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_new, do_sample=False,
                       eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        t = AutoTokenizer.from_pretrained(out, use_fast=False)
        print(json.dumps({"arch": type(m).__name__, "logits": logits, "greedy": g, "tokens": t.encode(text),
                          "bos": t.bos_token_id, "eos": t.eos_token_id, "decoded": t.decode(t.encode(text))}))
    """, out=str(out), ids=ids, n_new=len(gen.tokens), text=text)
    assert r["arch"] == "LlamaForCausalLM"
    a, b = model.logits(np.array(ids)), np.array(r["logits"])
    assert np.abs(a - b).max() <= 1e-4 and np.linalg.norm(a - b) / np.linalg.norm(b) <= 1e-5
    # strata stops at the end-of-text token; transformers was told not to, so compare what strata made
    assert r["greedy"][: len(gen.tokens)] == gen.tokens
    assert r["tokens"] == tok.encode(text) and r["decoded"] == text
    assert (r["bos"], r["eos"]) == (tok.bos_id, tok.eos_id)


def test_export_then_import_is_the_same_model(tiny_run, tmp_path):
    out = tmp_path / "hf"
    export(tiny_run[0], out)
    a, b = strata.load(tiny_run[0]), strata.load(out)
    x = np.array([2, 5, 9, 40, 7])
    assert np.array_equal(a.logits(x), b.logits(x))
    assert b.tokenizer.encode("a b c") == a.tokenizer.encode("a b c")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_key_value_heads"] == 2
    assert cfg["tie_word_embeddings"] is True and cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == 2
    # the CLI reads the folder too, and a run can start from it
    assert run("generate", "--ckpt", out, "--prompt", "the", "-n", "8", "-t", "0").stdout == \
        run("generate", "--ckpt", tiny_run[0], "--prompt", "the", "-n", "8", "-t", "0").stdout
    _, corpus, data, args = tiny_run
    run("train", *args, "--set", f"train.out_dir={tmp_path / 'ft'}", "--set", "train.steps=2",
        "--set", f"train.init_from={out}")
    assert (tmp_path / "ft" / "checkpoint.safetensors").exists()


def test_qwen3_export_round_trips(tmp_path):
    d = tmp_path
    corpus = small_corpus(d / "corpus.txt")
    run("train", *TINY_MODEL, "--set", "model.qk_norm=true", "--set", f"train.corpus={corpus}",
        "--set", f"train.data_dir={d / 'data'}", "--set", f"train.out_dir={d / 'run'}", "--set", "train.steps=3")
    out = d / "hf"
    assert "Qwen3ForCausalLM" in export(d / "run", out).stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen3" and cfg["head_dim"] == 8
    raw = (out / "model.safetensors").read_bytes()
    names = set(json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])) - {"__metadata__"}
    assert "model.layers.1.self_attn.q_norm.weight" in names and "model.layers.0.self_attn.k_norm.weight" in names
    x = np.array([2, 3, 4, 5])
    assert np.array_equal(strata.load(d / "run").logits(x), strata.load(out).logits(x))


@pytest.mark.parametrize("sets,mention", [
    (["model.norm_placement=post"], 'norm_placement "post" has no Hugging Face class'),
    (["model.residual=attnres_block"], 'residual "attnres_block" has no Hugging Face class'),
    (["model.attention=moda"], 'attention "moda" has no Hugging Face class'),
])
def test_models_without_an_hf_class_are_refused_and_export_as_safetensors(tmp_path, sets, mention):
    d = tmp_path
    corpus = small_corpus(d / "corpus.txt")
    run("train", *TINY_MODEL, *[a for s in sets for a in ("--set", s)], "--set", f"train.corpus={corpus}",
        "--set", f"train.data_dir={d / 'data'}", "--set", f"train.out_dir={d / 'run'}", "--set", "train.steps=1")
    p = export(d / "run", d / "hf", check=False)
    assert p.returncode == 1 and mention in p.stderr and "--format safetensors" in p.stderr
    assert not (d / "hf").exists()
    export(d / "run", d / "w.safetensors", fmt="safetensors")
    raw = (d / "w.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    meta = header.pop("__metadata__")
    assert meta["format"] == "strata-weights-1"
    assert json.loads(meta["strata_config"]) == strata.load(d / "run").config
    assert set(header) == set(strata.load(d / "run").param_names())


def test_an_existing_output_needs_force(tiny_run, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = export(tiny_run[0], out, check=False)
    assert p.returncode == 1 and "exists and is not empty; pass --force" in p.stderr
    assert (out / "keep.txt").read_text() == "mine"
    export(tiny_run[0], out, "--force")
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    f = tmp_path / "w.safetensors"
    f.write_text("old")
    assert export(tiny_run[0], f, fmt="safetensors", check=False).returncode == 1 and f.read_text() == "old"
    export(tiny_run[0], f, "--force", fmt="safetensors")
    assert f.stat().st_size > 1000
    # an empty directory is not "existing"
    (tmp_path / "empty").mkdir()
    export(tiny_run[0], tmp_path / "empty")
    assert list(tmp_path.glob("*.tmp-*")) == []


@pytest.mark.parametrize("edit,mention", [
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"some_new_key": 1}, 'key "some_new_key" is outside what strata imports'),
    ({"architectures": ["MistralForCausalLM"]}, "architectures"),
])
def test_configs_outside_the_import_subset_are_refused_by_name(tiny_run, tmp_path, edit, mention):
    out = tmp_path / "hf"
    export(tiny_run[0], out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(edit)
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(strata.Error, match=mention):
        strata.load(out)
    p = run("generate", "--ckpt", out, "--prompt", "x", "-n", "2", check=False)
    assert p.returncode == 1 and mention in p.stderr


def test_a_folder_without_tokenizer_loads_in_python_only(tiny_run, tmp_path):
    out = tmp_path / "hf"
    export(tiny_run[0], out)
    (out / "tokenizer.model").unlink()
    m = strata.load(out)
    assert m.tokenizer is None and m.logits(np.array([1, 2])).shape == (2, 320)
    p = run("generate", "--ckpt", out, "--prompt", "x", "-n", "2", check=False)
    assert p.returncode == 1 and "without tokenizer.model" in p.stderr
    # a tensor of the wrong shape is named
    raw = (out / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["model.norm.weight"]["shape"] = [16, 2]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (out / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    with pytest.raises(strata.Error, match="model.norm.weight has shape"):
        strata.load(out)
