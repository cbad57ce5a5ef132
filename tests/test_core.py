"""The pure core, table by table: the verdict, the choice of segments to replay, the drift a
segment may show, the environment's fingerprint.

Each row is one case a user's answer rests on, with the reason it must come out so. Nothing
here reads a file or starts a process: the whole module runs in milliseconds, so it belongs
to the quick tier (`./dev test -m "not slow"`).
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction
from typing import Any

import pytest

from reweigh import environment
from reweigh import transcript as tr
from reweigh.compare import (
    Behaviour,
    Change,
    EnvRelation,
    FileComparison,
    MetadataDiff,
    TensorDiff,
    Verdict,
    decide,
)
from reweigh.recipe import Tolerance
from reweigh.verbs.verify import segment_tolerance

# --- compare.decide: the verdict of `challenge` ------------------------------------------

SAME, UNKNOWN, OTHER = EnvRelation.SAME, EnvRelation.UNKNOWN, EnvRelation.OTHER
IDENTICAL, EQUIVALENT, DIFFERENT = Verdict.IDENTICAL, Verdict.EQUIVALENT, Verdict.DIFFERENT
TOLERANCE = Tolerance(weights_rel_l2=1e-3, agreement=0.995, metric="accuracy",
                      metric_delta=0.005)


def _same(name: str) -> TensorDiff:
    return TensorDiff(name, "identical", (4,), "F32")


def _moved(name: str, rel_l2: float) -> TensorDiff:
    return TensorDiff(name, "changed", (4,), "F32", max_abs=rel_l2, rel_l2=rel_l2)


def _files(*tensors: TensorDiff, metadata: bool = False, layout: bool = False) -> FileComparison:
    return FileComparison(
        tensors, (MetadataDiff("payload", Change.ONLY_IN_B, 0, 9),) if metadata else (),
        ("whitespace inside the JSON",) if layout else ())


def _answers(agreement: float = 1.0, a: float | None = 0.97,
             b: float | None = 0.97) -> Behaviour:
    return Behaviour(samples=359, agreement=agreement, metric="accuracy", metric_a=a, metric_b=b)


NUDGED = _files(_same("conv.weight"), _moved("fc.bias", 2e-4))
DECISIONS: list[Any] = [
    # (comparison, behaviour, environment, verdict, a phrase the reasons must hold)
    pytest.param(_files(_same("w"), _same("b")), None, SAME, IDENTICAL, "the same bytes",
                 id="same-bytes-here"),
    pytest.param(_files(_same("w"), _same("b")), None, OTHER, IDENTICAL, "the same bytes",
                 id="same-bytes-from-elsewhere"),
    pytest.param(_files(_same("w"), TensorDiff("extra", "only-in-b", (4,), "F32")), _answers(),
                 OTHER, DIFFERENT, "do not have the same tensors: extra (only-in-b)",
                 id="an-extra-tensor-from-anywhere"),
    pytest.param(_files(TensorDiff("w", "shape-differs", (4,), "(4,) vs (5,)")), _answers(),
                 OTHER, DIFFERENT, "w (shape-differs)", id="another-shape"),
    pytest.param(_files(TensorDiff("w", "dtype-differs", (4,), "F32 vs F16")), _answers(),
                 OTHER, DIFFERENT, "w (dtype-differs)", id="another-dtype"),
    # Without a claim of another environment, only the same bytes pass, however small the
    # change: that is what stops a nudged file riding on the tolerance.
    pytest.param(NUDGED, _answers(), SAME, DIFFERENT, "environment is this one",
                 id="a-nudge-claiming-this-environment"),
    pytest.param(NUDGED, _answers(), UNKNOWN, DIFFERENT, "environment is unknown",
                 id="a-nudge-claiming-nothing"),
    pytest.param(NUDGED, _answers(), OTHER, EQUIVALENT, "within the recipe's tolerance",
                 id="a-nudge-from-elsewhere-within-tolerance"),
    pytest.param(_files(_moved("w", 1e-3)), _answers(), OTHER, EQUIVALENT,
                 "within the recipe's tolerance", id="exactly-at-the-weights-tolerance"),
    pytest.param(_files(_moved("w", 1.001e-3)), _answers(), OTHER, DIFFERENT,
                 "relative L2 0.001 exceeds the tolerance 0.001", id="just-over-it"),
    pytest.param(_files(_moved("w", math.inf)), _answers(), OTHER, DIFFERENT,
                 "exceeds the tolerance", id="an-infinite-distance"),
    pytest.param(NUDGED, None, OTHER, DIFFERENT, "equivalent behaviour is unproven",
                 id="no-evaluation-proves-nothing"),
    pytest.param(NUDGED, _answers(agreement=0.995), OTHER, EQUIVALENT, "within",
                 id="agreement-exactly-at-tolerance"),
    pytest.param(NUDGED, _answers(agreement=0.994), OTHER, DIFFERENT,
                 "prediction agreement 0.9940 is below 0.995", id="agreement-below"),
    pytest.param(NUDGED, _answers(b=0.9649), OTHER, DIFFERENT, "accuracy changes by",
                 id="the-metric-falls-too-far"),
    pytest.param(NUDGED, _answers(b=0.9751), OTHER, DIFFERENT, "accuracy changes by",
                 id="the-metric-rises-too-far"),
    pytest.param(NUDGED, _answers(b=None), OTHER, DIFFERENT, "accuracy changes by None",
                 id="the-metric-is-missing"),
    # NaN compares false with everything: it must fail a bound, not slip under it.
    pytest.param(_files(_moved("w", math.nan)), _answers(), OTHER, DIFFERENT,
                 "exceeds the tolerance", id="a-nan-distance"),
    pytest.param(NUDGED, _answers(b=math.nan), OTHER, DIFFERENT, "accuracy changes by nan",
                 id="a-nan-metric"),
    pytest.param(NUDGED, _answers(agreement=math.nan), OTHER, DIFFERENT, "prediction agreement",
                 id="a-nan-agreement"),
    # Metadata is never explained by an environment; a header's layout may be.
    pytest.param(_files(_same("w"), metadata=True), _answers(), OTHER, DIFFERENT,
                 "no environment explains different metadata", id="metadata-from-elsewhere"),
    pytest.param(_files(_moved("w", 1e-6), metadata=True), _answers(), OTHER, DIFFERENT,
                 "the metadata differs in 1 key", id="metadata-beside-a-nudge"),
    pytest.param(_files(_same("w"), layout=True), None, OTHER, EQUIVALENT,
                 "only the header's layout", id="a-layout-from-elsewhere"),
    pytest.param(_files(_same("w"), layout=True), None, UNKNOWN, DIFFERENT,
                 "the header is written differently", id="a-layout-claiming-nothing"),
    pytest.param(_files(_moved("w", 1e-4), layout=True), _answers(agreement=0.9), OTHER,
                 DIFFERENT, "prediction agreement", id="a-layout-does-not-excuse-behaviour"),
]


@pytest.mark.parametrize(("compared", "behaviour", "env", "verdict", "said"), DECISIONS)
def test_decide(compared: FileComparison, behaviour: Behaviour | None, env: EnvRelation,
                verdict: Verdict, said: str) -> None:
    got, reasons = decide(compared, behaviour, TOLERANCE, env)
    assert got is verdict, reasons
    assert any(said in reason for reason in reasons), reasons


def test_decide_names_the_most_moved_tensor_and_counts_the_rest() -> None:
    compared = _files(_moved("fc.weight", 0.5), _moved("fc.bias", 0.01), _same("conv.weight"))
    _, reasons = decide(compared, _answers(), TOLERANCE, SAME)
    assert reasons[0] == "2 of 3 tensors differ (largest relative L2 0.5 in fc.weight)"


def test_decide_lists_every_failure_not_only_the_first() -> None:
    _, reasons = decide(_files(_moved("w", 0.1)), _answers(agreement=0.5, b=0.5), TOLERANCE,
                        OTHER)
    assert [r.split()[0] for r in reasons[1:]] == ["relative", "prediction", "accuracy"]


@pytest.mark.parametrize(("have", "required", "meets"), [
    (IDENTICAL, IDENTICAL, True), (IDENTICAL, EQUIVALENT, True), (EQUIVALENT, EQUIVALENT, True),
    (EQUIVALENT, IDENTICAL, False), (DIFFERENT, EQUIVALENT, False), (DIFFERENT, DIFFERENT, True),
])
def test_a_verdict_meets_what_require_asks_and_nothing_stricter(
        have: Verdict, required: Verdict, meets: bool) -> None:
    assert have.meets(required) is meets


# --- transcript.spot_count and transcript.choose: what `verify` replays ------------------

@pytest.mark.parametrize(("spot", "segments", "count"), [
    (3, 35, 3),  # a count is a count
    (0, 35, 0),
    (50, 35, 50),  # more than there are: choose takes what is left
    (Fraction(1, 10), 35, 4),  # 3.5, rounded up: a share never rounds down to nothing
    (Fraction(1, 20), 20, 1),
    (Fraction(1, 20), 21, 2),  # 1.05 -> 2
    (Fraction(1, 100), 1, 1),
    (Fraction(0), 35, 0),
    (Fraction(1), 35, 35),
])
def test_spot_count(spot: int | Fraction, segments: int, count: int) -> None:
    assert tr.spot_count(spot, segments) == count


def _segments(count: int) -> list[tr.Segment]:
    points = tuple(tr.Checkpoint(10 * (i + 1), f"c{i}", "sha256:" + "0" * 64, "")
                   for i in range(count))
    return tr.segments(tr.Transcript("sha256:" + "0" * 64, 10, points))


def _updates(count: int, peaks: dict[int, float]) -> dict[int, float]:
    """An update for every segment but the first (whose start is not published)."""
    return {i: 1.0 for i in range(1, count)} | peaks


F, U, R, L = tr.Why.FIRST, tr.Why.LARGEST, tr.Why.RANDOM, tr.Why.LAST
CHOICES: list[Any] = [
    # (segments, updates' peaks, stretches, spot, what is replayed: index -> why)
    pytest.param(1, {}, 3, 3, {0: L}, id="one-segment-is-the-last"),
    pytest.param(2, {}, 3, 0, {0: F, 1: L}, id="two-are-the-first-and-the-last"),
    pytest.param(5, {}, 0, 0, {4: L}, id="no-stretches-no-spot-only-the-last"),
    pytest.param(5, {}, 0, 10, {0: R, 1: R, 2: R, 3: R, 4: L}, id="a-spot-beyond-the-rest"),
    pytest.param(8, {3: 9.0}, 1, 0, {0: F, 3: U, 7: L}, id="one-stretch-its-peak"),
    pytest.param(8, {2: 5.0, 5: 6.0}, 2, 0, {0: F, 2: U, 5: U, 7: L},
                 id="two-stretches-a-peak-each"),
    pytest.param(6, {}, 1, 0, {0: F, 1: U, 5: L}, id="of-equal-updates-the-first"),
    # The last segment is replayed anyway: a huge update there takes no stretch's place.
    pytest.param(6, {5: 99.0, 2: 3.0}, 1, 0, {0: F, 2: U, 5: L}, id="the-last-peak-is-ignored"),
    pytest.param(4, {}, 9, 0, {0: F, 1: U, 2: U, 3: L}, id="more-stretches-than-middles"),
]


@pytest.mark.parametrize(("count", "peaks", "stretches", "spot", "expected"), CHOICES)
def test_choose(count: int, peaks: dict[int, float], stretches: int, spot: int,
                expected: dict[int, tr.Why]) -> None:
    selection = tr.choose(_segments(count), _updates(count, peaks), stretches=stretches,
                          spot=spot, seed=1)
    got = {p.segment.index: p.why for p in selection.picks}
    assert got == expected
    assert [p.segment.index for p in selection.picks] == sorted(got)  # in training order
    assert selection.stretches == sum(w is U for w in got.values())
    assert selection.drawn == sum(w is R for w in got.values())
    assert selection.population == count - sum(w is not R for w in got.values())


@pytest.mark.parametrize("seed", range(5))
def test_choose_draws_with_the_seed_and_only_from_what_is_not_chosen_already(
        seed: int) -> None:
    segments = _segments(35)
    updates = _updates(35, {20: 5.0, 33: 7.0})
    one = tr.choose(segments, updates, stretches=3, spot=3, seed=seed)
    again = tr.choose(segments, updates, stretches=3, spot=3, seed=seed)
    assert one == again  # a verifier's seed reproduces its choice
    drawn = {p.segment.index for p in one.picks if p.why is R}
    fixed = {p.segment.index for p in one.picks if p.why is not R}
    assert len(drawn) == 3 and not drawn & fixed
    assert one.population == 35 - len(fixed) == 30


def test_choose_spreads_its_random_picks_over_every_segment_left() -> None:
    """Over many seeds each of the 30 segments left is drawn: no segment is out of reach
    of the random picks, which are all that catches a forgery spread thin."""
    segments = _segments(35)
    updates = _updates(35, {20: 5.0, 33: 7.0})
    seen: set[int] = set()
    for seed in range(200):
        seen |= {p.segment.index for p in tr.choose(segments, updates, stretches=3, spot=3,
                                                    seed=seed).picks if p.why is R}
    fixed = {p.segment.index for p in tr.choose(segments, updates, stretches=3, spot=0,
                                                seed=0).picks}
    assert seen == set(range(35)) - fixed


# --- verify's segment tolerance -----------------------------------------------------------

@pytest.mark.parametrize(("tolerance", "total", "segment", "allowed"), [
    (Tolerance(weights_rel_l2=1e-3), 345, 345, 1e-3),  # one segment: the whole training
    (Tolerance(weights_rel_l2=1e-3), 400, 100, 5e-4),  # a quarter: half the drift (sqrt)
    (Tolerance(weights_rel_l2=1e-3), 345, 10, 1e-3 * math.sqrt(10 / 345)),
    (Tolerance(weights_rel_l2=4e-2), 100, 1, 4e-3),
    (Tolerance(weights_rel_l2=1e-3, segment_rel_l2=2e-5), 345, 10, 2e-5),  # the recipe's own
    (Tolerance(weights_rel_l2=1e-3, segment_rel_l2=0.0), 345, 10, 0.0),  # 0 is said, not unset
])
def test_segment_tolerance(tolerance: Tolerance, total: int, segment: int,
                           allowed: float) -> None:
    assert segment_tolerance(tolerance, total, segment) == pytest.approx(allowed, rel=1e-12)


# --- environment.fingerprint: equal fingerprints, equal bits ---------------------------------

RECORD: dict[str, Any] = {
    "python": "3.11.7", "implementation": "CPython",
    "packages": {"torch": "2.13.0", "numpy": "2.1.0", "scikit-learn": "1.5.0",
                 "safetensors": "0.4.5", "pillow": "11.0.0", "reweigh": "0.1.0"},
    "blas": {"torch": "mkl 2024.2", "numpy": "scipy-openblas 0.3.27"},
    "cpu_model": "Example CPU @ 2.00GHz", "cpu_arch": "x86_64",
    "isa": ["sse4_1", "sse4_2", "avx", "avx2", "fma", "avx512f"],
    "cpu_capability": "AVX512", "threads": 2,
    "numerics": {"env": {"KMP_DETERMINISTIC_REDUCTION": "1", "MKL_CBWR": None,
                         "ATEN_CPU_CAPABILITY": None},
                 "torch": {"use_deterministic_algorithms": True, "backward_threads": 1,
                           "fill_uninitialized_memory": False}},
    "os": "Linux 6.1.0", "network_isolation": "bubblewrap: loopback only network namespace",
    "isolation": {"sandbox": "bubblewrap", "network": "loopback only"},
}


def _changed(path: str, value: Any) -> dict[str, Any]:
    """RECORD with the value at a /-separated path set (a new key where there was none)."""
    record = copy.deepcopy(RECORD)
    *parents, last = path.split("/")
    here = record
    for key in parents:
        here = here[key]
    here[last] = value
    return record


@pytest.mark.parametrize(("path", "value"), [
    ("python", "3.12.1"),
    ("packages/torch", "2.12.0"),
    ("packages/numpy", "1.26.4"),
    ("blas/torch", "openblas 0.3.28"),
    ("cpu_arch", "aarch64"),
    ("isa", ["sse4_1", "sse4_2", "avx", "avx2", "fma"]),  # a machine without AVX-512
    ("cpu_capability", "AVX2"),
    ("numerics/env/MKL_CBWR", "COMPATIBLE"),
    ("numerics/torch/backward_threads", 2),
])
def test_a_field_that_can_change_the_bits_changes_the_fingerprint(path: str,
                                                                  value: Any) -> None:
    changed = _changed(path, value)
    assert environment.fingerprint(changed) != environment.fingerprint(RECORD)
    assert len(environment.differences(RECORD, changed)) == 1  # named, once


@pytest.mark.parametrize(("path", "value"), [
    ("threads", 8),  # the thread count must not change the weights: that is the promise
    ("os", "Linux 6.8.0"),
    ("implementation", "CPython"),
    ("network_isolation", "none: built unisolated (--sandbox none); an audit hook only"),
    ("isolation", {"sandbox": "none"}),
    ("hostname", "builder-7"),  # a field the record does not even have
])
def test_what_cannot_change_the_bits_leaves_the_fingerprint_alone(path: str,
                                                                  value: Any) -> None:
    changed = _changed(path, value)
    assert environment.fingerprint(changed) == environment.fingerprint(RECORD)
    assert environment.differences(RECORD, changed) == []


def test_the_fingerprint_is_a_digest_of_content_not_of_key_order() -> None:
    reordered = dict(reversed(list(RECORD.items())))
    reordered["packages"] = dict(reversed(list(RECORD["packages"].items())))
    assert environment.fingerprint(reordered) == environment.fingerprint(RECORD)
    value = environment.fingerprint(RECORD)
    assert value.startswith("sha256:") and len(value) == 71
    assert int(value[7:], 16) >= 0 and value == value.lower()


@pytest.mark.parametrize(("record", "problem"), [
    ({}, "python: missing or not a str"),
    ([], "expected an environment record"),
    ({**RECORD, "isa": "avx2"}, "isa: missing or not a list"),
    ({**RECORD, "packages": None}, "packages: missing or not a dict"),
    ({**RECORD, "numerics": {"x": math.nan}}, "not canonical JSON"),
    (RECORD, None),
])
def test_a_claimed_environment_must_be_a_whole_record(record: Any, problem: str | None) -> None:
    found = environment.claim_problem(record)
    assert found == problem if problem is None else problem in (found or "")
