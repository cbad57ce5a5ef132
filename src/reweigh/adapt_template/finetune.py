"""Retrain a store item's network on new examples: the code `reweigh adapt` writes.

The architecture is the base's own (`model.json` names its module, copied from the
base item's `source/`), with its head, the last Linear layer, replaced by one with
an output per new class. Strategies: `head` loads the base's weights and trains the
new head alone (cheap, good with few examples); `full` loads them and trains every
layer; `scratch` trains the same architecture from random weights, the baseline that
says what the base's weights are worth. The held-out examples are chosen class by
class from `split_seed`, so every build of the recipe is judged on the same ones.

Training images are changed at random, batch by batch (`augment.py`; the kinds and
their sizes are `params.augment`, empty for none), with draws from the generator
that orders the batches, which every checkpoint saves. With `patience` above 0 and
examples held out, training stops once the held-out loss has not improved for
`patience` epochs (or at `epochs`), and the weights are those of its best epoch; the
held-out share then chose the epoch as well as judging it.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch
from adapt_data import read_dataset, split
from augment import augment, check

HERE = Path(__file__).resolve().parent


def interface() -> dict:
    return json.loads((HERE / "model.json").read_text(encoding="utf-8"))


def network(face: dict) -> torch.nn.Module:
    """The base architecture with one output per class (a fresh, seeded head)."""
    spec = importlib.util.spec_from_file_location("adapt_base_model", HERE / face["module"])
    if spec is None or spec.loader is None:
        raise ValueError(f"model.json: module {face['module']!r} cannot be loaded")
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
    changes = p.get("augment", {})
    check(changes)
    x, y = examples(ctx, face)
    chosen, held = (torch.from_numpy(i) for i in split(y.numpy(), p["split_seed"],
                                                          p["held_out"]))
    x_held, y_held = x[held], y[held]  # (M, ...), (M,): never changed, never trained on
    x, y = x[chosen], y[chosen]  # (N, ...), (N,)
    patience = p.get("patience", 0) if len(y_held) else 0
    model = network(face)
    if p["strategy"] != "scratch":
        start_from_base(ctx, face, model)
    model.train(p["strategy"] != "head")  # head only: the frozen body keeps its eval mode
    optimizer = torch.optim.Adam(trainable(model, face, p["strategy"]), lr=p["lr"])
    order = torch.Generator().manual_seed(ctx.seed)  # batch order and every augmentation
    state = ctx.resume_into(model, optimizer, order)
    epoch = done = state.get("epoch", 0)
    best = state.get("best")  # the best epoch so far, its held-out loss and weights
    if patience and best is None:
        best = {"epoch": 0, "loss": held_out_loss(model, x_held, y_held),
                "weights": copy_weights(model)}
    for epoch in range(done + 1, p["epochs"] + 1):
        loss = one_epoch(model, optimizer, (x, y), p["batch_size"], changes, order)
        ctx.progress(epoch, p["epochs"], f"epoch {epoch} loss {loss:.3f}")
        ctx.log_metric("train_loss", loss, step=epoch)
        if patience:
            judged = held_out_loss(model, x_held, y_held)
            ctx.log_metric("held_out_loss", judged, step=epoch)
            if judged < best["loss"]:
                best = {"epoch": epoch, "loss": judged, "weights": copy_weights(model)}
        last = epoch == p["epochs"] or bool(patience and epoch - best["epoch"] >= patience)
        ctx.checkpoint(epoch, ctx.training_state(model, optimizer, order, epoch=epoch,
                                                 best=best), final=last)
        if last:
            break
    if patience:
        model.load_state_dict(best["weights"])
        ctx.log_metric("best_epoch", best["epoch"])
    ctx.log_metric("epochs_trained", epoch)
    ctx.save_weights(model.state_dict())


def one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              data: tuple[torch.Tensor, torch.Tensor], batch_size: int, changes: dict,
              order: torch.Generator) -> float:
    """One pass over the training examples in an order drawn from `order`, each batch
    changed by `augment` (with draws from `order` too); the mean training loss."""
    x, y = data
    permutation = torch.randperm(len(y), generator=order)
    batches = math.ceil(len(y) / batch_size)
    running = 0.0
    for b in range(batches):
        index = permutation[b * batch_size:(b + 1) * batch_size]
        inputs = augment(x[index], changes, order) if changes else x[index]
        loss = torch.nn.functional.cross_entropy(model(inputs), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item()
    return running / batches


def held_out_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy on the held-out examples (0.0 when there are none), the
    model's training mode kept."""
    if len(y) == 0:
        return 0.0
    mode = model.training
    model.eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y).item()
    model.train(mode)
    return loss


def copy_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


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
