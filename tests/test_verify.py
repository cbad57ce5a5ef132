"""verify: replaying transcript segments catches tampered weights and forged checkpoints."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from reweigh import build, states
from reweigh import transcript as tr
from reweigh.compare import value_drift
from reweigh.store import Store
from reweigh.weights import read_header

from .conftest import Examples
from .forger import Forgery, forge, publish, rechain
from .helpers import EXAMPLES, run_reweigh, write_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(digits_cnn: tuple[Path, Path]) -> tuple[Path, Path]:
    """digits-cnn, checkpointed every 10 batches: 345 batches, 35 segments (the session's
    build; tests tamper with copies of it)."""
    return digits_cnn


def _verify(store: Path, *args: object) -> tuple[int, dict]:
    result = run_reweigh("verify", *args, "--json", store=store)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_an_honest_transcript_holds_when_every_segment_is_replayed(
        built: tuple[Path, Path]) -> None:
    store, item = built
    code, report = _verify(store, item, "--transcript", item / "transcript.json", "--spot", "34")
    assert code == 0 and report["holds"] and report["environment"] == "same"
    assert [(s["start_step"], s["stop_step"]) for s in report["segments"]] == [
        *((k, k + 10) for k in range(0, 340, 10)), (340, 345)]
    assert report["compute_fraction"] == pytest.approx(1.0)


def test_spot_may_be_a_share_of_the_segments(built: tuple[Path, Path]) -> None:
    store, item = built
    code, report = _verify(store, item, "--transcript", item / "transcript.json", "--spot",
                           "10%", "--seed", "5")
    whys = [s["why"] for s in report["segments"]]
    assert code == 0 and whys.count("random") == 4  # ceil(10% of 35)
    assert whys.count("largest") == 3 and whys[0] == "first" and whys[-1] == "last"
    for bad in ("120%", "ten%", "-1"):
        result = run_reweigh("verify", item, "--transcript", item / "transcript.json",
                             "--spot", bad, store=store)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        assert "--spot" in result.stderr


def _verify_fine_tuned(store: Path, folder: Path, *extra: object) -> tuple[int, dict]:
    """Nudge the published final weights (as a fine-tune would), then verify the last
    segment only."""
    tensors = load_file(str(folder / "weights.safetensors"))
    tensors["fc2.bias"] = tensors["fc2.bias"] + np.float32(0.01)
    save_file(tensors, str(folder / "weights.safetensors"))
    return _verify(store, folder / "weights.safetensors", "--recipe", EXAMPLES / "digits-cnn",
                   "--transcript", folder / "transcript.json", "--spot", "0", "--largest", "0",
                   *extra)


def test_weights_fine_tuned_after_training_fail_the_last_segment(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = built
    code, report = _verify_fine_tuned(store, publish(item, tmp_path / "published"))
    assert code == 1 and not report["holds"]
    (last,) = report["segments"]
    assert last["stop_step"] == 345 and not last["holds"]
    assert last["note"].startswith("the final weights are not what training produces: 1 of 8 "
                                   "tensors differ, most fc2.bias (relative L2 ")
    assert last["difference"]["largest"] == "fc2.bias"
    assert last["difference"]["max_abs"] == pytest.approx(0.01, rel=1e-3)


def test_a_replaced_middle_checkpoint_is_caught_when_its_segments_are_replayed(
        built: tuple[Path, Path], examples: Examples, tmp_path: Path) -> None:
    store, item = built
    folder = publish(item, tmp_path / "published")
    middle = folder / "checkpoints" / "step-000000170.safetensors"
    other = publish(examples.built("digits-cnn-seed-4242").item, tmp_path / "other")
    shutil.copyfile(other / "checkpoints" / "step-000000170.safetensors", middle)
    rechain(folder)
    code, report = _verify(store, folder / "weights.safetensors", "--recipe",
                           EXAMPLES / "digits-cnn", "--transcript", folder / "transcript.json",
                           "--spot", "34")  # every segment: then the forgery is always caught
    assert code == 1 and report["chain_ok"]
    failed = [s for s in report["segments"] if not s["holds"]]
    assert [(s["start_step"], s["stop_step"]) for s in failed] == [(160, 170), (170, 180)]
    assert len(report["segments"]) == 35
    for segment in failed:  # another seed's state: every tensor differs, and says by how much
        difference = segment["difference"]
        assert difference["tensors"] >= 8 and difference["largest"].startswith("state.")
        assert 0 < difference["rel_l2"] < math.inf and difference["largest"] in segment["note"]


def test_a_transcript_that_does_not_chain_fails_before_any_replay(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = built
    folder = publish(item, tmp_path / "published")
    data = json.loads((folder / "transcript.json").read_text())
    data["checkpoints"][0]["step"] = 4  # the link no longer follows
    (folder / "transcript.json").write_text(json.dumps(data))
    checkpoint = folder / "checkpoints" / "step-000000020.safetensors"
    raw = bytearray(checkpoint.read_bytes())
    raw[-1] ^= 0x01
    checkpoint.write_bytes(bytes(raw))
    code, report = _verify(store, folder / "weights.safetensors", "--recipe",
                           EXAMPLES / "digits-cnn", "--transcript", folder / "transcript.json",
                           "--spot", "2")
    assert code == 1 and not report["chain_ok"] and report["segments"] == []
    assert any("step 20" in p and "recorded digest" in p for p in report["problems"])
    assert any("step 4" in p and "chain link" in p for p in report["problems"])


def test_a_transcript_of_another_recipe_is_refused(built: tuple[Path, Path],
                                                   examples: Examples) -> None:
    _, item = built
    minimal = examples.built("minimal")  # verify refuses before it runs or records anything
    other, other_store = minimal.item, minimal.store
    result = run_reweigh("verify", other, "--transcript", item / "transcript.json", "--spot",
                         "1", store=other_store)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "transcript.json: derivation: the transcript is of" in line


def test_on_another_platform_segments_may_drift_within_the_recipes_tolerance(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    """A transcript recorded on the recipe's platform (x86-64-v3), replayed on x86-64-v2
    (`--platform`: other kernels, other bits): each segment is judged by its drift, and
    fine-tuned final weights or a forged checkpoint still fail."""
    store, item = built
    folder = publish(item, tmp_path / "published")
    on_v2 = ("--platform", "x86-64-v2")
    code, report = _verify(store, folder / "weights.safetensors", "--recipe",
                           EXAMPLES / "digits-cnn", "--transcript", folder / "transcript.json",
                           "--spot", "3", "--seed", "7", *on_v2)
    assert code == 0 and report["environment"] == "other", report
    assert any("x86-64-v2" in reason for reason in report["environment_reasons"])
    assert 0 < report["tolerance"] <= 1e-3
    drifts = [s["drift"] for s in report["segments"] if s["drift"] is not None]
    assert drifts and all(d <= report["tolerance"] for d in drifts)
    assert max(drifts) > 0  # the two platforms really compute other bits
    code, report = _verify_fine_tuned(store, folder, *on_v2)
    assert code == 1 and not report["segments"][-1]["holds"]
    # The slack across platforms does not hide a forged checkpoint: one whose floats
    # were all moved by 1% (10 times the allowed drift, far less than another seed's).
    forged = publish(item, tmp_path / "forged")
    _scale_floats(forged / "checkpoints" / "step-000000170.safetensors", 1.01)
    rechain(forged)
    code, report = _verify(store, forged / "weights.safetensors", "--recipe",
                           EXAMPLES / "digits-cnn", "--transcript", forged / "transcript.json",
                           "--spot", "34", *on_v2)
    assert code == 1 and report["chain_ok"] and report["environment"] == "other"
    failed = [(s["start_step"], s["stop_step"]) for s in report["segments"] if not s["holds"]]
    assert failed == [(160, 170), (170, 180)]


def _scale_floats(checkpoint: Path, factor: float) -> None:
    with safe_open(str(checkpoint), "numpy") as f:
        metadata = f.metadata()
    tensors = load_file(str(checkpoint))
    save_file({name: np.asarray(t * t.dtype.type(factor)) if t.dtype.kind == "f" else t
               for name, t in tensors.items()}, str(checkpoint), metadata=metadata)


def _item_of(store: Path) -> Path:
    return Store(store).resolve("digits-cnn").path


def test_value_drift_allows_floats_to_move_and_nothing_else() -> None:
    state = {"dict": [["step", {"value": 40}], ["running", {"value": 2.0}]]}
    moved = {"dict": [["step", {"value": 40}], ["running", {"value": 2.0 + 2e-6}]]}
    assert value_drift(state, state) == 0.0
    assert value_drift(state, moved) == pytest.approx(1e-6, rel=1e-3)
    other_step = {"dict": [["step", {"value": 41}], ["running", {"value": 2.0}]]}
    assert value_drift(state, other_step) == math.inf
    assert value_drift(state, {"dict": [["step", {"value": 40}]]}) == math.inf
    assert value_drift({"value": 1}, {"value": 1.0}) == math.inf  # an int is not a float
    assert value_drift({"value": float("nan")}, {"value": 1.0}) == math.inf
    assert value_drift({"value": 1.0}, {"value": float("nan")}) == math.inf


def test_a_copy_of_an_items_folder_is_not_taken_for_the_item(built: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    """A published folder that happens to carry a store item's name, with other weights
    in it, must not be verified as the local item (which would hold)."""
    store, item = built
    copy = tmp_path / item.name
    shutil.copytree(item, copy)
    result = run_reweigh("verify", copy, "--transcript", copy / "transcript.json", "--spot", "0",
                         store=store)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "a folder outside the store" in line and str(copy) in line


@pytest.mark.parametrize(("skeleton", "reason"), [
    ('{"evil": [1, 2]}', "unknown node kind 'evil'"),
    ('{"dict": [["model", {"tensor": "t99"}]]}', "state.model: no tensor 't99' in the file"),
    ('{"list": [' * 80 + "]}" * 80, "nested deeper than 64 levels"),
    ("{not json", "reweigh.state: not valid JSON"),
])
def test_a_hostile_start_checkpoint_is_refused_before_any_replay_naming_it(
        built: tuple[Path, Path], tmp_path: Path, skeleton: str, reason: str) -> None:
    store, item = built
    folder = publish(item, tmp_path / "published")
    start = folder / "checkpoints" / "step-000000340.safetensors"
    save_file({"t0": np.zeros(2, dtype=np.float32)}, str(start),
              metadata={"reweigh.state": skeleton})
    rechain(folder)
    result = run_reweigh("verify", folder / "weights.safetensors", "--recipe",
                         EXAMPLES / "digits-cnn", "--transcript", folder / "transcript.json",
                         "--spot", "0", store=store)  # the last segment starts at step 340
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(start) in lines[0] and reason in lines[0]


def test_malformed_weights_are_refused_before_any_replay(built: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    """An offset written `-0`: safetensors' loader refuses the file, so verify does too
    (exit 2, one line), rather than replay and say `fails`."""
    store, item = built
    folder = publish(item, tmp_path / "published")
    weights = folder / "weights.safetensors"
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    text = data[8:8 + length].replace(b'"data_offsets":[0,', b'"data_offsets":[-0,', 1)
    weights.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length:])
    result = run_reweigh("verify", weights, "--recipe", EXAMPLES / "digits-cnn", "--transcript",
                         folder / "transcript.json", "--spot", "0", store=store)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert str(weights) in lines[0] and "data_offsets" in lines[0]


def test_a_checkpoint_that_leads_out_of_the_folder_breaks_the_chain(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = built
    folder = publish(item, tmp_path / "published")
    outside = tmp_path / "elsewhere.safetensors"
    middle = folder / "checkpoints" / "step-000000170.safetensors"
    shutil.move(middle, outside)
    middle.symlink_to(outside)  # same bytes, same digest, but outside the folder
    code, report = _verify(store, folder / "weights.safetensors", "--recipe",
                           EXAMPLES / "digits-cnn", "--transcript", folder / "transcript.json",
                           "--spot", "1")
    assert code == 1 and not report["chain_ok"]
    assert any("step 170" in p and "leads out of the transcript's folder" in p
               for p in report["problems"])


def test_a_made_up_environment_earns_no_slack(built: tuple[Path, Path], tmp_path: Path) -> None:
    """An empty or invented environment record must not count as "another environment",
    which would let each segment drift."""
    store, item = built
    folder = publish(item, tmp_path / "published")
    data = json.loads((folder / "transcript.json").read_text())
    for bad, field in (({}, "python"), ({**data["environment"], "isa": 7}, "isa")):
        data["environment"] = bad
        (folder / "transcript.json").write_text(json.dumps(data))
        result = run_reweigh("verify", item, "--transcript", folder / "transcript.json",
                             "--spot", "0", store=store)
        assert result.returncode == 2
        assert f"transcript.json: environment: {field}: missing or not a" in result.stderr


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a": ' + "9" * 5000 + "}"])
def test_a_transcript_json_cannot_hold_exits_2_with_one_line(built: tuple[Path, Path],
                                                              tmp_path: Path, text: str) -> None:
    store, item = built
    transcript = tmp_path / "transcript.json"
    transcript.write_text(text)
    result = run_reweigh("verify", item, "--transcript", transcript, "--spot", "0", store=store)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert f"{transcript}: cannot read the transcript" in lines[0]


WHOLE_FLOAT_TRAIN = """
import numpy as np

