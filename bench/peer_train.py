#!/usr/bin/env python3
"""PyTorch peer for `strata bench train`: the strata bench model written the way a competent
PyTorch user would write it (stock modules and kernels), timed on the same training step strata
runs: zero_grad, forward with targets, backward, grad-norm clip to 1.0, AdamW update.

--config picks one of four ways to run it: eager fp32 (`eager`), eager under
torch.autocast("cpu", dtype=torch.bfloat16) (`eager-bf16`), torch.compile of the model in its
default mode (`compile`), and torch.compile under the same autocast (`compile-bf16`).

Two modes:
  one-shot (default): warm-up and timed steps, then exactly one JSON line on stdout.
  --serve: build, warm up (and compile), print one JSON line ("ready", or "error" and exit 1), then
      read one command per line from stdin: `rep` runs --steps timed steps and prints one JSON line
      with their times; `quit` prints a last JSON line with the memory figures and exits.
Progress goes to stderr; in --serve mode anything else printed to stdout goes to stderr too.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

# torch.compile's code generation stays in this process, so its peak RSS is this process's own.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch
import torch.nn as nn
import torch.nn.functional as F


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--ffn-hidden", type=int, default=1024)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--norm-eps", type=float, default=1e-5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--residual", choices=("standard", "attnres_full", "attnres_block"), default="standard")
    p.add_argument("--block-size", type=int, default=4, help="sublayers per block for attnres_block")
    p.add_argument("--attention", choices=("causal", "moda"), default="causal")
    p.add_argument("--config", choices=CONFIGS, default="eager")
    p.add_argument("--serve", action="store_true", help="read `rep` / `quit` commands from stdin")
    return p.parse_args()


CONFIGS = ("eager", "eager-bf16", "compile", "compile-bf16")
COMPILE_MODE = "default"  # torch.compile(model) with no mode argument
SETTLE, MAX_SETTLE = 1.2, 10  # compiled: extra warm-up until a step is ≤ 1.2× the one before (≤ 10 more)


class PeerFailure(Exception):
    """A configuration this torch cannot run as asked (the reason goes into the report)."""


def proc_status_bytes(key):
    """VmRSS / VmHWM of this process alone, in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes():
    v = proc_status_bytes("VmHWM")
    if v is None:
        import resource
        v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux; this process only
    return v


def adamw_impl(opt):
    """Which AdamW implementation torch runs for these parameters: fused, foreach or for-loop."""
    d = opt.defaults
    if d.get("fused"):
        return "fused"
    if d.get("foreach"):
        return "foreach"
    if d.get("foreach") is None:
        import importlib
        pick = getattr(importlib.import_module("torch.optim.optimizer"), "_default_to_fused_or_foreach", None)
        if pick is not None:
            params = [p for g in opt.param_groups for p in g["params"]]
            try:
                fused, foreach = pick(params, differentiable=False, use_fused=False)
            except TypeError:
                fused, foreach = False, False
            if fused:
                return "fused (torch's default here)"
            if foreach:
                return "foreach (torch's default here)"
        return "for-loop (torch's default here: foreach=None, fused=None)"
    return "for-loop (foreach=False)"


class ManualRMSNorm(nn.Module):
    """Fallback for torch < 2.4, which has no nn.RMSNorm."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(dim, eps):
    if hasattr(nn, "RMSNorm"):
        return nn.RMSNorm(dim, eps=eps)
    return ManualRMSNorm(dim, eps)


def sdpa_has_gqa():
    try:
        q = torch.zeros(1, 2, 1, 4)
        kv = torch.zeros(1, 1, 1, 4)
        F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
        return True
    except (TypeError, AttributeError):  # before 2.5 no enable_gqa; before 2.0 no fused attention at all
        return False


def causal_attention(q, k, v):
    """Fused attention where this PyTorch has it (2.0+); otherwise the plain masked-softmax form."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return s.masked_fill(mask, float("-inf")).softmax(-1) @ v


