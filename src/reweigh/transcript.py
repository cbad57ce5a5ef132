"""Training transcripts: checkpoint digests in a chain, and which segments to replay.

A transcript lists the digest of the full training state every K steps, each entry
chained to the one before it (the first to the derivation), so a checkpoint cannot
be swapped or dropped without breaking the chain. A verifier then replays a few
segments instead of the whole training (Proof-of-Learning, Jia et al. 2021,
arXiv:2103.05633): always the last one; the first and, in each of a few stretches of
training, the segment whose update was largest (what a forger who jumps to planted
weights cannot avoid making); and a few drawn at random, which are all that catches a
forgery spread thin enough to make no stretch's largest update. Everything here is
pure: reading files, measuring updates and running replays is `verbs/verify.py`'s job.

A link is the digest of the canonical JSON (RFC 8785) of `{"digest", "previous",
"step"}`. For these records (ASCII keys, digest strings, an integer step) RFC 8785
and the Python `json.dumps` that reweigh used before give the same bytes, so
transcripts written before the switch verify unchanged and keep format /1.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from itertools import pairwise
from typing import TYPE_CHECKING, Any, TypeGuard

from .digest import MAX_SAFE_INTEGER, is_digest, record_digest

if TYPE_CHECKING:
    from .recipe import Retention
from .environment import claim_problem
from .errors import UsageError

FORMAT = "reweigh.transcript/1"
# /2: the recipe keeps some checkpoints' files only (`retention`); an entry without `file`
# records a checkpoint whose digest is chained but whose file was not kept.
FORMAT_2 = "reweigh.transcript/2"
FIELDS = frozenset({"format", "derivation", "checkpoint_every", "environment", "checkpoints"})
FIELDS_2 = FIELDS | {"retention"}
ENTRY_FIELDS = frozenset({"step", "file", "digest", "chain"})
RETENTION_FIELDS = frozenset({"keep_every", "keep_last"})


@dataclass(frozen=True)
class Checkpoint:
    step: int
    file: str | None  # relative to the transcript's folder; None: not kept
    digest: str
    chain: str


@dataclass(frozen=True)
class Transcript:
    derivation: str
    checkpoint_every: int
    checkpoints: tuple[Checkpoint, ...]
    environment: dict[str, Any] | None = None  # where it was recorded; None: not said
    retention: dict[str, int] | None = None  # as the recipe said (format /2)


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
    """Validate a transcript's JSON; bad structure is bad input (exit 2), named by field."""
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, FORMAT_2):
        raise UsageError(f"{label}: format: not a {FORMAT} or {FORMAT_2} transcript")
    version = data["format"]
    if unknown := sorted(data.keys() - (FIELDS_2 if version == FORMAT_2 else FIELDS)):
        raise UsageError(f"{label}: {unknown[0]}: not a field of a {version} transcript")
    if not is_digest(data.get("derivation")):
        raise UsageError(f"{label}: derivation: expected a sha256 digest")
    every = data.get("checkpoint_every")
    if not _count(every):
        raise UsageError(f"{label}: checkpoint_every: expected a count of steps (0 or more)")
    entries = data.get("checkpoints")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{label}: checkpoints: the transcript records no checkpoint")
    checkpoints = tuple(_checkpoint(entry, f"{label}: checkpoints[{i}]", version == FORMAT_2)
                        for i, entry in enumerate(entries))
    steps = [c.step for c in checkpoints]
    if steps != sorted(set(steps)) or steps[0] <= 0:
        raise UsageError(f"{label}: checkpoints: steps must be positive and increasing")
    if steps[-1] > MAX_SAFE_INTEGER:
        raise UsageError(f"{label}: checkpoints: a step beyond 2**53 - 1 cannot be chained")
    environment = data.get("environment")
    if environment is not None and (problem := claim_problem(environment)):
        raise UsageError(f"{label}: environment: {problem}")
    return Transcript(data["derivation"], every, checkpoints, environment,
                      _retention(data.get("retention"), label))


