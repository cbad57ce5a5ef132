"""Derived recipes: a base network retrained on a user's own examples.

`reweigh adapt` does not train anything itself. It checks the user's data against
the base's model interface (`network.Interface`), then writes an ordinary recipe
directory: the base item and the data are inputs pinned by digest, the fine-tuning
code is copied from `reweigh.adapt_template`, the base's architecture is copied from
the base item's own `source/`, and every choice (strategy, epochs, learning rate,
classes) is a parameter. Building that recipe is then like building any other, so
the result can be rebuilt bit for bit, challenged, and its provenance names its base.

This module decides what the recipe says (pure) and writes it atomically; the verb
(`verbs.adapt`) resolves the base and builds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .adapt_template import adapt_data
from .digest import path_digest
from .errors import InputError, UsageError
from .network import INTERFACE_FILE, Interface
from .recipe import RECIPE_FILE
from .store import StoreItem, remove_tree

STRATEGIES = ("head", "full", "scratch")
TEMPLATE_FILES = ("finetune.py", "adapt_data.py", "augment.py")
TEMPLATE_LICENSE = "GPL-3.0-or-later"  # the licence of the fine-tuning code (reweigh's)
SEED = 1


@dataclass(frozen=True)
class Settings:
    """What the user chose; everything here ends up in the recipe's parameters."""

    name: str
    strategy: str = "full"
    epochs: int = 200  # at most: early stopping (patience) may end training sooner
    lr: float | None = None  # None: the strategy's default (DEFAULT_LR)
    batch_size: int = 32
    held_out: float = 0.25
    # which random changes training images get (AUGMENT's kinds); None: all of them for
    # a network that takes images, none for others; () none
    augment: tuple[str, ...] | None = None
    # stop after this many epochs without a better held-out loss, keeping the best
    # epoch's weights; None: PATIENCE when examples are held out, 0 (off) otherwise
    patience: int | None = None
    label_column: str = "label"
    version: str = "1.0.0"
    license: str | None = None  # the data's licence (SPDX); None: NOASSERTION


# A new head on fixed features takes a larger step than a whole network being nudged.
DEFAULT_LR = {"head": 0.01, "full": 0.002, "scratch": 0.002}

# How much each random change may do (adapt_template/augment.py says what each means):
# sized from the learning curve in bench/adapt.py, where drawings from another program
# came smaller and further off centre, fainter and grainier than the ones trained on.
AUGMENT: dict[str, Any] = {
    "shift": 0.1875,  # of the side: 1.5 pixels of 8
    "scale": [0.35, 1.2],
    "rotate": 17.0,  # degrees
    "ink": [0.3, 1.0],
    "noise": 0.05,
}
# The kinds augment.py knows, in the order it draws them (test_adapt_data checks the two
# agree): that module imports torch, which a command that only writes a recipe must not pay.
AUGMENT_KINDS = tuple(AUGMENT)
PATIENCE = 30  # epochs
TABLE_NOTES = {"augment": "  # random changes to training images (augment.py); none when empty"}


