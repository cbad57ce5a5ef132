"""A tiny word-level transformer language model, in the manner of nanoGPT."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Config:
    vocab: int  # words the model knows
    context: int = 16  # words it sees at once: three or four sentences of the corpus
    layers: int = 2
    heads: int = 4
    width: int = 64  # embedding size; heads * head size


class SelfAttention(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.heads = c.heads
        self.qkv = nn.Linear(c.width, 3 * c.width)
        self.out = nn.Linear(c.width, c.width)
        causal = torch.tril(torch.ones(c.context, c.context, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)  # rebuilt, never stored

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, W)
        b, t, w = x.shape
        q, k, v = self.qkv(x).split(w, dim=2)  # 3 x (B, T, W)
        q, k, v = (z.view(b, t, self.heads, w // self.heads).transpose(1, 2)
                   for z in (q, k, v))  # (B, H, T, W/H)
        scores = q @ k.transpose(-2, -1) / math.sqrt(w // self.heads)  # (B, H, T, T)
        scores = scores.masked_fill(~self.causal[:t, :t], float("-inf"))
        y = F.softmax(scores, dim=-1) @ v  # (B, H, T, W/H)
        return self.out(y.transpose(1, 2).reshape(b, t, w))  # (B, T, W)


class Block(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(c.width)
        self.attention = SelfAttention(c)
        self.norm2 = nn.LayerNorm(c.width)
        self.mlp = nn.Sequential(nn.Linear(c.width, 4 * c.width), nn.GELU(),
                                 nn.Linear(4 * c.width, c.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, W)
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class WordModel(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.config = c
        self.tokens = nn.Embedding(c.vocab, c.width)
        self.positions = nn.Embedding(c.context, c.width)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: (B, T), T <= context
        t = ids.shape[1]
        x = self.tokens(ids) + self.positions(torch.arange(t))  # (B, T, W)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))  # (B, T, vocab) logits of the next word


def config_of(params: dict) -> Config:
    from corpus import vocabulary

    return Config(len(vocabulary()), params["context"], params["layers"], params["heads"],
                  params["width"])