def _retention(value: Any, label: str) -> dict[str, int] | None:
    if value is None:
        return None
    if not (isinstance(value, dict) and value.keys() <= RETENTION_FIELDS
            and all(_count(v) for v in value.values())):
        raise UsageError(f"{label}: retention: expected keep_every and keep_last, counts")
    return dict(value)


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checkpoint(entry: Any, label: str, file_optional: bool = False) -> Checkpoint:
    file = entry.get("file") if isinstance(entry, dict) else None
    if not (isinstance(entry, dict) and _count(entry.get("step"))
            and (isinstance(file, str) or (file_optional and "file" not in entry))
            and is_digest(entry.get("digest")) and is_digest(entry.get("chain"))):
        raise UsageError(f"{label}: needs step, {'' if file_optional else 'file, '}digest "
                         "and chain")
    if unknown := sorted(entry.keys() - ENTRY_FIELDS):
        raise UsageError(f"{label}.{unknown[0]}: not a field of a checkpoint entry")
    if file is not None and (".." in file.split("/") or file.startswith("/")):
        raise UsageError(f"{label}.file: leaves the transcript's folder")
    return Checkpoint(entry["step"], file, entry["digest"], entry["chain"])


def grid_problem(transcript: Transcript, every: int) -> str | None:
    """What is wrong with the transcript's steps for a derivation that checkpoints every
    `every` steps (the runtime records exactly those, and the final step), or None.
    Segments must be the derivation's: a transcript that drops checkpoints would make
    longer segments, whose larger updates would hide a forged one."""
    if transcript.checkpoint_every != every:
        return (f"checkpoint_every: the transcript says {transcript.checkpoint_every}, "
                f"the derivation {every}")
    *inner, final = [c.step for c in transcript.checkpoints]
    on_grid = inner == [every * (i + 1) for i in range(len(inner))]
    if every:
        on_grid = on_grid and len(inner) * every < final <= (len(inner) + 1) * every
    if not on_grid:
        return (f"checkpoints: steps must be every {every} steps, then the final one"
                if every else "checkpoints: a derivation without checkpoint_every records "
                "only the final step")
    return None


def broken_links(transcript: Transcript) -> list[int]:
    """Steps whose chain link does not follow from the entries before them."""
    broken, previous = [], transcript.derivation
    for c in transcript.checkpoints:
        if link(previous, c.step, c.digest) != c.chain:
            broken.append(c.step)
        previous = c.chain
    return broken


def retention_gaps(transcript: Transcript, retention: Retention) -> list[int]:
    """Steps whose checkpoint file the recipe's retention keeps but the transcript says
    was not: a publisher who leaves out the files around a forged segment leaves its
    update unmeasured, so such a transcript is not the recipe's."""
    points = transcript.checkpoints
    return [c.step for i, c in enumerate(points, 1)
            if c.file is None and retention.keeps(i, len(points))]


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


class Why(Enum):
    """Why a segment is replayed."""

    FIRST = "first"  # its start, the initialisation, is not published: no update to measure
    LARGEST = "largest"  # the largest update of its stretch of training
    RANDOM = "random"  # drawn with the verifier's seed
    LAST = "last"  # it ends with the weights being verified


@dataclass(frozen=True)
class Pick:
    segment: Segment
    why: Why


@dataclass(frozen=True)
class Selection:
    """The segments to replay, and what the random part of the choice can promise."""

    picks: tuple[Pick, ...]  # in training order
    stretches: int  # how many stretches gave their largest update (Q)
    drawn: int  # random picks (K, or fewer when fewer segments are left)
    population: int  # the segments the random picks were drawn from

    def catch(self, forged: int) -> float:
        """The chance that a forgery of `forged` segments, none of which makes its
        stretch's largest update, is caught: only a random pick can land on it."""
        return catch_probability(self.population, self.drawn, forged)


