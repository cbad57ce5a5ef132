"""Which licences are free, who says so, and how an SPDX expression is judged.

A policy verdict is only as good as its licence facts, so each entry of the table says
who decided it: the SPDX License List's `isOsiApproved` / `isFsfLibre` flags, the Open
Knowledge Foundation's list of Open Definition conformant licences (for data and
content), and Debian's reading of the DFSG. A licence outside the table is *unknown*,
never guessed free; a `LicenseRef-` is a licence outside the SPDX list, also unknown.

Expressions are parsed by `spdx` (a recursive-descent parser of SPDX 2.3 Annex D),
never guessed from the text. `A OR B` is free if either side is (the user may pick),
`A AND B` only if both are, `A WITH exception` as free as `A` (SPDX exceptions only add
permissions). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from .spdx import (
    EXCEPTIONS,
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

# Where the facts of the table come from (each entry names which of these says what).
SOURCES = {
    "SPDX": "SPDX License List, isOsiApproved / isFsfLibre flags: https://spdx.org/licenses/",
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
    fsf_libre: bool | None = None  # SPDX isFsfLibre
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


def _software(id: str, name: str, fsf: bool | None = True, dfsg: bool | None = None,
              osi: bool = True) -> LicenceFacts:
    return LicenceFacts(id, name, osi_approved=osi, fsf_libre=fsf, dfsg=dfsg)


def _content(id: str, name: str, fsf: bool | None, od: bool | None, dfsg: bool | None,
             note: str = "") -> LicenceFacts:
    return LicenceFacts(id, name, osi_approved=False if fsf is not None else None,
                        fsf_libre=fsf, open_definition=od, dfsg=dfsg, note=note)


_NC = "the NonCommercial clause discriminates against fields of endeavour (DFSG 6, OSD 6)"
_ND = "the NoDerivatives clause forbids modified versions (DFSG 3, OSD 3)"
_RAIL = ("its use-based restrictions (Attachment A) discriminate against fields of endeavour "
         "(DFSG 6, OSD 6)")

TABLE: tuple[LicenceFacts, ...] = (
    # Software licences: SPDX flags (the FSF and OSI lists, as SPDX records them).
    _software("0BSD", "BSD Zero Clause License", fsf=None),
    _software("AFL-3.0", "Academic Free License v3.0"),
    _software("AGPL-3.0-only", "GNU Affero General Public License v3.0 only"),
    _software("AGPL-3.0-or-later", "GNU Affero General Public License v3.0 or later"),
    _software("Apache-2.0", "Apache License 2.0", dfsg=True),
    _software("Artistic-2.0", "Artistic License 2.0", dfsg=True),
    _software("BSD-2-Clause", "BSD 2-Clause \"Simplified\" License", dfsg=True),
    _software("BSD-3-Clause", "BSD 3-Clause \"New\" or \"Revised\" License", dfsg=True),
    _software("BSL-1.0", "Boost Software License 1.0"),
    _software("CDDL-1.0", "Common Development and Distribution License 1.0"),
    _software("EPL-2.0", "Eclipse Public License 2.0"),
    _software("GPL-2.0-only", "GNU General Public License v2.0 only", dfsg=True),
    _software("GPL-2.0-or-later", "GNU General Public License v2.0 or later", dfsg=True),
    _software("GPL-3.0-only", "GNU General Public License v3.0 only", dfsg=True),
    _software("GPL-3.0-or-later", "GNU General Public License v3.0 or later", dfsg=True),
    _software("ISC", "ISC License"),
    _software("LGPL-2.1-only", "GNU Lesser General Public License v2.1 only", dfsg=True),
    _software("LGPL-2.1-or-later", "GNU Lesser General Public License v2.1 or later",
              dfsg=True),
    _software("LGPL-3.0-only", "GNU Lesser General Public License v3.0 only", dfsg=True),
    _software("LGPL-3.0-or-later", "GNU Lesser General Public License v3.0 or later",
              dfsg=True),
    _software("MIT", "MIT License"),
    _software("MPL-2.0", "Mozilla Public License 2.0", dfsg=True),
    _software("Python-2.0", "Python License 2.0"),
    _software("Unlicense", "The Unlicense"),
    _software("Zlib", "zlib License"),
    # Data and content licences: the Open Definition list and Debian's reading decide.
    _content("CC0-1.0", "Creative Commons Zero v1.0 Universal", fsf=True, od=True, dfsg=True),
    _content("CC-BY-3.0", "Creative Commons Attribution 3.0 Unported", fsf=None, od=True,
             dfsg=True),
    _content("CC-BY-4.0", "Creative Commons Attribution 4.0 International", fsf=True, od=True,
             dfsg=True),
    _content("CC-BY-SA-3.0", "Creative Commons Attribution Share Alike 3.0 Unported", fsf=None,
             od=True, dfsg=True),
    _content("CC-BY-SA-4.0", "Creative Commons Attribution Share Alike 4.0 International",
             fsf=True, od=True, dfsg=True),
    _content("ODbL-1.0", "Open Data Commons Open Database License v1.0", fsf=True, od=True,
             dfsg=None),
    _content("ODC-By-1.0", "Open Data Commons Attribution License v1.0", fsf=None, od=True,
             dfsg=None),
    _content("PDDL-1.0", "Open Data Commons Public Domain Dedication & License 1.0", fsf=None,
             od=True, dfsg=None),
    _content("CC-BY-NC-4.0", "Creative Commons Attribution Non Commercial 4.0 International",
             fsf=False, od=False, dfsg=False, note=_NC),
    _content("CC-BY-NC-SA-4.0", "Creative Commons Attribution Non Commercial Share Alike 4.0 "
             "International", fsf=None, od=False, dfsg=False, note=_NC),
    _content("CC-BY-ND-4.0", "Creative Commons Attribution No Derivatives 4.0 International",
             fsf=False, od=False, dfsg=False, note=_ND),
    _content("CC-BY-NC-ND-4.0", "Creative Commons Attribution Non Commercial No Derivatives "
             "4.0 International", fsf=None, od=False, dfsg=False, note=f"{_NC}; {_ND}"),
    LicenceFacts("CreativeML-OpenRAIL-M", "CreativeML Open RAIL-M", osi_approved=False,
                 dfsg=False, note=_RAIL),
)
LICENCES: dict[str, LicenceFacts] = {facts.id.lower(): facts for facts in TABLE}
# Deprecated SPDX identifiers that name a licence in the table.
ALIASES = {"gpl-2.0": "GPL-2.0-only", "gpl-3.0": "GPL-3.0-only", "lgpl-2.1": "LGPL-2.1-only",
           "lgpl-3.0": "LGPL-3.0-only", "agpl-3.0": "AGPL-3.0-only"}
def lookup(licence: Licence) -> tuple[LicenceFacts, str] | None:
    """The facts for an identifier (case-insensitive), and its canonical spelling."""
    key = licence.id.lower()
    if key in LICENCES:
        return LICENCES[key], str(Licence(LICENCES[key].id, licence.or_later))
    if key in ALIASES:  # deprecated: GPL-2.0 is GPL-2.0-only, GPL-2.0+ is GPL-2.0-or-later
        canonical = ALIASES[key].replace("-only", "-or-later" if licence.or_later else "-only")
        return LICENCES[canonical.lower()], canonical
    return None


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
    return Freedom.UNKNOWN, facts.sources() or "no source judges it"


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
                       "unknown licence: not in reweigh's licence table")
    facts, name = found
    freedom, why = test(facts)
    if isinstance(expression, WithException):
        if expression.exception.lower() not in EXCEPTIONS:
            return Finding(str(expression), Freedom.UNKNOWN,
                           f"unknown exception {expression.exception}")
        return Finding(f"{name} WITH {expression.exception}", freedom,
                       f"{why}; {expression.exception} only adds permissions")
    return Finding(name, freedom, why)
