"""`platform`: this machine's numerics platform, measured, and whether an item's matches.

A platform is what decides a build's bits besides its sources (see `reweigh.numerics`).
What a build here would record is measured the way a build measures it: one sandboxed
process starts on the platform, exactly as a build's would, and reports its record;
nothing is inferred in this process. Against an item the question is whether a rebuild
here can give its bits: the same platform digest, or the fields that differ.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import numerics
from ..builder import raise_for_failure, run_child
from ..derivation import read_record
from ..environment import TORCH_NOT_LOADED, cpu_model, platform_of, without_torch
from ..errors import UsageError
from ..job import Job
from ..progress import QuietReporter, Reporter
from ..provenance import environment_of
from ..store import Store, remove_tree
from .build import hidden_paths


@dataclass(frozen=True)
class ItemMatch:
    """An item's recorded platform against the one measured here."""

    name: str
    version: str
    path: Path
    recorded: dict[str, Any]
    matches: bool
    differences: tuple[str, ...]  # each in words: "packages.torch: 2.12.0 there, ..."

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "path": str(self.path),
                "platform": self.recorded, "matches": self.matches,
                "differences": list(self.differences)}


@dataclass(frozen=True)
class PlatformReport:
    arch: str
    cpu_model: str
    cores: int
    offered: str | None  # the highest level this machine offers (None: none of ours)
    limits: tuple[str, ...]  # what holds it there: missing flags, capping settings
    levels: tuple[str, ...]  # every level it can build on
    asked: str  # the platform measured
    platform: dict[str, Any] | None  # its record, as a build here records it
    problem: str | None = None  # why this machine cannot build on `asked`
    item: ItemMatch | None = None
    incidental: dict[str, Any] = field(default_factory=dict)

    @property
    def holds(self) -> bool:
        """Nothing asked of an item, or a rebuild here gives its bits."""
        return self.problem is None and (self.item is None or self.item.matches)

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "cpu_model": self.cpu_model, "cores": self.cores,
                "offered": self.offered, "limits": list(self.limits),
                "levels": list(self.levels), "asked": self.asked, "platform": self.platform,
                "problem": self.problem, "matches": self.holds,
                "item": None if self.item is None else self.item.to_json()}


def platform(ref: str | None = None, *, store: Store | None = None,
             reporter: Reporter | None = None) -> PlatformReport:
    """This machine's platform (the one `--platform` asks for, else an item's, else the
    portable one), measured; with `ref`, whether the item's recorded platform is it."""
    store = store or Store()
    reporter = reporter or QuietReporter()
    arch, flags = numerics.machine_arch(), numerics.cpu_flags()
    rank, limits = numerics.offered(arch, flags, os.environ)
    levels = tuple(lv.name for lv in numerics.LEVELS.values()
                   if lv.arch == arch and lv.rank <= rank)
    item = store.resolve(ref) if ref is not None else None
    derivation_platform = None
    if item is not None:
        derivation_platform = read_record(item.path / "derivation.json").get(
            "platform", numerics.NATIVE)
    asked = numerics.default_name(os.environ.get(numerics.ENV_CHOICE) or derivation_platform
                                  or numerics.PORTABLE, arch)
    measured, problem = None, None
    try:
        measured = _measure(asked, store, reporter)
    except UsageError as e:  # this machine cannot run it: the answer, not bad input
        problem = e.message
    match = None
    if item is not None:
        provenance = json.loads((item.path / "provenance.json").read_text(encoding="utf-8"))
        recorded = platform_of(environment_of(provenance) or {})
        here = measured
        if here is not None and recorded.get("capability") == TORCH_NOT_LOADED:
            here = without_torch(here)  # torch computed none of its bits
        same = here is not None and numerics.digest_of(recorded) == numerics.digest_of(here)
        differing = () if here is None or same else tuple(
            numerics.describe(key, here, recorded)
            for key in (numerics.genuine_differences(here, recorded)
                        + numerics.pinned_differences(here, recorded)))
        match = ItemMatch(item.name, item.version, item.path, recorded, same, differing)
    return PlatformReport(arch, cpu_model(), os.cpu_count() or 0,
                          levels[-1] if levels else None, tuple(limits), levels, asked,
                          measured, problem, match)


def _measure(name: str, store: Store, reporter: Reporter) -> dict[str, Any]:
    """The platform record a build on `name` takes here, from a process started as a
    build's is (sandbox, environment, pinned settings) that runs no recipe code."""
    work = store.new_build_dir(f"platform:{name}", kind="run")
    try:
        (work / "src").mkdir()
        (work / "out").mkdir()
        job = Job(mode="platform", src=str(work / "src"), out=str(work / "out"), entry="",
                  evaluate=None, params={}, seed=0, checkpoint_every=0, threads=1, inputs={},
                  platform=name)
        log = work / "platform.log"
        result = run_child(job, work, log, reporter, hidden=hidden_paths(store.root))
        raise_for_failure(result, log, f"measuring platform {name}")
        return platform_of(result.environment)
    finally:
        remove_tree(work)
