"""`estimate`: what would it cost to recompute these weights from source?

Runs the real build process (same sandbox, same inputs, same code) in a scratch
directory outside the store for a few seconds of training, watching its progress events,
then stops it and extrapolates (see `policy.estimate`). Nothing of the run enters the
store as an item and no build attempt is recorded; the recipe's inputs are resolved
into the store as a build would (they must exist for the training to run).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..builder import raise_for_failure, run_child
from ..errors import UsageError
from ..policy.estimate import (
    DEFAULT_MAX_CORE_HOURS,
    CostEstimate,
    Observation,
    Sample,
    extrapolate,
)
from ..progress import QuietReporter, Reporter
from ..store import Store, remove_tree
from .build import Plan, hidden_paths, plan, stage_job, threads_for

DEFAULT_SECONDS = 5.0
STARTUP_ALLOWANCE = 120.0  # seconds the build may take to reach its first progress event
PROBE = "reweigh.policy.probe"


@dataclass(frozen=True)
class EstimateReport:
    name: str
    version: str
    derivation: str
    estimate: CostEstimate
    max_core_hours: float

    @property
    def within(self) -> bool | None:
        hours = self.estimate.core_hours
        return None if hours is None else hours <= self.max_core_hours

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "derivation": self.derivation,
                **self.estimate.to_json(), "max_core_hours": self.max_core_hours,
                "within_threshold": self.within}


class _Watch:
    """Collects progress events; asks to stop once `seconds` of steady steps were timed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.samples: list[Sample] = []
        self.flops: float | None = None
        self.flop_units = 0

    def __call__(self, event: dict[str, Any]) -> bool:
        now = time.time()
        if event.get("type") == "flops":
            self.flops = float(event.get("count", 0)) or None
            self.flop_units = int(event.get("units", 0))
            return False
        if event.get("type") != "progress":
            return False
        self.samples.append(Sample(now, int(event["done"]), int(event["total"])))
        clock = 1 if self.flop_units and len(self.samples) > 1 else 0
        timed = self.samples[clock:]
        return (len(timed) >= 3 and now - timed[0].at >= self.seconds
                and timed[-1].done < timed[-1].total)


def estimate(recipe_dir: Path | str, *, store: Store | None = None, threads: int | None = None,
             seconds: float = DEFAULT_SECONDS, max_core_hours: float = DEFAULT_MAX_CORE_HOURS,
             reporter: Reporter | None = None) -> EstimateReport:
    """Run the first seconds of the build and extrapolate to the whole training."""
    if not 0 < seconds <= 3600:
        raise UsageError(f"--seconds: {seconds} is not between 0 and 3600")
    store = store or Store()
    with store.gc_lock(exclusive=False):  # gc waits: the inputs plan() found stay
        the_plan = plan(recipe_dir, store)
        cost = estimate_plan(the_plan, threads_for(threads), seconds,
                             reporter or QuietReporter())
    return EstimateReport(the_plan.recipe.name, the_plan.recipe.version,
                          the_plan.derivation.digest, cost, max_core_hours)


def estimate_plan(the_plan: Plan, threads: int, seconds: float,
                  reporter: Reporter) -> CostEstimate:
    recipe = the_plan.recipe
    work = Path(tempfile.mkdtemp(prefix="reweigh-estimate-"))
    try:
        job = stage_job(the_plan.recipe_code, work, threads)
        reporter.stage(f"estimating {recipe.name} {recipe.version}: timing its first "
                       f"{seconds:g} s of training ({threads} threads)")
        watch = _Watch(seconds)
        log = work / "estimate.log"
        result = run_child(job, work, log, reporter, watch=watch, module=PROBE,
                           hidden=hidden_paths(the_plan.recipe.directory),
                           stop_after_seconds=STARTUP_ALLOWANCE + 10 * seconds)
        if not result.stopped:
            raise_for_failure(result, log, f"estimating {recipe.name}")
        seen = Observation(result.started, result.finished, not result.stopped, threads,
                           tuple(watch.samples), watch.flops, watch.flop_units)
        return extrapolate(seen)
    finally:
        remove_tree(work)
