"""strata's kernels as PyTorch autograd functions, for CPU tensors in float32 (and float64, e.g. for
torch.autograd.gradcheck):

    rms_norm(x, weight, eps)                  RMSNorm over the last axis
    flash_attention(q, k, v)                  causal GQA attention, q (B,T,H,d), k/v (B,T,Hk,d)
    moda_attention(q, k, v, kd, vd, ...)      Mixture-of-Depths attention, every mode of the op
    attn_res(sources, w, gamma, eps)          the Attention Residuals aggregation over depth
    RMSNorm(dim, eps)                         an nn.Module around rms_norm

Each forward and backward is one call of strata's own kernel (strata.ops); the tensors are shared
with it, not copied, where they are already contiguous. Query head h reads kv head h // (H / Hk).
"""
import torch as _torch

from . import Error, ops as _ops

__all__ = ["rms_norm", "flash_attention", "moda_attention", "attn_res", "RMSNorm"]


def _arrays(op, named):
    """The numpy views of the named tensors (None passes through), after checking that they are CPU
    tensors of one floating dtype, float32 or float64."""
    dtype = None
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, _torch.Tensor):
            raise Error(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise Error(f"{op}: {name} is on {t.device}; strata's kernels take CPU tensors")
        if t.dtype not in (_torch.float32, _torch.float64):
            raise Error(f"{op}: {name} is {t.dtype}; strata's kernels take float32 or float64")
        if dtype is None:
            dtype = t.dtype
        elif t.dtype != dtype:
            raise Error(f"{op}: {name} is {t.dtype} but the other arguments are {dtype}: give them one dtype")
    return [None if t is None else t.detach().contiguous().numpy() for t in named.values()]


def _tensor(a):
    return None if a is None else _torch.from_numpy(a)


class _RMSNorm(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        xa, wa = _arrays("rms_norm", {"x": x, "weight": weight})
        y, rstd = _ops.rmsnorm_forward(xa, wa, eps)
        ctx.save_for_backward(x, weight, _tensor(rstd))
        return _tensor(y)

    @staticmethod
    def backward(ctx, dy):
        x, w, rstd = ctx.saved_tensors
        a = _arrays("rms_norm", {"dy": dy, "x": x, "weight": w, "rstd": rstd})
        dx, dw = _ops.rmsnorm_backward(*a)
        return _tensor(dx), _tensor(dw), None


class _Attention(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        out, lse = _ops.attention_forward(*_arrays("flash_attention", {"q": q, "k": k, "v": v}))
        out, lse = _tensor(out), _tensor(lse)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        a = _arrays("flash_attention", {"dout": dout, "out": out, "lse": lse, "q": q, "k": k, "v": v})
        return tuple(_tensor(g) for g in _ops.attention_backward(*a))


class _MoDA(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kd, vd, mask, visibility, chunk, window, scale):
        ctx.modes = dict(mask=mask, visibility=visibility, chunk=chunk, window=window, scale=scale)
        a = _arrays("moda_attention", {"q": q, "k": k, "v": v, "kd": kd, "vd": vd})
        out, lse = _ops.moda_forward(*a, **ctx.modes)
        out, lse = _tensor(out), _tensor(lse)
        ctx.save_for_backward(q, k, v, kd, vd, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, kd, vd, out, lse = ctx.saved_tensors
        a = _arrays("moda_attention", {"dout": dout, "out": out, "lse": lse, "q": q, "k": k, "v": v, "kd": kd,
                                       "vd": vd})
        dq, dk, dv, dkd, dvd = _ops.moda_backward(*a, **ctx.modes)
        return (_tensor(dq), _tensor(dk), _tensor(dv), _tensor(dkd), _tensor(dvd), None, None, None, None, None)


class _AttnRes(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, gamma, eps, *sources):
        named = {"w": w, "gamma": gamma, **{f"sources[{i}]": s for i, s in enumerate(sources)}}
        wa, ga, *srcs = _arrays("attn_res", named)
        out, logit, rstd, lse = _ops.attnres_forward(srcs, wa, ga, eps)
        out = _tensor(out)
        ctx.save_for_backward(w, gamma, out, _tensor(logit), _tensor(rstd), _tensor(lse), *sources)
        return out

    @staticmethod
    def backward(ctx, dout):
        w, gamma, out, logit, rstd, lse, *sources = ctx.saved_tensors
        named = {"dout": dout, "out": out, "logit": logit, "rstd": rstd, "lse": lse, "w": w, "gamma": gamma,
                 **{f"sources[{i}]": s for i, s in enumerate(sources)}}
        do, o, lg, rs, ls, wa, ga, *srcs = _arrays("attn_res", named)
        dsrcs, dw, dgamma = _ops.attnres_backward(do, o, lg, rs, ls, srcs, wa, ga)
        return (_tensor(dw), _tensor(dgamma), None, *(_tensor(d) for d in dsrcs))


def rms_norm(x, weight, eps=1e-5):
    """x * rsqrt(mean(x², last axis) + eps) * weight; x (..., C), weight (C,)."""
    return _RMSNorm.apply(x, weight, float(eps))


def flash_attention(q, k, v):
    """Causal attention with grouped-query heads, scale 1/sqrt(d): q (B, T, H, d), k and v (B, T, Hk, d),
    H a multiple of Hk. Returns (B, T, H, d)."""
    return _Attention.apply(q, k, v)


def moda_attention(q, k, v, kd, vd, *, mask="causal", visibility="own", chunk=0, window=0, scale=None):
    """Mixture-of-Depths attention: one softmax per query over its sequence keys and its depth slots.

    q (B, T, H, d); k, v (B, Tk, Hk, d), None under mask="none"; kd, vd (B, T, L, Hk, d), the depth
    slots of each token (its K/V from earlier layers). mask: "causal" | "noncausal" | "none" (depth
    slots only). visibility: "own" (a token's own slots) | "chunk" (also the earlier tokens of its
    chunk of `chunk` tokens; 0 means 64 // G). window: only the last `window` slots (0: all). scale:
    of every score (None: 1/sqrt(d)). Returns (B, T, H, d).
    """
    return _MoDA.apply(q, k, v, kd, vd, mask, visibility, int(chunk), int(window),
                       None if scale is None else float(scale))


def attn_res(sources, w, gamma, eps=1e-5):
    """The AttnRes aggregation: per token, softmax over the sources of (RMSNorm(source; gamma) · w),
    mixing the sources. sources: a list of n tensors of one shape (..., D); w, gamma (D,)."""
    sources = list(sources)
    if not sources:
        raise Error("attn_res: sources must hold at least one tensor")
    return _AttnRes.apply(w, gamma, float(eps), *sources)


class RMSNorm(_torch.nn.Module):
    """RMSNorm over the last axis with a learned weight (init 1), on strata's kernel."""

    def __init__(self, dim, eps=1e-5, dtype=_torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = _torch.nn.Parameter(_torch.ones(dim, dtype=dtype))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)
