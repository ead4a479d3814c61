"""Model parity in bf16 by FlashAttention's rule (docs/precision.md): on the same weights and batch,
the engine's mixed-precision logits, loss and every parameter gradient are compared with the float64
reference (python/strata_ref); the error must be at most 2x that of the reference run wholly in
bf16 (the naive bf16 model, against its own float64 self). Every norm placement, QK-norm, untied
embeddings, Full and Block AttnRes (and its ablations), ReZero, LayerNorm-Scaling, DenseFormer and
MoDA, on both bf16 GEMM paths."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import strata
from strata_ref import RefModel

BASE = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, head_dim=8, ffn_hidden=48, max_seq_len=32, seed=1234)
B, T = 2, 13
CASES = {
    "pre-G2": dict(norm_placement="pre", n_kv_heads=2),
    "post-G4-qknorm": dict(norm_placement="post", n_kv_heads=1, qk_norm=True),
    "reordered-G1-untied": dict(norm_placement="reordered", n_kv_heads=4, tie_embeddings=False),
    "attnres_full": dict(norm_placement="pre", n_kv_heads=2, n_layers=3, residual="attnres_full"),
    "attnres_block2-qknorm": dict(norm_placement="pre", n_kv_heads=1, n_layers=3, residual="attnres_block",
                                  attnres_block_size=2, qk_norm=True),
    "moda-pre": dict(norm_placement="pre", n_kv_heads=2, n_layers=3, attention="moda"),
    "moda-post-qknorm": dict(norm_placement="post", n_kv_heads=1, n_layers=3, attention="moda", qk_norm=True),
    "moda-attnkv-attnres_block": dict(norm_placement="pre", n_kv_heads=2, n_layers=3, attention="moda",
                                      moda_depth_source="attn_kv", residual="attnres_block", attnres_block_size=2),
    "attnres_block3-sigmoid-input-query": dict(norm_placement="pre", n_kv_heads=2, n_layers=3,
                                               residual="attnres_block", attnres_block_size=3, attnres_gate="sigmoid",
                                               attnres_query="input"),
    "rezero": dict(norm_placement="pre", n_kv_heads=2, n_layers=3, residual="rezero"),
    "layernorm_scaling-qknorm": dict(norm_placement="pre", n_kv_heads=1, n_layers=3, residual="layernorm_scaling",
                                     qk_norm=True),
    "denseformer-moda": dict(norm_placement="pre", n_kv_heads=2, n_layers=3, residual="denseformer", attention="moda"),
}


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))


def run_ref(ref, tokens, targets):
    for p in ref.parameters():
        p.grad = None
    logits, loss = ref(torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(targets.astype(np.int64)))
    loss.backward()
    grads = {n: p.grad.detach().to(torch.float64).numpy() for n, p in ref.named_strata_params()}
    return logits.detach().to(torch.float64).numpy(), float(loss), grads


def check(case):
    cfg = dict(BASE, **CASES[case])
    m = strata.Model(cfg)
    rng = np.random.default_rng(7)
    for n in m.param_names():  # perturbed norms, AttnRes queries and the rules' own scalars: every multiply counts
        p = m.get_param(n)
        if n.endswith(("_res_query", "_res_wq", "_alpha")):
            m.set_param(n, (0.3 * rng.standard_normal(p.shape)).astype(np.float32))
        elif n.endswith(".dwa"):
            m.set_param(n, (p + 0.3 * rng.standard_normal(p.shape)).astype(np.float32))
        elif p.ndim == 1:
            m.set_param(n, (1.0 + 0.2 * rng.standard_normal(p.shape)).astype(np.float32))
    # weights exact in bf16, so the naive model and the engine start from the same values
    arrays = {n: torch.from_numpy(m.get_param(n)).to(torch.bfloat16).to(torch.float32).numpy() for n in m.param_names()}
    for n, a in arrays.items():
        m.set_param(n, a)
    ref64, ref16 = RefModel(cfg, dtype=torch.float64), RefModel(cfg, dtype=torch.bfloat16)
    ref64.load_strata_params(arrays)
    ref16.load_strata_params(arrays)
    tokens = rng.integers(0, cfg["vocab_size"], size=(B, T), dtype=np.int32)
    targets = rng.integers(0, cfg["vocab_size"], size=(B, T), dtype=np.int32)

    m.precision = "bf16"
    logits, loss = m.forward(tokens, targets)
    m.backward()
    grads = {n: m.get_grad(n) for n in m.param_names()}
    l64, loss64, g64 = run_ref(ref64, tokens, targets)
    l16, loss16, g16 = run_ref(ref16, tokens, targets)

    failures = []
    def rule(what, e_engine, e_naive):
        if os.environ.get("STRATA_TEST_VERBOSE"):
            print(f"{case} {what}: engine {e_engine:.3e} naive {e_naive:.3e}")
        if not e_engine <= 2 * e_naive:
            failures.append(f"{what}: engine bf16 error {e_engine:.3e} > 2 x naive bf16 error {e_naive:.3e}")
    rule("logits", rel_l2(logits, l64), rel_l2(l16, l64))
    rule("loss", abs(loss - loss64), abs(loss16 - loss64))
    all_e = np.concatenate([grads[n].ravel() for n in grads]), np.concatenate([g16[n].ravel() for n in grads])
    all_t = np.concatenate([g64[n].ravel() for n in grads])
    rule("all gradients", rel_l2(all_e[0], all_t), rel_l2(all_e[1], all_t))
    for n in grads:
        rule(f"gradient {n}", rel_l2(grads[n], g64[n]), rel_l2(g16[n], g64[n]))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("path", ["native", "emulated"])
def test_bf16_parity_within_2x_of_naive_bf16(case, path):
    want = {"native": "1", "emulated": "0"}[path]  # native: wherever the CPU has it, even if not the default
    if os.environ.get("STRATA_BF16_NATIVE") != want:
        # the switch is read once per process: run this case in a child with the path forced
        env = dict(os.environ, STRATA_BF16_NATIVE=want)
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            f"{__file__}::test_bf16_parity_within_2x_of_naive_bf16[{path}-{case}]"],
                           env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        return
    check(case)
