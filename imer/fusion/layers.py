"""Blocks used unchanged by two or more methods."""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0, layers: int = 2) -> nn.Sequential:
    """Linear-GELU-Dropout stack; ``layers=1`` is a single Linear."""
    if layers == 1:
        return nn.Sequential(nn.Linear(d_in, d_out))
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers - 1):
        mods += [nn.Linear(d, d_hidden), nn.GELU(), nn.Dropout(dropout)]
        d = d_hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention whose keys can be masked out per position.

    Unlike ``nn.MultiheadAttention`` with ``key_padding_mask``, a query whose keys are all
    masked gets a zero output instead of NaN: in utterance mode a missing modality has no
    visible key at all, and must contribute nothing.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, out_proj: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        # out_proj=False: the heads' concatenated values are the output (MoMKE's released code)
        self.out = nn.Linear(dim, dim) if out_proj else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, D]``; key_mask bool ``[B, L]`` (True = may be attended to)."""
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)  # [B, H, L, L]
        allowed = key_mask[:, None, None, :]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1) * allowed  # all-masked rows become exactly 0
        attn = self.drop(attn)
        y = (attn @ v).transpose(1, 2).reshape(b, l, d)
        return self.out(y)
