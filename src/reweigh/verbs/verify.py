"""`verify`: check a training transcript by replaying a few of its segments.

Before any replay, every checkpoint file must have its recorded digest and the
chain must hold; a transcript of another derivation is refused. Then K random
segments and always the last are replayed from their published starting states,
one after the other in a single sandboxed build process (its start-up is paid once),
and each replayed end state is compared with the next published checkpoint. On the
environment the transcript was recorded on (or when it names none) the comparison is
bit for bit. On another environment, floating-point results legitimately drift a
little, so each segment may drift by the recipe's per-segment tolerance: the drift of
one segment, not of the whole training, which is far smaller and so leaves a forger
far less room. The last segment runs training to its end, so its weights must also be
the weights being verified: fine-tuning after training is caught there.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from .. import transcript as tr
from ..builder import ChildResult
from ..compare import EnvRelation, compare_files, value_drift
from ..derivation import Derivation, read_record
from ..digest import file_digest
from ..environment import fingerprint
from ..errors import UsageError, WeightsError
from ..job import Replay
from ..progress import QuietReporter, Reporter
from ..recipe import Recipe, Tolerance, load_recipe
from ..store import Store
from ..weights import check_state, read_header
from .build import RecipeCode, plan, sandboxed, threads_for


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

    @property
    def holds(self) -> bool:
        return self.chain_ok and all(r.holds for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"verdict": "holds" if self.holds else "fails", "holds": self.holds,
                "target": str(self.target), "derivation": self.derivation,
                "transcript": str(self.transcript), "segments_total": self.segments_total,
                "seed": self.seed, "chain_ok": self.chain_ok, "problems": list(self.problems),
                "segments": [vars(r) for r in self.results],
                "compute_fraction": self.compute_fraction, "environment": self.environment,
                "tolerance": self.tolerance}


@dataclass(frozen=True)
class _Subject:
    """What is verified: weights, the derivation they claim, its code and inputs."""

    weights: Path
    code: RecipeCode
    tolerance: Tolerance


def verify(target: Path | str, transcript: Path | str, *, spot: int | Fraction,
           seed: int | None = None,
           recipe: Path | str | None = None, store: Store | None = None,
           threads: int | None = None, reporter: Reporter | None = None) -> VerifyReport:
    store = store or Store()
    reporter = reporter or QuietReporter()
    threads = threads_for(threads)
    seed = secrets.randbelow(2**31) if seed is None else seed
    transcript = Path(transcript).absolute()
    parsed = _load(transcript)
    target = Path(target)
    with store.gc_lock(exclusive=False):  # gc waits: the item and inputs found stay
        subject = _subject(target, recipe, store)
        read_header(subject.weights)  # a malformed file is bad input (exit 2), not a failure
        if parsed.derivation != subject.code.derivation.digest:
            raise UsageError(f"{transcript}: derivation: the transcript is of {parsed.derivation}, "
                             f"not of the verified weights' {subject.code.derivation.digest}")
        problems = _chain_problems(parsed, transcript.parent)
        all_segments = tr.segments(parsed)
        if problems:
            return VerifyReport(target, parsed.derivation, transcript, len(all_segments), seed,
                                False, tuple(problems), (), 0.0)
        chosen = tr.choose(all_segments, tr.spot_count(spot, len(all_segments)), seed)
        for segment in chosen:  # a hostile start fails here, naming itself, not in a replay
            if segment.start is not None:
                check_state(transcript.parent / segment.start.file)
        total = parsed.checkpoints[-1].step
        tolerance = segment_tolerance(subject.tolerance, total, max(s.steps for s in chosen))
        with _replayed(subject, chosen, transcript.parent, store, threads, reporter) as replay:
            relation = _relation(parsed.environment, replay.result.environment)
            allowed = tolerance if relation is EnvRelation.OTHER else 0.0
            results = tuple(_judge(subject, segment, transcript.parent, replay, allowed)
                            for segment in chosen)
        fraction = sum(s.steps for s in chosen) / total
        return VerifyReport(target, parsed.derivation, transcript, len(all_segments), seed,
                            True, (), results, fraction, relation.value, allowed)


def segment_tolerance(tolerance: Tolerance, total_steps: int, segment_steps: int) -> float:
    """The drift one segment may show on another environment: the recipe's own
    `segment_rel_l2`, else its end-to-end `weights_rel_l2` scaled down as drift that
    accumulates like a random walk would be (by the square root of the step share)."""
    if tolerance.segment_rel_l2 is not None:
        return tolerance.segment_rel_l2
    return tolerance.weights_rel_l2 * math.sqrt(segment_steps / total_steps)


def _relation(recorded: dict[str, Any] | None, local: dict[str, Any]) -> EnvRelation:
    if not recorded:
        return EnvRelation.UNKNOWN
    return EnvRelation.SAME if fingerprint(recorded) == fingerprint(local) else EnvRelation.OTHER


def _load(path: Path) -> tr.Transcript:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # bad UTF-8 or JSON, huge ints, depth
        raise UsageError(f"{path}: cannot read the transcript: {e}") from e
    return tr.parse(data, str(path))


def _subject(target: Path, recipe: Path | str | None, store: Store) -> _Subject:
    if recipe is not None:
        if not target.is_file():
            raise UsageError(f"{target}: no such weights file")
        the_plan = plan(recipe, store)
        return _Subject(target, the_plan.recipe_code, _tolerance(the_plan.recipe))
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
    return _Subject(item.weights, RecipeCode(Derivation(item.derivation, record), code, inputs),
                    _tolerance(load_recipe(source / "recipe.toml")))


def _tolerance(recipe: Recipe) -> Tolerance:
    return recipe.evaluate.tolerance if recipe.evaluate else Tolerance()


def _chain_problems(parsed: tr.Transcript, folder: Path) -> list[str]:
    problems = []
    root = folder.resolve()
    for c in parsed.checkpoints:
        path = folder / c.file
        try:
            if not path.resolve().is_relative_to(root):
                problems.append(f"step {c.step}: {c.file} leads out of the transcript's folder")
            elif not path.is_file():
                problems.append(f"step {c.step}: checkpoint file {c.file} is missing")
            elif file_digest(path) != c.digest:
                problems.append(f"step {c.step}: {c.file} does not have its recorded digest")
        except (OSError, ValueError) as e:  # a name too long, a NUL byte, no permission
            problems.append(f"step {c.step}: {c.file} cannot be read ({e})")
    problems += [f"step {step}: the chain link does not follow from the entries before it"
                 for step in tr.broken_links(parsed)]
    return problems


@dataclass
class _Replay:
    out: Path
    result: ChildResult
    began: dict[int, float]  # segment stop step -> when its replay started


@contextlib.contextmanager
def _replayed(subject: _Subject, chosen: list[tr.Segment], folder: Path, store: Store,
              threads: int, reporter: Reporter) -> Iterator[_Replay]:
    """Replay the chosen segments in one sandboxed process; its output lives as long
    as the caller judges it."""
    reporter.stage(f"replaying {len(chosen)} segments: "
                   + ", ".join(f"{(s.start.step if s.start else 0)}..{s.stop.step}"
                               for s in chosen))
    replays = tuple(Replay(str(folder / s.start.file) if s.start else None,
                           None if s.last else s.stop.step) for s in chosen)
    with sandboxed(store, subject.code, threads, reporter, "replaying segments", "replay",
                   replays=replays) as (result, out):
        began = {s.stop.step: at for s, at in zip(chosen, result.segments_began, strict=False)}
        yield _Replay(out, result, began)


def _judge(subject: _Subject, segment: tr.Segment, folder: Path, replay: _Replay,
           allowed: float) -> SegmentResult:
    made = next((c for c in replay.result.checkpoints if c["step"] == segment.stop.step), None)
    start_step = segment.start.step if segment.start else 0
    seconds = (made["at"] - replay.began[segment.stop.step]) if made else 0.0
    if made is None:
        return SegmentResult(segment.index, start_step, segment.stop.step, segment.stop.digest,
                             None, False, seconds, "the replay made no checkpoint there")
    holds, note, drift = made["digest"] == segment.stop.digest, "", None
    if not holds and allowed > 0:
        drift = _drift(replay.out / made["file"], folder / segment.stop.file)
        holds = drift <= allowed
        note = f"drift {drift:.2e} {'within' if holds else 'beyond'} {allowed:.2e}"
    if segment.last and holds:
        weights = replay.out / "weights.safetensors"
        holds = weights.is_file() and _same_weights(weights, subject.weights, allowed)
        note = note if holds else "the final weights are not what training produces"
    return SegmentResult(segment.index, start_step, segment.stop.step, segment.stop.digest,
                         made["digest"], holds, seconds, note, drift)


def _drift(replayed: Path, published: Path) -> float:
    """The worst relative difference over the two states: each tensor's relative L2
    distance and each float of the JSON skeleton's; infinite when anything else differs
    (the skeleton's structure or non-float values, tensor names, shapes or types), or
    when the published checkpoint cannot be read as one."""
    try:
        a, b = read_header(replayed), read_header(published)
        if a.metadata.keys() != b.metadata.keys():
            return math.inf
        values = max((value_drift(_json(a.metadata[k]), _json(b.metadata[k]))
                      for k in a.metadata), default=0.0)
    except (WeightsError, RecursionError):  # a hostile header, or a skeleton nested too deep
        return math.inf
    diffs = compare_files(a, b)
    if any(d.status not in ("identical", "changed") for d in diffs):
        return math.inf
    return max([values, *(d.rel_l2 for d in diffs)])


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, a 5000-digit int, deep nesting
        return text


def _same_weights(replayed: Path, published: Path, allowed: float) -> bool:
    if file_digest(replayed) == file_digest(published):
        return True
    return allowed > 0 and _drift(replayed, published) <= allowed
