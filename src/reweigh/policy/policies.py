"""The four policies by name, and their verdicts as a model card section.

The model card is written when the item is built, before the store has any rebuild or
challenge to report, and an item is immutable afterwards (its files are hashed into
the index). So the card's section judges what is known at build time: the recipe, the
resolved inputs and the measured cost of this very build. `reweigh check` judges the
same policies again with everything the store has learnt since.
"""

from __future__ import annotations

from collections.abc import Callable

from . import debian, guix, mof, osaid
from .evidence import Evidence
from .report import PolicyReport, Settings

Policy = Callable[[Evidence, Settings], PolicyReport]
POLICIES: dict[str, Policy] = {"debian": debian.evaluate, "osaid": osaid.evaluate,
                               "mof": mof.evaluate, "guix": guix.evaluate}


def judge_all(evidence: Evidence, settings: Settings,
              keys: tuple[str, ...] = tuple(POLICIES)) -> tuple[PolicyReport, ...]:
    return tuple(POLICIES[key](evidence, settings) for key in keys)


def markdown(reports: tuple[PolicyReport, ...], preface: str) -> list[str]:
    """A Markdown section: a summary table, then each policy's evidence line by line."""
    lines = ["## Free-software policies", "", preface, "",
             "| policy | verdict | why |", "| --- | --- | --- |"]
    lines += [f"| {r.title} | {r.verdict.value} | {_cell('; '.join(r.reasons))} |"
              for r in reports]
    for report in reports:
        lines += ["", f"### {report.title}: {report.verdict.value}", "",
                  f"Source: {report.source}", ""]
        lines += [f"- **{line.component}** ({line.status.value}): {line.text}"
                  for line in report.lines]
    return [*lines, ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
