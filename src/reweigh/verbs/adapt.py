"""`adapt`: retrain a store item's network on the user's own data, as a derived recipe.

The verb resolves the base (an item, or a recipe it builds first), checks the data
against the base's model interface, writes the derived recipe (`reweigh.adapt`) and
builds it like any recipe. The report says where the recipe is, what the data held,
and which item the build gave.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapt import (
    AUGMENT_KINDS,
    STRATEGIES,
    Base,
    Data,
    Settings,
    augmentation,
    inspect_data,
    patience,
    recipe_toml,
    write_recipe,
)
from ..errors import RecipeError, UsageError
from ..network import item_params, read_interface
from ..progress import QuietReporter, Reporter
from ..recipe import RECIPE_FILE, parse_recipe
from ..store import Store, StoreItem
from .build import BuildReport, build


@dataclass(frozen=True)
class AdaptReport:
    recipe: Path
    recipe_reused: bool  # the same recipe was already there (so was, likely, its item)
    base: StoreItem
    data: Data
    strategy: str
    build: BuildReport
    metrics: dict[str, float]  # the evaluation's, on the held-out share
    augment: dict[str, Any]  # the random changes training applied, with their sizes
    patience: int  # 0: no early stopping
    training: dict[str, float]  # the training's last metrics (epochs_trained, best_epoch, ...)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.build.to_json(), "recipe": str(self.recipe),
            "recipe_reused": self.recipe_reused, "strategy": self.strategy,
            "base": {"path": str(self.base.path), "name": self.base.name,
                     "version": self.base.version, "derivation": self.base.derivation,
                     "weights_digest": self.base.weights_digest},
            "data": {"path": str(self.data.path), "layout": self.data.layout,
                     "classes": list(self.data.classes), "counts": self.data.counts},
            "metrics": self.metrics, "augment": self.augment, "patience": self.patience,
            "training": self.training}


def adapt(base: str | Path, data: str | Path, settings: Settings, *, out: Path | None = None,
          store: Store | None = None, threads: int | None = None, check: bool = False,
          reporter: Reporter | None = None) -> AdaptReport:
    """Write the derived recipe (default: ./NAME-recipe) and build it; with check, rebuild
    too."""
    store = store or Store()
    reporter = reporter or QuietReporter()
    check_settings(settings)
    with store.gc_lock(exclusive=False):  # gc waits: the base found here stays till built on
        the_base = load_base(str(base), store, threads, reporter)
        examples = inspect_data(Path(data), the_base.interface, settings.label_column)
        target = (out or Path.cwd() / f"{settings.name}-recipe").absolute()
        _check_recipe_text(settings, the_base, examples, target)
        reused = write_recipe(target, settings, the_base, examples)
        changes = augmentation(settings, the_base.interface.input.kind)
        report = build(target, store=store, threads=threads, check=check, reporter=reporter)
    metrics = json.loads((report.path / "metrics.json").read_text())
    return AdaptReport(target, reused, the_base.item, examples, settings.strategy, report,
                       metrics.get("evaluation", {}), changes, patience(settings),
                       metrics.get("training", {}))


def check_settings(settings: Settings) -> None:
    if settings.strategy not in STRATEGIES:
        raise UsageError(f"--strategy: expected one of {', '.join(STRATEGIES)}")
    if not 1 <= settings.epochs <= 100_000:
        raise UsageError("--epochs: expected 1 to 100000")
    if not 1 <= settings.batch_size <= 65_536:
        raise UsageError("--batch-size: expected 1 to 65536")
    if not 0.0 <= settings.held_out < 1.0:
        raise UsageError("--held-out: expected a fraction from 0 up to (not including) 1")
    if settings.lr is not None and not (math.isfinite(settings.lr) and 0 < settings.lr <= 10):
        raise UsageError("--lr: expected a positive learning rate")
    unknown = [kind for kind in settings.augment or () if kind not in AUGMENT_KINDS]
    if unknown:
        raise UsageError(f"--augment: unknown kind {unknown[0]!r}; expected some of "
                         f"{','.join(AUGMENT_KINDS)}, or none")
    if settings.patience is not None and not 0 <= settings.patience <= 100_000:
        raise UsageError("--patience: expected 0 (no early stopping) to 100000 epochs")
    if settings.patience and settings.held_out == 0:
        raise UsageError("--patience: early stopping watches the held-out examples; "
                         "with --held-out 0 there are none (give --patience 0)")


def load_base(ref: str, store: Store, threads: int | None, reporter: Reporter) -> Base:
    """The base item (a recipe directory is built first) and what adapting it needs."""
    path = Path(ref)
    if (path / RECIPE_FILE).is_file() or path.name == RECIPE_FILE:
        item = store.resolve(build(path, store=store, threads=threads,
                                   reporter=reporter).derivation)
    else:
        item = store.resolve(ref)
    face = read_interface(item.path)
    if not (item.path / "source" / face.module).is_file():
        raise UsageError(f"{item.name}: source/{face.module} is missing")
    provenance = json.loads((item.path / "provenance.json").read_text())
    recipe = provenance["predicate"]["buildDefinition"]["externalParameters"]["recipe"]
    return Base(item, face, item_params(item.path), recipe["license"])


_OPTIONS = {"name": "--name", "version": "--version", "license.data": "--license",
            "license.weights": "--license", "params.label_column": "--label-column"}


def _check_recipe_text(settings: Settings, base: Base, data: Data, target: Path) -> None:
    """Parse the recipe before writing it, so a bad --name or --license says which."""
    text = recipe_toml(settings, base, data, "sha256:" + "0" * 64)
    try:
        parse_recipe(tomllib.loads(text), target, str(target / RECIPE_FILE))
    except tomllib.TOMLDecodeError as e:  # a control character in an option, say
        raise UsageError(f"the options do not fit in a recipe.toml ({e})") from e
    except RecipeError as e:
        option = _OPTIONS.get(e.field)
        if option is None:
            raise
        raise UsageError(f"{option}: {e.reason}") from e
