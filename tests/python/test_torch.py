"""strata.torch: each autograd function against torch.autograd.gradcheck (float64, finite
differences) and against autograd through the PyTorch reference (python/strata_ref) in float32."""
import pytest
import torch

import strata
import strata.torch as st
from strata_ref.model import attn_res as ref_attn_res
from strata_ref.model import moda_attention as ref_moda
from strata_ref.model import rms_norm as ref_rms_norm

torch.manual_seed(0)


def randn(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


def check_against_ref(fn, ref, inputs, tol=2e-5):
    """fn and ref on the same float32 inputs: outputs and every input gradient within a relative L2 tol
    (of norms at least 0.1: dq is exactly 0 at T = 1, where float32 rounding leaves ~1e-7)."""
    a = [None if x is None else x.detach().float().requires_grad_() for x in inputs]
    b = [None if x is None else x.detach().float().requires_grad_() for x in inputs]
    ya, yb = fn(*a), ref(*b)
    assert (ya - yb).norm() <= tol * max(yb.norm(), 0.1)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    for x, y in zip(a, b):
        if x is not None:
            assert (x.grad - y.grad).norm() <= tol * max(y.grad.norm(), 0.1)


def test_rms_norm():
    x, w = randn(5, 7, 24), randn(24)
    assert torch.autograd.gradcheck(lambda x, w: st.rms_norm(x, w, 1e-5), (x, w))
    check_against_ref(lambda x, w: st.rms_norm(x, w, 1e-5), lambda x, w: ref_rms_norm(x, w, 1e-5), [x, w])
    m = st.RMSNorm(24)
    assert m(x.detach().float()).shape == (5, 7, 24) and m.weight.shape == (24,)


@pytest.mark.parametrize("T,H,Hk", [(1, 2, 2), (9, 4, 2), (17, 4, 1)])
def test_flash_attention(T, H, Hk):
    q, k, v = randn(2, T, H, 8), randn(2, T, Hk, 8), randn(2, T, Hk, 8)
    assert torch.autograd.gradcheck(st.flash_attention, (q, k, v))
    # the reference's MoDA with no depth slots (L = 0) is plain causal attention
    empty = torch.zeros(2, T, 0, Hk, 8, dtype=torch.float64)
    check_against_ref(st.flash_attention, lambda q, k, v: ref_moda(q, k, v, empty.float(), empty.float()), [q, k, v])


MODES = [
    dict(mask="causal", visibility="own"),
    dict(mask="causal", visibility="chunk", chunk=3),
    dict(mask="noncausal", visibility="own"),
    dict(mask="noncausal", visibility="chunk", chunk=2, window=1),
    dict(mask="none", visibility="own"),
    dict(mask="none", visibility="chunk", chunk=4),
    dict(mask="causal", visibility="own", window=1, scale=0.3),
]


@pytest.mark.parametrize("modes", MODES, ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items()))
@pytest.mark.parametrize("T,H,Hk,L", [(5, 4, 2, 3), (7, 2, 1, 1)])
def test_moda_attention(modes, T, H, Hk, L):
    d = 8
    q = randn(2, T, H, d)
    k, v = (randn(2, T, Hk, d), randn(2, T, Hk, d)) if modes["mask"] != "none" else (None, None)
    kd, vd = randn(2, T, L, Hk, d), randn(2, T, L, Hk, d)

    def fn(q, k, v, kd, vd):
        return st.moda_attention(q, k, v, kd, vd, **modes)

    assert torch.autograd.gradcheck(fn, (q, k, v, kd, vd))
    check_against_ref(fn, lambda q, k, v, kd, vd: ref_moda(q, k, v, kd, vd, **modes), [q, k, v, kd, vd])


@pytest.mark.parametrize("n", [1, 3])
def test_attn_res(n):
    sources = [randn(2, 5, 16) for _ in range(n)]
    w, gamma = randn(16), randn(16)

    def fn(w, gamma, *s):
        return st.attn_res(list(s), w, gamma, 1e-5)

    assert torch.autograd.gradcheck(fn, (w, gamma, *sources))
    check_against_ref(fn, lambda w, gamma, *s: ref_attn_res(list(s), w, gamma, 1e-5), [w, gamma, *sources])


