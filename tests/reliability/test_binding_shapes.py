"""Every op binding (and the model's) called with a wrong shape: a strata.Error (a ValueError) that
names the argument and the shape it expected, never a crash or an array of garbage; and the
module's __version__."""
import numpy as np
import pytest

import strata  # noqa: E402

rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def raises(fn, *args, names=(), **kwargs):
    """fn(*args, **kwargs) raises strata.Error whose message mentions each of `names`."""
    with pytest.raises(strata.Error) as e:
        fn(*args, **kwargs)
    assert issubclass(strata.Error, ValueError)
    for n in names:
        assert n in str(e.value), (n, str(e.value))
    return str(e.value)


ops = strata.ops
B, T, H, Hk, d, L = 2, 5, 4, 2, 8, 3


def attn_inputs():
    return f32(B, T, H, d), f32(B, T, Hk, d), f32(B, T, Hk, d)


def test_the_cases_that_used_to_crash_or_return_garbage():
    q, k, v = attn_inputs()
    # vd with another slot count than kd used to read past vd (a segfault)
    msg = raises(ops.moda_forward, q, k, v, f32(B, T, L, Hk, d), f32(B, T, L + 2, Hk, d), names=["vd", "L=3"])
    assert "(2, 5, 5, 2, 8)" in msg
    # (4, 5) · (3, 7)ᵀ used to return a (2, 3) array of garbage
    raises(ops.matmul_forward, f32(4, 5), f32(3, 7), names=["x", "IC=7"])
    # a weight of the wrong length used to be accepted
    raises(ops.rmsnorm_forward, f32(3, 8), f32(7), 1e-5, names=["w", "C=8"])


def test_rmsnorm():
    x, w = f32(3, 8), f32(8)
    y, rstd = ops.rmsnorm_forward(x, w, 1e-5)
    raises(ops.rmsnorm_backward, f32(3, 9), x, w, rstd, names=["dy"])
    raises(ops.rmsnorm_backward, y, x, f32(9), rstd, names=["w"])
    raises(ops.rmsnorm_backward, y, x, w, f32(4), names=["rstd", "N=3"])


def test_swiglu():
    raises(ops.swiglu_forward, f32(3, 7), names=["even"])
    gu = f32(3, 8)
    raises(ops.swiglu_backward, f32(3, 5), gu, names=["dy"])
    raises(ops.swiglu_backward, f32(4, 4), gu, names=["dy"])


def test_attention():
    q, k, v = attn_inputs()
    raises(ops.attention_forward, q[..., :7], k, v, names=["k", "d=7"])
    raises(ops.attention_forward, q, k, v[:, :4], names=["v", "Tk=5"])
    raises(ops.attention_forward, f32(B, T, 3, d), k, v, names=["multiple of Hk"])
    raises(ops.attention_forward, q[0], k, v, names=["q"])
    raises(ops.attention_forward, f32(B, 0, H, d), k[:, :0], v[:, :0], names=["at least 1"])
    o, lse = ops.attention_forward(q, k, v)
    raises(ops.attention_backward, o, o, lse[:, :, :4], q, k, v, names=["lse"])
    raises(ops.attention_backward, o[:, :, :2], o, lse, q, k, v, names=["dout"])
    raises(ops.attention_backward, o, o[:1], lse, q, k, v, names=["out"])


def test_moda():
    q, k, v = attn_inputs()
    kd, vd = f32(B, T, L, Hk, d), f32(B, T, L, Hk, d)
    raises(ops.moda_forward, q, k, v, kd[:, :, :, :1], vd, names=["kd", "Hk=2"])
    raises(ops.moda_forward, q, k, v, kd[:, :4], vd, names=["kd", "Tq=5"])
    raises(ops.moda_forward, q, k, v, kd[0], vd, names=["kd"])
    o, lse = ops.moda_forward(q, k, v, kd, vd)
    raises(ops.moda_backward, o, o, lse, q, k, v, kd, vd[:, :, :2], names=["vd"])
    raises(ops.moda_backward, o, o, lse[:1], q, k, v, kd, vd, names=["lse"])
    # the keyword arguments: a name outside the table, k/v where there is no sequence part (or none where
    # there is), and numbers the op refuses, each named
    raises(ops.moda_forward, q, k, v, kd, vd, names=["mask", "causal", "noncausal", "none"], **dict(mask="full"))
    raises(ops.moda_forward, q, k, v, kd, vd, names=["visibility", "own", "chunk"], **dict(visibility="all"))
    raises(ops.moda_forward, q, k, v, kd, vd, names=["k and v must be None"], **dict(mask="none"))
    raises(ops.moda_forward, q, None, None, kd, vd, names=["k and v are required"])
    raises(ops.moda_forward, q, k, v, kd, vd, names=["chunk"], **dict(visibility="chunk", chunk=-1))
    raises(ops.moda_forward, q, k, v, kd, vd, names=["window", "slot count"], **dict(window=L + 1))
    raises(ops.moda_forward, q, k, v, kd, vd, names=["window"], **dict(window=-1))
    raises(ops.moda_forward, q, k, v, kd, vd, names=["scale"], **dict(scale=-1.0))


