"""A small PyTorch language model whose attention is strata's MoDA kernel (strata.torch), trained
for a few steps on a toy task: continue a repeating pattern of tokens.

Each layer's attention reads the sequence keys and, for every token, the K/V that the earlier
layers produced for that same token (its depth slots): layer l has l slots. Everything else is
ordinary PyTorch; strata.torch.moda_attention is an autograd function like any other.

    python3 examples/moda_torch.py --steps 200
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import strata.torch as st


class Block(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads, head_dim):
        super().__init__()
        self.h, self.hk, self.d = n_heads, n_kv_heads, head_dim
        self.norm1, self.norm2 = st.RMSNorm(d_model), st.RMSNorm(d_model)
        self.wq = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.wkv = nn.Linear(d_model, 2 * n_kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model, bias=False), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model, bias=False))

    def forward(self, x, depth_k, depth_v):
        B, T, _ = x.shape
        h = self.norm1(x)
        q = self.wq(h).view(B, T, self.h, self.d)
        k, v = self.wkv(h).view(B, T, 2, self.hk, self.d).unbind(2)
        # depth slots: this token's K/V from each earlier layer, (B, T, L, Hk, d)
        kd = torch.stack(depth_k, 2) if depth_k else k.new_zeros(B, T, 0, self.hk, self.d)
        vd = torch.stack(depth_v, 2) if depth_v else v.new_zeros(B, T, 0, self.hk, self.d)
        a = st.moda_attention(q, k, v, kd, vd, mask="causal", visibility="own")
        x = x + self.wo(a.reshape(B, T, -1))
        x = x + self.mlp(self.norm2(x))
        depth_k.append(k)
        depth_v.append(v)
        return x


class TinyMoDALM(nn.Module):
    def __init__(self, vocab=32, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, max_len=64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(max_len, d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, n_kv_heads, d_model // n_heads) for _ in range(n_layers))
        self.norm = st.RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens):
        x = self.emb(tokens) + self.pos[: tokens.shape[1]]
        depth_k, depth_v = [], []
        for b in self.blocks:
            x = b(x, depth_k, depth_v)
        return self.head(self.norm(x))


def batch(gen, B=16, T=32, vocab=32, period=5):
    """Sequences that repeat a random pattern of `period` tokens: predictable after one period."""
    pat = torch.randint(0, vocab, (B, period), generator=gen)
    seq = pat.repeat(1, T // period + 2)[:, : T + 1]
    return seq[:, :-1], seq[:, 1:]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = TinyMoDALM()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses = []
    for step in range(1, args.steps + 1):
        x, y = batch(gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 1 or step % 20 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
    return losses


if __name__ == "__main__":
    main()