def rope_tables(seq, head_dim, theta):
    inv = theta ** (-torch.arange(0, head_dim // 2, dtype=torch.float64) * 2.0 / head_dim)
    ang = torch.arange(seq, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()  # (T, d/2)


def apply_rope(x, cos, sin):
    # x: (B, n_heads, T, d), rotate-half layout
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def moda_attention(q, k, v, depth):
    """One softmax over the causal keys and each token's depth keys. q (B, H, T, d); k, v and each
    depth entry's K, V (B, Hk, T, d)."""
    B, H, T, d = q.shape
    g = H // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scale = d ** -0.5
    s_seq = (q @ k.transpose(-1, -2)) * scale
    s_seq = s_seq.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    if not depth:
        return s_seq.softmax(-1) @ v
    kd = torch.stack([dk for dk, _ in depth], dim=3).repeat_interleave(g, dim=1)  # (B, H, T, L, d)
    vd = torch.stack([dv for _, dv in depth], dim=3).repeat_interleave(g, dim=1)
    s_dep = torch.einsum("bhtd,bhtld->bhtl", q, kd) * scale
    p = torch.cat([s_seq, s_dep], dim=-1).softmax(-1)
    return p[..., :T] @ v + torch.einsum("bhtl,bhtld->bhtd", p[..., T:], vd)


class Attention(nn.Module):
    def __init__(self, a, use_gqa):
        super().__init__()
        self.h, self.hk, self.d = a.heads, a.kv_heads, a.head_dim
        self.use_gqa = use_gqa
        self.wq = nn.Linear(a.d_model, a.heads * a.head_dim, bias=False)
        self.wk = nn.Linear(a.d_model, a.kv_heads * a.head_dim, bias=False)
        self.wv = nn.Linear(a.d_model, a.kv_heads * a.head_dim, bias=False)
        self.wo = nn.Linear(a.heads * a.head_dim, a.d_model, bias=False)

    def forward(self, x, cos, sin, depth=None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.h, self.d).transpose(1, 2)
        k = self.wk(x).view(B, T, self.hk, self.d).transpose(1, 2)
        v = self.wv(x).view(B, T, self.hk, self.d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if depth is not None:  # MoDA: also attend to this token's K/V from the earlier layers
            y = moda_attention(q, k, v, depth)
            depth_kv = (k, v)
            return self.wo(y.transpose(1, 2).reshape(B, T, self.h * self.d)), depth_kv
        if self.use_gqa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            g = self.h // self.hk
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
            y = causal_attention(q, k, v)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.h * self.d))


class MLP(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.w_gate = nn.Linear(a.d_model, a.ffn_hidden, bias=False)
        self.w_up = nn.Linear(a.d_model, a.ffn_hidden, bias=False)
        self.w_down = nn.Linear(a.ffn_hidden, a.d_model, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, a, use_gqa, ffn_kv=False):
        super().__init__()
        self.attn_norm = make_norm(a.d_model, a.norm_eps)
        self.attn = Attention(a, use_gqa)
        self.mlp_norm = make_norm(a.d_model, a.norm_eps)
        self.mlp = MLP(a)
        self.hk, self.d = a.kv_heads, a.head_dim
        # MoDA: the FFN's input projected to one more depth K/V (not for the last block: never read)
        self.ffn_kv = nn.Linear(a.d_model, 2 * a.kv_heads * a.head_dim, bias=False) if ffn_kv else None

    def forward(self, x, cos, sin, depth=None):
        if depth is None:
            x = x + self.attn(self.attn_norm(x), cos, sin)
            return x + self.mlp(self.mlp_norm(x))
        y, kv = self.attn(self.attn_norm(x), cos, sin, depth)
        x = x + y
        h = self.mlp_norm(x)
        out = x + self.mlp(h)
        depth.append(kv)
        if self.ffn_kv is not None:
            B, T, _ = h.shape
            kf, vf = self.ffn_kv(h).view(B, T, 2, self.hk, self.d).transpose(1, 3).unbind(2)  # (B, Hk, T, d) each
            depth.append((apply_rope(kf, cos, sin), vf))
        return out


class DepthMix(nn.Module):
    """AttnRes: a softmax over depth with a zero-initialised pseudo-query and RMS-normed keys."""

    def __init__(self, d, eps):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(d))
        self.key_norm = make_norm(d, eps)

    def forward(self, sources):
        v = torch.stack(sources)                 # (n, B, T, D)
        logits = self.key_norm(v) @ self.query   # (n, B, T)
        return torch.einsum("nbt,nbtd->btd", logits.softmax(0), v)


class Model(nn.Module):
    def __init__(self, a, use_gqa):
        super().__init__()
        self.residual = a.residual
        self.block_size = 1 if a.residual == "attnres_full" else a.block_size
        self.tok_emb = nn.Embedding(a.vocab, a.d_model)
        self.moda = a.attention == "moda"
        if self.moda and a.residual != "standard":
            raise SystemExit("peer_train.py: MoDA with AttnRes is not written for the peer")
        self.blocks = nn.ModuleList(Block(a, use_gqa, ffn_kv=self.moda and i + 1 < a.layers) for i in range(a.layers))
        if a.residual != "standard":  # one mix per sublayer, one for the output
            self.mixes = nn.ModuleList(DepthMix(a.d_model, a.norm_eps) for _ in range(2 * a.layers + 1))
        self.final_norm = make_norm(a.d_model, a.norm_eps)
        cos, sin = rope_tables(a.seq, a.head_dim, a.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 2:
                s = std / math.sqrt(2 * a.layers) if name.endswith(("wo.weight", "w_down.weight")) else std
                nn.init.normal_(p, 0.0, s)

    def attn_res(self, emb, cos, sin):
        done, partial = [emb], None  # completed blocks, and the running sum of the current one
        for j in range(2 * len(self.blocks)):
            blk = self.blocks[j // 2]
            if j % self.block_size == 0 and partial is not None:
                done.append(partial)
                partial = None
            h = self.mixes[j](done + ([partial] if partial is not None else []))
            f = blk.attn(blk.attn_norm(h), cos, sin) if j % 2 == 0 else blk.mlp(blk.mlp_norm(h))
            partial = f if partial is None else partial + f
        return self.mixes[-1](done + [partial])

    def forward(self, tokens, targets):
        T = tokens.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.tok_emb(tokens)
        if self.residual == "standard":
            depth = [] if self.moda else None
            for blk in self.blocks:
                x = blk(x, cos, sin, depth)
        else:
            x = self.attn_res(x, cos, sin)
        logits = F.linear(self.final_norm(x), self.tok_emb.weight)  # tied embeddings
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


class Peer:
    """The model, optimizer, batch and step function of one configuration."""

    def __init__(self, a):
        self.a = a
        torch.set_num_threads(a.threads)
        torch.manual_seed(a.seed)
        self.bf16 = a.config.endswith("bf16")
        self.compiled = a.config.startswith("compile")
        if self.compiled and not hasattr(torch, "compile"):
            raise PeerFailure(f"torch.compile needs torch >= 2.0 (this is torch {torch.__version__})")
        if self.bf16 and not hasattr(torch, "autocast"):
            raise PeerFailure(f"torch.autocast is missing in torch {torch.__version__}")
        self.use_gqa = sdpa_has_gqa()
        g = torch.Generator().manual_seed(a.seed)
        data = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=g)
        self.x, self.y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        self.rss_before_model = proc_status_bytes("VmRSS")
        self.model = Model(a, self.use_gqa)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
        )
        self.forward = torch.compile(self.model) if self.compiled else self.model
        self.losses = []
        self.compile_notes = {}
        self.warmup_steps_run = 0

    def step(self):
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        if self.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = self.forward(self.x, self.y)
        else:
            loss = self.forward(self.x, self.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        lv = loss.item()
        dt = time.perf_counter() - t0
        if not math.isfinite(lv):
            raise PeerFailure(f"the loss is not finite ({lv})")
        self.losses.append(lv)
        return dt, lv

    def warm_up(self):
        """The warm-up steps. Compiled: first the step that compiles forward and backward, then the
        requested warm-up steps, then more (up to MAX_SETTLE) until a step is within SETTLE of the one
        before, since the first steps after compiling are still slow."""
        times = []

        def one(i):
            try:
                dt, lv = self.step()
            except PeerFailure:
                raise
            except Exception as e:  # a compile error surfaces in the first step
                what = "torch.compile" if self.compiled else "the step"
                raise PeerFailure(f"{what} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            times.append(dt)
            print(f"peer {self.a.config} warm-up step {i}: {dt * 1e3:.1f} ms loss {lv:.4f}", file=sys.stderr)

        n = self.a.warmup + (1 if self.compiled else 0)
        for i in range(n):
            one(i)
        if self.compiled:
            while len(times) < n + MAX_SETTLE and (len(times) < 2 or times[-1] > SETTLE * times[-2]):
                one(len(times))
        self.warmup_steps_run = len(times)
        self.compile_notes = self.check_compiled() if self.compiled else {}

    def check_compiled(self):
        """Dynamo's counters: no graph at all means it ran eagerly; graph breaks are recorded."""
        counters = torch._dynamo.utils.counters
        graphs = int(counters["stats"].get("unique_graphs", 0))
        breaks = int(sum(counters["graph_break"].values()))
        if graphs == 0:
            raise PeerFailure("torch.compile fell back to eager (dynamo compiled no graph)")
        return {"compiled_graphs": graphs, "graph_breaks": breaks,
                "graph_break_reasons": sorted(counters["graph_break"].keys())[:5]}

    def info(self):
        a = self.a
        return {
            "impl": "pytorch-" + a.config,
            "config": a.config,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "batch": a.batch,
            "seq": a.seq,
            "params": sum(p.numel() for p in self.model.parameters()),
            "residual": a.residual + (f" (block size {a.block_size})" if a.residual == "attnres_block" else ""),
            "attention_kind": a.attention,
            "gqa": "sdpa enable_gqa" if self.use_gqa else "repeat_interleave",
            "rmsnorm": "nn.RMSNorm" if hasattr(nn, "RMSNorm") else "manual",
            "attention": "sdpa" if hasattr(F, "scaled_dot_product_attention") else "manual masked softmax",
            "autocast": "torch.autocast(cpu, bfloat16) around the forward" if self.bf16 else "none (fp32)",
            "compile": {"mode": COMPILE_MODE, "inductor_compile_threads": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS"),
                        **self.compile_notes} if self.compiled else None,
            "adamw": adamw_impl(self.opt),
            "warmup": a.warmup,
            "warmup_steps_run": self.warmup_steps_run,
            "steps": a.steps,
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "mkldnn_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()),
        }

    def memory(self):
        return {"rss_before_model_bytes": self.rss_before_model, "peak_rss_bytes": peak_rss_bytes(),
                "rss_bytes": proc_status_bytes("VmRSS"),
                "memory_scope": "this process only (VmHWM; compilation runs in-process)"}


def one_shot(a):
    try:
        peer = Peer(a)
        peer.warm_up()
    except PeerFailure as e:
        print(f"peer_train.py: {e}", file=sys.stderr)
        sys.exit(4)
    times = []
    for i in range(a.steps):
        dt, lv = peer.step()
        times.append(dt)
        print(f"peer step {i}: {dt * 1e3:.1f} ms loss {lv:.4f}", file=sys.stderr)
    mean = statistics.fmean(times)
    std = statistics.stdev(times) if len(times) > 1 else 0.0
    out = peer.info()
    out.update({"step_ms_mean": mean * 1e3, "step_ms_std": std * 1e3, "tokens_per_s": a.batch * a.seq / mean,
                "loss_first": peer.losses[0], "loss_last": peer.losses[-1], **peer.memory()})
    print(json.dumps(out))


def serve(a):
    # The protocol's lines go to the original stdout; everything else printed there (by torch, by a
    # compiler it runs) goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def say(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        peer = Peer(a)
        peer.warm_up()
    except PeerFailure as e:
        say({"error": str(e)})
        sys.exit(1)
    say({"ready": True, **peer.info()})
    reps = 0
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "rep":
            times = []
            try:
                for _ in range(a.steps):
                    times.append(peer.step()[0])
            except Exception as e:
                say({"error": f"rep {reps}: {type(e).__name__}: {e}"})
                sys.exit(1)
            reps += 1
            print(f"peer {a.config} rep {reps}: {statistics.fmean(times) * 1e3:.1f} ms/step", file=sys.stderr)
            say({"step_s": times, "loss": peer.losses[-1]})
        elif cmd == "quit":
            say({"quit": True, "loss_first": peer.losses[0] if peer.losses else None,
                 "loss_last": peer.losses[-1] if peer.losses else None, **peer.memory()})
            return
        elif cmd:
            say({"error": f"unknown command {cmd!r} (expected rep or quit)"})


def main():
    a = parse_args()
    if a.serve:
        serve(a)
    else:
        one_shot(a)


if __name__ == "__main__":
    main()
