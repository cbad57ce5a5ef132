"""`verify`: check a training transcript by replaying a few of its segments.

Before any replay, every checkpoint file must have its recorded digest and the
chain must hold; a transcript of another derivation, or whose checkpoints are not
the derivation's (`checkpoint_every`), is refused, and so is a malformed checkpoint.
Then the segments `transcript.choose` picks (the last, the first, the largest update
of each stretch of training, K at random) are replayed from their published starting
states, one after the other in a single sandboxed build process (its start-up is paid
once), and each replayed end state is compared with the next published checkpoint;
a failing segment names the tensors that differ and by how much.

A segment's update is measured from the checkpoints alone, without training: the
largest relative L2 distance of one of the model's weight tensors (the state's tensors
that carry the name and shape of a tensor of the verified weights; every float tensor
of the state when none does) between the checkpoint it starts from and the one it
ends at. It is read memory-mapped, a chunk at a time (`compare.distances`). A forger
who jumps to planted weights makes one segment's update far larger than training's
own late in training; one who spreads the jump thin enough to make no stretch's
largest update is left to the random picks, and the report says with what odds.

On the environment the transcript was recorded on (or when it names none) the
comparison is bit for bit. On another environment, floating-point results legitimately
drift a little, so each segment may drift by the recipe's per-segment tolerance: the
drift of one segment, not of the whole training, which is far smaller and so leaves a
forger far less room. The last segment runs training to its end, so its weights must
also be the weights being verified: fine-tuning after training is caught there.

What it does not do: replay what it does not pick. A forgery spread over segments that
each move the weights less than their stretch's largest update is caught only by the
random picks, with the odds the report states; only `build --check` replays it all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from .. import kept, states
from .. import transcript as tr
from ..builder import ChildResult
from ..compare import EnvRelation
from ..derivation import Derivation, read_record
from ..digest import file_digest
from ..environment import platform_of
from ..errors import SignatureError, UsageError
from ..job import Replay
from ..numerics import ENV_CHOICE, NATIVE, default_name, digest_of, machine_arch, relate
from ..progress import QuietReporter, Reporter
from ..recipe import Recipe, Retention, Tolerance, load_recipe
from ..store import Store, remove_tree
from ..weights import WeightsFile, read_header, unique_keys
from .build import RecipeCode, plan, sandboxed, threads_for

STRETCHES = 3  # default Q: stretches of training whose largest update is always replayed
SPREADS = (1, 2, 5, 10)  # forgeries of this many segments get their odds in the report


@dataclass(frozen=True)
class Sampling:
    """Which segments to replay besides the last (`--spot`, `--largest`, `--seed`): the
    segment with the largest update in each of `largest` (Q) stretches of training, and
    the first, and `spot` (K) drawn at random; each a count, or a Fraction: a share of
    all the segments, rounded up."""

    spot: int | Fraction
    largest: int | Fraction = STRETCHES
    seed: int | None = None  # None: a fresh random seed
    kept_only: bool = False  # skip a random pick whose start checkpoint was not kept


@dataclass(frozen=True)
class SegmentResult:
    index: int
    start_step: int
    stop_step: int
    expected: str
    replayed: str | None
    holds: bool
    seconds: float
    note: str = ""
    drift: float | None = None  # worst relative L2 of a state tensor (another environment)
    why: tr.Why = tr.Why.RANDOM  # why it was replayed
    update: float | None = None  # its measured update (None: the first, unmeasurable)
    difference: states.Difference | None = None  # what differed, when it fails
    start_kept: bool = True  # whether the checkpoint it starts from was kept
    replayed_from: int = 0  # the step its replay started from (earlier when not kept)
    skipped: bool = False  # not replayed: its start was not kept (--kept-only)

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "why": self.why.value,
                "difference": vars(self.difference) if self.difference else None}


@dataclass(frozen=True)
class VerifyReport:
    target: Path
    derivation: str
    transcript: Path
    segments_total: int
    seed: int
    chain_ok: bool
    problems: tuple[str, ...]
    results: tuple[SegmentResult, ...]
    compute_fraction: float  # replayed training steps / all training steps
    environment: str = "same"  # same | unknown | other: where the transcript was recorded
    tolerance: float = 0.0  # the per-segment drift allowed on another environment
    stretches: int = 0  # Q: stretches whose largest update was replayed
    drawn: int = 0  # K: segments drawn at random
    population: int = 0  # the segments they were drawn from
    catch: dict[int, float] = field(default_factory=dict)  # m forged segments -> odds
    environment_reasons: tuple[str, ...] = ()  # the platforms' relation in words

    kept: int = 0  # checkpoints whose files were at hand (beside it or in the store)
    absent: tuple[int, ...] = ()  # steps whose files the transcript names, not at hand
    fetched: dict[str, int] = field(default_factory=dict)  # chunks fetched (--from)

    @property
    def holds(self) -> bool:
        return self.chain_ok and all(r.holds for r in self.results if not r.skipped)

    def to_json(self) -> dict[str, Any]:
        return {"verdict": "holds" if self.holds else "fails", "holds": self.holds,
                "target": str(self.target), "derivation": self.derivation,
                "transcript": str(self.transcript), "segments_total": self.segments_total,
                "seed": self.seed, "chain_ok": self.chain_ok, "problems": list(self.problems),
                "segments": [r.to_json() for r in self.results],
                "kept_checkpoints": self.kept, "absent": list(self.absent),
                "fetched_chunks": self.fetched or None,
                "skipped": [r.index for r in self.results if r.skipped],
                "compute_fraction": self.compute_fraction, "environment": self.environment,
                "environment_reasons": list(self.environment_reasons),
                "tolerance": self.tolerance,
                "sampling": {"stretches": self.stretches, "random": self.drawn,
                             "drawn_from": self.population},
                "catch": {"largest_update": 1.0,
                          "not_largest": {str(m): p for m, p in self.catch.items()}}}


@dataclass(frozen=True)
class _Subject:
    """What is verified: weights, the derivation they claim, its code and inputs."""

    weights: WeightsFile  # checked on the way in: a malformed file is bad input (exit 2)
    code: RecipeCode
    tolerance: Tolerance
    retention: Retention  # which checkpoints' files the recipe keeps


def verify(target: Path | str, transcript: Path | str, sampling: Sampling, *,
           recipe: Path | str | None = None, store: Store | None = None,
           threads: int | None = None, reporter: Reporter | None = None,
           signature: Path | str | None = None, sources: tuple[str, ...] = ()
           ) -> VerifyReport:
    """Check `transcript` (its chain, its derivation, its checkpoints) against the weights
    `target` (a store item, or a file with `recipe`) and replay the segments `sampling`
    picks. Bad input (a malformed file, another derivation's transcript) raises
    UsageError or WeightsError; a chain that breaks or a segment that does not replay is
    a report that does not hold. `sources`: caches to fetch the chunks of checkpoints
    absent here from (`kept.find`)."""
    store = store or Store()
    reporter = reporter or QuietReporter()
    threads = threads_for(threads)
    seed = secrets.randbelow(2**31) if sampling.seed is None else sampling.seed
    transcript = Path(transcript).absolute()
    parsed = _load(transcript)
    target = Path(target)
    with store.gc_lock(exclusive=False):  # gc waits: the item and inputs found stay
        subject = _subject(target, recipe, store)
        if parsed.derivation != subject.code.derivation.digest:
            raise UsageError(f"{transcript}: derivation: the transcript is of {parsed.derivation}"
                             f", not of the verified weights' {subject.code.derivation.digest}")
        signed = _signed(signature, parsed.environment, subject.weights.path)
        scratch = store.new_staging_dir()  # checkpoints written out of the store's chunks
        try:
            found = kept.find(parsed, transcript.parent, store, scratch, sources)
            report = _verified(parsed, transcript, subject, found, sampling, seed, store,
                               threads, reporter, signed)
            return replace(report, fetched=found.fetched)
        finally:
            remove_tree(scratch)


def _verified(parsed: tr.Transcript, transcript: Path, subject: _Subject, found: kept.Found,
              sampling: Sampling, seed: int, store: Store, threads: int,
              reporter: Reporter, signed: bool = False) -> VerifyReport:
    target, segments_total = subject.weights.path, len(parsed.checkpoints)
    kept_by_recipe = subject.retention
    problems = [*found.problems, *(
        f"step {step}: the recipe keeps this checkpoint's file (keep_every = "
        f"{kept_by_recipe.every}, keep_last = {kept_by_recipe.last}); the transcript does not"
        for step in tr.retention_gaps(parsed, kept_by_recipe))]
    if problems:
        return VerifyReport(target, parsed.derivation, transcript, segments_total, seed,
                            False, tuple(problems), (), 0.0, kept=len(found.files))
    selection, moved = _select(parsed, transcript, subject, sampling, seed, found.files)
    segments = tr.segments(parsed)
    random = {p.segment.index for p in selection.picks if p.why is tr.Why.RANDOM}
    runs = tr.replay_plan(segments, [p.segment for p in selection.picks], set(found.files),
                          random if sampling.kept_only else set())
    total = parsed.checkpoints[-1].step
    longest = max(segments[i].stop.step - _start_of(runs, first)
                  for i, first in runs.origin.items())
    tolerance = segment_tolerance(subject.tolerance, total, longest)
    with _replayed(subject, runs, found.files, store, threads, reporter) as replay:
        relation, why = _relation(parsed.environment, replay.result.environment,
                                  subject.code.derivation.record, signed)
        allowed = tolerance if relation is EnvRelation.OTHER else 0.0
        results = tuple(_judge(subject, pick, moved, found.files, replay, allowed, runs)
                        for pick in selection.picks)
    drawn = sum(1 for r in results if r.why is tr.Why.RANDOM and not r.skipped)
    return VerifyReport(target, parsed.derivation, transcript, segments_total, seed,
                        True, (), results, runs.steps() / total, relation.value, allowed,
                        selection.stretches, drawn, selection.population,
                        {m: tr.catch_probability(selection.population, drawn, m)
                         for m in SPREADS}, tuple(why), len(found.files), tuple(found.absent))


def segment_tolerance(tolerance: Tolerance, total_steps: int, segment_steps: int) -> float:
    """The drift one segment may show on another environment: the recipe's own
    `segment_rel_l2`, else its end-to-end `weights_rel_l2` scaled down as drift that
    accumulates like a random walk would be (by the square root of the step share)."""
    if tolerance.segment_rel_l2 is not None:
        return tolerance.segment_rel_l2
    return tolerance.weights_rel_l2 * math.sqrt(segment_steps / total_steps)


def _relation(recorded: dict[str, Any] | None, local: dict[str, Any],
              derivation: dict[str, Any], signed: bool) -> tuple[EnvRelation, list[str]]:
    """The replay's platform against the one the transcript records (see relate): the
    derivation names the platform the transcript must have been recorded on."""
    relation, _, why = relate(platform_of(local), platform_of(recorded) if recorded else None,
                              derivation.get("platform", NATIVE), signed)
    return relation, why


def _signed(signature: Path | str | None, recorded: dict[str, Any] | None,
            weights: Path) -> bool:
    """Whether a trusted key signed the platform the transcript records, for these
    weights: a signature of another platform, or of other weights, is refused."""
    if signature is None:
        return False
    from .sign import signed_platform  # cryptography: only a signature needs it

    platform = signed_platform(Path(signature), file_digest(weights))
    if recorded is None or digest_of(platform_of(recorded)) != digest_of(platform):
        raise SignatureError(f"{signature}: signs another platform than the transcript's "
                             "environment records")
    return True


def _load(path: Path) -> tr.Transcript:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    except (OSError, ValueError, RecursionError) as e:  # bad UTF-8 or JSON, huge ints, depth
        raise UsageError(f"{path}: cannot read the transcript: {e}") from e
    return tr.parse(data, str(path))


def _subject(target: Path, recipe: Path | str | None, store: Store) -> _Subject:
    if recipe is not None:
        if not target.is_file():
            raise UsageError(f"{target}: no such weights file")
        the_plan = plan(recipe, store, own_platform=True)  # --platform moves the replay only
        return _Subject(read_header(target), the_plan.recipe_code, _tolerance(the_plan.recipe),
                        the_plan.recipe.retention)
    if target.is_file():
        raise UsageError(f"{target}: a weights file needs --recipe to say how it was built")
    item = store.resolve(str(target))
    record = read_record(item.path / "derivation.json")
    source = item.path / "source"
    code = {rel: source / rel for rel in record["code"]}
    inputs = {}
    for name, entry in record["inputs"].items():
        found = (store.resolve(entry["digest"]).path if entry["kind"] == "item"
                 else store.input_path(entry["digest"]))
        if found is None:
            raise UsageError(f"input {name} ({entry['digest']}) is not in the store")
        inputs[name] = found
    derivation = Derivation(item.derivation, record)
    built = load_recipe(source / "recipe.toml")
    return _Subject(read_header(item.weights), RecipeCode(derivation, code, inputs),
                    _tolerance(built), built.retention)


def _tolerance(recipe: Recipe) -> Tolerance:
    return recipe.evaluate.tolerance if recipe.evaluate else Tolerance()


def _select(parsed: tr.Transcript, path: Path, subject: _Subject, sampling: Sampling,
            seed: int, files: dict[int, Path]) -> tuple[tr.Selection, dict[int, float]]:
    """The segments to replay, and each segment's update by index (the first has none:
    it starts from the initialisation, which is not published). When checkpoints were
    not kept, an update is measured between consecutive kept ones and belongs to the
    segment ending at the later (whose replay runs from the earlier); segments ending at
    a checkpoint not kept have none. Refused first: segments other than the
    derivation's, and a malformed checkpoint."""
    every = int(subject.code.derivation.record.get("checkpoint_every", 0))
    if problem := tr.grid_problem(parsed, every):
        raise UsageError(f"{path}: {problem}")
    at_hand = sorted(files)
    moved = states.updates([files[i] for i in at_hand], subject.weights)
    updates = {stop: update for stop, update in zip(at_hand[1:], moved, strict=True)}
    count = len(parsed.checkpoints)
    return tr.choose(tr.segments(parsed), updates, seed=seed,
                     stretches=tr.spot_count(sampling.largest, count),
                     spot=tr.spot_count(sampling.spot, count)), updates


