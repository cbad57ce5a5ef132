"""Recipe + resolved inputs + code digests -> Derivation (pure).

The derivation is what "same source" means: two builds with the same derivation
(and the same environment) must give bit-identical weights. It covers every
input that can change the weights: name and version (the item's identity), the
seed, the parameters, the entry points, each input's digest and each code file's
digest. It deliberately leaves out what cannot: the description, the licences,
the evaluation tolerance, and the TOML's formatting (the record is canonical JSON
of the parsed values).

The record names its format, and the format decides the canonical form its digest
is computed over: RFC 8785 (JCS) from reweigh.derivation/2 on, so that another
implementation can recompute a digest from the README's specification; Python's
sorted `json.dumps` for the reweigh.derivation/1 records of older items, which stay
explainable. JCS writes a whole float (2.0) like the integer 2, so a /2 record also
lists where params held such floats: the training code gets the TOML's types, and
`lr = 2` and `lr = 2.0` are different derivations.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import bytes_digest, canonical_json, file_digest, python_sorted_json, short
from .errors import RecipeError, UsageError
from .inputs import ResolvedInput
from .recipe import RECIPE_FILE, Recipe

FORMAT = "reweigh.derivation/2"
FORMAT_V1 = "reweigh.derivation/1"  # older items' records: still read and recomputed


@dataclass(frozen=True)
class Derivation:
    digest: str
    record: dict[str, Any]  # the canonical record the digest is computed over

    @property
    def name(self) -> str:
        return str(self.record["name"])

    @property
    def version(self) -> str:
        return str(self.record["version"])

    @property
    def item_name(self) -> str:
        """The store directory name: a hash prefix, then the human name."""
        return f"{short(self.digest)}-{self.name}-{self.version}"

    def canonical(self) -> bytes:
        return canonical_form(self.record)


def canonical_form(record: dict[str, Any]) -> bytes:
    """The bytes a derivation record's digest is computed over, as its format says."""
    return canonical_json(record) if _format(record) == FORMAT else python_sorted_json(record)


def _format(record: dict[str, Any]) -> str:
    """The record's format, refused unless this reweigh knows it."""
    found = record.get("format")
    if found not in (FORMAT, FORMAT_V1):
        raise UsageError(f"derivation record: format: {found!r} is not one this reweigh "
                         f"knows ({FORMAT} or {FORMAT_V1})")
    return found


def digest_of(record: dict[str, Any]) -> str:
    """A derivation record's digest, recomputed (old /1 records included)."""
    return bytes_digest(canonical_form(record))


def code_files(recipe: Recipe) -> dict[str, Path]:
    """The recipe's code files, by relative path: what the build may import."""
    found: dict[str, Path] = {}
    root = recipe.directory
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if (not path.is_file() or rel in (RECIPE_FILE, recipe.file_name)
                or "__pycache__" in path.parts
                or any(part.startswith(".") for part in path.relative_to(root).parts)):
            continue
        if any(fnmatch.fnmatchcase(rel, pattern) for pattern in recipe.code):
            if path.is_symlink() or not path.resolve().is_relative_to(root.resolve()):
                raise RecipeError(str(recipe.file), "build.code", f"{rel} leaves the recipe "
                                  "directory")
            found[rel] = path
    evaluate = recipe.evaluate
    for where, entry in (("build.entry", recipe.entry),
                         ("evaluate.entry", evaluate.entry if evaluate else None),
                         ("evaluate.audit", evaluate.audit if evaluate else None)):
        if entry is not None and entry.file not in found:
            raise RecipeError(str(recipe.file), where, f"{entry.file} is not among the code "
                              "files (missing, or not matched by build.code)")
    return found


def derive(recipe: Recipe, inputs: tuple[ResolvedInput, ...],
           code: dict[str, str], platform: str) -> Derivation:
    """The pure heart: everything that shapes the weights, as one canonical record.
    `platform` is the numerics platform's name (x86-64-v3, say), as Nix's `system`: one
    recipe built for two platforms is two derivations."""
    record = {
        "format": FORMAT,
        "name": recipe.name,
        "version": recipe.version,
        "seed": recipe.seed,
        "entry": str(recipe.entry),
        "evaluate": str(recipe.evaluate.entry) if recipe.evaluate else None,
        "params": recipe.params,
        "float_params": whole_floats(recipe),
        "checkpoint_every": recipe.checkpoint_every,
        "platform": platform,
        "inputs": {i.name: {"kind": i.kind, "digest": i.digest} for i in inputs},
        "code": dict(sorted(code.items())),
    }
    return Derivation(digest_of(record), record)


def whole_floats(recipe: Recipe) -> list[str]:
    """JSON Pointers (RFC 6901) into params of the floats with a whole value, sorted.
    JCS writes 2.0 as 2; the pointers keep the TOML's type in the hash and let readers
    restore it. -0.0 is refused: JCS writes it as 0, and its sign would be lost."""
    found = []
    for pointer, where, value in _leaves(recipe.params, "", "params"):
        if isinstance(value, float) and value.is_integer():
            if value == 0 and math.copysign(1.0, value) < 0:
                raise RecipeError(str(recipe.file), where, "-0.0 cannot be told from 0.0 in "
                                  "canonical JSON (RFC 8785); write 0.0")
            found.append(pointer)
    return sorted(found)


def _leaves(value: Any, pointer: str, where: str) -> Iterator[tuple[str, str, Any]]:
    """(JSON Pointer, field name for messages, value) of every scalar under value."""
    if isinstance(value, dict):
        for key, item in value.items():
            token = key.replace("~", "~0").replace("/", "~1")
            yield from _leaves(item, f"{pointer}/{token}", f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{pointer}/{i}", f"{where}[{i}]")
    else:
        yield pointer, where, value


def read_record(path: Path) -> dict[str, Any]:
    """A store item's derivation.json, with the values that `float_params` names made
    floats again: exactly the params the build passed to the training code."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise UsageError(f"{path}: cannot read the derivation record ({e})") from e
    if not isinstance(record, dict):
        raise UsageError(f"{path}: not a derivation record (an object)")
    if _format(record) == FORMAT:  # /1 records name no float_params
        for pointer in record.get("float_params", []):
            _restore_float(record, pointer, path)
    return record


def _restore_float(record: dict[str, Any], pointer: Any, path: Path) -> None:
    """Make the params value at `pointer` a float; a pointer to no number is bad input."""
    fail = UsageError(f"{path}: float_params: {pointer!r} names no number in params")
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise fail
    *steps, last = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
    parent: Any = record.get("params")
    try:
        for token in steps:
            parent = parent[_index(parent, token)]
        key = _index(parent, last)
        value = parent[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail
        parent[key] = float(value)
    except (LookupError, OverflowError) as e:
        raise fail from e


def _index(node: Any, token: str) -> str | int:
    """One JSON Pointer step: a key of an object, or a decimal index into an array."""
    if isinstance(node, dict):
        return token
    if isinstance(node, list) and token.isdigit():
        return int(token)
    raise LookupError(token)


def hash_code(files: dict[str, Path]) -> dict[str, str]:
    return {rel: file_digest(path) for rel, path in files.items()}
