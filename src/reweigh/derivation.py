"""Recipe + resolved inputs + code digests -> Derivation (pure).

The derivation is what "same source" means: two builds with the same derivation
(and the same environment) must give bit-identical weights. It covers every
input that can change the weights: name and version (the item's identity), the
seed, the parameters, the entry points, each input's digest and each code file's
digest. It deliberately leaves out what cannot: the description, the licences,
the evaluation tolerance, and the TOML's formatting (the record is canonical JSON
of the parsed values).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import canonical_json, file_digest, record_digest, short
from .errors import RecipeError
from .inputs import ResolvedInput
from .recipe import RECIPE_FILE, Recipe

FORMAT = "reweigh.derivation/1"


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
        return canonical_json(self.record)


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
           code: dict[str, str]) -> Derivation:
    """The pure heart: everything that shapes the weights, as one canonical record."""
    record = {
        "format": FORMAT,
        "name": recipe.name,
        "version": recipe.version,
        "seed": recipe.seed,
        "entry": str(recipe.entry),
        "evaluate": str(recipe.evaluate.entry) if recipe.evaluate else None,
        "params": recipe.params,
        "checkpoint_every": recipe.checkpoint_every,
        "inputs": {i.name: {"kind": i.kind, "digest": i.digest} for i in inputs},
        "code": dict(sorted(code.items())),
    }
    return Derivation(record_digest(record), record)


def hash_code(files: dict[str, Path]) -> dict[str, str]:
    return {rel: file_digest(path) for rel, path in files.items()}
