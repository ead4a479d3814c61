"""Self-checks of the PyTorch reference (python/strata_ref) that need no compiled `strata` module."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.stateless import functional_call

from strata_ref import RefAdamW, RefModel, greedy_generate, param_shapes, resolve_config
from strata_ref.model import apply_rope, cross_entropy, rope_cos_sin

SMALL = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
             ffn_hidden=48, max_seq_len=32)
TINY = dict(vocab_size=11, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=4, ffn_hidden=6,
            max_seq_len=8)

VARIANTS = [
    dict(norm_placement="pre"),
    dict(norm_placement="post"),
    dict(norm_placement="reordered"),
    dict(norm_placement="pre", qk_norm=True),
    dict(norm_placement="post", tie_embeddings=False),
    dict(norm_placement="reordered", qk_norm=True, tie_embeddings=False),
]


def batch(cfg, B, T, seed=0, ignore_some=False):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
    targets = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
    if ignore_some:
        targets[0, :3] = -1
        targets[1, -2] = -100
    return tokens, targets


def rel_l2(a, b):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return float(torch.linalg.norm(a - b) / max(float(torch.linalg.norm(b)), 1e-30))


def test_param_names_and_shapes():
    cfg = dict(SMALL, qk_norm=True, tie_embeddings=False)
    m = RefModel(cfg)
    names = [n for n, _ in m.named_strata_params()]
    expect = ["tok_emb"]
    for l in range(2):
        expect += [f"blocks.{l}.{s}" for s in ("attn_norm", "wq", "wk", "wv", "q_norm", "k_norm", "wo",
                                                 "mlp_norm", "w_gate", "w_up", "w_down")]
    expect += ["final_norm", "lm_head"]
    assert names == expect
    shapes = param_shapes(resolve_config(cfg))
    assert shapes["blocks.1.wk"] == (16, 32) and shapes["blocks.0.wq"] == (32, 32)
    assert shapes["blocks.0.q_norm"] == (8,) and shapes["blocks.0.w_down"] == (32, 48)
    for n, p in m.named_strata_params():
        assert tuple(p.shape) == shapes[n]
    tied = RefModel(SMALL)
    tied_names = [n for n, _ in tied.named_strata_params()]
    assert "lm_head" not in tied_names and "blocks.0.q_norm" not in tied_names


def test_init_statistics():
    cfg = dict(SMALL, d_model=64, n_heads=8, head_dim=8, n_layers=4, ffn_hidden=128)
    m = RefModel(cfg)
    std = cfg.get("init_std", 0.02)
    for n, p in m.named_strata_params():
        if p.dim() == 1:
            assert torch.all(p == 1), n
        else:
            want = std / math.sqrt(2 * 4) if n.endswith((".wo", ".w_down")) else std
            assert abs(float(p.std()) / want - 1) < 0.1, n
            assert abs(float(p.mean())) < 0.2 * want, n


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_init_loss_is_about_log_vocab(variant):
    cfg = dict(SMALL, **variant)
    m = RefModel(cfg)
    tokens, targets = batch(cfg, 2, 13)
    logits, loss = m(tokens, targets)
    assert logits.shape == (2, 13, 97) and logits.dtype == torch.float64
    assert abs(float(loss) - math.log(97)) < 0.1


def test_bad_configs_raise():
    with pytest.raises(ValueError):
        resolve_config(dict(SMALL, d_model=30))
    with pytest.raises(ValueError):
        resolve_config(dict(SMALL, n_heads=4, n_kv_heads=3))
    with pytest.raises(ValueError):
        resolve_config(dict(SMALL, not_a_key=1))
    with pytest.raises(ValueError):
        resolve_config(dict(SMALL, norm_placement="sandwich"))
    assert resolve_config({})["d_model"] == 384


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_float32_matches_float64(variant):
    cfg = dict(SMALL, **variant)
    m64 = RefModel(cfg, dtype=torch.float64)
    m32 = RefModel(cfg, dtype=torch.float32)
    m32.load_strata_params({n: p.detach().numpy() for n, p in m64.named_strata_params()})
    tokens, targets = batch(cfg, 2, 13, ignore_some=True)
    l64, loss64 = m64(tokens, targets)
    l32, loss32 = m32(tokens, targets)
    assert l32.dtype == torch.float32
    assert rel_l2(l32.detach(), l64.detach()) < 1e-5
    assert abs(float(loss32) - float(loss64)) / float(loss64) < 1e-5
    loss64.backward()
    loss32.backward()
    for (n, p64), (_, p32) in zip(m64.named_strata_params(), m32.named_strata_params()):
        assert rel_l2(p32.grad, p64.grad) < 1e-4, n


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_gradcheck(variant):
    cfg = dict(TINY, **variant, init_std=0.3)
    m = RefModel(cfg, dtype=torch.float64)
    tokens, targets = batch(cfg, 2, 5, seed=3)
    targets[0, 1] = -1
    named = m.named_strata_params()
    attrs = [n.replace(".", "__") for n, _ in named]
    inputs = tuple(p.detach().clone().requires_grad_(True) for _, p in named)

    def f(*ps):
        _, loss = functional_call(m, dict(zip(attrs, ps)), (tokens, targets))
        return loss

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def naive_attention_block(model, x, l):
    """Loop-based attention of block l (independent of the vectorized code in the reference)."""
    cfg = model.cfg
    B, T, D = x.shape
    H, Hk, d = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    G = H // Hk
    p = f"blocks.{l}."
    wq, wk, wv, wo = (model.param(p + s) for s in ("wq", "wk", "wv", "wo"))
    out = torch.zeros(B, T, H * d, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            kvh = h // G
            for t in range(T):
                def rope(vec, pos):
                    r = vec.clone()
                    for i in range(d // 2):
                        a = pos * cfg["rope_theta"] ** (-2.0 * i / d)
                        x0, x1 = vec[i], vec[i + d // 2]
                        r[i] = x0 * math.cos(a) - x1 * math.sin(a)
                        r[i + d // 2] = x0 * math.sin(a) + x1 * math.cos(a)
                    return r

                def head_vec(w, hh, pos, norm):
                    vec = w[hh * d:(hh + 1) * d] @ x[b, pos]
                    if cfg["qk_norm"] and norm is not None:
                        vec = vec / torch.sqrt((vec * vec).mean() + cfg["norm_eps"]) * model.param(p + norm)
                    return vec

                q = rope(head_vec(wq, h, t, "q_norm"), t)
                scores = []
                for s in range(t + 1):
                    k = rope(head_vec(wk, kvh, s, "k_norm"), s)
                    scores.append(float(q @ k) / math.sqrt(d))
                mx = max(scores)
                w = [math.exp(sc - mx) for sc in scores]
                z = sum(w)
                acc = torch.zeros(d, dtype=x.dtype)
                for s in range(t + 1):
                    acc += (w[s] / z) * head_vec(wv, kvh, s, None)
                out[b, t, h * d:(h + 1) * d] = acc
    return out @ wo.t()


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_against_naive_loops(heads, qk_norm):
    cfg = dict(SMALL, n_heads=heads[0], n_kv_heads=heads[1], qk_norm=qk_norm, init_std=0.2)
    m = RefModel(cfg)
    if qk_norm:
        with torch.no_grad():
            m.param("blocks.1.q_norm").uniform_(0.5, 1.5)
            m.param("blocks.1.k_norm").uniform_(0.5, 1.5)
    x = torch.randn(2, 6, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = m._attention(x, 1)
        want = naive_attention_block(m, x, 1)
    assert rel_l2(got, want) < 1e-12


def test_rope_properties():
    d, T = 8, 10
    cos, sin = rope_cos_sin(T, d, 10000.0, torch.float64)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(d, dtype=torch.float64, generator=g)
    k = torch.randn(d, dtype=torch.float64, generator=g)
    qs = apply_rope(q.expand(T, d), cos, sin)
    ks = apply_rope(k.expand(T, d), cos, sin)
    # position 0 is the identity, rotations preserve the norm
    assert torch.allclose(qs[0], q)
    assert torch.allclose(qs.norm(dim=-1), q.norm().expand(T))
    # the score depends only on the relative position
    dots = qs @ ks.t()
    for off in range(-3, 4):
        diag = torch.diagonal(dots, off)
        assert torch.allclose(diag, diag[0].expand_as(diag), atol=1e-12)


def test_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 7, 13, dtype=torch.float64, generator=g) * 3
    targets = torch.randint(0, 13, (3, 7), generator=g)
    targets[0, 0] = -1
    targets[2, 3:] = -5
    want = F.cross_entropy(logits.reshape(-1, 13), torch.where(targets < 0, -100, targets).reshape(-1),
                           ignore_index=-100)
    assert abs(float(cross_entropy(logits, targets)) - float(want)) < 1e-12


def test_forward_is_causal():
    cfg = dict(SMALL, norm_placement="post")
    m = RefModel(cfg)
    tokens, _ = batch(cfg, 1, 12)
    tokens2 = tokens.clone()
    tokens2[0, 8:] = (tokens2[0, 8:] + 1) % 97
    with torch.no_grad():
        a, _ = m(tokens)
        b, _ = m(tokens2)
    assert torch.equal(a[0, :8], b[0, :8])
    assert not torch.allclose(a[0, 8:], b[0, 8:])


def test_adamw_matches_torch_optim():
    cfg = dict(SMALL, qk_norm=True, tie_embeddings=False)
    a = RefModel(cfg)
    b = RefModel(cfg)
    b.load_strata_params({n: p.detach().numpy() for n, p in a.named_strata_params()})
    opt_a = RefAdamW(a)
    params_b = b.named_strata_params()
    opt_b = torch.optim.AdamW([
        {"params": [p for _, p in params_b if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for _, p in params_b if p.dim() == 1], "weight_decay": 0.0},
    ], lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    losses = []
    tokens, targets = batch(cfg, 2, 9)
    for step in range(5):
        for model in (a, b):
            for _, p in model.named_strata_params():
                p.grad = None
        _, la = a(tokens, targets)
        _, lb = b(tokens, targets)
        la.backward()
        lb.backward()
        assert abs(float(la) - float(lb)) < 1e-12
        losses.append(float(la))
        opt_a.step(lr=1e-2)
        opt_b.step()
    for (n, pa), (_, pb) in zip(a.named_strata_params(), b.named_strata_params()):
        assert rel_l2(pa.detach(), pb.detach()) < 1e-12, n
    assert losses[-1] < losses[0]


def test_adamw_no_decay_on_norms():
    cfg = dict(SMALL)
    m = RefModel(cfg)
    opt = RefAdamW(m)
    for _, p in m.named_strata_params():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in m.named_strata_params()}
    opt.step(lr=0.5, weight_decay=0.1)
    for n, p in m.named_strata_params():
        if p.dim() == 1:
            assert torch.equal(p.detach(), before[n]), n
        else:
            assert torch.allclose(p.detach(), before[n] * (1 - 0.5 * 0.1), rtol=1e-14, atol=0), n


def test_greedy_generate():
    cfg = dict(SMALL, max_seq_len=16)
    m = RefModel(cfg)
    out = greedy_generate(m, [1, 2, 3], 20)
    assert out[:3] == [1, 2, 3] and len(out) == 23
    assert all(0 <= t < 97 for t in out)
    assert greedy_generate(m, [1, 2, 3], 20) == out
    with torch.no_grad():
        logits, _ = m(torch.tensor([out[:5]]))
    assert out[5] == int(torch.argmax(logits[0, -1]))


def test_load_strata_params_roundtrip_and_errors():
    m = RefModel(SMALL)
    arrays = {n: np.full(p.shape, 0.5, dtype=np.float32) for n, p in m.named_strata_params()}
    m.load_strata_params(arrays)
    assert all(torch.all(p == 0.5) for _, p in m.named_strata_params())
    bad = dict(arrays)
    bad.pop("final_norm")
    with pytest.raises(KeyError):
        m.load_strata_params(bad)
    bad = dict(arrays)
    bad["tok_emb"] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError):
        m.load_strata_params(bad)