def train(ctx):
    alpha = ctx.params["alpha"]
    assert isinstance(alpha, float), f"alpha arrived as {type(alpha).__name__}"
    state = ctx.resume("numpy") or {"w": np.zeros(2, dtype=np.float32), "step": 0}
    for step in range(state["step"] + 1, 5):
        state = {"w": state["w"] + np.float32(alpha), "step": step}
        ctx.checkpoint(step, state, final=step == 4)
    ctx.save_weights({"w": state["w"]})
"""


@pytest.fixture(scope="module")
def whole_float(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny recipe whose parameter is a whole float (JCS writes 1.0 as 1)."""
    root = tmp_path_factory.mktemp("whole-float")
    recipe = write_recipe(root / "r", WHOLE_FLOAT_TRAIN, params="alpha = 1.0",
                          build="checkpoint_every = 1")
    return root / "store", build(recipe, store=Store(root / "store"), threads=1).path


def test_a_replay_gets_a_whole_float_parameter_as_the_build_did(
        whole_float: tuple[Path, Path]) -> None:
    store, item = whole_float
    code, report = _verify(store, item, "--transcript", item / "transcript.json", "--spot", "3")
    assert code == 0 and report["holds"], report


def test_a_transcript_step_beyond_2_to_the_53_exits_2_with_one_line(
        whole_float: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = whole_float
    data = json.loads((item / "transcript.json").read_text())
    data["checkpoints"][-1]["step"] = 2**53
    transcript = tmp_path / "transcript.json"
    transcript.write_text(json.dumps(data))
    result = run_reweigh("verify", item, "--transcript", transcript, "--spot", "0", store=store)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "checkpoints: a step beyond 2**53 - 1" in lines[0]


# --- what a cheap forger cannot beat: the largest updates, the runtime, the binding -------

@pytest.fixture(scope="module")
def forged(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Forgery:
    """The adaptive forger's digits-cnn: a trigger fine-tuned into the second-to-last
    checkpoint, the last segment replayed honestly from it, the chain rewritten."""
    store, item = built
    return forge(store, item, tmp_path_factory.mktemp("forged") / "published")


def _verify_forgery(store: Path, forgery: Forgery, *args: object) -> tuple[int, dict]:
    folder = forgery.folder
    return _verify(store, folder / "weights.safetensors", "--recipe", EXAMPLES / "digits-cnn",
                   "--transcript", folder / "transcript.json", "--threads", "1", *args)


def test_the_forgery_works_and_random_picks_alone_let_it_pass(
        built: tuple[Path, Path], forged: Forgery) -> None:
    """What verify did before the largest updates: K = 3 random segments and the last. The
    backdoor works, the chain holds, the last segment replays bit for bit, and a seed whose
    picks miss the one forged segment (31 seeds in 34 do) passes the forgery."""
    store, _ = built
    assert forged.trigger_success > 0.9 and forged.clean_accuracy > 0.95, forged
    segments = tr.segments(tr.parse(json.loads((forged.folder / "transcript.json").read_text()),
                                    "transcript"))
    missed = next(seed for seed in range(100) if forged.forged_segment not in {
        p.segment.index for p in tr.choose(segments, {}, stretches=0, spot=3, seed=seed).picks})
    code, report = _verify_forgery(store, forged, "--spot", "3", "--largest", "0", "--seed",
                                   missed)
    assert code == 0 and report["chain_ok"] and report["segments"][-1]["why"] == "last"
    assert report["catch"]["not_largest"]["1"] == pytest.approx(3 / 34)


def test_the_adaptive_forger_is_caught_by_the_largest_update_for_every_seed(
        built: tuple[Path, Path], forged: Forgery) -> None:
    """The forged segment makes its stretch's largest update, so verify replays it whatever
    its seed draws: the picks for 100 seeds, from the updates verify measures on the
    published checkpoints; and one verify, whose picks are those, fails it alone."""
    store, _ = built
    folder = forged.folder
    segments = tr.segments(tr.parse(json.loads((folder / "transcript.json").read_text()),
                                    "transcript"))
    checkpoints = sorted((folder / "checkpoints").glob("step-*.safetensors"))
    assert len(checkpoints) == len(segments)  # all kept: checkpoint i ends segment i
    updates = dict(enumerate(states.updates(checkpoints,
                                            read_header(folder / "weights.safetensors")),
                             start=1))

    def picks(seed: int) -> list[tuple[int, str]]:
        chosen = tr.choose(segments, updates, stretches=3, spot=3, seed=seed).picks
        return [(p.segment.index, p.why.value) for p in chosen]

    for seed in range(100):
        assert (forged.forged_segment, "largest") in picks(seed), seed
    code, report = _verify_forgery(store, forged, "--spot", "3", "--seed", 7)
    assert [(s["index"], s["why"]) for s in report["segments"]] == picks(7)
    assert code == 1 and report["chain_ok"]
    failed = [s for s in report["segments"] if not s["holds"]]
    assert [(s["index"], s["why"]) for s in failed] == [(forged.forged_segment, "largest")]
    (segment,) = failed  # the planted weights differ from what the replay made, and by how much
    assert segment["difference"]["largest"].startswith("state.model.")
    assert segment["difference"]["rel_l2"] > 0.1 and "state.model." in segment["note"]
    assert report["sampling"] == {"stretches": 3, "random": 3, "drawn_from": 30}
    assert report["catch"]["not_largest"] == {
        str(m): pytest.approx(1 - math.comb(30 - m, 3) / math.comb(30, 3)) for m in (1, 2, 5, 10)}


def test_verify_says_in_words_why_each_segment_was_replayed_and_the_odds(
        built: tuple[Path, Path], forged: Forgery) -> None:
    store, _ = built
    folder = forged.folder
    result = run_reweigh("verify", folder / "weights.safetensors", "--recipe",
                         EXAMPLES / "digits-cnn", "--transcript", folder / "transcript.json",
                         "--spot", "3", "--seed", "0", "--threads", "1", store=store)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    (forged_line,) = [line for line in lines if "FAILS" in line]
    assert "steps    330..340" in forged_line and "largest  update 2." in forged_line
    assert "tensors differ, most state.model." in forged_line
    assert ("the last; the first and the largest update in each of 3 stretches; 3 drawn at "
            "random from the 30 others") in result.stdout
    assert ("a forgery that makes none is caught only by the random picks: 1 segment 10.0%, "
            "2 segments 19.3%, 5 segments 43.3%, 10 segments 71.9%") in result.stdout


@pytest.mark.parametrize(("updates", "stretches", "expected"), [
    ([1, 5, 2, 3, 9, 1, 0.5, 0.7], 3, [1, 4, 5]),
    ([1, 2], 5, [0, 1]),  # more stretches than updates: each is its own
    ([], 3, []),
    ([3, 1], 0, []),
    ([2, 2, 1], 1, [0]),  # the first of equals
    ([1, math.inf, 2], 1, [1]),  # a weight tensor that appeared: the largest update
])
def test_largest_updates_takes_the_largest_of_each_stretch(
        updates: list[float], stretches: int, expected: list[int]) -> None:
    assert tr.largest_updates(updates, stretches) == expected


@pytest.mark.parametrize(("population", "drawn", "forged_segments", "expected"), [
    (30, 3, 1, 0.1),
    (30, 3, 2, 1 - (28 * 27 * 26) / (30 * 29 * 28)),
    (34, 3, 1, 3 / 34),
    (30, 0, 1, 0.0),  # nothing drawn at random: only the largest updates catch anything
    (30, 30, 1, 1.0),
    (30, 3, 0, 0.0),
    (5, 2, 6, 1.0),  # more forged segments than drawn from: one is always replayed
])
def test_the_odds_of_catching_a_forgery_are_hypergeometric(
        population: int, drawn: int, forged_segments: int, expected: float) -> None:
    assert tr.catch_probability(population, drawn, forged_segments) == pytest.approx(expected)


def test_choose_replays_the_first_the_last_the_largest_and_draws_from_the_rest() -> None:
    points = tuple(tr.Checkpoint(10 * (i + 1), f"c{i}", "sha256:" + "0" * 64, "")
                   for i in range(35))
    segments = tr.segments(tr.Transcript("sha256:" + "0" * 64, 10, points))
    updates = {i: 1.0 / i for i in range(1, 35)} | {20: 5.0, 33: 7.0}
    selection = tr.choose(segments, updates, stretches=3, spot=3, seed=1)
    why = {p.segment.index: p.why for p in selection.picks}
    assert why[0] is tr.Why.FIRST and why[34] is tr.Why.LAST
    assert sorted(i for i, w in why.items() if w is tr.Why.LARGEST) == [1, 20, 33]
    assert sum(w is tr.Why.RANDOM for w in why.values()) == 3 == selection.drawn
    assert selection.population == 30 and list(why) == sorted(why)


NOT_RESUMING_TRAIN = """
import numpy as np

def train(ctx):
    RESUME
    w = np.zeros(2, dtype=np.float32)
    for step in range(1, 5):
        w = w + np.float32(1)
        ctx.checkpoint(step, {"w": w, "step": step}, final=step == 4)
    ctx.save_weights({"w": w})
"""


@pytest.mark.parametrize(("resume", "message"), [
    ("pass", "reached step 1 without calling ctx.resume(): a replayed segment must start "
     "from the state of its first checkpoint"),
    ("ctx.resume()", "recorded a checkpoint at step 1, not at the segment's end"),
])
def test_a_train_that_does_not_continue_from_the_checkpoint_fails_its_replay(
        tmp_path: Path, resume: str, message: str) -> None:
    """Replaying from step 0 would reproduce the checkpoint, having spent the whole training
    and claiming the share of one segment."""
    recipe = write_recipe(tmp_path / "r", NOT_RESUMING_TRAIN.replace("RESUME", resume),
                          build="checkpoint_every = 1")
    store = tmp_path / "store"
    item = build(recipe, store=Store(store), threads=1).path
    result = run_reweigh("verify", item, "--transcript", item / "transcript.json", "--spot", "0",
                         store=store)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_a_transcript_is_refused_for_a_recipe_with_another_hyper_parameter_or_seed(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    """The transcript names its derivation: the learning rate, and the seed that orders the
    data, are in it."""
    store, item = built
    folder = publish(item, tmp_path / "published")
    for old, new in (("lr = 0.001", "lr = 0.002"), ("seed = 20231", "seed = 99")):
        recipe = tmp_path / new.split()[0]
        shutil.copytree(EXAMPLES / "digits-cnn", recipe)
        toml = recipe / "recipe.toml"
        toml.write_text(toml.read_text().replace(old, new))
        result = run_reweigh("verify", folder / "weights.safetensors", "--recipe", recipe,
                             "--transcript", folder / "transcript.json", "--spot", "0",
                             store=store)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "transcript.json: derivation: the transcript is of sha256:" in lines[0]


def _drop_checkpoint_170(data: dict) -> None:
    del data["checkpoints"][16]


def _checkpoint_every_5(data: dict) -> None:
    data["checkpoint_every"] = 5


@pytest.mark.parametrize(("tamper", "reason"), [
    (_drop_checkpoint_170, "checkpoints: steps must be every 10 steps, then the final one"),
    (_checkpoint_every_5, "checkpoint_every: the transcript says 5, the derivation 10"),
])
def test_a_transcript_whose_segments_are_not_the_derivations_is_refused(
        built: tuple[Path, Path], tmp_path: Path, tamper: Any, reason: str) -> None:
    """Dropping a checkpoint (and rechaining) would make one segment of 20 steps whose
    update is larger than its neighbours' for honest reasons, a place to hide a forgery."""
    store, item = built
    folder = publish(item, tmp_path / "published")
    data = json.loads((folder / "transcript.json").read_text())
    tamper(data)
    (folder / "transcript.json").write_text(json.dumps(data))
    rechain(folder)
    result = run_reweigh("verify", item, "--transcript", folder / "transcript.json", "--spot",
                         "34", store=store)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"transcript.json: {reason}" in lines[0]


def _comment(data: dict) -> None:
    data["comment"] = "looks fine"


def _entry_field(data: dict) -> None:
    data["checkpoints"][3]["note"] = 1


def _boolean_step(data: dict) -> None:
    data["checkpoints"][0]["step"] = True


def _every_as_text(data: dict) -> None:
    data["checkpoint_every"] = "10"


@pytest.mark.parametrize(("tamper", "reason"), [
    (_comment, "comment: not a field of a reweigh.transcript/1 transcript"),
    (_entry_field, "checkpoints[3].note: not a field of a checkpoint entry"),
    (_boolean_step, "checkpoints[0]: needs step, file, digest and chain"),
    (_every_as_text, "checkpoint_every: expected a count of steps"),
    ("twice", "cannot read the transcript: the key 'derivation' appears twice"),
])
def test_a_malformed_transcript_exits_2_in_one_line_naming_the_field(
        built: tuple[Path, Path], tmp_path: Path, tamper: Any, reason: str) -> None:
    store, item = built
    data = json.loads((item / "transcript.json").read_text())
    transcript = tmp_path / "transcript.json"
    if tamper == "twice":  # two readers could keep different ones
        text = json.dumps(data)
        transcript.write_text(text[:-1] + ', "derivation": "sha256:' + "0" * 64 + '"}')
    else:
        tamper(data)
        transcript.write_text(json.dumps(data))
    result = run_reweigh("verify", item, "--transcript", transcript, "--spot", "0", store=store)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"{transcript}: {reason}" in lines[0]


def test_a_malformed_checkpoint_that_no_replay_reads_is_refused_too(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    """Measuring the updates reads every checkpoint, so each must be one."""
    store, item = built
    folder = publish(item, tmp_path / "published")
    middle = folder / "checkpoints" / "step-000000100.safetensors"
    save_file({"t0": np.zeros(2, dtype=np.float32)}, str(middle),
              metadata={"reweigh.state": '{"evil": [1]}'})
    rechain(folder)
    result = run_reweigh("verify", folder / "weights.safetensors", "--recipe",
                         EXAMPLES / "digits-cnn", "--transcript", folder / "transcript.json",
                         "--spot", "0", "--largest", "0", store=store)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert str(middle) in lines[0] and "unknown node kind 'evil'" in lines[0]


def test_published_weights_with_a_hostile_state_skeleton_fail_saying_so(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    """The final weights are compared place by place when they carry a state skeleton; a
    hostile one is named, not a crash."""
    store, item = built
    folder = publish(item, tmp_path / "published")
    weights = folder / "weights.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"reweigh.state": "[1]"})
    code, report = _verify(store, weights, "--recipe", EXAMPLES / "digits-cnn", "--transcript",
                           folder / "transcript.json", "--spot", "0", "--largest", "0")
    (last,) = report["segments"]
    assert code == 1 and not last["holds"]
    assert last["note"] == ("the final weights are not what training produces: the published "
                            f"file cannot be compared: {weights}: reweigh.state: state: not a "
                            "node (an object with one key)")
