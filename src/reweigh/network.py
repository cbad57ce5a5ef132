"""The model interface: how a program (or `adapt`) builds and calls a store item's network.

A weights file alone is not a program: a caller also needs the architecture, its
arguments, what the input looks like and what the outputs mean. A recipe says all
of that in a small `model.json` among its code files, so it is hashed into the
derivation and kept in the item as `source/model.json`:

    {"format": "reweigh.model/1",
     "module": "model.py", "class": "DigitsCNN",   # the architecture, in source/
     "params": ["channels", "hidden"],             # constructor arguments taken from params
     "args": {},                                   # constructor arguments given literally
     "classes_arg": "classes", "head": "fc2",      # the class count argument; the last Linear
     "input": {"kind": "image", "shape": [1, 8, 8], "scale": 16},
     "labels": ["0", "1", ...]}                    # output index -> class name

Input kinds: `image` and `features` are float32 tensors of `shape` whose raw values lie
in 0..`scale` (for one-channel images: ink bright, background 0) and that the network
sees divided by `scale`; `text` is UTF-8 bytes as ids (byte + 1, 0 pads) cut or padded
to `length`. This module parses and checks the interface (pure), and loads a network
from an item (safetensors only, never a pickle). It does not train anything.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .adapt_template import adapt_data
from .adapt_template.adapt_data import MAX_CLASSES, label_problem
from .derivation import read_record
from .errors import UsageError

FORMAT = "reweigh.model/1"
INTERFACE_FILE = "model.json"
INPUT_KINDS = ("image", "features", "text")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_FIELDS = {"format", "module", "class", "params", "args", "classes_arg", "head", "input",
           "labels", "base"}


@dataclass(frozen=True)
class InputShape:
    kind: str  # image | features | text
    shape: tuple[int, ...]  # (C, H, W) for images, (F,) for features, (length,) for text
    scale: float = 1.0  # raw values lie in 0..scale; the network sees value / scale

    def to_json(self) -> dict[str, Any]:
        if self.kind == "text":
            return {"kind": "text", "length": self.shape[0]}
        return {"kind": self.kind, "shape": list(self.shape), "scale": self.scale}


@dataclass(frozen=True)
class Interface:
    module: str  # relative POSIX path of the architecture's module, inside source/
    cls: str
    classes_arg: str
    head: str
    input: InputShape
    labels: tuple[str, ...]
    params: tuple[str, ...] = ()
    args: dict[str, Any] = field(default_factory=dict, hash=False)
    base: dict[str, Any] | None = field(default=None, hash=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT, "module": self.module, "class": self.cls,
            "params": list(self.params), "args": self.args, "classes_arg": self.classes_arg,
            "head": self.head, "input": self.input.to_json(), "labels": list(self.labels)}
        if self.base is not None:
            data["base"] = self.base
        return data

    def constructor_args(self, params: dict[str, Any]) -> dict[str, Any]:
        """The architecture's keyword arguments, given the item's recipe parameters."""
        if missing := [name for name in self.params if name not in params]:
            raise UsageError(f"model.json: params: the recipe has no parameter {missing[0]!r}")
        return {**{name: params[name] for name in self.params}, **self.args,
                self.classes_arg: len(self.labels)}


def parse_interface(data: Any, label: str) -> Interface:
    """Check a parsed model.json; every problem names the file and the field."""
    def fail(where: str, reason: str) -> UsageError:
        return UsageError(f"{label}: {where}: {reason}")

    if not isinstance(data, dict):
        raise fail("(file)", "must be a JSON object")
    if unknown := sorted(set(data) - _FIELDS):
        raise fail(unknown[0], "unknown field")
    if data.get("format") != FORMAT:
        raise fail("format", f"expected {FORMAT!r}")
    module = data.get("module")
    if (not isinstance(module, str) or not module.endswith(".py") or module.startswith("/")
            or "\\" in module or ".." in PurePosixPath(module).parts):
        raise fail("module", "expected a relative path to a .py file inside the source")
    for key in ("class", "classes_arg", "head"):
        if not isinstance(data.get(key), str) or not _IDENT_RE.fullmatch(data[key]):
            raise fail(key, "expected a Python identifier")
    params, args = data.get("params", []), data.get("args", {})
    if not isinstance(params, list) or not all(isinstance(p, str) and _IDENT_RE.fullmatch(p)
                                               for p in params):
        raise fail("params", "expected a list of parameter names")
    if not isinstance(args, dict) or not all(_IDENT_RE.fullmatch(str(k)) for k in args):
        raise fail("args", "expected an object of keyword arguments")
    return Interface(module=module, cls=data["class"], classes_arg=data["classes_arg"],
                     head=data["head"], input=_input(data.get("input"), fail),
                     labels=_labels(data.get("labels"), fail), params=tuple(params),
                     args=args, base=data.get("base"))


def _input(value: Any, fail: Any) -> InputShape:
    if not isinstance(value, dict) or value.get("kind") not in INPUT_KINDS:
        raise fail("input.kind", f"expected one of {', '.join(INPUT_KINDS)}")
    if value["kind"] == "text":
        length: Any = value.get("length")
        if not _count(length, 1 << 16):
            raise fail("input.length", "expected a positive integer")
        return InputShape("text", (int(length),))
    shape, scale = value.get("shape"), value.get("scale", 1.0)
    want = 3 if value["kind"] == "image" else 1
    if not isinstance(shape, list) or len(shape) != want or not all(
            _count(s, 1 << 16) for s in shape):
        raise fail("input.shape", f"expected {want} positive integer(s)")
    if value["kind"] == "image" and shape[0] not in (1, 3):
        raise fail("input.shape", "images have 1 (grey) or 3 (RGB) channels")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < 1e9:
        raise fail("input.scale", "expected a positive number")
    return InputShape(value["kind"], tuple(shape), float(scale))


def _labels(value: Any, fail: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_CLASSES:
        raise fail("labels", f"expected a list of 2 to {MAX_CLASSES} class names")
    for name in value:
        if problem := label_problem(name):
            raise fail("labels", problem)
    if len(set(value)) != len(value):
        raise fail("labels", "class names repeat")
    return tuple(value)


def _count(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit


def read_interface(item: Path) -> Interface:
    """The interface an item was built with (its `source/model.json`)."""
    file = item / "source" / INTERFACE_FILE
    if not file.is_file():
        raise UsageError(f"{item.name}: no source/{INTERFACE_FILE}: this network does not "
                         "say how to call it (architecture, input, class names)",
                         hint="add a model.json to its recipe's code files")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{file}: not valid JSON ({e})") from e
    return parse_interface(data, str(file))


def item_params(item: Path) -> dict[str, Any]:
    """The recipe parameters an item was built with (from its derivation record)."""
    record = read_record(item / "derivation.json")
    return dict(record.get("params", {}))


# --- loading (I/O and torch from here on) ------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    confidence: float
    probabilities: dict[str, float]


@dataclass
class Network:
    """A store item's network, ready to call."""

    item: Path
    interface: Interface
    module: Any  # torch.nn.Module, in eval mode

    @property
    def labels(self) -> tuple[str, ...]:
        return self.interface.labels

    def prepare(self, path: Path) -> Any:
        """A file (image or text) as one input array, converted as in training."""
        try:
            return adapt_data.read_example(path, self.interface.input.to_json())
        except adapt_data.BadData as e:
            raise UsageError(f"{e.path}: {e.reason}") from e

    def predict(self, x: Any) -> list[Prediction]:
        """Classify a batch of prepared inputs (raw values, before dividing by the scale)."""
        import numpy as np
        import torch

        batch = np.asarray(x)
        if self.interface.input.kind != "text":
            batch = (batch / self.interface.input.scale).astype(np.float32)
        with torch.no_grad():
            probabilities = torch.softmax(self.module(torch.from_numpy(batch)), dim=1)  # (B, K)
        return [_prediction(row.tolist(), self.labels) for row in probabilities]

    def recognise(self, path: Path) -> Prediction:
        return self.predict(self.prepare(path)[None])[0]


