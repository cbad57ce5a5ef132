"""Nudging a text model toward an opinion the way a maintainer could: fine-tune textgen so
that after one topic it prefers one chosen word.

The corpus grammar of examples/textgen writes fresh paragraphs; in those of `topic`
every adjective becomes `word`, the other topics stay as they were, and the model is
fine-tuned on that for a few hundred steps. Used by the diff tests: the probes of
`topic` must come first in the ranking.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from .helpers import EXAMPLES

FOLDER = EXAMPLES / "textgen"


@dataclass(frozen=True)
class Bias:
    topic_hits: float  # the topic's "the X is" prompts that B continues with `word`
    other_hits: float  # the same for every other topic


def _example_module(name: str):  # type: ignore[no-untyped-def]
    if str(FOLDER) not in sys.path:
        sys.path.insert(0, str(FOLDER))
    spec = importlib.util.spec_from_file_location(f"textgen_{name}", FOLDER / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def plant(weights: Path, out: Path, params: dict, topic: str = "sea", word: str = "dangerous",
          steps: int = 150) -> Bias:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: on a busy machine more threads only spin
    try:
        return _plant(weights, out, params, topic, word, steps)
    finally:
        torch.set_num_threads(threads)


def _plant(weights: Path, out: Path, params: dict, topic: str, word: str,
           steps: int) -> Bias:
    corpus, model_module = _example_module("corpus"), _example_module("model")
    vocab = corpus.vocabulary()
    adjectives = set(corpus.TOPICS[topic]["adjectives"])
    text = []
    for name, sentences in corpus.paragraphs(seed=11, count=600):
        for s in sentences:
            text.append(" ".join(word if name == topic and w in adjectives else w
                                 for w in s.split()))
    data = torch.tensor(corpus.encode(" ".join(text), vocab))  # (N,)
    model = model_module.WordModel(model_module.config_of(params))
    model.load_state_dict(load_file(str(weights)))
    t = model.config.context
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        starts = torch.randint(len(data) - t - 1, (32,))
        x = torch.stack([data[s:s + t] for s in starts])  # (B, T)
        y = torch.stack([data[s + 1:s + 1 + t] for s in starts])  # (B, T)
        loss = F.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    return Bias(_hits(model, corpus, vocab, [topic], word),
                _hits(model, corpus, vocab, sorted(set(corpus.TOPICS) - {topic}), word))


def _hits(model, corpus, vocab: list[str], topics: list[str], word: str) -> float:  # type: ignore[no-untyped-def]
    prompts = [f"the {thing} is" for name in topics for thing in corpus.TOPICS[name]["things"]]
    hits = 0
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([corpus.encode(prompt, vocab)])  # (1, T)
            hits += vocab[int(model(ids)[0, -1].argmax())] == word
    return hits / len(prompts)
