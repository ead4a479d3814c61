"""strata's exports in llama.cpp and transformers, and single-stream decode speed against llama.cpp.

Run by bench/llama_cpp.sh, which builds llama.cpp (llama-bench and bench/llama_greedy.cpp) first.

Checks, on two models trained here for a few hundred steps on the default corpus (the default model,
and the same with QK-norm): strata's logits and greedy ids against
- llama.cpp, on `strata export --format gguf` (architecture llama, or qwen3 with QK-norm);
- transformers, on `strata export --format hf` (LlamaForCausalLM, or Qwen3ForCausalLM), in this
  venv's PyPI torch (the tests use Debian's torch 1.13, which Qwen3's transformers cannot import).

Decode benchmark: the bench model (configs/bench.json, 14M parameters; its weights after one
training step, which leaves the speed as it is) exported to GGUF in f32 and in bf16. Each round
runs, per precision, `strata bench generate --reps 1` (a 64-token prompt, then 128 greedy tokens;
decode tokens/s, the prefill excluded) and `llama-bench -p 0 -n 128 -r 1` (128 tokens from an
empty context) and, with `-d 64`, from a 64-token context as strata's; the order rotates between
rounds. Same threads, same
machine; every process is native (no Python is timed). Reported: each one's median tokens/s with a
95 % percentile-bootstrap interval, and the median of the per-round ratios strata ÷ llama.cpp.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def sh(*cmd, env=None, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


def boot_median(x, seed=1, n=10000):
    x = np.asarray(x, float)
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(x, (n, len(x))), axis=1)
    return {"median": float(np.median(x)), "ci95_low": float(np.quantile(meds, 0.025)),
            "ci95_high": float(np.quantile(meds, 0.975)), "samples": [float(v) for v in x]}


def train(strata, out, sets, steps):
    if (out / "checkpoint.safetensors").exists():
        return
    args = ["train", "--set", f"train.out_dir={out}", "--set", f"train.steps={steps}"]
    for s in sets:
        args += ["--set", s]
    sh(strata, *args, cwd=ROOT)


def strata_side(strata_python, run_dir, text, ids, n_new):
    """strata's logits at every position of `ids`, and the greedy continuation of `text` with the KV
    cache (model.generate, which starts from the same ids: end-of-text, then the text's tokens)."""
    code = f"""
import json, numpy as np, strata
m = strata.load({str(run_dir)!r})
g = m.generate({text!r}, max_tokens={n_new}, temperature=0, stream=True)
list(g)
print(json.dumps({{"logits": m.logits(np.array({ids!r})).tolist(), "ids": g.tokens}}))
"""
    return json.loads(sh(strata_python, "-c", code, env={"PYTHONPATH": str(ROOT / "build" / "python")}).splitlines()[-1])


def hf_side(folder, ids, n_new):
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    x = torch.tensor([ids])
    with torch.no_grad():
        lg = m(x).logits[0].numpy()
        g = m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_new, do_sample=False,
                       eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    return {"arch": type(m).__name__, "logits": lg, "ids": g}


def compare(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return {"max_abs": float(np.abs(a - b).max()), "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b))}


def check(args, name, run_dir, work):
    strata = args.strata
    gguf, hf = work / f"{name}.gguf", work / f"{name}-hf"
    env = {"STRATA_PYTHON": sys.executable}
    sh(strata, "export", "--ckpt", run_dir, "--format", "gguf", "--out", gguf, "--force", env=env)
    sh(strata, "export", "--ckpt", run_dir, "--format", "hf", "--out", hf, "--force")
    text = "The LORD said unto Moses, Go in unto Pharaoh, and tell him"
    tok_ids = json.loads(sh(args.strata_python, "-c",
                            f"import strata, json; m = strata.load({str(run_dir)!r}); "
                            f"print(json.dumps([m.tokenizer.eos_id] + m.tokenizer.encode({text!r})))",
                            env={"PYTHONPATH": str(ROOT / "build" / "python")}).splitlines()[-1])
    n_new = args.check_tokens
    s = strata_side(args.strata_python, run_dir, text, tok_ids, n_new)
    n = len(s["ids"])  # strata stops after an end-of-text token; the others were told not to
    ll = json.loads(sh(pathlib.Path(args.llama_bin) / "llama_greedy", gguf, n_new, args.threads, *tok_ids).splitlines()[-1])
    h = hf_side(str(hf), tok_ids, n_new)
    return {
        "model": name, "prompt_tokens": len(tok_ids), "new_tokens": n,
        "llama_cpp": {"last_logits": compare(ll["first_logits"], s["logits"][-1]), "same_greedy_ids": ll["ids"][:n] == s["ids"],
                      "first_ids": ll["ids"][:12]},
        "transformers": {"class": h["arch"], "logits": compare(h["logits"], s["logits"]),
                         "same_greedy_ids": h["ids"][:n] == s["ids"], "first_ids": h["ids"][:12]},
        "strata_first_ids": s["ids"][:12],
    }


def decode_bench(args, work):
    strata = args.strata
    run_dir = work / "bench-model"
    train(strata, run_dir, [f"model.{k}={json.dumps(v)}" for k, v in
                            json.loads((ROOT / "configs" / "bench.json").read_text())["model"].items()]
          + ["train.batch_size=2", "train.seq_len=64", "train.eval_batches=1", f"train.data_dir={work / 'data'}"], 1)
    ggufs = {}
    for dt in ("f32", "bf16"):
        ggufs[dt] = work / f"bench-model-{dt}.gguf"
        sh(strata, "export", "--ckpt", run_dir, "--format", "gguf", "--dtype", dt, "--out", ggufs[dt], "--force",
           env={"STRATA_PYTHON": sys.executable})
    bench = pathlib.Path(args.llama_bin) / "llama-bench"

    def strata_once(precision):
        js = work / "g.json"
        sh(strata, "bench", "generate", "--ckpt", run_dir, "--precision", precision, "--reps", "1", "--threads",
           args.threads, "--prompt-tokens", "64", "--new-tokens", "128", "--json-out", js)
        c = json.loads(js.read_text())["configs"][0]
        return c["decode_tokens_per_s"]["samples"][0]

    def llama_once(dt, depth):
        out = sh(bench, "-m", ggufs[dt], "-p", "0", "-n", "128", "-t", args.threads, "-r", "1", "-d", depth, "-o", "json")
        return float(json.loads(out)[0]["avg_ts"])

    jobs = []
    for prec, dt in (("fp32", "f32"), ("bf16", "bf16")):
        jobs += [(f"strata {prec}", lambda p=prec: strata_once(p)),
                 (f"llama.cpp {dt} d0", lambda d=dt: llama_once(d, 0)),
                 (f"llama.cpp {dt} d64", lambda d=dt: llama_once(d, 64))]
    runs = {name: [] for name, _ in jobs}
    for r in range(args.reps):
        k = r % len(jobs)
        for name, fn in jobs[k:] + jobs[:k]:  # the order rotates between rounds
            runs[name].append(fn())
        print(f"round {r + 1}/{args.reps}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in runs.items()), file=sys.stderr)
    res = {k: boot_median(v) for k, v in runs.items()}
    for prec, dt in (("fp32", "f32"), ("bf16", "bf16")):
        for d in ("d0", "d64"):
            res[f"strata {prec} / llama.cpp {dt} {d}"] = boot_median(
                np.array(runs[f"strata {prec}"]) / np.array(runs[f"llama.cpp {dt} {d}"]))
    return res


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    return {"cpu": cpu, "avx512f": " avx512f " in flags, "avx512_bf16": "avx512_bf16" in flags,
            "cores": os.cpu_count(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"), "python": platform.python_version()}


def markdown(j):
    m = j["machine"]
    L = [f"# strata's exports in llama.cpp and transformers, and decode speed against llama.cpp ({j['date']})", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, AVX-512 {'yes' if m['avx512f'] else 'no'}, "
         f"AVX512-BF16 {'yes' if m['avx512_bf16'] else 'no'}; OPENBLAS_CORETYPE={m['OPENBLAS_CORETYPE']}, "
         f"OMP_WAIT_POLICY={m['OMP_WAIT_POLICY']}; {j['threads']} threads. llama.cpp from llama-cpp-python "
         f"{j['llama_cpp_python']} (vendored source), GGML_NATIVE; transformers {j['transformers']}, torch {j['torch']}.",
         "", f"Command: `{j['command']}`", "", "## Exports: same logits and greedy ids", "",
         "| model | llama.cpp: last-position logits max-abs / rel L2 | same greedy ids | transformers class | logits max-abs / rel L2 | same greedy ids |",
         "|---|---|---|---|---|---|"]
    for c in j["checks"]:
        a, b = c["llama_cpp"], c["transformers"]
        L.append(f"| {c['model']} ({c['prompt_tokens']}-token prompt, {c['new_tokens']} new) | "
                 f"{a['last_logits']['max_abs']:.2e} / {a['last_logits']['rel_l2']:.2e} | {a['same_greedy_ids']} | "
                 f"{b['class']} | {b['logits']['max_abs']:.2e} / {b['logits']['rel_l2']:.2e} | {b['same_greedy_ids']} |")
    d = j["decode"]
    L += ["", f"## Decode, batch 1, 128 greedy tokens ({j['reps']} interleaved rounds)", "",
          "| | median tokens/s [95 % CI] | strata ÷ this, per round |", "|---|---|---|"]
    for prec, dt in (("fp32", "f32"), ("bf16", "bf16")):
        L.append(f"| strata {prec} | {d['strata ' + prec]['median']:.0f} [{d['strata ' + prec]['ci95_low']:.0f}, "
                 f"{d['strata ' + prec]['ci95_high']:.0f}] | |")
        for dd in ("d0", "d64"):
            k, q = f"llama.cpp {dt} {dd}", d[f"strata {prec} / llama.cpp {dt} {dd}"]
            L.append(f"| {k} | {d[k]['median']:.0f} [{d[k]['ci95_low']:.0f}, {d[k]['ci95_high']:.0f}] | "
                     f"**{q['median']:.3f}** [{q['ci95_low']:.3f}, {q['ci95_high']:.3f}] |")
    L += ["", "strata: `strata bench generate --precision fp32|bf16` (64-token prompt, then 128 tokens; the "
          "prefill excluded; bf16 is strata's mixed precision over the float32 weights). llama.cpp: "
          "`llama-bench -p 0 -n 128` on the f32 or bf16 GGUF export, from an empty context (d0) or with "
          "`-d 64` from a 64-token context, as strata's (d64). Target: strata fp32 ≥ 1.0× llama.cpp f32.", ""]
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--strata", default=str(ROOT / "build" / "strata"))
    ap.add_argument("--strata-python", default="/usr/bin/python3", help="the interpreter strata's package was built for")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--check-steps", type=int, default=300)
    ap.add_argument("--check-tokens", type=int, default=32)
    ap.add_argument("--json-out")
    ap.add_argument("--markdown-out")
    a = ap.parse_args()
    work = ROOT / "bench" / ".llama.cpp" / "models"
    work.mkdir(parents=True, exist_ok=True)
    if not (ROOT / "data" / "corpus" / "default.txt").exists():
        sh("bash", ROOT / "scripts" / "get_corpus.sh", cwd=ROOT)
    checks = []
    for name, sets in (("default", []), ("default-qk-norm", ["model.qk_norm=true"])):
        run_dir = work / name
        train(a.strata, run_dir, sets + [f"train.data_dir={work / 'data'}", "train.eval_every=1000"], a.check_steps)
        checks.append(check(a, name, run_dir, work))
        print(json.dumps(checks[-1]), file=sys.stderr)
    import torch
    import transformers
    j = {"date": datetime.date.today().isoformat(), "command": " ".join(["bash bench/llama_cpp.sh", *sys.argv[3:]]),
         "machine": machine(), "threads": int(a.threads), "reps": a.reps, "llama_cpp_python": "0.3.36",
         "transformers": transformers.__version__, "torch": torch.__version__, "checks": checks,
         "decode": decode_bench(a, work)}
    md = markdown(j)
    print(md)
    if a.json_out:
        pathlib.Path(a.json_out).write_text(json.dumps(j, indent=1) + "\n")
    if a.markdown_out:
        pathlib.Path(a.markdown_out).write_text(md)


if __name__ == "__main__":
    main()