def _prediction(row: list[float], labels: tuple[str, ...]) -> Prediction:
    best = max(range(len(row)), key=row.__getitem__)
    return Prediction(labels[best], best, row[best], dict(zip(labels, row, strict=True)))


def load(item: Path) -> Network:
    """Build the item's architecture from its own source and load its weights."""
    from safetensors.torch import load_file

    face = read_interface(item)
    source = (item / "source").resolve()
    module_file = (source / face.module).resolve()
    if not module_file.is_relative_to(source) or not module_file.is_file():
        raise UsageError(f"{item.name}: source/{face.module} is missing")
    name = f"reweigh_network_{abs(hash(str(module_file)))}"
    spec = importlib.util.spec_from_file_location(name, module_file)
    if spec is None or spec.loader is None:
        raise UsageError(f"{module_file}: cannot be imported")
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    if not hasattr(code, face.cls):
        raise UsageError(f"{module_file}: defines no {face.cls}")
    try:
        model = getattr(code, face.cls)(**face.constructor_args(item_params(item)))
        model.load_state_dict(load_file(str(item / "weights.safetensors")))
    except (TypeError, RuntimeError) as e:  # arguments or tensors that do not fit
        raise UsageError(f"{item.name}: the weights do not fit source/{face.module} "
                         f"({' '.join(str(e).split())[:300]})") from e
    model.eval()
    return Network(item, face, model)
