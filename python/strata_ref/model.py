"""Plain PyTorch reference implementation of the strata baseline model (docs/model.md).

Every op is written out by hand so that the code can be read side by side with the model definition.
Speed is not a goal: attention builds the full T x T score matrix and applies an explicit softmax.

Parameters are stored under the exact names of docs/model.md. Because ``nn.Module`` does not allow
'.' in parameter names, each tensor is registered with '.' replaced by '__' (``blocks.0.wq`` is the
attribute ``blocks__0__wq``); ``param(name)`` / ``named_strata_params()`` use the doc names.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn

DEFAULT_CONFIG = OrderedDict(
    vocab_size=4096,
    d_model=384,
    n_layers=8,
    n_heads=6,
    n_kv_heads=2,
    head_dim=64,
    ffn_hidden=1024,
    max_seq_len=256,
    rope_theta=10000.0,
    norm_eps=1e-5,
    norm_placement="pre",
    qk_norm=False,
    tie_embeddings=True,
    init_std=0.02,
    seed=1337,
    residual="standard",
    attnres_block_size=4,
    attnres_key_norm="learned",
    attnres_gate="softmax",
    attnres_query="static",
    attention="causal",
    moda_depth_source="attn_ffn_kv",
    moda_sequence_mask="causal",
    moda_depth_visibility="own",
    moda_chunk_size=0,
    moda_depth_window=0,
)

NORM_PLACEMENTS = ("pre", "post", "reordered")
RESIDUALS = ("standard", "attnres_full", "attnres_block", "rezero", "layernorm_scaling", "denseformer")
ATTNRES = ("attnres_full", "attnres_block")
ATTENTIONS = ("causal", "moda")
MODA_SOURCES = ("attn_kv", "attn_ffn_kv")
SEQ_MASKS = ("causal", "noncausal", "none")
DEPTH_VISIBILITIES = ("own", "chunk")


def resolve_config(config: dict | None) -> dict:
    """Return the full config (defaults filled in) after validating it; raises ValueError."""
    config = dict(config or {})
    if "moda_ffn_kv" in config:  # the older name of moda_depth_source
        config.setdefault("moda_depth_source", "attn_ffn_kv" if config.pop("moda_ffn_kv") else "attn_kv")
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown config key(s): {unknown}")
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config)
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                "ffn_hidden", "max_seq_len"):
        if int(cfg[key]) != cfg[key] or cfg[key] <= 0:
            raise ValueError(f"{key} must be a positive integer, got {cfg[key]!r}")
        cfg[key] = int(cfg[key])
    if cfg["d_model"] != cfg["n_heads"] * cfg["head_dim"]:
        raise ValueError("d_model must equal n_heads * head_dim")
    if cfg["n_heads"] % cfg["n_kv_heads"] != 0:
        raise ValueError("n_heads must be divisible by n_kv_heads")
    if cfg["head_dim"] % 2 != 0:
        raise ValueError("head_dim must be even (rotate-half RoPE)")
    if cfg["norm_placement"] not in NORM_PLACEMENTS:
        raise ValueError(f"norm_placement must be one of {NORM_PLACEMENTS}")
    if cfg["residual"] not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}")
    if int(cfg["attnres_block_size"]) != cfg["attnres_block_size"] or cfg["attnres_block_size"] <= 0:
        raise ValueError("attnres_block_size must be a positive integer")
    if cfg["attention"] not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}")
    for key, allowed, default in (("attnres_key_norm", ("learned", "none"), "learned"),
                                  ("attnres_gate", ("softmax", "sigmoid"), "softmax"),
                                  ("attnres_query", ("static", "input"), "static")):
        if cfg[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}")
        if cfg[key] != default and cfg["residual"] not in ATTNRES:
            raise ValueError(f"{key} {cfg[key]!r} is an AttnRes ablation")
    for key, allowed in (("moda_depth_source", MODA_SOURCES), ("moda_sequence_mask", SEQ_MASKS),
                         ("moda_depth_visibility", DEPTH_VISIBILITIES)):
        if cfg[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}")
    if cfg["moda_depth_visibility"] == "chunk" and not cfg["moda_chunk_size"]:
        cfg["moda_chunk_size"] = max(1, 64 // (cfg["n_heads"] // cfg["n_kv_heads"]))
    if cfg["moda_chunk_size"] < 0 or cfg["moda_depth_window"] < 0:
        raise ValueError("moda_chunk_size and moda_depth_window must be non-negative")
    if cfg["residual"] != "standard" and cfg["norm_placement"] != "pre":
        raise ValueError(f"residual {cfg['residual']!r} needs norm_placement 'pre'")
    return cfg


def _ffn_kv(cfg: dict) -> bool:
    return cfg["attention"] == "moda" and cfg["moda_depth_source"] == "attn_ffn_kv"


def param_shapes(cfg: dict) -> "OrderedDict[str, tuple]":
    """Doc names and shapes of every parameter, in the doc's buffer order."""
    V, D, L = cfg["vocab_size"], cfg["d_model"], cfg["n_layers"]
    H, Hk, d, F = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"], cfg["ffn_hidden"]
    shapes = OrderedDict()
    shapes["tok_emb"] = (V, D)
    for l in range(L):
        p = f"blocks.{l}."
        shapes[p + "attn_norm"] = (D,)
        shapes[p + "wq"] = (H * d, D)
        shapes[p + "wk"] = (Hk * d, D)
        shapes[p + "wv"] = (Hk * d, D)
        if cfg["qk_norm"]:
            shapes[p + "q_norm"] = (d,)
            shapes[p + "k_norm"] = (d,)
        shapes[p + "wo"] = (D, H * d)
        shapes[p + "mlp_norm"] = (D,)
        shapes[p + "w_gate"] = (F, D)
        shapes[p + "w_up"] = (F, D)
        shapes[p + "w_down"] = (D, F)
        if _ffn_kv(cfg) and l + 1 < L:
            shapes[p + "w_ffn_k"] = (Hk * d, D)
            shapes[p + "w_ffn_v"] = (Hk * d, D)
        if cfg["residual"] in ATTNRES:
            for side in ("attn", "mlp"):
                if cfg["attnres_query"] == "input":  # q = W RMSNorm(p), W (D, D) zero at init
                    shapes[p + side + "_res_wq"] = (D, D)
                else:
                    shapes[p + side + "_res_query"] = (D,)
                if cfg["attnres_key_norm"] == "learned":
                    shapes[p + side + "_res_norm"] = (D,)
        elif cfg["residual"] == "rezero":
            shapes[p + "attn_alpha"] = (1,)
            shapes[p + "mlp_alpha"] = (1,)
        elif cfg["residual"] == "denseformer":
            shapes[p + "dwa"] = (l + 2,)  # the weights of X_0 .. X_{l+1} in Y_{l+1}
    if cfg["residual"] in ATTNRES:
        shapes["out_res_query"] = (D,)
        if cfg["attnres_key_norm"] == "learned":
            shapes["out_res_norm"] = (D,)
    shapes["final_norm"] = (D,)
    if not cfg["tie_embeddings"]:
        shapes["lm_head"] = (V, D)
    return shapes