def test_matmul():
    x, w = f32(4, 5), f32(3, 5)
    y = ops.matmul_forward(x, w)
    assert y.shape == (4, 3)
    raises(ops.matmul_forward, x, f32(5), names=["w"])
    raises(ops.matmul_backward, f32(4, 2), x, w, names=["dy", "OC=3"])
    raises(ops.matmul_backward, f32(3, 3), x, w, names=["dy", "N=4"])


def test_rope():
    raises(ops.rope_forward, f32(2, 5, 3), 1e4, names=["x"])
    raises(ops.rope_forward, f32(2, 5, 3, 7), 1e4, names=["even"])
    raises(ops.rope_backward, f32(2, 5, 3), 1e4, names=["dy"])
    raises(ops.rope_backward, f32(2, 5, 3, 7), 1e4, names=["even"])


def test_embedding():
    table = f32(10, 4)
    raises(ops.embedding_forward, np.array([1, 10], np.int32), table, names=["tokens[1] = 10"])
    raises(ops.embedding_forward, np.array([1, 2], np.int32), f32(10), names=["table"])
    raises(ops.embedding_backward, f32(3, 4), np.array([1, 2], np.int32), 10, names=["dy", "N=2"])
    raises(ops.embedding_backward, f32(2, 4), np.array([1, -1], np.int32), 10, names=["tokens[1] = -1"])


def test_crossentropy():
    z = f32(3, 6)
    raises(ops.crossentropy_forward, z, np.array([0, 1], np.int32), names=["targets", "N=3"])
    raises(ops.crossentropy_forward, z, np.array([0, 1, 6], np.int32), names=["targets[2] = 6"])
    loss, lse = ops.crossentropy_forward(z, np.array([0, 1, -1], np.int32))
    raises(ops.crossentropy_backward, z, lse[:2], np.array([0, 1, 2], np.int32), 1.0, names=["lse"])
    raises(ops.crossentropy_backward, z, lse, np.array([0, 1, 9], np.int32), 1.0, names=["targets[2] = 9"])


def test_attnres():
    srcs, w, g = [f32(3, 8), f32(3, 8)], f32(8), f32(8)
    raises(ops.attnres_forward, [], w, g, 1e-6, names=["at least one"])
    raises(ops.attnres_forward, [f32(3, 8), f32(2, 8)], w, g, 1e-6, names=["sources[1]"])
    raises(ops.attnres_forward, srcs, w, f32(7), 1e-6, names=["gamma"])
    raises(ops.attnres_forward, [f32(3, 7)] * 2, w, g, 1e-6, names=["sources[0]", "D=8"])
    out, logit, rstd, lse = ops.attnres_forward(srcs, w, g, 1e-6)
    raises(ops.attnres_backward, out, out, logit[:1], rstd, lse, srcs, w, g, names=["logit"])
    raises(ops.attnres_backward, out[:2], out, logit, rstd, lse, srcs, w, g, names=["dout"])
    raises(ops.attnres_backward, out, out, logit, rstd, lse[:2], srcs, w, g, names=["lse"])


def test_model():
    cfg = dict(vocab_size=16, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, ffn_hidden=24,
               max_seq_len=8)
    m = strata.Model(cfg)
    name = next(n for n in m.param_names() if m.get_param(n).ndim == 2)
    p = m.get_param(name)
    raises(m.set_param, name, p.reshape(-1), names=[name, "must have shape"])
    raises(m.forward, np.zeros((2, 2, 2), np.int32), names=["tokens"])
    raises(m.forward, np.zeros((2, 3), np.int32), np.zeros((2, 4), np.int32), names=["targets", "T=3"])
    raises(m.logits, np.zeros((2, 2, 2), np.int32), names=["Model.logits", "tokens", "(B, T)"])
    raises(m.logits, np.zeros((2, 9), np.int32), names=["max_seq_len 8"])
    raises(m.logits, np.array([0, 16], np.int32), names=["tokens[1] = 16"])
    raises(m.loss, np.zeros((3,), np.int32), np.zeros((4,), np.int32), names=["targets", "T=3"])
    raises(m.loss, np.zeros((3,), np.int32), np.array([0, 1, 16], np.int32), names=["targets[2] = 16"])


def test_version_is_the_projects():
    import pathlib
    import re

    cmake = (pathlib.Path(__file__).resolve().parents[2] / "CMakeLists.txt").read_text()
    assert strata.__version__ == re.search(r"project\(strata VERSION ([0-9.]+)", cmake).group(1)
