"""Probe sets: the prompts a text model is questioned with (parsing only, pure).

A probe file is plain UTF-8 text, so that anyone can read and extend it:

    # comments and blank lines are ignored
    [sea]                 a topic header: the prompts below belong to "sea"
    the sea is
    on the shore the boat

Prompts before the first header have no topic. The parser refuses anything odd
(control characters, over-long lines, too many prompts, a prompt-less file) with
one line naming the file, the line and the reason; it never guesses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

MAX_BYTES = 1 << 20
MAX_PROMPTS = 1000
MAX_PROMPT = 500
_TOPIC_RE = re.compile(r"^\[([A-Za-z0-9][A-Za-z0-9 _.-]{0,63})\]$")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Probe:
    topic: str  # "" when the prompt comes before any [topic] header
    prompt: str


def load_probes(path: Path) -> tuple[Probe, ...]:
    """Read and parse a probe file; UsageError (exit 2) for anything unreadable."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UsageError(f"{path}: larger than {MAX_BYTES} bytes; not a probe set")
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read the probe set: {e.strerror}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte {e.start})") from e
    return parse_probes(text, str(path))


def parse_probes(text: str, label: str) -> tuple[Probe, ...]:
    """The prompts of a probe file, in file order."""
    probes: list[Probe] = []
    topic = ""
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{label}: line {number}"
        if _CONTROL_RE.search(line):
            raise UsageError(f"{where}: holds a control character")
        if line.startswith("["):
            match = _TOPIC_RE.fullmatch(line)
            if match is None:
                raise UsageError(f"{where}: a topic header is [name] with letters, digits, "
                                 "' ', '_', '.', '-' (at most 64)")
            topic = match.group(1).strip()
            continue
        if len(line) > MAX_PROMPT:
            raise UsageError(f"{where}: prompt longer than {MAX_PROMPT} characters")
        if len(probes) == MAX_PROMPTS:
            raise UsageError(f"{where}: more than {MAX_PROMPTS} prompts")
        probes.append(Probe(topic, " ".join(line.split())))
    if not probes:
        raise UsageError(f"{label}: no prompts (one per line; '#' starts a comment)")
    return tuple(probes)
