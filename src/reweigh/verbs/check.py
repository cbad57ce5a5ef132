"""`check`: judge a recipe, a store item or a weights file against free-software policies.

Gathers the evidence (the recipe's licences and inputs, what the store knows about the
item, the recompute cost: measured from the item's build when there is one, else
estimated by running the first seconds of the build), then applies the chosen
policies, which are pure functions of that evidence. The report is data; the command
renders it. A licence expression that does not parse is bad input (exit 2), not a
verdict; an input that cannot be had is evidence (the data is unavailable). Checking a
recipe resolves its inputs into the store as a build would (that is how their
availability is shown); it never adds an item, an attempt or a check row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..derivation import code_files
from ..errors import InputError, RecipeError, UsageError, WeightsError
from ..policy import gather, licenses
from ..policy.estimate import DEFAULT_MAX_CORE_HOURS, REFERENCE, Bound, CostEstimate
from ..policy.evidence import Cost, Evidence, RecipeFacts, from_recipe
from ..policy.licenses import SOURCES
from ..policy.policies import POLICIES, judge_all
from ..policy.report import PolicyReport, Settings
from ..progress import QuietReporter, Reporter
from ..recipe import Recipe, is_recipe_path, load_recipe
from ..store import Store
from ..weights import sniff_format
from .build import plan, threads_for
from .estimate import DEFAULT_SECONDS, estimate_plan


@dataclass(frozen=True)
class CheckReport:
    target: str
    evidence: Evidence
    reports: tuple[PolicyReport, ...]
    settings: Settings

    @property
    def passed(self) -> bool:
        return all(report.verdict.passes for report in self.reports)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "passed": self.passed,
                "policies": [report.to_json() for report in self.reports],
                "evidence": self.evidence.to_json(),
                "max_core_hours": self.settings.max_core_hours,
                "reference_machine": REFERENCE.describe(), "licence_sources": SOURCES}


@dataclass(frozen=True)
class Options:
    """How to gather evidence where the store has none: whether and how to estimate."""

    estimate: bool  # only Guix's rule needs the recompute cost
    threads: int
    seconds: float
    reporter: Reporter


def check(target: Path | str, *, policies: tuple[str, ...] = tuple(POLICIES),
          store: Store | None = None, max_core_hours: float = DEFAULT_MAX_CORE_HOURS,
          estimate_seconds: float = DEFAULT_SECONDS, threads: int | None = None,
          reporter: Reporter | None = None) -> CheckReport:
    """Judge `target` (recipe directory, store item or weights file) under `policies`."""
    unknown = [key for key in policies if key not in POLICIES]
    if unknown or not policies:
        raise UsageError(f"--policy: unknown policy {', '.join(unknown) or '(none)'} "
                         f"(known: {', '.join(POLICIES)})")
    if not max_core_hours > 0:
        raise UsageError(f"--max-core-hours: {max_core_hours} is not a positive number")
    store = store or Store()
    options = Options("guix" in policies, threads_for(threads), estimate_seconds,
                      reporter or QuietReporter())
    evidence = gather_evidence(Path(target), store, options)
    settings = Settings(max_core_hours)
    return CheckReport(str(target), evidence, judge_all(evidence, settings, policies), settings)


def gather_evidence(target: Path, store: Store, options: Options) -> Evidence:
    if is_recipe_path(target):
        return recipe_evidence(target, store, options)
    if target.is_file():
        _refuse_unreadable(target)
        return gather.file_evidence(store, target)
    try:
        item = store.resolve(str(target))
    except UsageError as e:
        raise UsageError(f"{target}: not a recipe directory, a weights file or an item of the "
                         f"store {store.root}") from e
    return gather.item_evidence(store, item)


def recipe_evidence(directory: Path, store: Store, options: Options) -> Evidence:
    """A recipe's evidence: its item's store record if built, else a fresh estimate."""
    recipe = load_recipe(directory)
    check_licences(recipe)
    with store.gc_lock(exclusive=False):  # gc waits: what plan() found stays
        return _recipe_evidence(recipe, directory, store, options)


def _recipe_evidence(recipe: Recipe, directory: Path, store: Store,
                     options: Options) -> Evidence:
    try:
        the_plan = plan(directory, store)
    except InputError as e:
        facts = RecipeFacts(recipe, (), tuple(code_files(recipe)),
                            problem=f"its inputs cannot be had ({e.message})")
        return from_recipe(facts, cost=Cost(how="the build cannot run without its inputs"))
    facts = RecipeFacts(recipe, the_plan.inputs, tuple(the_plan.code))
    item = store.find(the_plan.derivation.digest)
    if item is None and not options.estimate:
        return from_recipe(facts, cost=Cost(how="not estimated (only Guix's rule needs it)"))
    if item is None:
        estimate = estimate_plan(the_plan, options.threads, options.seconds, options.reporter)
        return from_recipe(facts, cost=cost_of(estimate))
    built = gather.item_evidence(store, item)
    return from_recipe(facts, store=built.store, cost=built.cost,
                       weights_digest=item.weights_digest, intermediate=built.intermediate)


def check_licences(recipe: Recipe) -> None:
    """Refuse a licence field that is not an SPDX expression, naming file and field."""
    for key in ("code", "data", "weights"):
        try:
            licenses.parse(getattr(recipe.license, key))
        except licenses.LicenceExpressionError as e:
            raise RecipeError(str(recipe.file), f"license.{key}", str(e)) from e


def cost_of(estimate: CostEstimate) -> Cost:
    """The evidence's cost line from an estimate run."""
    how = {Bound.MEASURED: f"measured: an estimate run completed the whole build in "
                           f"{estimate.observed_seconds:.1f} s",
           Bound.EXTRAPOLATED: f"estimated: {estimate.measured_steps} steps timed over "
                               f"{estimate.observed_seconds:.1f} s, extrapolated to "
                               f"{estimate.total_steps} steps",
           Bound.LOWER_BOUND: f"lower bound: {estimate.note}",
           Bound.UNKNOWN: estimate.note}[estimate.bound]
    return Cost(core_hours=estimate.core_hours, how=how,
                lower_bound=estimate.bound is Bound.LOWER_BOUND, flops=estimate.flops,
                flops_how=estimate.flops_how, threads=estimate.threads,
                wall_seconds=estimate.wall_seconds)


def _refuse_unreadable(path: Path) -> None:
    """A file must at least be a weights file: safetensors, or a PyTorch archive/pickle."""
    try:
        sniff_format(path)
    except WeightsError as e:
        raise UsageError(f"{path}: not a recipe, a safetensors file or a PyTorch "
                         f"file ({e.message})") from e