@dataclass
class _Replay:
    out: Path
    result: ChildResult
    began: dict[int, float]  # segment stop step -> when its replay started


@contextlib.contextmanager
def _replayed(subject: _Subject, runs: tr.Plan, files: dict[int, Path], store: Store,
              threads: int, reporter: Reporter) -> Iterator[_Replay]:
    """Replay the planned segments in one sandboxed process, in training order, each
    from its kept start checkpoint or from the checkpoint the replay before it wrote;
    its output lives as long as the caller judges it."""
    chosen = runs.runs
    reporter.stage(f"replaying {len(chosen)} segments: "
                   + ", ".join(f"{(s.start.step if s.start else 0)}..{s.stop.step}"
                               for s in chosen))
    replays = tuple(Replay(None, None if s.last else s.stop.step, _written(s.start.step))
                    if s.index in runs.chained and s.start else
                    Replay(str(files[s.index - 1]) if s.start else None,
                           None if s.last else s.stop.step) for s in chosen)
    asked = os.environ.get(ENV_CHOICE)  # --platform: replay on another platform
    with sandboxed(store, subject.code, threads, reporter, "replaying segments", "replay",
                   replays=replays,
                   platform=default_name(asked, machine_arch()) if asked else None
                   ) as (result, out):
        began = {s.stop.step: at for s, at in zip(chosen, result.segments_began, strict=False)}
        yield _Replay(out, result, began)


