"""Guix's rule: a network must be realistically recomputable from free training data.

From the guix-devel thread "Guidelines for pre-trained ML model weight binaries": weights
are packaged only when they are built from source (free code, free and available
training data) and the recompute fits a realistic budget. GNU Backgammon, which can
recompute its weights, qualifies; a program that downloads opaque weights does not.
The budget is `--max-core-hours` (default: one week of the reference machine in
`estimate.REFERENCE`). Bit-identical rebuilds are reported, not required. Pure.
"""

from __future__ import annotations

from .debian import code_line, data_line, licence_line, reproducibility_line
from .estimate import REFERENCE
from .evidence import UNISOLATED_NOTE, Evidence, Origin, cluster_note
from .report import Line, PolicyReport, Settings, Status, Verdict, failing

TITLE = "Guix: recomputable from source"
SOURCE = ("guix-devel@gnu.org, 2023: \"Guidelines for pre-trained ML model weight binaries\" "
          "(https://lists.gnu.org/archive/html/guix-devel/)")


def source_line(evidence: Evidence) -> Line:
    if evidence.origin is Origin.RECIPE:
        return Line("built from source", Status.OK,
                    "a recipe: training code, inputs by digest, parameters and seed")
    if evidence.origin is Origin.IMPORTED and evidence.imported is not None:
        imported = evidence.imported
        came = f"; published at {imported.origin}" if imported.origin else ""
        return Line("built from source", Status.MISSING,
                    f"imported with `reweigh import` from {imported.source} ({imported.format}"
                    f"{came}): an opaque file with no recipe; it cannot be rebuilt from source")
    return Line("built from source", Status.MISSING,
                "a weights file with no recipe and no import record: it cannot be rebuilt")


def cost_line(evidence: Evidence, settings: Settings) -> Line:
    cost = evidence.cost
    limit = settings.max_core_hours
    budget = (f"limit {limit:g} core-hours ({REFERENCE.name}: {REFERENCE.cores} cores for "
              f"{REFERENCE.budget_hours:g} h)")
    if cost.core_hours is None:
        return Line("recompute cost", Status.UNKNOWN, f"{cost.how}; {budget}")
    amount = f"{'at least ' if cost.lower_bound else ''}{cost.core_hours:.4g} core-hours"
    if cost.core_hours > limit:
        return Line("recompute cost", Status.TOO_COSTLY, f"{amount} ({cost.how}) > {budget}")
    if cost.lower_bound:
        return Line("recompute cost", Status.UNKNOWN, f"{amount} ({cost.how}), {budget}")
    return Line("recompute cost", Status.OK, f"{amount} ({cost.how}) <= {budget}")


def isolation_line(evidence: Evidence) -> Line:
    """Guix builds in an isolated environment; a build that was not cannot show that its
    declared inputs are all it read, so it does not count as built from source."""
    isolation = evidence.store.isolation
    if evidence.origin is not Origin.RECIPE or not evidence.built:
        return Line("build isolation", Status.INFO, "no build in this store to judge")
    if isolation == "none":
        return Line("build isolation", Status.MISSING, UNISOLATED_NOTE)
    if evidence.store.cluster is not None:
        return Line("build isolation", Status.MISSING, cluster_note(evidence.store.cluster))
    if isolation == "unrecorded":
        return Line("build isolation", Status.INFO, "the item's provenance does not record it")
    return Line("build isolation", Status.OK, f"built in the {isolation} sandbox")


def evaluate(evidence: Evidence, settings: Settings) -> PolicyReport:
    lines = (source_line(evidence), isolation_line(evidence),
             licence_line("weights licence", evidence.weights_licence, "weights"),
             code_line(evidence), data_line(evidence), cost_line(evidence, settings),
             reproducibility_line(evidence))
    problems = failing(lines)
    if not problems:
        return PolicyReport("guix", TITLE, SOURCE, Verdict.PACKAGEABLE,
                            ("built from free source and recomputable within the budget",),
                            lines)
    reasons = tuple(f"{line.component}: {line.status.value}: {line.text}" for line in problems)
    only_cost_unknown = [line.component for line in problems] == ["recompute cost"] \
        and problems[0].status is Status.UNKNOWN
    verdict = Verdict.UNDETERMINED if only_cost_unknown else Verdict.NOT_PACKAGEABLE
    return PolicyReport("guix", TITLE, SOURCE, verdict, reasons, lines)