def _attr(name: str) -> str:
    return name.replace(".", "__")


# ----------------------------------------------------------------------------------------------
# Ops, written out by hand.

def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """y = x * rsqrt(mean(x^2) + eps) * w over the last axis."""
    ms = (x * x).mean(dim=-1, keepdim=True)
    return x * torch.rsqrt(ms + eps) * w


def rope_cos_sin(T: int, d: int, theta: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (T, d/2): angle[pos, i] = pos * theta^(-2i/d)."""
    i = torch.arange(d // 2, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * i / d)
    pos = torch.arange(T, dtype=torch.float64)
    ang = pos[:, None] * inv_freq[None, :]
    return torch.cos(ang).to(dtype), torch.sin(ang).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x of shape (B, nh, T, d): pairs (x_i, x_{i+d/2})."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def silu(z: torch.Tensor) -> torch.Tensor:
    return z * torch.sigmoid(z)


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y = x W^T, with W of shape (out, in)."""
    return x @ w.t()


def attn_res(sources: list[torch.Tensor], w: torch.Tensor, gamma, eps: float, gate: str = "softmax") -> torch.Tensor:
    """Softmax attention over depth, per token: sources are (B, T, D) tensors, w the pseudo-query.

    The keys are RMSNorm(source) (weight gamma; None: no weight); the values are the sources
    themselves. gate "sigmoid" (an ablation) weights each source by sigmoid(logit), unnormalised.
    """
    V = torch.stack(sources)            # (n, B, T, D)
    K = rms_norm(V, gamma if gamma is not None else torch.ones_like(w), eps)
    s = (K * w).sum(dim=-1)             # (n, B, T) logits
    if gate == "sigmoid":
        alpha = torch.sigmoid(s)
    else:
        e = torch.exp(s - s.max(dim=0, keepdim=True).values.detach())
        alpha = e / e.sum(dim=0, keepdim=True)
    return (alpha[..., None] * V).sum(dim=0)


def moda_attention(q, k, v, kd, vd, mask="causal", visibility="own", chunk=0, window=0, scale=None):
    """Mixture-of-Depths Attention: GQA attention whose one softmax also covers depth keys/values.
    q (B, T, H, d); k, v (B, Tk, Hk, d) (unused, and may be None, under mask "none"); kd, vd
    (B, T, L, Hk, d). Query head h reads kv head h // (H / Hk), in the sequence and in the depth.
    mask: "causal" (token t sees keys 0..t), "noncausal" (every key) or "none" (no sequence keys: FDA).
    visibility: "own" (token t's own slots) or "chunk" (the slots of tokens t' with t' // C == t // C
    and t' <= t; C = chunk, 64 // G when 0). window: only the last `window` slots (0: all).
    scale: of every score (1/sqrt(d) when None). A row that sees nothing gives 0. Returns (B, T, H, d)."""
    B, T, H, d = q.shape
    Hk, L = kd.shape[3], kd.shape[2]
    G = H // Hk
    scale = 1 / math.sqrt(d) if scale is None else scale
    idx = torch.arange(H) // G
    qh = q.transpose(1, 2)                                   # (B, H, T, d)
    neg = float("-inf")
    parts_s, parts_v = [], []
    if mask != "none":
        Tk = k.shape[1]
        kh, vh = k[:, :, idx].transpose(1, 2), v[:, :, idx].transpose(1, 2)
        s_seq = qh @ kh.transpose(-1, -2) * scale            # (B, H, T, Tk)
        if mask == "causal":
            allowed = torch.arange(Tk)[None, :] <= torch.arange(T)[:, None]
            s_seq = s_seq.masked_fill(~allowed, neg)
        parts_s.append(s_seq)
    # depth scores of query t against every token u's slots, kept where (t, u, slot) is visible
    kdh, vdh = kd[:, :, :, idx].permute(0, 3, 1, 2, 4), vd[:, :, :, idx].permute(0, 3, 1, 2, 4)  # (B, H, T, L, d)
    s_dep = torch.einsum("bhtd,bhuld->bhtul", qh, kdh) * scale  # (B, H, T, T, L)
    t_idx, u_idx = torch.arange(T)[:, None], torch.arange(T)[None, :]
    if visibility == "chunk":
        C = chunk or max(1, 64 // G)
        tok = (u_idx <= t_idx) & (u_idx // C == t_idx // C)
    else:
        tok = u_idx == t_idx
    slot = torch.arange(L) >= (L - window if window else 0)
    vis = tok[:, :, None] & slot[None, None, :]              # (T, T, L)
    s_dep = s_dep.masked_fill(~vis, neg).reshape(B, H, T, T * L)
    parts_s.append(s_dep)
    s = torch.cat(parts_s, dim=-1)                           # one softmax over every visible key
    if s.shape[-1] == 0:                                      # no keys at all (FDA before any depth): 0
        return q * 0
    mx = s.max(dim=-1, keepdim=True).values.detach()
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    e = torch.exp(s - mx)
    z = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(z > 0, z, torch.ones_like(z))
    out = (p[..., s.shape[-1] - T * L:].reshape(B, H, T, T, L, 1) * vdh[:, :, None]).sum((-3, -2))
    if mask != "none":
        out = out + p[..., :Tk] @ vh
    return out.transpose(1, 2)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over positions whose target is >= 0 (negatives are ignored).

    logits (B, T, V), targets (B, T). If no target is >= 0 the result is NaN (0/0).
    """
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    tgt = targets.reshape(-1)
    valid = tgt >= 0
    # log-softmax by hand, with the max subtracted for stability
    mx = flat.max(dim=-1, keepdim=True).values.detach()
    lse = torch.log(torch.exp(flat - mx).sum(dim=-1)) + mx.squeeze(-1)
    safe_tgt = torch.where(valid, tgt, torch.zeros_like(tgt))
    picked = flat.gather(1, safe_tgt[:, None]).squeeze(1)
    nll = (lse - picked) * valid.to(flat.dtype)
    return nll.sum() / valid.sum().to(flat.dtype)


# ----------------------------------------------------------------------------------------------

class RefModel(nn.Module):
    def __init__(self, config: dict | None = None, dtype=torch.float64):
        """dtype float64 is the truth the engine is checked against; bfloat16 runs every parameter,
        activation and gradient in bf16 (torch's CPU kernels compute in float and round each result):
        the naive bf16 baseline the engine's mixed precision must stay within 2x of."""
        super().__init__()
        if dtype not in (torch.float32, torch.float64, torch.bfloat16):
            raise ValueError("dtype must be torch.float32, torch.float64 or torch.bfloat16")
        self.cfg = resolve_config(config)
        self.dtype = dtype
        self._shapes = param_shapes(self.cfg)
        self._names = list(self._shapes)
        self._init_params()

    # -- parameters --------------------------------------------------------------------------
    def _init_params(self):
        """Init per the doc: norms 1; matrices N(0, std), wo/w_down N(0, std/sqrt(2L)) (N(0, std) under
        layernorm_scaling); AttnRes pseudo-queries and ReZero gates 0; DenseFormer weights the identity.

        The random stream is torch's (seeded with cfg['seed']); it is not meant to match the C++ engine,
        whose values are copied in with load_strata_params for parity tests.
        """
        gen = torch.Generator().manual_seed(int(self.cfg["seed"]))
        std = self.cfg["init_std"]
        out_std = std / math.sqrt(2 * self.cfg["n_layers"])
        if self.cfg["residual"] == "layernorm_scaling":
            out_std = std
        for name, shape in self._shapes.items():
            if name.endswith(("_res_query", "_res_wq", "_alpha")):  # a uniform mix; ReZero's closed gates
                t = torch.zeros(shape, dtype=torch.float64)
            elif name.endswith(".dwa"):  # Y_i = X_i at the start
                t = torch.zeros(shape, dtype=torch.float64)
                t[-1] = 1.0
            elif len(shape) == 1:
                t = torch.ones(shape, dtype=torch.float64)
            else:
                s = out_std if name.endswith(".wo") or name.endswith(".w_down") else std
                t = torch.randn(shape, generator=gen, dtype=torch.float64) * s
            self.register_parameter(_attr(name), nn.Parameter(t.to(self.dtype)))

    def param(self, name: str) -> nn.Parameter:
        if name not in self._shapes:
            raise KeyError(name)
        return getattr(self, _attr(name))

    def strata_param_names(self) -> list[str]:
        return list(self._names)

    def named_strata_params(self) -> list[tuple[str, nn.Parameter]]:
        """(doc name, Parameter) in the doc's buffer order."""
        return [(n, self.param(n)) for n in self._names]

    @torch.no_grad()
    def load_strata_params(self, arrays: dict):
        """Copy {doc name: np.ndarray} into the parameters (cast to this model's dtype).

        Every parameter must be present with the doc's shape; extra names are an error.
        """
        missing = [n for n in self._names if n not in arrays]
        extra = [n for n in arrays if n not in self._shapes]
        if missing or extra:
            raise KeyError(f"load_strata_params: missing {missing}, unexpected {extra}")
        for n in self._names:
            a = torch.as_tensor(np.asarray(arrays[n]))
            if tuple(a.shape) != self._shapes[n]:
                raise ValueError(f"{n}: shape {tuple(a.shape)} != {self._shapes[n]}")
            self.param(n).copy_(a.to(self.dtype))

    # -- forward -----------------------------------------------------------------------------
    def _attention(self, x: torch.Tensor, l: int) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        H, Hk, d = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
        G = H // Hk
        p = f"blocks.{l}."
        q = linear(x, self.param(p + "wq")).view(B, T, H, d).transpose(1, 2)   # (B, H, T, d)
        k = linear(x, self.param(p + "wk")).view(B, T, Hk, d).transpose(1, 2)  # (B, Hk, T, d)
        v = linear(x, self.param(p + "wv")).view(B, T, Hk, d).transpose(1, 2)  # (B, Hk, T, d)
        if cfg["qk_norm"]:
            q = rms_norm(q, self.param(p + "q_norm"), cfg["norm_eps"])
            k = rms_norm(k, self.param(p + "k_norm"), cfg["norm_eps"])
        cos, sin = rope_cos_sin(T, d, cfg["rope_theta"], x.dtype)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        if cfg["attention"] == "moda":
            return self._moda(q, k, v, l)
        # query head h reads kv head h // G
        kv_index = torch.arange(H) // G
        k = k[:, kv_index]  # (B, H, T, d)
        v = v[:, kv_index]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        # explicit softmax over the key axis
        mx = scores.max(dim=-1, keepdim=True).values.detach()
        e = torch.exp(scores - mx)
        att = e / e.sum(dim=-1, keepdim=True)
        y = att @ v  # (B, H, T, d)
        y = y.transpose(1, 2).reshape(B, T, H * d)
        return linear(y, self.param(p + "wo"))

    def _moda(self, q, k, v, l):
        """MoDA (docs/moda.md): one softmax over the causal keys and each token's depth slots, i.e. the
        K/V of the earlier layers' attention (and FFN projections), kept in self._depth in layer order.
        q (B, H, T, d), k and v (B, Hk, T, d), after QK-norm and RoPE."""
        cfg = self.cfg
        B, H, T, d = q.shape
        Hk = k.shape[1]
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, T, heads, d)
        if self._depth:
            kd = torch.stack([dk for dk, _ in self._depth], dim=2)  # (B, T, L, Hk, d)
            vd = torch.stack([dv for _, dv in self._depth], dim=2)
        else:
            kd = vd = qt.new_zeros(B, T, 0, Hk, d)
        W = cfg["moda_depth_window"]
        y = moda_attention(qt, kt, vt, kd, vd, mask=cfg["moda_sequence_mask"],
                           visibility=cfg["moda_depth_visibility"], chunk=cfg["moda_chunk_size"], window=W)
        if l + 1 < cfg["n_layers"]:
            self._depth.append((kt, vt))
        return linear(y.reshape(B, T, H * d), self.param(f"blocks.{l}.wo"))

    def _mlp(self, x: torch.Tensor, l: int) -> torch.Tensor:
        cfg = self.cfg
        p = f"blocks.{l}."
        gate = linear(x, self.param(p + "w_gate"))
        up = linear(x, self.param(p + "w_up"))
        if _ffn_kv(cfg) and l + 1 < cfg["n_layers"]:
            # the FFN's input, projected to one more depth slot; K normed and rotated like attention's K
            B, T, _ = x.shape
            Hk, d = cfg["n_kv_heads"], cfg["head_dim"]
            kf = linear(x, self.param(p + "w_ffn_k")).view(B, T, Hk, d)
            vf = linear(x, self.param(p + "w_ffn_v")).view(B, T, Hk, d)
            if cfg["qk_norm"]:
                kf = rms_norm(kf, self.param(p + "k_norm"), cfg["norm_eps"])
            cos, sin = rope_cos_sin(T, d, cfg["rope_theta"], x.dtype)
            kf = apply_rope(kf.transpose(1, 2), cos, sin).transpose(1, 2)
            self._depth.append((kf, vf))
        return linear(silu(gate) * up, self.param(p + "w_down"))

    def _block(self, h: torch.Tensor, l: int, skip=None) -> torch.Tensor:
        """One layer; a skip set holding 2l or 2l+1 replaces that sublayer's output by zero (a diagnostic)."""
        skip = skip if skip is not None else ()
        eps = self.cfg["norm_eps"]
        p = f"blocks.{l}."
        wa, wm = self.param(p + "attn_norm"), self.param(p + "mlp_norm")
        attn = (lambda x: 0 * self._attention(x, l)) if 2 * l in skip else (lambda x: self._attention(x, l))
        mlp = (lambda x: 0 * self._mlp(x, l)) if 2 * l + 1 in skip else (lambda x: self._mlp(x, l))
        placement = self.cfg["norm_placement"]
        residual = self.cfg["residual"]
        if residual == "rezero":  # h + alpha_j f_j(N(h))
            h = h + self.param(p + "attn_alpha") * attn(rms_norm(h, wa, eps))
            h = h + self.param(p + "mlp_alpha") * mlp(rms_norm(h, wm, eps))
        elif residual == "layernorm_scaling":  # h + f_j(N(h) / sqrt(l + 1))
            c = 1.0 / math.sqrt(l + 1)
            h = h + attn(rms_norm(h, wa, eps) * c)
            h = h + mlp(rms_norm(h, wm, eps) * c)
        elif placement == "pre":
            h = h + attn(rms_norm(h, wa, eps))
            h = h + mlp(rms_norm(h, wm, eps))
        elif placement == "post":
            h = rms_norm(h + attn(h), wa, eps)
            h = rms_norm(h + mlp(h), wm, eps)
        elif placement == "reordered":
            h = h + rms_norm(attn(h), wa, eps)
            h = h + rms_norm(mlp(h), wm, eps)
        else:  # unreachable: validated in resolve_config
            raise ValueError(placement)
        return h

    def _attn_res_layers(self, emb: torch.Tensor, skip=None) -> torch.Tensor:
        """AttnRes: each sublayer's input mixes the embedding, the completed blocks and the current
        block's partial sum; the sublayers (attention, MLP, counted separately) fill blocks of S.

        skip, a set of sublayers (a diagnostic), leaves their outputs out of their blocks' sums; a block
        or partial sum that is left with nothing in it is not a source at all."""
        skip = skip if skip is not None else ()
        cfg, eps = self.cfg, self.cfg["norm_eps"]
        S = 1 if cfg["residual"] == "attnres_full" else cfg["attnres_block_size"]
        blocks, partial = [emb], None
        for j in range(2 * cfg["n_layers"]):
            l, side = j // 2, ("attn" if j % 2 == 0 else "mlp")
            if j % S == 0 and j > 0:  # a block boundary: the partial sum becomes a block
                if partial is not None:
                    blocks.append(partial)
                partial = None
            sources = blocks + ([partial] if partial is not None else [])
            p = f"blocks.{l}."
            if cfg["attnres_query"] == "input":  # per token, from the block's partial sum (else the embedding)
                base = partial if partial is not None else emb
                q = linear(rms_norm(base, torch.ones_like(base[0, 0]), eps), self.param(p + side + "_res_wq"))
            else:
                q = self.param(p + side + "_res_query")
            h = attn_res(sources, q, self._key_norm(p + side + "_res_norm"), eps, cfg["attnres_gate"])
            x = rms_norm(h, self.param(p + side + "_norm"), eps)
            f = self._attention(x, l) if side == "attn" else self._mlp(x, l)
            if j not in skip:
                partial = f if partial is None else partial + f
        if partial is not None:
            blocks.append(partial)
        return attn_res(blocks, self.param("out_res_query"), self._key_norm("out_res_norm"), eps, cfg["attnres_gate"])

    def _key_norm(self, name):
        return self.param(name) if self.cfg["attnres_key_norm"] == "learned" else None

    def _denseformer_layers(self, emb: torch.Tensor, skip=None) -> torch.Tensor:
        """DenseFormer: X_0 = emb, X_i = block_i(Y_{i-1}) (a pre-norm block), Y_i = sum_j dwa_i[j] X_j.
        Returns Y_L."""
        X, y = [emb], emb
        for l in range(self.cfg["n_layers"]):
            X.append(self._block(y, l, skip))
            w = self.param(f"blocks.{l}.dwa")
            y = sum(w[j] * X[j] for j in range(l + 2))
        return y

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, skip_sublayer=None):
        """tokens (B, T) int64 -> (logits (B, T, V), mean CE loss or None).

        skip_sublayer = j, or a collection of them, replaces those sublayers' outputs by zero (attention
        of layer l is 2l, its MLP 2l+1); under AttnRes a source left empty is dropped. A diagnostic
        (strata diagnose, strata analyze)."""
        if skip_sublayer is None:
            skip_sublayer = frozenset()
        elif isinstance(skip_sublayer, int):
            skip_sublayer = frozenset((skip_sublayer,))
        else:
            skip_sublayer = frozenset(skip_sublayer)
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        B, T = tokens.shape
        if T > self.cfg["max_seq_len"]:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg['max_seq_len']}")
        h = self.param("tok_emb")[tokens]  # (B, T, D)
        self._depth = []  # MoDA's depth stream, filled layer by layer
        if self.cfg["residual"] in ATTNRES:
            h = self._attn_res_layers(h, skip_sublayer)
        elif self.cfg["residual"] == "denseformer":
            h = self._denseformer_layers(h, skip_sublayer)
        else:
            for l in range(self.cfg["n_layers"]):
                h = self._block(h, l, skip_sublayer)
        h = rms_norm(h, self.param("final_norm"), self.cfg["norm_eps"])
        w_out = self.param("tok_emb") if self.cfg["tie_embeddings"] else self.param("lm_head")
        logits = linear(h, w_out)
        loss = None
        if targets is not None:
            targets = torch.as_tensor(targets, dtype=torch.long)
            loss = cross_entropy(logits, targets)
        return logits, loss


# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def ref_adamw_step(params: dict, grads: dict, m: dict, v: dict, step: int, lr: float,
                   beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-8,
                   weight_decay: float = 0.1, no_decay_names=None):
    """One AdamW step per docs/model.md, written out by hand (not torch.optim).

    params / grads / m / v: dicts name -> tensor; params, m and v are updated in place (m and v
    must start as zeros). step is the 1-based step number t used in the bias correction.
    no_decay_names: names exempt from weight decay; None means every 1-D tensor.
    Decay uses the value of p from before the step (same as torch.optim.AdamW).
    """
    if step < 1:
        raise ValueError("step is 1-based")
    if no_decay_names is None:
        no_decay_names = {n for n, p in params.items() if p.dim() == 1}
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    for name, p in params.items():
        g = grads[name]
        m[name].mul_(beta1).add_((1.0 - beta1) * g)
        v[name].mul_(beta2).add_((1.0 - beta2) * g * g)
        m_hat = m[name] / bc1
        v_hat = v[name] / bc2
        update = m_hat / (torch.sqrt(v_hat) + eps)
        if name not in no_decay_names:
            update = update + weight_decay * p
        p.sub_(lr * update)


class RefAdamW:
    """Small stateful wrapper around ref_adamw_step for a RefModel."""

    def __init__(self, model: RefModel, no_decay_names=None):
        self.model = model
        self.params = OrderedDict(model.named_strata_params())
        self.m = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.t = 0
        self.no_decay_names = no_decay_names

    def step(self, lr, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1):
        self.t += 1
        # a parameter the loss does not read (autograd leaves its grad None) has a zero gradient
        grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in self.params.items()}
        ref_adamw_step(self.params, grads, self.m, self.v, self.t, lr, beta1, beta2, eps,
                       weight_decay, self.no_decay_names)


@torch.no_grad()
def greedy_generate(model: RefModel, prompt_ids, n: int) -> list[int]:
    """Append n tokens to prompt_ids by argmax, re-running the full forward each time.

    Returns the full sequence (prompt + generated) as a list of ints. If it would exceed
    max_seq_len, only the last max_seq_len tokens are fed to the model.
    """
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("prompt must not be empty")
    max_T = model.cfg["max_seq_len"]
    for _ in range(n):
        ctx = torch.tensor([ids[-max_T:]], dtype=torch.long)
        logits, _ = model(ctx)
        ids.append(int(torch.argmax(logits[0, -1]).item()))
    return ids
