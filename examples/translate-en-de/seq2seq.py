"""A small encoder-decoder transformer (Vaswani et al., 2017), pre-norm, in the manner of
nanoGPT: one embedding for both languages (the vocabulary is shared) tied to the output
layer, and the paper's fixed sinusoidal positions.

Positions are fixed rather than learned on purpose: learned ones start small (std 0.02
beside pieces of unit size) and had grown to only a seventh of the pieces' size after
3000 steps, and that translator misspelt the names it should copy and lost its place in
long messages; in a trial on the first recipe's data, fixed positions and nothing else
changed took held-out BLEU from 30.5 to 33.6 and chrF from 48.8 to 51.7
(bench/README.md).

Decoding is incremental, greedy or by beam search: each decoder layer keeps the keys and
values of the pieces written so far and of the source, so a step reads one new piece.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from subwords import BOS, EOS, PAD, Subwords
from torch import nn
from torch.nn import functional as F

KeysValues = tuple[torch.Tensor, torch.Tensor]  # (B, H, S, W/H) each


@dataclass(frozen=True)
class Config:
    vocab: int  # subword pieces, both languages
    width: int = 128  # embedding size; heads * head size
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    context: int = 48  # pieces a side, with <s> and </s>; longer messages are cut
    dropout: float = 0.1


def config_of(params: dict, vocab: int) -> Config:
    return Config(vocab, params["width"], params["heads"], params["encoder_layers"],
                  params["decoder_layers"], params["context"], params["dropout"])


class Attention(nn.Module):
    """Multi-head attention of x over keys and values (x's own for self-attention)."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.heads = c.heads
        self.query = nn.Linear(c.width, c.width)
        self.key_value = nn.Linear(c.width, 2 * c.width)
        self.out = nn.Linear(c.width, c.width)
        self.drop = nn.Dropout(c.dropout)

    def keys(self, memory: torch.Tensor) -> KeysValues:
        """memory (B, S, W) -> its keys and values, (B, H, S, W/H) each."""
        b, s, w = memory.shape
        k, v = self.key_value(memory).split(w, dim=2)
        return (k.view(b, s, self.heads, w // self.heads).transpose(1, 2),
                v.view(b, s, self.heads, w // self.heads).transpose(1, 2))

    def forward(self, x: torch.Tensor, kv: KeysValues,
                allowed: torch.Tensor | None) -> torch.Tensor:  # x (B, T, W)
        b, t, w = x.shape
        h = self.heads
        q = self.query(x).view(b, t, h, w // h).transpose(1, 2)  # (B, H, T, W/H)
        scores = q @ kv[0].transpose(-2, -1) / math.sqrt(w // h)  # (B, H, T, S)
        if allowed is not None:  # (B or 1, 1, T or 1, S)
            scores = scores.masked_fill(~allowed, float("-inf"))
        y = self.drop(F.softmax(scores, dim=-1)) @ kv[1]  # (B, H, T, W/H)
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
        x = x + self.attention(y, self.attention.keys(y), allowed)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(c.width), Attention(c)
        self.norm2, self.cross = nn.LayerNorm(c.width), Attention(c)
        self.norm3, self.mlp = nn.LayerNorm(c.width), FeedForward(c)

    def forward(self, x: torch.Tensor, own: KeysValues, causal: torch.Tensor | None,
                source: KeysValues, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, T, W): the pieces being read; `own`: the keys and values of every piece
        written so far, x's included; `source`: the memory's."""
        x = x + self.attention(self.norm1(x), own, causal)
        x = x + self.cross(self.norm2(x), source, allowed)
        return x + self.mlp(self.norm3(x))


class Translator(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.config = c
        self.tokens = nn.Embedding(c.vocab, c.width)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(c) for _ in range(c.encoder_layers))
        self.encoder_norm = nn.LayerNorm(c.width)
        self.decoder = nn.ModuleList(DecoderBlock(c) for _ in range(c.decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.width)
        causal = torch.tril(torch.ones(c.context, c.context, dtype=torch.bool))
        # rebuilt from the config, never stored
        self.register_buffer("causal", causal, persistent=False)
        self.register_buffer("positions", sinusoids(c.context, c.width), persistent=False)
        # the embedding is scaled up by sqrt(width) on the way in and read unscaled as the
        # output layer, so it starts at 1/sqrt(width): pieces of unit size, as large as
        # the positions that mark them, and small logits
        nn.init.normal_(self.tokens.weight, std=c.width ** -0.5)

    def _embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:  # (B, T) -> (B, T, W)
        scaled = self.tokens(ids) * math.sqrt(self.config.width)
        return self.drop(scaled + self.positions[start:start + ids.shape[1]])

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
            x = block(x, block.attention.keys(block.norm1(x)), causal,
                      block.cross.keys(memory), allowed)
        return self.decoder_norm(x) @ self.tokens.weight.T  # tied output layer

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        memory, allowed = self.encode(source)
        return self.decode(target, memory, allowed)  # (B, T, vocab)

    @torch.no_grad()
    def translate(self, sources: list[list[int]], beam: int = 1,
                  max_length: int | None = None) -> list[list[int]]:
        """Translations (piece ids, without <s> and </s>) of a batch of sources: greedy
        with beam 1, else the best of `beam` hypotheses (see Search)."""
        return Search(self, sources, max(1, beam), max_length).run()


class Search:
    """Incremental beam search over a batch, K hypotheses a source (K = 1: greedy).

    Each hypothesis keeps its summed log-probability; one that wrote </s> stays in its
    beam unchanged (extended by PAD at no cost), and at the end the hypothesis with the
    best mean log-probability a piece (</s> counted) wins, so short ones are not favoured
    for being short."""

    def __init__(self, model: Translator, sources: list[list[int]], k: int,
                 max_length: int | None) -> None:
        self.model, self.k, self.b = model, k, len(sources)
        context = model.config.context
        self.limit = min(max_length or context, context) - 1
        source = batch(sources, context, wrap=True).repeat_interleave(k, dim=0)  # (BK, S)
        memory, self.allowed = model.encode(source)
        self.memory = [block.cross.keys(memory) for block in model.decoder]
        self.own: list[KeysValues] = []  # per decoder layer, (BK, H, T, W/H) each

    def step(self, pieces: torch.Tensor, position: int) -> torch.Tensor:
        """The newest piece of each hypothesis (BK, 1), at `position` -> log-probabilities
        of the next (BK, vocab)."""
        x = self.model._embed(pieces, position)  # (BK, 1, W)
        for i, block in enumerate(self.model.decoder):
            k, v = block.attention.keys(block.norm1(x))  # (BK, H, 1, W/H) each
            if i < len(self.own):
                k = torch.cat([self.own[i][0], k], dim=2)
                v = torch.cat([self.own[i][1], v], dim=2)
                self.own[i] = (k, v)
            else:
                self.own.append((k, v))
            x = block(x, (k, v), None, self.memory[i], self.allowed)
        logits = self.model.decoder_norm(x[:, -1]) @ self.model.tokens.weight.T
        return F.log_softmax(logits, dim=-1)

    def run(self) -> list[list[int]]:
        b, k = self.b, self.k
        out = torch.full((b * k, 1), BOS, dtype=torch.long)  # (BK, 1)
        score = torch.full((b, k), float("-inf"))
        score[:, 0] = 0.0  # one live hypothesis a source at first
        done = torch.zeros(b * k, dtype=torch.bool)
        length = torch.zeros(b * k)
        for position in range(self.limit):
            logp = self.step(out[:, -1:], position)  # (BK, V)
            vocab = logp.shape[-1]
            ended = torch.full_like(logp, float("-inf"))
            ended[:, PAD] = 0.0
            logp = torch.where(done[:, None], ended, logp)
            score, chosen = (score.reshape(-1, 1) + logp).reshape(b, k * vocab).topk(k, dim=-1)
            parent = (chosen // vocab + torch.arange(b)[:, None] * k).reshape(-1)  # (BK,)
            piece = (chosen % vocab).reshape(-1)  # (BK,)
            out = torch.cat([out[parent], piece[:, None]], dim=1)
            self.own = [(kv[0][parent], kv[1][parent]) for kv in self.own]
            length = length[parent] + (~done[parent]).float()
            done = done[parent] | (piece == EOS)
            if bool(done.all()):
                break
        mean = (score.reshape(-1) / length.clamp(min=1)).reshape(b, k)  # (B, K)
        best = mean.argmax(-1) + torch.arange(b) * k  # (B,)
        return [[int(i) for i in row[1:] if i not in (PAD, EOS)] for row in out[best]]


def sinusoids(length: int, width: int) -> torch.Tensor:
    """Vaswani et al.'s fixed positions (length, width): the sine and cosine of each
    position at wavelengths from 2 pi to 10000 * 2 pi."""
    position = torch.arange(length, dtype=torch.float64)[:, None]  # (L, 1)
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float64)
                     * (-math.log(10000.0) / width))  # (W/2,)
    table = torch.zeros(length, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table.float()


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