def _written(step: int) -> str:
    """Where a replay writes the checkpoint at `step`, in its output folder."""
    return f"checkpoints/step-{step:09d}.safetensors"


def _made(replay: _Replay, step: int) -> tuple[Path, str] | None:
    """The checkpoint the replay wrote at `step` and its digest, hashed here (the
    replayed code's own report of it is not taken on trust)."""
    path = replay.out / _written(step)
    reported = any(c["step"] == step for c in replay.result.checkpoints)
    if not reported or not path.is_file() or path.is_symlink():
        return None
    return path, file_digest(path)


def _judge(subject: _Subject, pick: tr.Pick, updates: Mapping[int, float],
           files: dict[int, Path], replay: _Replay, allowed: float,
           runs: tr.Plan) -> SegmentResult:
    segment = pick.segment
    start_step = segment.start.step if segment.start else 0
    kept_start = segment.start is None or segment.index - 1 in files
    result = SegmentResult(segment.index, start_step, segment.stop.step, segment.stop.digest,
                           None, False, 0.0, "", why=pick.why,
                           update=updates.get(segment.index), start_kept=kept_start,
                           replayed_from=start_step)
    if segment.index in runs.skipped:
        return replace(result, skipped=True,
                       note=f"not replayed: its start (step {start_step}) was not kept")
    origin = runs.origin[segment.index]
    first = _start_of(runs, origin)
    result = replace(result, replayed_from=first,
                     seconds=_seconds(replay, runs, origin, segment.index),
                     note="" if kept_start else f"its start (step {start_step}) "
                     f"{_not_there(segment.start)}: replayed from step {first}")
    if (broken := _through(runs, origin, segment.index, replay, allowed)) is not None:
        return replace(result, note=f"{result.note}, which did not reproduce step {broken}")
    made = _made(replay, segment.stop.step)
    if made is None:
        return replace(result, note=_joined(result.note, "the replay made no checkpoint there"))
    return _compared(subject, segment, made, files.get(segment.index), replay, allowed,
                     result)


