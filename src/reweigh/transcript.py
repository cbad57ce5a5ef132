"""Training transcripts: checkpoint digests in a chain, and which segments to replay.

A transcript lists the digest of the full training state every K steps, each entry
chained to the one before it (the first to the derivation), so a checkpoint cannot
be swapped or dropped without breaking the chain. A verifier then replays a few
random segments plus always the last one (Proof-of-Learning, Jia et al. 2021,
arXiv:2103.05633) instead of the whole training. Everything here is pure: reading
files and running replays is `verbs/verify.py`'s job.

A link is the digest of the canonical JSON (RFC 8785) of `{"digest", "previous",
"step"}`. For these records (ASCII keys, digest strings, an integer step) RFC 8785
and the Python `json.dumps` that reweigh used before give the same bytes, so
transcripts written before the switch verify unchanged and keep format /1.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .digest import MAX_SAFE_INTEGER, is_digest, record_digest
from .environment import claim_problem
from .errors import UsageError

FORMAT = "reweigh.transcript/1"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    file: str  # relative to the transcript's folder
    digest: str
    chain: str


@dataclass(frozen=True)
class Transcript:
    derivation: str
    checkpoint_every: int
    checkpoints: tuple[Checkpoint, ...]
    environment: dict[str, Any] | None = None  # where it was recorded; None: not said


@dataclass(frozen=True)
class Segment:
    """Training from `start` (None: from scratch) up to and including checkpoint `stop`."""

    index: int
    start: Checkpoint | None
    stop: Checkpoint
    last: bool

    @property
    def steps(self) -> int:
        return self.stop.step - (self.start.step if self.start else 0)


def link(previous: str, step: int, digest: str) -> str:
    """One link of the chain; the builder and the verifier both use this."""
    return record_digest({"previous": previous, "step": step, "digest": digest})


def chain(derivation: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries (step, file, digest) with their chain links added, in order."""
    chained, previous = [], derivation
    for entry in entries:
        previous = link(previous, entry["step"], entry["digest"])
        chained.append({**entry, "chain": previous})
    return chained


def parse(data: Any, label: str) -> Transcript:
    """Validate a transcript's JSON; bad structure is bad input (exit 2)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{label}: format: not a {FORMAT} transcript")
    if not is_digest(data.get("derivation")):
        raise UsageError(f"{label}: derivation: expected a sha256 digest")
    entries = data.get("checkpoints")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{label}: checkpoints: the transcript records no checkpoint")
    checkpoints = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("step"), int)
                and isinstance(entry.get("file"), str) and is_digest(entry.get("digest"))
                and is_digest(entry.get("chain"))):
            raise UsageError(f"{label}: checkpoints[{i}]: needs step, file, digest and chain")
        if ".." in entry["file"].split("/") or entry["file"].startswith("/"):
            raise UsageError(f"{label}: checkpoints[{i}].file: leaves the transcript's folder")
        checkpoints.append(Checkpoint(entry["step"], entry["file"], entry["digest"],
                                      entry["chain"]))
    steps = [c.step for c in checkpoints]
    if steps != sorted(set(steps)) or steps[0] <= 0:
        raise UsageError(f"{label}: checkpoints: steps must be positive and increasing")
    if steps[-1] > MAX_SAFE_INTEGER:
        raise UsageError(f"{label}: checkpoints: a step beyond 2**53 - 1 cannot be chained")
    every = data.get("checkpoint_every", 0)
    environment = data.get("environment")
    if environment is not None and (problem := claim_problem(environment)):
        raise UsageError(f"{label}: environment: {problem}")
    return Transcript(data["derivation"], every if isinstance(every, int) else 0,
                      tuple(checkpoints), environment)


def broken_links(transcript: Transcript) -> list[int]:
    """Steps whose chain link does not follow from the entries before them."""
    broken, previous = [], transcript.derivation
    for c in transcript.checkpoints:
        if link(previous, c.step, c.digest) != c.chain:
            broken.append(c.step)
        previous = c.chain
    return broken


def segments(transcript: Transcript) -> list[Segment]:
    points = transcript.checkpoints
    return [Segment(i, points[i - 1] if i else None, points[i], i == len(points) - 1)
            for i in range(len(points))]


def spot_count(spot: int | Fraction, segments: int) -> int:
    """How many segments `--spot` asks for besides the last: an int is a count, a
    Fraction a share of all the segments (Fraction(1, 20): 5% of them, rounded up)."""
    if isinstance(spot, Fraction):
        return math.ceil(spot * segments)
    return spot


def choose(all_segments: list[Segment], spot: int, seed: int) -> list[Segment]:
    """`spot` segments drawn at random (seeded), plus always the last one."""
    *others, last = all_segments
    drawn = random.Random(seed).sample(others, min(spot, len(others)))
    return [*sorted(drawn, key=lambda s: s.index), last]
