"""The OSI Open Source AI Definition 1.0: data information, code and parameters.

The OSAID asks for the "preferred form to make modifications": sufficiently detailed
information about the training data (the data itself only where it can be shared), the
complete training code under OSI-approved licences, and the parameters under
OSI-approved terms. For parameters the OSI names no list of terms yet; reweigh accepts an
OSI-approved licence or one that its sources show free (public-domain dedications and
free-culture licences such as CC0-1.0 or CC-BY-4.0), and says which it used. Pure.
"""

from __future__ import annotations

from . import licenses
from .debian import licence_line
from .evidence import DataStatus, Evidence, Origin
from .licenses import Freedom
from .report import Line, PolicyReport, Settings, Status, Verdict, failing

TITLE = "OSI Open Source AI Definition 1.0"
SOURCE = "https://opensource.org/ai/open-source-ai-definition"


def data_information(evidence: Evidence) -> list[Line]:
    if evidence.data_status is DataStatus.NONE_NEEDED:
        return [Line("data information", Status.OK, evidence.data_note)]
    if evidence.data_status is DataStatus.UNAVAILABLE:
        return [Line("data information", Status.MISSING,
                     f"nothing describes the training data: {evidence.data_note}")]
    named = "; ".join(f"{d.name}: {d.origin}, {d.digest}" for d in evidence.data)
    lines = [Line("data information", Status.OK,
                  f"every data input named by content digest and origin ({named})")]
    data = licence_line("data licence", evidence.data_licence, "training data")
    if data.status is not Status.OK:
        lines.append(Line("data licence", Status.INFO,
                          f"{data.text}; the OSAID asks for data information, not free data"))
    return lines


def code_line(evidence: Evidence) -> Line:
    if not evidence.code:
        where = "imported without a recipe" if evidence.origin is Origin.IMPORTED else \
            "no recipe"
        return Line("code", Status.MISSING, f"no training code: {where}")
    if evidence.code_licence is None:
        return Line("code", Status.UNKNOWN, "no licence declared for the code")
    judged = licenses.judge(evidence.code_licence, licenses.OSI_APPROVED)
    status = {Freedom.FREE: Status.OK, Freedom.NON_FREE: Status.NOT_FREE}.get(
        judged.freedom, Status.UNKNOWN)
    files = ", ".join(evidence.code)
    return Line("code", status, f"{len(evidence.code)} training file(s) ({files}) under "
                f"{judged.summary()}")


def parameters_line(evidence: Evidence) -> Line:
    if evidence.weights_licence is None:
        return Line("parameters", Status.UNKNOWN, "no licence declared for the weights")
    approved = licenses.judge(evidence.weights_licence, licenses.OSI_APPROVED)
    if approved.freedom is Freedom.FREE:
        return Line("parameters", Status.OK, approved.summary())
    free = licence_line("parameters", evidence.weights_licence, "weights")
    if free.status is Status.OK:
        return Line("parameters", Status.OK, f"{free.text}: not an OSI-approved licence, but "
                    "free terms (public-domain dedication or free-culture licence)")
    return free


def evaluate(evidence: Evidence, settings: Settings) -> PolicyReport:
    lines = (*data_information(evidence), code_line(evidence), parameters_line(evidence))
    problems = failing(lines)
    if problems:
        reasons = tuple(f"{line.component} {line.status.value}: {line.text}" for line in problems)
        return PolicyReport("osaid", TITLE, SOURCE, Verdict.NOT_OPEN_SOURCE_AI, reasons, lines)
    return PolicyReport("osaid", TITLE, SOURCE, Verdict.OPEN_SOURCE_AI,
                        ("data information, complete training code under OSI-approved "
                         "licences and parameters under free terms are all available",), lines)
