"""Debian's Machine Learning policy: free model, ToxicCandy model or non-free model.

The policy (Debian Deep Learning Team, "ML-Policy") calls a model *free* when the model,
its training data and its training software are all DFSG-free; *ToxicCandy* when the
model is under a free licence but trained from unknown, private or non-free data (or
without its training program); *non-free* when the model's own licence is not free.
A licence reweigh cannot show to be free counts as not free: Debian's main archive asks
for freedom shown, not assumed. Pure: a function of the evidence.
"""

from __future__ import annotations

from . import licenses
from .evidence import DataStatus, Evidence, Origin
from .licenses import Freedom
from .report import Line, PolicyReport, Settings, Status, Verdict, failing

TITLE = "Debian ML policy"
SOURCE = "https://salsa.debian.org/deeplearning-team/ml-policy"


def licence_line(component: str, expression: str | None, what: str) -> Line:
    """A component's licence judged free or not, with the source of each fact."""
    if expression is None:
        return Line(component, Status.UNKNOWN, f"no licence declared for the {what}")
    judged = licenses.judge(expression)
    status = {Freedom.FREE: Status.OK, Freedom.NON_FREE: Status.NOT_FREE}.get(
        judged.freedom, Status.UNKNOWN)
    return Line(component, status, judged.summary())


def code_line(evidence: Evidence) -> Line:
    if not evidence.code:
        return Line("training code", Status.MISSING, _no_code(evidence))
    licence = licence_line("training code", evidence.code_licence, "training code")
    return Line("training code", licence.status,
                f"{len(evidence.code)} file(s) ({', '.join(evidence.code)}) under "
                f"{licence.text}")


def _no_code(evidence: Evidence) -> str:
    if evidence.origin is Origin.IMPORTED:
        return "not available: imported without a recipe, so no training program"
    return "not available: no recipe, so no training program"


def data_line(evidence: Evidence) -> Line:
    """The training data: available and free, not needed, or why not."""
    if evidence.data_status is DataStatus.NONE_NEEDED:
        return Line("training data", Status.OK, evidence.data_note)
    if evidence.data_status is DataStatus.UNAVAILABLE:
        return Line("training data", Status.MISSING, f"unavailable: {evidence.data_note}")
    licence = licence_line("training data", evidence.data_licence, "training data")
    names = ", ".join(f"{d.name} ({d.origin}, {d.digest[:19]}...)" for d in evidence.data)
    return Line("training data", licence.status, f"{names} under {licence.text}")


def reproducibility_line(evidence: Evidence) -> Line:
    record = evidence.store
    if evidence.origin is not Origin.RECIPE:
        return Line("rebuilds", Status.INFO, "none possible: no recipe")
    if not evidence.built:
        return Line("rebuilds", Status.INFO, "not built in this store yet")
    text = (f"built {record.builds} time(s); rebuilt bit-identically "
            f"{record.rebuilds_identical} time(s), differently {record.rebuilds_different} "
            f"time(s); {_environments(record.environments)} gave these exact weights")
    if record.challenges:
        text += f"; challenged {len(record.challenges)} time(s): {', '.join(record.challenges)}"
    return Line("rebuilds", Status.INFO, text)


def _environments(fingerprints: tuple[str, ...]) -> str:
    if not fingerprints:
        return "no recorded environment"
    named = ", ".join(f"{f[:19]}..." for f in fingerprints)
    return f"{len(fingerprints)} environment(s) ({named})"


def evaluate(evidence: Evidence, settings: Settings) -> PolicyReport:
    weights = licence_line("model (weights)", evidence.weights_licence, "weights")
    lines = (weights, code_line(evidence), data_line(evidence), reproducibility_line(evidence))
    verdict, reasons = _decide(lines)
    return PolicyReport("debian", TITLE, SOURCE, verdict, reasons, lines)


def _decide(lines: tuple[Line, ...]) -> tuple[Verdict, tuple[str, ...]]:
    weights, code, data = lines[0], lines[1], lines[2]
    if weights.status is not Status.OK:
        return Verdict.NON_FREE_MODEL, (
            f"the model's own licence is not shown to be DFSG-free ({weights.status.value}): "
            f"{weights.text}",)
    problems = failing(lines, code.component, data.component)
    if problems:
        return Verdict.TOXIC_CANDY, tuple(
            f"free licence, but the {line.component} is {line.status.value}: {line.text}"
            for line in problems)
    return Verdict.FREE_MODEL, ("the weights, the training code and the training data are "
                                "all available under DFSG-free licences",)