def _compared(subject: _Subject, segment: tr.Segment, made: tuple[Path, str],
              published: Path | None, replay: _Replay, allowed: float,
              result: SegmentResult) -> SegmentResult:
    """A replayed segment's end against the transcript: its digest; on another platform
    its drift from the published checkpoint (when that was kept); for the last segment,
    the weights training ends with."""
    replayed, digest = made
    holds, note, drift = digest == segment.stop.digest, result.note, None
    if not holds and allowed > 0 and published is None:
        if not segment.last:  # the last is judged by the weights it ends with, below
            return replace(result, replayed=digest, skipped=True, note=_joined(
                note, f"its end (step {segment.stop.step}) was not kept, so on another "
                "platform it cannot be compared within tolerance"))
        holds = True
    elif not holds and allowed > 0 and published is not None:
        drift = states.drift(replayed, published)
        holds = drift <= allowed
        note = _joined(note, f"drift {drift:.2e} {'within' if holds else 'beyond'} "
                       f"{allowed:.2e}")
    difference = None
    if not holds:
        difference = states.difference(replayed, published) if published else None
        if difference is None:
            note = _joined(note, "the replay did not reproduce its recorded digest")
    if segment.last and holds:
        weights = replay.out / "weights.safetensors"
        holds = weights.is_file() and _same_weights(weights, subject.weights.path, allowed)
        if not holds:
            difference = (states.difference(weights, subject.weights.path) if weights.is_file()
                          else None)
            note = _joined(note, "the final weights are not what training produces")
    if difference is not None:
        note = f"{note}: {difference.describe()}" if note else difference.describe()
    return replace(result, replayed=digest, holds=holds, note=note, drift=drift,
                   difference=difference)