def test_bad_tensors_are_named_errors():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(strata.Error, match="k is torch.float64 but the other arguments are torch.float32"):
        st.flash_attention(q, q.double(), q)
    with pytest.raises(strata.Error, match="float32 or float64"):
        st.rms_norm(q.half(), torch.ones(8).half())
    with pytest.raises(strata.Error, match="must have shape"):
        st.rms_norm(q, torch.ones(7))
    with pytest.raises(strata.Error, match="k and v must be None"):
        st.moda_attention(q, q, q, torch.randn(1, 4, 1, 2, 8), torch.randn(1, 4, 1, 2, 8), mask="none")
    with pytest.raises(strata.Error, match="vd must have shape"):
        st.moda_attention(q, q, q, torch.randn(1, 4, 2, 2, 8), torch.randn(1, 4, 3, 2, 8))
    with pytest.raises(strata.Error, match="sources must hold"):
        st.attn_res([], torch.ones(8), torch.ones(8))


def test_non_contiguous_inputs_and_double_backward_graph():
    x = torch.randn(6, 24, dtype=torch.float64).t().contiguous().t().requires_grad_()  # strided view
    w = torch.randn(24, dtype=torch.float64, requires_grad=True)
    y = st.rms_norm(x, w)
    y.sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    ref_w = w.detach().clone().requires_grad_()
    ref_rms_norm(ref_x, ref_w, 1e-5).sum().backward()
    assert torch.allclose(x.grad, ref_x.grad) and torch.allclose(w.grad, ref_w.grad)


def test_the_example_model_learns():
    """examples/moda_torch.py: strata's MoDA inside an ordinary nn.Module trains."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "moda_torch.py"
    spec = importlib.util.spec_from_file_location("moda_torch_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses = example.main(["--steps", "60"])
    assert sum(losses[-10:]) / 10 < losses[0] - 0.5


def interleaved_moda(q, k, v, kd, vd):
    """Causal MoDA with the official code's head mapping (hustvl/MoDA): query head h reads kv head
    h mod Hk. A naive float64 loop: one softmax over the causal keys and the token's own slots."""
    B, T, H, d = q.shape
    Hk = k.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            kh = h % Hk
            for t in range(T):
                keys = torch.cat([k[b, :t + 1, kh], kd[b, t, :, kh]])
                vals = torch.cat([v[b, :t + 1, kh], vd[b, t, :, kh]])
                p = torch.softmax(keys @ q[b, t, h] / d ** 0.5, 0)
                out[b, t, h] = p @ vals
    return out


@pytest.mark.parametrize("H,Hk", [(4, 2), (6, 2), (8, 4), (4, 1), (2, 2)])
def test_official_head_mapping_is_a_permutation_of_wq_and_wo(H, Hk):
    # docs/moda.md: strata's head kh*G + g is the official head g*Hk + kh; moving wq's rows and wo's
    # columns that way gives the same layer.
    G, d, D, T, L = H // Hk, 4, 12, 5, 3
    x = torch.randn(1, T, D, dtype=torch.float64)
    wq = torch.randn(H * d, D, dtype=torch.float64)  # official head order
    wo = torch.randn(D, H * d, dtype=torch.float64)
    k, v = torch.randn(1, T, Hk, d, dtype=torch.float64), torch.randn(1, T, Hk, d, dtype=torch.float64)
    kd, vd = torch.randn(1, T, L, Hk, d, dtype=torch.float64), torch.randn(1, T, L, Hk, d, dtype=torch.float64)
    official = interleaved_moda((x @ wq.T).view(1, T, H, d), k, v, kd, vd).reshape(1, T, H * d) @ wo.T
    perm = [g * Hk + kh for kh in range(Hk) for g in range(G)]  # strata head h takes official head perm[h]
    rows = torch.cat([torch.arange(p * d, (p + 1) * d) for p in perm])
    wq_s, wo_s = wq[rows], wo[:, rows]
    with torch.no_grad():
        ours = st.moda_attention((x @ wq_s.T).view(1, T, H, d), k, v, kd, vd).reshape(1, T, H * d) @ wo_s.T
    assert (ours - official).abs().max() <= 1e-10
    if G > 1 and Hk > 1:  # without the permutation the two mappings differ
        with torch.no_grad():
            plain = st.moda_attention((x @ wq.T).view(1, T, H, d), k, v, kd, vd).reshape(1, T, H * d) @ wo.T
        assert (plain - official).abs().max() > 1e-3
