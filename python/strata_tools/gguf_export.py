"""A strata model as a GGUF file for llama.cpp (`strata export --format gguf`), written with the gguf
package (PyPI).

`strata export` hands over two files: the model's weights under strata's names with its config in
the metadata (the `--format safetensors` export), and the tokenizer's vocabulary as JSON (pieces,
scores, kinds and the special ids). Standard pre-norm models only, as for `--format hf`:

- without QK-norm the architecture is llama.cpp's `llama`. Its RoPE rotates interleaved pairs
  (x[2i], x[2i+1]), where strata (and Hugging Face) rotate (x[i], x[i + d/2]); so the rows of each
  head of wq and wk are reordered to a0, b0, a1, b1, ... (a: the first half, b: the second), which
  makes the two rotations the same;
- with QK-norm it is `qwen3`, whose RoPE is the rotate-half kind: nothing is reordered.

The matrices are float32, or bfloat16 with `--dtype bf16` (rounded to nearest even; the norm weights
stay float32). The tokenizer is llama.cpp's SentencePiece kind ("llama"), with no BOS added and no space prefix,
as strata encodes. The output is written beside its path and renamed into place. Errors are one
stderr line starting with ERROR_PREFIX (exit status 1), which `strata export` reports.
"""
import argparse
import json
import os
import struct
import sys

ERROR_PREFIX = "strata-gguf-error: "
GGUF_MISSING = ("strata export --format gguf needs the Python packages gguf and numpy (PyPI): "
                "python3 -m pip install gguf numpy, or point STRATA_PYTHON at an interpreter that has them")
# llama.cpp's token types
TOKEN_TYPES = {"normal": 1, "unknown": 2, "control": 3, "unused": 5, "byte": 6}


class ExportError(Exception):
    pass


def read_safetensors(path):
    """The float32 tensors of a safetensors file as numpy arrays, and its metadata."""
    import numpy as np
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, t in header.items():
        if t["dtype"] != "F32":
            raise ExportError(f"{path}: tensor {name} is {t['dtype']}, expected F32")
        lo, hi = t["data_offsets"]
        out[name] = np.frombuffer(data[lo:hi], dtype=np.float32).reshape(t["shape"])
    return out, meta


def interleave_heads(w, n_head):
    """Rows of each head reordered from (first half, second half) to interleaved pairs."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, -1).swapaxes(1, 2).reshape(w.shape)


def export(weights, vocab, out, dtype="f32"):
    try:
        import gguf
        import numpy  # noqa: F401
    except ImportError:
        raise ExportError(GGUF_MISSING)
    t, meta = read_safetensors(weights)
    cfg = json.loads(meta["strata_config"])
    with open(vocab, encoding="utf-8") as f:
        voc = json.load(f)
    qwen = bool(cfg["qk_norm"])
    arch = "qwen3" if qwen else "llama"
    H, Hk, L = cfg["n_heads"], cfg["n_kv_heads"], cfg["n_layers"]
    tmp = f"{out}.tmp-{os.getpid()}"
    w = gguf.GGUFWriter(tmp, arch)
    try:
        w.add_name("strata")
        w.add_context_length(cfg["max_seq_len"])
        w.add_embedding_length(cfg["d_model"])
        w.add_block_count(L)
        w.add_feed_forward_length(cfg["ffn_hidden"])
        w.add_head_count(H)
        w.add_head_count_kv(Hk)
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
        w.add_rope_dimension_count(cfg["head_dim"])
        w.add_rope_freq_base(float(cfg["rope_theta"]))
        w.add_layer_norm_rms_eps(float(cfg["norm_eps"]))
        w.add_vocab_size(cfg["vocab_size"])
        bf16 = dtype == "bf16"
        w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32)
        w.add_tokenizer_model("llama")
        w.add_token_list([p.encode("utf-8") for p in voc["tokens"]])
        w.add_token_scores([float(s) for s in voc["scores"]])
        w.add_token_types([TOKEN_TYPES[k] for k in voc["kinds"]])
        w.add_bos_token_id(voc["bos"])
        w.add_eos_token_id(voc["eos"])
        w.add_unk_token_id(voc["unk"])
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(False)

        def put(name, a):
            a = numpy_f32(a)
            if bf16 and a.ndim == 2:  # the matrices; norm weights stay float32, as llama.cpp's converter keeps them
                q = gguf.GGMLQuantizationType.BF16
                w.add_tensor(name, gguf.quants.quantize(a, q), raw_dtype=q)
            else:
                w.add_tensor(name, a)

        put("token_embd.weight", t["tok_emb"])
        for l in range(L):
            p, b = f"blocks.{l}.", f"blk.{l}."
            q, k = t[p + "wq"], t[p + "wk"]
            if not qwen:
                q, k = interleave_heads(q, H), interleave_heads(k, Hk)
            put(b + "attn_norm.weight", t[p + "attn_norm"])
            put(b + "attn_q.weight", q)
            put(b + "attn_k.weight", k)
            put(b + "attn_v.weight", t[p + "wv"])
            put(b + "attn_output.weight", t[p + "wo"])
            if qwen:
                put(b + "attn_q_norm.weight", t[p + "q_norm"])
                put(b + "attn_k_norm.weight", t[p + "k_norm"])
            put(b + "ffn_norm.weight", t[p + "mlp_norm"])
            put(b + "ffn_gate.weight", t[p + "w_gate"])
            put(b + "ffn_up.weight", t[p + "w_up"])
            put(b + "ffn_down.weight", t[p + "w_down"])
        put("output_norm.weight", t["final_norm"])
        if not cfg["tie_embeddings"]:
            put("output.weight", t["lm_head"])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def numpy_f32(a):
    import numpy as np
    return np.ascontiguousarray(a, dtype=np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description="a strata model as GGUF (strata export --format gguf)")
    ap.add_argument("--weights", required=True, help="the model's safetensors export (strata names, config)")
    ap.add_argument("--vocab", required=True, help="the tokenizer's vocabulary as JSON")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=("f32", "bf16"), default="f32", help="of the matrices (norms stay f32)")
    a = ap.parse_args(argv)
    try:
        export(a.weights, a.vocab, a.out, a.dtype)
    except (ExportError, OSError, KeyError, ValueError) as e:
        print(ERROR_PREFIX + str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