def choose(all_segments: list[Segment], updates: Mapping[int, float], *, stretches: int,
           spot: int, seed: int) -> Selection:
    """Always the last segment. With `stretches` > 0, the first, and the segment with the
    largest update in each of `stretches` equal stretches of the ones between (`updates`:
    segment index -> its update; a segment without one, whose checkpoints were not kept,
    is left out of the stretches). Then `spot` drawn at random (seeded) from the rest, and
    one more for each stretch there were too few measured updates to make (a transcript
    that kept few checkpoints): the same share of segments is replayed."""
    *head, last = all_segments
    first, middle = (head[0], head[1:]) if head else (None, [])
    middle = [s for s in middle if s.index in updates]
    why = {last.index: Why.LAST}
    measured = min(stretches, len(middle)) if first is not None else 0
    if stretches and first is not None:
        why[first.index] = Why.FIRST
        for i in largest_updates([updates[s.index] for s in middle], stretches):
            why[middle[i].index] = Why.LARGEST
    rest = [s for s in all_segments if s.index not in why]
    unmeasured = stretches - measured if first is not None else 0
    drawn = random.Random(seed).sample(rest, min(spot + unmeasured, len(rest)))
    why |= {s.index: Why.RANDOM for s in drawn}
    picks = tuple(Pick(s, why[s.index]) for s in all_segments if s.index in why)
    return Selection(picks, measured, len(drawn), len(rest))


def largest_updates(updates: Sequence[float], stretches: int) -> list[int]:
    """The index of the largest update in each of `stretches` runs of consecutive
    updates, as equal in length as can be (the first of equals)."""
    count = len(updates)
    stretches = min(stretches, count)
    bounds = [count * i // stretches for i in range(stretches + 1)] if stretches else [0]
    return [max(range(a, b), key=lambda i: updates[i]) for a, b in pairwise(bounds)]


def catch_probability(population: int, drawn: int, forged: int) -> float:
    """The chance that `drawn` segments drawn without replacement from `population`
    include at least one of `forged` of them: 1 - C(P - m, K) / C(P, K), hypergeometric.
    A forgery of more segments than the population holds touches a segment that is
    always replayed, so is caught."""
    if forged <= 0:
        return 0.0
    if forged > population:
        return 1.0
    return float(1 - Fraction(math.comb(population - forged, drawn),
                              math.comb(population, drawn)))


@dataclass(frozen=True)
class Plan:
    """The segments to run to replay the chosen ones when some checkpoints were not kept.

    A chosen segment whose start checkpoint was kept is replayed from it, as always. One
    whose start was not kept is replayed from the nearest kept checkpoint before it (from
    scratch when there is none), through the segments between, each of which must
    reproduce its recorded digest too: the coverage of the choice stays, the replay
    grows. Segments the caller allows to skip (`verify --kept-only`: random picks) are
    skipped instead when their start was not kept, and named in the report."""

    runs: tuple[Segment, ...]  # in training order, each once
    chained: frozenset[int]  # segments that start from the replay of the one before
    origin: dict[int, int]  # chosen segment index -> index of the first segment run for it
    skipped: frozenset[int]  # chosen segments not replayed (kept_only)

    def steps(self) -> int:
        return sum(s.steps for s in self.runs)


def replay_plan(all_segments: Sequence[Segment], chosen: Sequence[Segment],
                kept: frozenset[int] | set[int],
                skippable: frozenset[int] | set[int] = frozenset()) -> Plan:
    """Which segments to run for `chosen`, given the indices of the checkpoints whose
    files are at hand (`kept`; segment i starts at checkpoint i - 1); a chosen segment in
    `skippable` whose start was not kept is skipped."""
    runs: set[int] = set()
    origin: dict[int, int] = {}
    skipped = set()
    for segment in chosen:
        first = segment.index
        while first > 0 and first - 1 not in kept:
            first -= 1
        if first != segment.index and segment.index in skippable:
            skipped.add(segment.index)
            continue
        origin[segment.index] = first
        runs.update(range(first, segment.index + 1))
    chained = frozenset(i for i in runs if i > 0 and i - 1 not in kept)
    return Plan(tuple(all_segments[i] for i in sorted(runs)), chained, origin,
                frozenset(skipped))
