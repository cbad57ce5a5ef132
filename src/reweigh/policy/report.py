"""What a policy returns: a verdict, the reasons for it, and the evidence line by line.

Shared by the four policies so that the command line, the JSON output and the model
card render every policy the same way. Never a bare label: a `PolicyReport` always
carries the component lines that led to its verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Verdict(Enum):
    # Debian ML policy
    FREE_MODEL = "free model"
    TOXIC_CANDY = "ToxicCandy model"
    NON_FREE_MODEL = "non-free model"
    # OSI Open Source AI Definition 1.0
    OPEN_SOURCE_AI = "Open Source AI"
    NOT_OPEN_SOURCE_AI = "not Open Source AI"
    # Model Openness Framework
    MOF_CLASS_I = "Class I (Open Science)"
    MOF_CLASS_II = "Class II (Open Tooling)"
    MOF_CLASS_III = "Class III (Open Model)"
    MOF_UNCLASSIFIED = "unclassified"
    # Guix: can the weights realistically be recomputed from source?
    PACKAGEABLE = "packageable"
    NOT_PACKAGEABLE = "not packageable"
    UNDETERMINED = "undetermined"

    @property
    def passes(self) -> bool:
        """Whether the model meets the policy (the exit status of `reweigh check`)."""
        return self in _PASSING

    @property
    def tone(self) -> str:
        """good, partial or bad: how the verdict is coloured on a terminal."""
        if self in (Verdict.FREE_MODEL, Verdict.OPEN_SOURCE_AI, Verdict.MOF_CLASS_I,
                    Verdict.PACKAGEABLE):
            return "good"
        return "partial" if self in _PARTIAL else "bad"


_PASSING = frozenset({Verdict.FREE_MODEL, Verdict.OPEN_SOURCE_AI, Verdict.MOF_CLASS_I,
                      Verdict.MOF_CLASS_II, Verdict.MOF_CLASS_III, Verdict.PACKAGEABLE})
_PARTIAL = frozenset({Verdict.TOXIC_CANDY, Verdict.MOF_CLASS_II, Verdict.MOF_CLASS_III,
                      Verdict.UNDETERMINED})


class Status(Enum):
    OK = "ok"
    MISSING = "missing"
    NOT_FREE = "not free"
    UNKNOWN = "unknown"
    TOO_COSTLY = "too costly"
    INFO = "info"  # evidence that does not decide the verdict


@dataclass(frozen=True)
class Line:
    component: str
    status: Status
    text: str


@dataclass(frozen=True)
class Settings:
    """What the user may set; the default threshold is in `estimate.REFERENCE`."""

    max_core_hours: float


@dataclass(frozen=True)
class PolicyReport:
    key: str  # debian, osaid, mof, guix
    title: str
    source: str  # where the policy is written down
    verdict: Verdict
    reasons: tuple[str, ...]  # why this verdict, in a sentence or two each
    lines: tuple[Line, ...]

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.key, "title": self.title, "source": self.source,
                "verdict": self.verdict.value, "passes": self.verdict.passes,
                "reasons": list(self.reasons),
                "evidence": [{"component": line.component, "status": line.status.value,
                              "text": line.text} for line in self.lines]}


def failing(lines: tuple[Line, ...] | list[Line], *components: str) -> list[Line]:
    """The lines of these components (all, if none named) whose status is not ok or info."""
    return [line for line in lines if line.status not in (Status.OK, Status.INFO)
            and (not components or line.component in components)]
