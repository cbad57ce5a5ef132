"""A small encoder-decoder transformer (Vaswani et al., 2017), pre-norm, in the manner of
nanoGPT: one embedding for both languages (the vocabulary is shared) tied to the output
layer, learned positions, greedy decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from subwords import BOS, EOS, PAD, Subwords
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Config:
    vocab: int  # subword pieces, both languages
    width: int = 256  # embedding size; heads * head size
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    context: int = 48  # pieces a side, with <s> and </s>; longer messages are cut
    dropout: float = 0.1


def config_of(params: dict, vocab: int) -> Config:
    return Config(vocab, params["width"], params["heads"], params["encoder_layers"],
                  params["decoder_layers"], params["context"], params["dropout"])


class Attention(nn.Module):
    """Multi-head attention of x over `memory` (x itself for self-attention)."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.heads = c.heads
        self.query = nn.Linear(c.width, c.width)
        self.key_value = nn.Linear(c.width, 2 * c.width)
        self.out = nn.Linear(c.width, c.width)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor,
                allowed: torch.Tensor) -> torch.Tensor:  # x (B, T, W), memory (B, S, W)
        b, t, w = x.shape
        s, h = memory.shape[1], self.heads
        q = self.query(x).view(b, t, h, w // h).transpose(1, 2)  # (B, H, T, W/H)
        k, v = (z.view(b, s, h, w // h).transpose(1, 2)
                for z in self.key_value(memory).split(w, dim=2))  # (B, H, S, W/H) each
        scores = q @ k.transpose(-2, -1) / math.sqrt(w // h)  # (B, H, T, S)
        scores = scores.masked_fill(~allowed, float("-inf"))  # allowed: (B, 1, T or 1, S)
        y = self.drop(F.softmax(scores, dim=-1)) @ v  # (B, H, T, W/H)
        return self.out(y.transpose(1, 2).reshape(b, t, w))  # (B, T, W)


class FeedForward(nn.Sequential):
    def __init__(self, c: Config) -> None:
        super().__init__(nn.Linear(c.width, 4 * c.width), nn.GELU(),
                         nn.Linear(4 * c.width, c.width), nn.Dropout(c.dropout))


class EncoderBlock(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(c.width), Attention(c)
        self.norm2, self.mlp = nn.LayerNorm(c.width), FeedForward(c)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:  # (B, S, W)
        y = self.norm1(x)
        x = x + self.attention(y, y, allowed)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(c.width), Attention(c)
        self.norm2, self.cross = nn.LayerNorm(c.width), Attention(c)
        self.norm3, self.mlp = nn.LayerNorm(c.width), FeedForward(c)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, causal: torch.Tensor,
                source: torch.Tensor) -> torch.Tensor:  # x (B, T, W), memory (B, S, W)
        y = self.norm1(x)
        x = x + self.attention(y, y, causal)
        x = x + self.cross(self.norm2(x), memory, source)
        return x + self.mlp(self.norm3(x))


class Translator(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.config = c
        self.tokens = nn.Embedding(c.vocab, c.width)
        self.positions = nn.Embedding(c.context, c.width)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(c) for _ in range(c.encoder_layers))
        self.encoder_norm = nn.LayerNorm(c.width)
        self.decoder = nn.ModuleList(DecoderBlock(c) for _ in range(c.decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.width)
        causal = torch.tril(torch.ones(c.context, c.context, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)  # rebuilt, never stored
        # the embedding is scaled up by sqrt(width) on the way in and read unscaled as the
        # output layer, so it starts at 1/sqrt(width): unit-sized inputs, small logits
        nn.init.normal_(self.tokens.weight, std=c.width ** -0.5)
        nn.init.normal_(self.positions.weight, std=0.02)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, W)
        positions = torch.arange(ids.shape[1])
        scaled = self.tokens(ids) * math.sqrt(self.config.width)
        return self.drop(scaled + self.positions(positions))

    def encode(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """source (B, S) -> memory (B, S, W) and where it may be attended (B, 1, 1, S)."""
        allowed = (source != PAD)[:, None, None, :]
        x = self._embed(source)
        for block in self.encoder:
            x = block(x, allowed)
        return self.encoder_norm(x), allowed

    def decode(self, target: torch.Tensor, memory: torch.Tensor,
               allowed: torch.Tensor) -> torch.Tensor:
        """target (B, T) so far -> (B, T, vocab) logits of the next piece."""
        t = target.shape[1]
        causal = self.causal[:t, :t][None, None]  # (1, 1, T, T)
        x = self._embed(target)
        for block in self.decoder:
            x = block(x, memory, causal, allowed)
        return self.decoder_norm(x) @ self.tokens.weight.T  # tied output layer

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        memory, allowed = self.encode(source)
        return self.decode(target, memory, allowed)  # (B, T, vocab)

    @torch.no_grad()
    def translate(self, sources: list[list[int]], max_length: int | None = None) -> list[list[int]]:
        """Greedy translations (piece ids, without <s> and </s>) of a batch of sources."""
        limit = min(max_length or self.config.context, self.config.context) - 1
        memory, allowed = self.encode(batch(sources, self.config.context, wrap=True))
        out = torch.full((len(sources), 1), BOS, dtype=torch.long)  # (B, 1)
        done = torch.zeros(len(sources), dtype=torch.bool)
        for _ in range(limit):
            step = self.decode(out, memory, allowed)[:, -1].argmax(-1)  # (B,)
            step = torch.where(done, torch.full_like(step, PAD), step)
            out = torch.cat([out, step[:, None]], dim=1)
            done |= step == EOS
            if bool(done.all()):
                break
        return [[int(i) for i in row[1:] if i not in (PAD, EOS)]
                for row in _until_end(out)]


def _until_end(out: torch.Tensor) -> list[torch.Tensor]:
    rows = []
    for row in out:
        ends = (row == EOS).nonzero()
        rows.append(row[: int(ends[0]) if len(ends) else len(row)])
    return rows


def batch(sequences: list[list[int]], context: int, wrap: bool) -> torch.Tensor:
    """(B, L) piece ids padded with PAD; with wrap, <s> ... </s> around each, cut to fit."""
    rows = [([BOS, *s[: context - 2], EOS] if wrap else s[:context]) for s in sequences]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows], dtype=torch.long)


def load(weights: dict[str, torch.Tensor], params: dict) -> tuple[Translator, Subwords]:
    """The translator and its vocabulary, both from one weights file (the vocabulary is
    the `vocabulary` tensor: its JSON as UTF-8 bytes)."""
    tensors = dict(weights)
    vocabulary = Subwords.from_json(bytes(tensors.pop("vocabulary").numpy().tobytes()))
    model = Translator(config_of(params, len(vocabulary)))
    model.load_state_dict(tensors)
    model.eval()
    return model, vocabulary
