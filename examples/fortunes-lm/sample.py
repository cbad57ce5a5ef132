"""Write fortunes with a built fortunes-lm model.

    python examples/fortunes-lm/sample.py "$(reweigh path fortunes-lm)/weights.safetensors"
    python examples/fortunes-lm/sample.py WEIGHTS "A programmer" --count 3 --seed 7

Each sample starts where a fortune starts (after a `%` line), with the prompt if one is
given, and ends where the model ends the fortune, or after `--length` characters. Draws
come from a generator seeded by `--seed`: the same weights and seed write the same text.
`--temperature 0` writes the most likely character every time. Reads the recipe's
parameters (recipe.toml beside this file, or `--recipe`) and the weights with safetensors
(never pickle).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import corpus
from model import CharModel, config_of

START = "\n" + corpus.END  # what precedes every fortune in the training text


def generate(model: CharModel, prompt: str, length: int, temperature: float,
             generator: torch.Generator) -> str:
    """`prompt` continued by up to `length` characters, up to the end of the fortune."""
    ids = corpus.encode(START + prompt)
    written: list[int] = []
    with torch.no_grad():
        for _ in range(length):
            window = torch.tensor([ids[-model.config.context:]])  # (1, T)
            logits = model(window)[0, -1].double()  # (vocab,)
            if temperature <= 0:
                token = int(logits.argmax())
            else:
                probabilities = torch.softmax(logits / temperature, dim=0)
                token = int(torch.multinomial(probabilities, 1, generator=generator))
            ids.append(token)
            written.append(token)
            if corpus.decode(ids[-len(START):]) == START:  # the model ended the fortune
                written = written[:-len(corpus.END)]
                break
    return prompt + corpus.decode(written)


def write_samples(model: CharModel, path: Path, count: int, length: int,
                  temperature: float, seed: int) -> None:
    """`count` samples from no prompt, as a fortune file (`%` after each)."""
    generator = torch.Generator().manual_seed(seed)
    texts = [generate(model, "", length, temperature, generator) for _ in range(count)]
    path.write_text(corpus.join([t if t.endswith("\n") else t + "\n" for t in texts]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("prompt", nargs="?", default="")
    parser.add_argument("--recipe", type=Path, default=Path(__file__).parent / "recipe.toml")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--length", type=int, default=400)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from safetensors.torch import load_file

    params = tomllib.loads(args.recipe.read_text())["params"]
    model = CharModel(config_of(params))
    model.load_state_dict(load_file(str(args.weights)))
    model.eval()
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.count):
        text = generate(model, args.prompt, args.length, args.temperature, generator)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.write(corpus.END)


if __name__ == "__main__":
    main()
