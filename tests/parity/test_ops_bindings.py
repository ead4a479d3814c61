"""Each op's forward and backward through the Python bindings against PyTorch autograd (float64)."""
import numpy as np
import pytest
import torch

import strata

rng = np.random.default_rng(0)


def rel(a, b):
    """Relative L2 error; a reference that is exactly zero (dq when T = 1) is compared absolutely."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 0.1)


def t64(a):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=True)


@pytest.mark.parametrize("T", [1, 3, 65])
def test_rmsnorm(T):
    x, w = rng.standard_normal((T, 24)).astype(np.float32), (1 + 0.3 * rng.standard_normal(24)).astype(np.float32)
    y, rstd = strata.ops.rmsnorm_forward(x, w, 1e-5)
    xt, wt = t64(x), t64(w)
    yt = xt * torch.rsqrt((xt * xt).mean(-1, keepdim=True) + 1e-5) * wt
    assert rel(y, yt.detach()) < 1e-6
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    dx, dw = strata.ops.rmsnorm_backward(dy, x, w, rstd)
    assert rel(dx, xt.grad) < 1e-5 and rel(dw, wt.grad) < 1e-5


@pytest.mark.parametrize("T,H,Hk", [(1, 4, 4), (63, 4, 2), (127, 4, 1)])
def test_attention(T, H, Hk):
    d = 16
    q = rng.standard_normal((2, T, H, d)).astype(np.float32)
    k = rng.standard_normal((2, T, Hk, d)).astype(np.float32)
    v = rng.standard_normal((2, T, Hk, d)).astype(np.float32)
    o, lse = strata.ops.attention_forward(q, k, v)
    qt, kt, vt = t64(q), t64(k), t64(v)
    kr, vr = kt.repeat_interleave(H // Hk, dim=2), vt.repeat_interleave(H // Hk, dim=2)
    s = torch.einsum("bthd,bshd->bhts", qt, kr) / d**0.5
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    ot = torch.einsum("bhts,bshd->bthd", s.softmax(-1), vr)
    assert rel(o, ot.detach()) < 1e-5
    assert rel(lse, torch.logsumexp(s, -1).detach()) < 1e-6
    do = rng.standard_normal(o.shape).astype(np.float32)
    ot.backward(torch.tensor(do, dtype=torch.float64))
    dq, dk, dv = strata.ops.attention_backward(do, o, lse, q, k, v)
    assert rel(dq, qt.grad) < 1e-5 and rel(dk, kt.grad) < 1e-5 and rel(dv, vt.grad) < 1e-5


def test_rope_swiglu_matmul_embedding_crossentropy():
    x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
    y = strata.ops.rope_forward(x, 10000.0)
    pos = np.arange(5)[:, None] * 10000.0 ** (-2 * np.arange(4) / 8)
    c, s = np.cos(pos)[None, :, None, :], np.sin(pos)[None, :, None, :]
    want = np.concatenate([x[..., :4] * c - x[..., 4:] * s, x[..., :4] * s + x[..., 4:] * c], -1)
    assert rel(y, want) < 1e-6
    assert rel(strata.ops.rope_backward(y, 10000.0), x) < 1e-6  # a rotation: its transpose undoes it

    gu = rng.standard_normal((7, 10)).astype(np.float32)
    gt = t64(gu)
    yt = torch.nn.functional.silu(gt[:, :5]) * gt[:, 5:]
    assert rel(strata.ops.swiglu_forward(gu), yt.detach()) < 1e-6
    dy = rng.standard_normal((7, 5)).astype(np.float32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert rel(strata.ops.swiglu_backward(dy, gu), gt.grad) < 1e-6

    a, w = rng.standard_normal((9, 6)).astype(np.float32), rng.standard_normal((4, 6)).astype(np.float32)
    at, wt = t64(a), t64(w)
    yt = at @ wt.T
    assert rel(strata.ops.matmul_forward(a, w), yt.detach()) < 1e-6
    dy = rng.standard_normal((9, 4)).astype(np.float32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    da, dw = strata.ops.matmul_backward(dy, a, w)
    assert rel(da, at.grad) < 1e-6 and rel(dw, wt.grad) < 1e-6

    tok = np.array([1, 4, 1, 0], np.int32)
    table = rng.standard_normal((5, 3)).astype(np.float32)
    assert rel(strata.ops.embedding_forward(tok, table), table[tok]) == 0
    dy = rng.standard_normal((4, 3)).astype(np.float32)
    want = np.zeros_like(table)
    np.add.at(want, tok, dy)
    assert rel(strata.ops.embedding_backward(dy, tok, 5), want) < 1e-6
    with pytest.raises(ValueError):
        strata.ops.embedding_forward(np.array([7], np.int32), table)

    z = rng.standard_normal((6, 11)).astype(np.float32)
    tg = np.array([3, -1, 0, 10, 5, -1], np.int32)
    loss, lse = strata.ops.crossentropy_forward(z, tg)
    zt = t64(z)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(tg, dtype=torch.long), ignore_index=-1, reduction="none")
    assert rel(loss, lt.detach()) < 1e-6
    lt.sum().div(4).backward()
    assert rel(strata.ops.crossentropy_backward(z, lse, tg, 0.25), zt.grad) < 1e-6


@pytest.mark.parametrize("T,n", [(1, 1), (5, 3), (65, 9)])
def test_attnres(T, n):
    from strata_ref import attn_res
    D = 24
    srcs = [(s + 1) * rng.standard_normal((2, T, D)).astype(np.float32) for s in range(n)]
    w = (0.3 * rng.standard_normal(D)).astype(np.float32)
    g = (1 + 0.3 * rng.standard_normal(D)).astype(np.float32)
    out, logit, rstd, lse = strata.ops.attnres_forward(srcs, w, g, 1e-5)
    st, wt, gt = [t64(s) for s in srcs], t64(w), t64(g)
    ref = attn_res(st, wt, gt, 1e-5)
    assert out.shape == srcs[0].shape and rel(out, ref.detach()) < 1e-6
    dy = rng.standard_normal(out.shape).astype(np.float32)
    ref.backward(torch.tensor(dy, dtype=torch.float64))
    dsrcs, dw, dg = strata.ops.attnres_backward(dy, out, logit, rstd, lse, srcs, w, g)
    for i in range(n):
        assert rel(dsrcs[i], st[i].grad) < 1e-5, i
    assert rel(dw, wt.grad) < 1e-5 and rel(dg, gt.grad) < 1e-5


@pytest.mark.parametrize("T,H,Hk,L", [(1, 4, 2, 3), (37, 4, 1, 5), (65, 2, 2, 0)])
def test_moda(T, H, Hk, L):
    from strata_ref import moda_attention
    d = 16
    q = rng.standard_normal((2, T, H, d)).astype(np.float32)
    k, v = (rng.standard_normal((2, T, Hk, d)).astype(np.float32) for _ in range(2))
    kd, vd = (rng.standard_normal((2, T, L, Hk, d)).astype(np.float32) for _ in range(2))
    o, lse = strata.ops.moda_forward(q, k, v, kd, vd)
    ts = [t64(x) for x in (q, k, v, kd, vd)]
    ref = moda_attention(*ts)
    assert rel(o, ref.detach()) < 1e-6
    do = rng.standard_normal(o.shape).astype(np.float32)
    ref.backward(torch.tensor(do, dtype=torch.float64))
    grads = strata.ops.moda_backward(do, o, lse, q, k, v, kd, vd)
    for name, g, t in zip(("dq", "dk", "dv", "dkd", "dvd"), grads, ts):
        assert rel(g, t.grad) < 1e-5, name


# Every sequence mask with every depth visibility, through the keyword arguments, against the reference:
# chunks of 3 tokens (and the default 64/G), a window of 2 slots, and a scale of the caller's.
@pytest.mark.parametrize("mask", ["causal", "noncausal", "none"])
@pytest.mark.parametrize("visibility,chunk,window,scale", [("own", 0, 0, None), ("chunk", 3, 2, 0.4),
                                                           ("chunk", 0, 0, None)])
def test_moda_modes(mask, visibility, chunk, window, scale):
    from strata_ref import moda_attention
    T, H, Hk, L, d = 11, 4, 2, 4, 8
    q = rng.standard_normal((2, T, H, d)).astype(np.float32)
    k, v = (rng.standard_normal((2, T, Hk, d)).astype(np.float32) for _ in range(2))
    kd, vd = (rng.standard_normal((2, T, L, Hk, d)).astype(np.float32) for _ in range(2))
    kw = dict(mask=mask, visibility=visibility, chunk=chunk, window=window, scale=scale)
    seq = (None, None) if mask == "none" else (k, v)
    o, lse = strata.ops.moda_forward(q, *seq, kd, vd, **kw)
    ts = [t64(x) for x in (q, k, v, kd, vd)]
    ref = moda_attention(*ts, **kw)
    assert rel(o, ref.detach()) < 1e-6
    do = rng.standard_normal(o.shape).astype(np.float32)
    ref.backward(torch.tensor(do, dtype=torch.float64))
    grads = strata.ops.moda_backward(do, o, lse, q, *seq, kd, vd, **kw)
    for name, g, t in zip(("dq", "dk", "dv", "dkd", "dvd"), grads, ts):
        if g is None:  # no sequence keys under "none"
            assert mask == "none" and t.grad is None, name
            continue
        assert rel(g, t.grad) < 1e-5, name