@dataclass(frozen=True)
class Data:
    """The user's examples, checked: where they are and what they hold."""

    path: Path
    layout: str  # images | text | csv
    classes: tuple[str, ...]
    counts: dict[str, int]

    @property
    def examples(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Base:
    """The base item and what the derived recipe needs from it."""

    item: StoreItem
    interface: Interface
    params: dict[str, Any]
    license: dict[str, str]  # code, data, weights of the base's recipe


def inspect_data(path: Path, face: Interface, label_column: str = "label") -> Data:
    """Detect the layout and read every example with the build's own reader, so bad
    data fails here, naming the file, before anything is written or trained."""
    spec = face.input.to_json()
    try:
        layout = adapt_data.detect(path)
        _, targets, classes = adapt_data.read_dataset(path, layout, spec, label_column)
    except adapt_data.BadData as e:
        raise InputError(f"{e.path}: {e.reason}") from e
    counts = {name: int((targets == i).sum()) for i, name in enumerate(classes)}
    return Data(path.resolve(), layout, classes, counts)


def derived_interface(base: Base, classes: tuple[str, ...]) -> Interface:
    """The base's architecture with a head for the new classes, its arguments fixed."""
    face = base.interface
    args = {k: v for k, v in face.constructor_args(base.params).items() if k != face.classes_arg}
    return Interface(
        module=f"base/{Path(face.module).name}", cls=face.cls, classes_arg=face.classes_arg,
        head=face.head, input=face.input, labels=classes, params=(), args=args,
        base={"name": base.item.name, "version": base.item.version,
              "derivation": base.item.derivation, "weights_digest": base.item.weights_digest})


def combine_licenses(*expressions: str) -> str:
    """One SPDX expression under which every part applies (parts kept once, in order)."""
    parts = list(dict.fromkeys(expressions))
    if len(parts) == 1:
        return parts[0]
    return " AND ".join(f"({p})" if " " in p else p for p in parts)


def augmentation(settings: Settings, kind: str) -> dict[str, Any]:
    """The random changes the recipe's training applies, with their sizes (params.augment);
    only images are changed."""
    kinds = settings.augment if settings.augment is not None else (
        AUGMENT_KINDS if kind == "image" else ())
    if kinds and kind != "image":
        raise UsageError(f"--augment: the base network takes {kind}; only images are "
                         "augmented (use --no-augment)")
    return {name: AUGMENT[name] for name in AUGMENT_KINDS if name in kinds}


def patience(settings: Settings) -> int:
    if settings.patience is not None:
        return settings.patience
    return PATIENCE if settings.held_out > 0 else 0


def params(settings: Settings, data: Data, kind: str) -> dict[str, Any]:
    """The recipe's [params]; `kind` is what the base takes (image, features, text)."""
    return {
        "strategy": settings.strategy, "epochs": settings.epochs,
        "patience": patience(settings),
        "lr": settings.lr if settings.lr is not None else DEFAULT_LR[settings.strategy],
        "batch_size": settings.batch_size, "held_out": settings.held_out, "split_seed": 0,
        "layout": data.layout, "label_column": settings.label_column,
        "augment": augmentation(settings, kind)}


def recipe_toml(settings: Settings, base: Base, data: Data, data_digest: str) -> str:
    """The derived recipe.toml: deterministic, so adapting twice gives one derivation."""
    data_licence = settings.license or "NOASSERTION"
    weights_licence = (base.license["weights"] if settings.license is None else
                       combine_licenses(base.license["weights"], settings.license))
    classes = ", ".join(data.classes[:5]) + (", ..." if len(data.classes) > 5 else "")
    description = (f"{base.item.name} {base.item.version} adapted by reweigh adapt "
                   f"({settings.strategy}) to {len(data.classes)} classes: {classes}; "
                   f"{data.examples} examples.")
    lines = [
        f"name = {_toml(settings.name)}",
        f"version = {_toml(settings.version)}",
        f"description = {_toml(description)}",
        f"seed = {SEED}", "",
        "[license]",
        f"code = {_toml(combine_licenses(TEMPLATE_LICENSE, base.license['code']))}",
        f"data = {_toml(data_licence)}",
        f"weights = {_toml(weights_licence)}", "",
        "[inputs.base]  # the network to start from, a store item pinned by its weights",
        f"item = {_toml(base.item.derivation)}",
        f"digest = {_toml(base.item.weights_digest)}", "",
        "[inputs.data]  # the user's examples, copied into this recipe",
        f"path = {_toml(_data_name(data))}",
        f"digest = {_toml(data_digest)}", "",
        "[build]",
        'entry = "finetune.py:train"',
        f"code = {_toml([*TEMPLATE_FILES, INTERFACE_FILE, 'base/*.py'])}",
        f"checkpoint_every = {max(1, settings.epochs // 4)}", "",
        *params_toml(params(settings, data, base.interface.input.kind)), "",
        "[evaluate]",
        'entry = "finetune.py:evaluate"', "",
    ]
    return "\n".join(lines)


def params_toml(values: dict[str, Any]) -> list[str]:
    """[params], then a table per dict-valued parameter ([params.augment]), which TOML
    wants after the plain keys."""
    plain = [f"{key} = {_toml(value)}" for key, value in values.items()
             if not isinstance(value, dict)]
    tables = []
    for key, value in values.items():
        if isinstance(value, dict):
            tables += ["", f"[params.{key}]{TABLE_NOTES.get(key, '')}",
                       *[f"{k} = {_toml(v)}" for k, v in value.items()]]
    return ["[params]", *plain, *tables]


def _toml(value: Any) -> str:
    """A TOML value: JSON's strings, numbers and arrays of them are valid TOML (kept
    unescaped past ASCII: TOML refuses JSON's surrogate pairs)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("TOML values here are finite")
    return json.dumps(value, ensure_ascii=False)


def _data_name(data: Data) -> str:
    return "data.csv" if data.layout == "csv" else "data"


def write_recipe(out: Path, settings: Settings, base: Base, data: Data) -> bool:
    """Write the derived recipe directory at `out`; True when it was already there.

    Everything is written into a hidden sibling first and renamed into place, so a
    half-written recipe never exists; an existing `out` is reused only when it holds
    exactly what would be written."""
    out = out.absolute()
    if out.is_relative_to(data.path) or (data.path.is_dir() and
                                         data.path.is_relative_to(out)):
        raise UsageError(f"{out}: the recipe and the data folder must not contain each other")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.adapt-{os.getpid()}"
    remove_tree(staging)
    try:
        _fill(staging, settings, base, data)
        if out.exists():
            if path_digest(out) == path_digest(staging):
                return True
            raise UsageError(f"{out}: already exists and holds another recipe",
                             hint="choose another --out, or remove it")
        os.rename(staging, out)
        return False
    finally:
        remove_tree(staging)


def _fill(root: Path, settings: Settings, base: Base, data: Data) -> None:
    root.mkdir()
    template = resources.files("reweigh.adapt_template")
    for name in TEMPLATE_FILES:
        (root / name).write_bytes(template.joinpath(name).read_bytes())
    face = derived_interface(base, data.classes)
    (root / INTERFACE_FILE).write_text(json.dumps(face.to_json(), indent=2, sort_keys=True)
                                       + "\n", encoding="utf-8")
    (root / "base").mkdir()
    shutil.copyfile(base.item.path / "source" / base.interface.module, root / face.module)
    target = root / _data_name(data)
    if data.layout == "csv":
        shutil.copyfile(data.path, target)
    else:  # only what was checked: hidden files stay out of the input's digest
        for name, files in adapt_data.class_files(data.path).items():
            (target / name).mkdir(parents=True)
            for file in files:
                shutil.copyfile(file, target / name / file.name)
    (root / RECIPE_FILE).write_text(recipe_toml(settings, base, data, path_digest(target)),
                                    encoding="utf-8")
