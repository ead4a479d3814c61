#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora, fuzz/corpus/<target>/: a few valid and a few broken inputs each.

The checkpoint and tokenizer seeds come from a real (tiny) training run of build/strata; the rest is
made here. Run from anywhere after building: python3 fuzz/make_seeds.py [path/to/strata]
"""
import base64
import json
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "fuzz" / "corpus"
STRATA = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "strata"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data.encode() if isinstance(data, str) else data)


def safetensors(header, data=b""):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def shard(tokens, vocab, bpt=None, n=None, magic=b"STRTOKS1", version=1):
    bpt = bpt or (2 if vocab <= 65536 else 4)
    body = b"".join(struct.pack("<H" if bpt == 2 else "<I", t) for t in tokens)
    return magic + struct.pack("<IIQII", version, vocab, len(tokens) if n is None else n, bpt, 0) + body


def tiny_run(tmp):
    """Trains a 270-piece tokenizer and a ~1k-parameter model for 2 steps; returns the run folder."""
    corpus = tmp / "corpus.txt"
    lines = []
    for i in range(400):
        lines.append(" ".join("abcde"[(i * 7 + j * 3) % 5] * (1 + (i + j) % 4) for j in range(8)))
    corpus.write_text("\n".join(lines) + "\n")
    sets = {
        "model.vocab_size": 270, "model.d_model": 4, "model.n_layers": 1, "model.n_heads": 1,
        "model.n_kv_heads": 1, "model.head_dim": 4, "model.ffn_hidden": 4, "model.max_seq_len": 16,
        "train.batch_size": 2, "train.seq_len": 8, "train.steps": 2, "train.warmup": 1,
        "train.eval_every": 2, "train.eval_batches": 1, "train.ckpt_every": 2, "train.log_every": 1,
        "train.corpus": str(corpus), "train.data_dir": str(tmp / "data"), "train.out_dir": str(tmp / "run"),
    }
    args = [str(STRATA), "train"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    subprocess.run(args, check=True, capture_output=True)
    return tmp / "run", tmp / "data"


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    with tempfile.TemporaryDirectory() as t:
        run, data = tiny_run(pathlib.Path(t))
        ckpt = (run / "checkpoint.safetensors").read_bytes()
        tok = (run / "tokenizer.model").read_bytes()
        config = (run / "config.json").read_text()
        val = (data / "val.bin").read_bytes()

    # checkpoint: the real one, one whose config disagrees with its tensors, one cut short. The config
    # of the second describes a model with 8 GB of RoPE tables: load_checkpoint must reject it before
    # allocating anything (it once built the model first; libFuzzer reports that as out-of-memory).
    put("checkpoint", "tiny.safetensors", ckpt)
    n = struct.unpack("<Q", ckpt[:8])[0]
    header = json.loads(ckpt[8 : 8 + n])
    cfg = json.loads(header["__metadata__"]["config"])
    cfg["model"].update({"d_model": 4000, "n_heads": 1, "head_dim": 4000, "max_seq_len": 1000000})
    header["__metadata__"]["config"] = json.dumps(cfg)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    put("checkpoint", "huge_config.safetensors", struct.pack("<Q", len(h)) + h + ckpt[8 + n :])
    put("checkpoint", "truncated.safetensors", ckpt[: 8 + n + 100])
    # format 1: no checksums, loaded unverified
    header = json.loads(ckpt[8 : 8 + n])
    header["__metadata__"]["format"] = "strata-checkpoint-1"
    del header["__metadata__"]["checksums"]
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    put("checkpoint", "format1.safetensors", struct.pack("<Q", len(h)) + h + ckpt[8 + n :])

    # tokenizer_file: the real model, cut short, and not a model at all
    put("tokenizer_file", "tiny.model", tok)
    put("tokenizer_file", "truncated.model", tok[: len(tok) // 2])
    put("tokenizer_file", "garbage.model", b"\x0a\x05hello\x12\x00")
    # a unigram model with an empty piece: SentencePiece throws its own exception type from its trie
    # builder, which once escaped from Tokenizer::from_bytes instead of a strata::Error naming the file
    put("tokenizer_file", "empty_piece.model", base64.b64decode("Cg4KBTx1/AA+FQAAAAAYAgoPCgYA/XgwMj5VAAAKDxgA"))

    # tokenizer_codec: byte 0 even = encode the rest, odd = decode the rest as int16 (1) / int32 (5) ids
    put("tokenizer_codec", "encode_ascii", b"\x00In the beginning was the word.\n\nAnd it came to pass")
    put("tokenizer_codec", "encode_unicode", b"\x00" + "café 東京 🦊 ▁x\t\r\n".encode())
    put("tokenizer_codec", "encode_invalid", b"\x00ok \xed\xa0\x80 \xc0\xaf \xf4\x90\x80\x80")
    put("tokenizer_codec", "decode_int16", b"\x01" + struct.pack("<8h", 1, 2, 3, 100, 259, 260, 299, 0))
    put("tokenizer_codec", "decode_int32", b"\x05" + struct.pack("<4i", 5, 300, -1, 2**31 - 1))

    # token_shard: a real validation shard, a 4-byte one, and broken headers and tokens
    put("token_shard", "val.bin", val[: 32 + 2 * 64] if len(val) > 32 + 128 else val)
    v = shard([1, 2, 3, 65535, 69999], 70000)
    put("token_shard", "wide.bin", v)
    put("token_shard", "empty.bin", shard([], 300))
    put("token_shard", "empty_wide.bin", shard([], 70000))  # copy(0, 0, nullptr) once reached memcpy
    put("token_shard", "bad_magic.bin", shard([1, 2], 300, magic=b"STRTOKS2"))
    put("token_shard", "bad_token.bin", shard([1, 2, 300], 300))
    put("token_shard", "bad_count.bin", shard([1, 2], 300, n=3))
    put("token_shard", "bad_width.bin", shard([1, 2], 300, bpt=4))

    # safetensors: every dtype with metadata, and broken offsets, sizes and headers
    f32 = struct.pack("<6f", 1.5, -2, 3.25, 0, 1e-7, 42)
    good = {
        "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "U8", "shape": [3], "data_offsets": [24, 27]},
        "d": {"dtype": "F64", "shape": [1], "data_offsets": [27, 35]},
        "i": {"dtype": "I32", "shape": [1, 1], "data_offsets": [35, 39]},
        "l": {"dtype": "I64", "shape": [], "data_offsets": [39, 47]},
        "e": {"dtype": "F32", "shape": [0, 5], "data_offsets": [47, 47]},
        "__metadata__": {"format": "test", "note": "seed"},
    }
    data = f32 + b"\x00\xff\x11" + struct.pack("<d", 3.14) + struct.pack("<i", -7) + struct.pack("<q", -9)
    put("safetensors", "all_dtypes.safetensors", safetensors(good, data))
    put("safetensors", "empty.safetensors", safetensors({}))
    overlap = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
               "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}
    put("safetensors", "overlap.safetensors", safetensors(overlap, b"x" * 6))
    gap = {"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}
    put("safetensors", "gap.safetensors", safetensors(gap, b"x" * 4))
    shape = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    put("safetensors", "bad_shape.safetensors", safetensors(shape, b"x" * 8))
    put("safetensors", "huge_header_length.safetensors", struct.pack("<Q", 2**63) + b"{}")
    put("safetensors", "short.safetensors", b"\x02\x00\x00")

    # config: JSON, optionally a NUL byte and newline-separated --set overrides
    put("config", "default.json", (ROOT / "configs" / "default.json").read_text())
    put("config", "tiny_run.json", config)
    put("config", "overrides", '{"model": {"vocab_size": 300}}\0train.steps=5\nmodel.qk_norm=true\n'
        'model.norm_placement=post\ntrain.no_decay=["norm","bias"]')
    put("config", "bad_type.json", '{"model": {"d_model": "wide"}, "train": {"lr": true}}')
    put("config", "bad_dims.json", '{"model": {"d_model": 100, "n_heads": 3, "head_dim": 33}}')
    put("config", "unknown_key.json", '{"train": {"stepz": 3}}')
    put("config", "bad_override", "\0train.=3\n=4\nmodel.d_model.x=1\ntrain")
    put("config", "not_json", '{"model": [1, 2,')
    # --set values that are not UTF-8: once an uncaught json::type_error (in the error message, and
    # when the first checkpoint saved the config)
    put("config", "not_utf8_override", b"{}\0model.qk_norm=x\xff\ntrain.out_dir=run\xff")

    # cli: argv words separated by newlines (a NUL also separates them)
    put("cli", "train", "train\n-c\nconfigs/default.json\n--set\ntrain.steps=5\n--set\nmodel.qk_norm=true")
    put("cli", "generate", "generate\n--ckpt\nruns/tiny\n-p\nOnce upon\n-n\n20\n-t\n0.8\n--top-k\n40\n--top-p\n0.9\n--seed\n7")
    put("cli", "eval", "eval\n--ckpt\nruns/tiny\n--text\ndata/x.txt\n--batches\n3\n--batch-size\n2\n--threads\n1")
    put("cli", "bench", "bench\ntrain\n--threads\n1\n--steps\n2\n--no-peer\n--json-out\nx.json")
    put("cli", "help", "generate\n--help")
    put("cli", "bad_values", "generate\n--top-p\n2\n-n\n-5\n--threads\nzero")
    put("cli", "unknown", "frobnicate\n--x")


if __name__ == "__main__":
    main()
