"""Retrain a store item's network on new examples: the code `reweigh adapt` writes.

The architecture is the base's own (`model.json` names its module, copied from the
base item's `source/`), with its head, the last Linear layer, replaced by one with
an output per new class. Strategies: `head` loads the base's weights and trains the
new head alone (cheap, good with few examples); `full` loads them and trains every
layer; `scratch` trains the same architecture from random weights, the baseline that
says what the base's weights are worth. The held-out examples are chosen class by
class from `split_seed`, so every build of the recipe is judged on the same ones.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch
from adapt_data import read_dataset, split

HERE = Path(__file__).resolve().parent


def interface() -> dict:
    return json.loads((HERE / "model.json").read_text(encoding="utf-8"))


def network(face: dict) -> torch.nn.Module:
    """The base architecture with one output per class (a fresh, seeded head)."""
    spec = importlib.util.spec_from_file_location("adapt_base_model", HERE / face["module"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, face["class"])(**face["args"],
                                          **{face["classes_arg"]: len(face["labels"])})


def examples(ctx, face: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs as the network takes them, (N, *input), and class indices, (N,)."""
    p = ctx.params
    x, y, classes = read_dataset(ctx.inputs["data"], p["layout"], face["input"],
                                 p["label_column"])
    if list(classes) != face["labels"]:
        raise ValueError(f"the data's classes {list(classes)} are not model.json's labels")
    if face["input"]["kind"] != "text":
        x = x / face["input"]["scale"]  # raw 0..scale -> what the network saw in training
    return torch.from_numpy(x), torch.from_numpy(y)


def start_from_base(ctx, face: dict, model: torch.nn.Module) -> None:
    """Every layer but the head starts from the base item's weights."""
    head = face["head"] + "."
    body = {k: v for k, v in ctx.load_weights("base").items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith(head) for k in missing):
        raise ValueError(f"the base's weights do not fit its architecture: missing {missing}, "
                         f"unexpected {unexpected}")


def trainable(model: torch.nn.Module, face: dict, strategy: str) -> list[torch.nn.Parameter]:
    if strategy != "head":
        return list(model.parameters())
    model.requires_grad_(False)
    head = model.get_submodule(face["head"])
    head.requires_grad_(True)
    return list(head.parameters())


def train(ctx) -> None:
    p = ctx.params
    face = interface()
    x, y = examples(ctx, face)
    chosen, _ = split(y.numpy(), p["split_seed"], p["held_out"])
    x, y = x[torch.from_numpy(chosen)], y[torch.from_numpy(chosen)]  # (N, ...), (N,)
    model = network(face)
    if p["strategy"] != "scratch":
        start_from_base(ctx, face, model)
    model.train(p["strategy"] != "head")  # head only: the frozen body keeps its eval mode
    optimizer = torch.optim.Adam(trainable(model, face, p["strategy"]), lr=p["lr"])
    order = torch.Generator().manual_seed(ctx.seed)
    first = ctx.resume_into(model, optimizer, order).get("epoch", 0) + 1
    batches = math.ceil(len(y) / p["batch_size"])
    for epoch in range(first, p["epochs"] + 1):
        permutation = torch.randperm(len(y), generator=order)
        running = 0.0
        for b in range(batches):
            index = permutation[b * p["batch_size"]:(b + 1) * p["batch_size"]]
            loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item()
        ctx.progress(epoch, p["epochs"], f"epoch {epoch} loss {running / batches:.3f}")
        ctx.log_metric("train_loss", running / batches, step=epoch)
        ctx.checkpoint(epoch, ctx.training_state(model, optimizer, order, epoch=epoch),
                       final=epoch == p["epochs"])
    ctx.save_weights(model.state_dict())


def evaluate(ctx) -> dict:
    """Accuracy on the held-out examples (none when the recipe holds none out)."""
    p = ctx.params
    face = interface()
    x, y = examples(ctx, face)
    _, held = split(y.numpy(), p["split_seed"], p["held_out"])
    if len(held) == 0:
        return {"metrics": {}, "predictions": []}
    model = network(face)
    model.load_state_dict(ctx.weights)
    model.eval()
    index = torch.from_numpy(held)
    with torch.no_grad():
        predictions = model(x[index]).argmax(dim=1)  # (M,)
    accuracy = (predictions == y[index]).double().mean().item()
    return {"metrics": {"accuracy": accuracy}, "predictions": predictions.tolist()}
