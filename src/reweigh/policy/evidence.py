"""The facts a policy may use, as one frozen record, and how to build it from a recipe.

A verdict must be reproducible from its evidence, so every policy is a pure function of
an `Evidence` record. This module defines the record and builds it from what a recipe and
its resolved inputs say (the model card uses that at build time, before any store
evidence exists); `gather` adds what the store knows (builds, rebuilds, challenges,
imports, measured cost). The record says what is there and where it came from; it
does not judge (licences are judged by the policies, through `licenses`).

Training data: the data inputs of a recipe (`path`, `package`, `url`, `debian`) are its
training data, each verified by digest. A recipe that needs no data (self-play, synthetic data)
says `license.data = "NONE"` (SPDX's "no licence" value: there is nothing to license).
A recipe that declares a data licence but names no data input trained on data that is
not part of the recipe: its data is *unavailable* (Debian's "ToxicCandy" case).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..inputs import ResolvedInput
from ..recipe import Recipe

DATA_KINDS = ("path", "package", "url", "debian")
UNISOLATED_NOTE = ("built unisolated (--sandbox none): nothing proves the training read only "
                   "its declared inputs; rebuild it in the sandbox")


def cluster_note(address: str) -> str:
    """What a build that joined a Ray cluster (--cluster) did not isolate."""
    return (f"built with ctx.map's tasks (and, with --workers, data-parallel workers 1..N-1 "
            f"of a sharded recipe) on the Ray cluster at {address} (--cluster): they "
            "ran outside reweigh's sandbox, and the build process shared the host's network "
            "to reach them, so nothing proves the training read only its declared inputs; "
            "rebuild it without --cluster")



class Origin(Enum):
    RECIPE = "recipe"  # built (or buildable) from a recipe in this store's sense
    IMPORTED = "imported"  # brought in with `reweigh import`: no recipe
    UNKNOWN_FILE = "unknown file"  # a weights file the store has never seen


class DataStatus(Enum):
    AVAILABLE = "available"
    NONE_NEEDED = "none needed"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class DataSource:
    name: str
    kind: str
    digest: str
    origin: str  # where it comes from, for people: package and data set, URL, path


@dataclass(frozen=True)
class StoreRecord:
    """What the store remembers about the item (all zero when it was never built)."""

    item: str | None = None
    builds: int = 0  # successful build attempts of this derivation
    rebuilds_identical: int = 0  # `build --check` rebuilds that matched bit for bit
    rebuilds_different: int = 0
    environments: tuple[str, ...] = ()  # fingerprints of environments that gave these
    # exact weights (the item's own build and every identical rebuild)
    challenges: tuple[str, ...] = ()  # verdicts of `challenge` against the item
    isolation: str = "unrecorded"  # the item's build sandbox, "none" when built unisolated
    cluster: str | None = None  # the Ray cluster its ctx.map's tasks ran on (--cluster)


@dataclass(frozen=True)
class Cost:
    core_hours: float | None = None
    how: str = "not measured"  # one line: measured, estimated or why unknown
    lower_bound: bool = False
    flops: float | None = None
    flops_how: str = ""
    threads: int | None = None
    wall_seconds: float | None = None


@dataclass(frozen=True)
class Imported:
    source: str  # the file name it was imported from
    source_digest: str
    format: str  # "safetensors" or "pytorch (torch.load weights_only=True)"
    origin: str | None  # where the importer said it came from
    training_data: str  # "not published" (--no-training-data) or "not stated"


@dataclass(frozen=True)
class Evidence:
    subject: str  # what was checked, for people
    origin: Origin
    code_licence: str | None  # SPDX expressions as declared; None: nobody declared one
    data_licence: str | None
    weights_licence: str | None
    code: tuple[str, ...] = ()  # training code files, hashed into the derivation
    evaluate: str | None = None  # the recipe's evaluation entry point
    data: tuple[DataSource, ...] = ()
    data_status: DataStatus = DataStatus.UNAVAILABLE
    data_note: str = ""
    base_models: tuple[str, ...] = ()  # store items the recipe fine-tunes
    intermediate: str | None = None  # intermediate parameters kept, if any
    weights_digest: str | None = None
    built: bool = False
    store: StoreRecord = field(default_factory=StoreRecord)
    cost: Cost = field(default_factory=Cost)
    imported: Imported | None = None

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in (
            "subject", "code_licence", "data_licence", "weights_licence", "evaluate",
            "data_note", "intermediate", "weights_digest", "built")}
        return {**data, "origin": self.origin.value, "code": list(self.code),
                "data": [vars(d) for d in self.data], "data_status": self.data_status.value,
                "base_models": list(self.base_models), "store": vars(self.store),
                "cost": vars(self.cost),
                "imported": vars(self.imported) if self.imported else None}


def describe_origin(kind: str, origin: dict[str, Any]) -> str:
    """Where an input comes from, in words (origins as `inputs` records them)."""
    if kind == "package":
        resource = str(origin.get("resource", ""))
        what = (f"data set {resource.removeprefix('dataset:')}" if resource.startswith("dataset:")
                else f"file {resource}")
        return f"{origin.get('package')} {origin.get('version', '')}, {what}".replace("  ", " ")
    if kind == "url":
        return str(origin.get("url"))
    if kind == "debian":
        return (f"Debian package {origin.get('debian')} {origin.get('version')} "
                f"({origin.get('architecture')}, .deb {origin.get('deb')})")
    if kind == "path":
        return f"{origin.get('path')} in the recipe"
    return str(origin.get("item") or origin)


def data_status(data_licence: str | None, sources: tuple[DataSource, ...],
                problem: str | None = None) -> tuple[DataStatus, str]:
    """Whether the training data can be had, and why (see the module's docstring)."""
    if problem:
        return DataStatus.UNAVAILABLE, problem
    if sources:
        return DataStatus.AVAILABLE, (f"{len(sources)} data input(s), each verified by "
                                      "content digest")
    if data_licence is not None and data_licence.strip() == "NONE":
        return DataStatus.NONE_NEEDED, ("license.data = NONE: no training data; the training "
                                        "code makes what it learns from (self-play, "
                                        "synthetic data)")
    return DataStatus.UNAVAILABLE, (
        f"the recipe declares training data under {data_licence} but names no data input "
        "(path, package, url or debian): the data the weights were trained on is not part of "
        "the recipe")


@dataclass(frozen=True)
class RecipeFacts:
    """What a recipe and its resolved inputs say (the pure half of the evidence)."""

    recipe: Recipe
    inputs: tuple[ResolvedInput, ...]
    code: tuple[str, ...]
    problem: str | None = None  # why the inputs could not be resolved


def from_recipe(facts: RecipeFacts, *, store: StoreRecord | None = None,
                cost: Cost | None = None, weights_digest: str | None = None,
                intermediate: str | None = None) -> Evidence:
    """Evidence for a recipe; `store`, `cost` and the item's facts come from `gather`."""
    recipe = facts.recipe
    sources = tuple(DataSource(i.name, i.kind, i.digest, describe_origin(i.kind, i.origin))
                    for i in facts.inputs if i.kind in DATA_KINDS)
    status, note = data_status(recipe.license.data, sources, facts.problem)
    if intermediate is None and recipe.checkpoint_every > 0:
        intermediate = (f"every {recipe.checkpoint_every}th checkpoint is kept when built "
                        "(build.checkpoint_every)")
    store = store or StoreRecord()
    return Evidence(
        subject=f"{recipe.name} {recipe.version} (recipe {recipe.directory})",
        origin=Origin.RECIPE, code_licence=recipe.license.code,
        data_licence=recipe.license.data, weights_licence=recipe.license.weights,
        code=facts.code, evaluate=str(recipe.evaluate.entry) if recipe.evaluate else None,
        data=sources, data_status=status, data_note=note,
        base_models=tuple(str(i.origin.get("item", i.name)) for i in facts.inputs
                          if i.kind == "item"),
        intermediate=intermediate, weights_digest=weights_digest,
        built=store.item is not None, store=store, cost=cost or Cost())


def build_cost(run: dict[str, Any], what: str = "this build") -> Cost:
    """The measured cost of a finished build, from its run record or attempt row."""
    seconds = max(float(run["finished"]) - float(run["started"]), 0.0)
    threads = int(run["threads"] or 1)
    return Cost(core_hours=seconds * threads / 3600,
                how=f"measured: {what} took {seconds:.1f} s on {threads} thread(s)",
                threads=threads, wall_seconds=seconds)
