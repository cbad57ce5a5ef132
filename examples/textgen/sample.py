"""Write text with a built textgen model: greedy continuation of a prompt.

    python examples/textgen/sample.py "$(reweigh path textgen)/weights.safetensors" "the sea is"

Reads the recipe's parameters from recipe.toml beside this file and the weights with
safetensors (never pickle).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from corpus import encode, vocabulary
from model import WordModel, config_of


def continue_text(model: WordModel, prompt: str, length: int) -> str:
    vocab = vocabulary()
    ids = encode(prompt, vocab)
    with torch.no_grad():
        for _ in range(length):
            window = torch.tensor([ids[-model.config.context:]])  # (1, T)
            ids.append(int(model(window)[0, -1].argmax()))
    return " ".join(vocab[i] for i in ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("prompt")
    parser.add_argument("--length", type=int, default=16)
    args = parser.parse_args()
    params = tomllib.loads((Path(__file__).parent / "recipe.toml").read_text())["params"]
    model = WordModel(config_of(params))
    model.load_state_dict(load_file(str(args.weights)))
    model.eval()
    print(continue_text(model, args.prompt, args.length))


if __name__ == "__main__":
    main()