def _not_there(start: tr.Checkpoint | None) -> str:
    """Why a segment's start checkpoint is not at hand: the recipe did not keep its file,
    or it did and the file is neither beside the transcript nor in this store."""
    return "was not kept" if start is not None and start.file is None else "is not at hand"


def _joined(note: str, more: str) -> str:
    return f"{note}; {more}" if note else more


def _start_of(runs: tr.Plan, origin: int) -> int:
    """The step the replay of segment `origin` starts from (0: from scratch)."""
    segment = next(s for s in runs.runs if s.index == origin)
    return segment.start.step if segment.start else 0


def _through(runs: tr.Plan, origin: int, index: int, replay: _Replay,
             allowed: float) -> int | None:
    """On the platform the transcript was recorded on, every segment replayed on the way
    to a chosen one whose start was not kept must reproduce its checkpoint's digest: the
    first step where one did not, or None. (On another platform only kept checkpoints
    can be compared within tolerance, and drift carries over: the chosen segment's end
    decides.)"""
    if allowed > 0:
        return None
    for segment in runs.runs:
        if origin <= segment.index < index:
            made = _made(replay, segment.stop.step)
            if made is None or made[1] != segment.stop.digest:
                return segment.stop.step
    return None


def _seconds(replay: _Replay, runs: tr.Plan, origin: int, index: int) -> float:
    """How long the replay of the chosen segment took, with the segments before it that
    it needed."""
    steps = [s.stop.step for s in runs.runs if origin <= s.index <= index]
    made = [c["at"] for c in replay.result.checkpoints if c["step"] == steps[-1]]
    began = replay.began.get(steps[0])
    return made[0] - began if made and began is not None else 0.0


def _same_weights(replayed: Path, published: Path, allowed: float) -> bool:
    if file_digest(replayed) == file_digest(published):
        return True
    return allowed > 0 and states.drift(replayed, published) <= allowed
