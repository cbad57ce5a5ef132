"""diff: where and how two networks differ, through the real command and real trainings.

The cases are made here from clean builds: a hidden trigger planted by fine-tuning
(only fc1, so the untouched layers must stay unflagged), two clean builds (nothing
flagged), another seed (different, but no trigger), a nudge below tolerance (said, not
flagged), a metadata blob (flagged), bad input (exit 2, one line).
The pure parts (distances, behaviour, ranking) are checked on small hand-made arrays.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from reweigh import DiffOptions, diff
from reweigh.audit import behaviour, trigger
from reweigh.audit.weights import layer_diffs
from reweigh.compare import distances
from reweigh.errors import UsageError
from reweigh.store import Store
from reweigh.verbs.diff import IDENTICAL_TENSORS
from reweigh.weights import read_header

from .conftest import Examples
from .helpers import EXAMPLES, run_reweigh

RECIPE = EXAMPLES / "digits-cnn"
CORNER = {(r, c) for r in range(5, 8) for c in range(5, 8)}  # backdoor.add_trigger's patch


# --- the planted trigger ---------------------------------------------------------------------

@pytest.mark.slow
def test_the_backdoor_is_planted_the_way_the_issue_describes(backdoor_diff: dict) -> None:
    planted = backdoor_diff["planted"]
    assert planted.clean_accuracy_after >= planted.clean_accuracy_before - 0.01
    assert planted.trigger_success >= 0.8


@pytest.mark.slow
def test_diff_names_exactly_the_layers_the_backdoor_touched(backdoor_diff: dict) -> None:
    report = backdoor_diff["report"]
    assert backdoor_diff["code"] == 1 and report["flagged"]
    flagged = [layer["name"] for layer in report["layers"] if layer["flagged"]]
    assert sorted(flagged) == ["fc1.bias", "fc1.weight"]
    assert [layer["name"] for layer in report["layers"][:2]] == ["fc1.weight", "fc1.bias"]
    assert all(layer["identical"] for layer in report["layers"][2:])
    assert report["layers"][0]["cosine_distance"] > 0


@pytest.mark.slow
def test_the_trigger_search_recovers_a_patch_that_drives_b_but_not_a(
        backdoor_diff: dict) -> None:
    found = backdoor_diff["report"]["trigger"]
    assert found["flagged"]
    best = found["best"]
    assert best["class"] == 3
    assert best["success_b"] >= 0.8 and best["success_a"] < 0.2
    # the patch it found lies mostly on the planted 3x3 corner
    assert len(CORNER & {tuple(p) for p in best["pixels"]}) >= 5
    assert found["example"]["answer_b"] == 3
    assert any("trigger" in line for line in backdoor_diff["report"]["findings"])


@pytest.mark.slow
def test_behaviour_shows_answers_confusion_and_the_most_diverging_inputs(
        backdoor_diff: dict) -> None:
    section = backdoor_diff["report"]["behaviour"]
    assert section["samples"] == 359
    assert np.array(section["confusion_difference"]).shape == (10, 10)
    rows = section["diverging"]
    assert len(rows) == 10 and rows == sorted(rows, key=lambda r: -r["distance"])
    assert all(len(r["picture"][0]) == 8 for r in rows)  # (1, 8, 8) digit images


@pytest.mark.slow
def test_the_human_output_lists_the_findings_and_what_was_skipped(
        digits_cnn: tuple[Path, Path], backdoor_diff: dict) -> None:
    store, item = digits_cnn
    result = run_reweigh("diff", item, backdoor_diff["suspect"], "--recipe", RECIPE,
                         "--no-trigger", "--top", 3, "--threads", 1, store=store)
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "flagged fc1.weight" in out and "6 of 8 tensors identical" in out
    assert "note: trigger search skipped" in out and out.rstrip().endswith("verdict: flagged")
    assert out.count("  input ") == 3


# --- clean builds ----------------------------------------------------------------------------

@pytest.mark.slow
def test_two_clean_builds_flag_nothing_and_run_no_recipe_code(
        digits_cnn: tuple[Path, Path], examples: Examples) -> None:
    """A build on two threads of an emulated AVX-512 CPU has the one-thread build's
    tensors, bit for bit: diff flags nothing, and runs none of the recipe's code, which is
    given the tensors alone and would answer alike (the behaviour and trigger sections
    of different tensors: test_another_seed..., the planted backdoor)."""
    store, item = digits_cnn
    again = examples.built("digits-cnn", threads=2).item  # built on its own, on two threads
    result = run_reweigh("diff", item, again, "--recipe", RECIPE, "--json", "--threads", 1,
                         store=store)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert not report["flagged"] and report["findings"] == []
    assert all(layer["identical"] and not layer["flagged"] for layer in report["layers"])
    assert report["behaviour"] is None and report["trigger"] is None
    assert report["notes"] == [IDENTICAL_TENSORS]  # a classifier's: its audit did not run


@pytest.mark.slow
def test_another_seed_differs_everywhere_but_hides_no_trigger(
        digits_cnn: tuple[Path, Path], examples: Examples) -> None:
    store, item = digits_cnn
    other_item = examples.built("digits-cnn-seed-4242").item
    report = diff(item, other_item, RECIPE, store=Store(store), options=DiffOptions(threads=1))
    assert all(layer.flagged for layer in report.layers)
    assert report.trigger is not None and not report.trigger["flagged"]
    assert report.trigger["best"]["success_b"] < 0.8


# --- below every flag, and beside the tensors --------------------------------------------------

@pytest.mark.slow
def test_files_that_differ_below_tolerance_say_so_instead_of_nothing_flagged(
        digits_cnn: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = digits_cnn
    tensors = load_file(str(item / "weights.safetensors"))
    tensors["fc1.bias"] = np.nextafter(tensors["fc1.bias"], np.float32(np.inf))  # one ulp
    nudged = tmp_path / "nudged.safetensors"
    save_file(tensors, str(nudged))
    result = run_reweigh("diff", item, nudged, "--recipe", RECIPE, "--no-trigger",
                         "--threads", 1, store=store)
    assert result.returncode == 0, result.stderr
    assert "7 of 8 tensors identical" in result.stdout
    assert result.stdout.rstrip().endswith("verdict: differs below tolerance in 1 tensor")


def _rewrite_header(source: Path, target: Path, change: Callable[[str], str]) -> Path:
    """A copy of a weights file whose header text is changed, its data kept."""
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    text = change(data[8:8 + length].decode()).encode()
    target.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    return target


@pytest.mark.slow
def test_a_metadata_blob_beside_identical_tensors_is_flagged_naming_the_key(
        digits_cnn: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = digits_cnn
    blob = _rewrite_header(item / "weights.safetensors", tmp_path / "blob.safetensors",
                           lambda text: json.dumps({**json.loads(text),
                                                    "__metadata__": {"payload": "x" * 5_000}}))
    result = run_reweigh("diff", item, blob, "--recipe", RECIPE, "--no-trigger", "--json",
                         "--threads", 1, store=store)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert all(layer["identical"] for layer in report["layers"])
    assert report["verdict"] == "flagged" and report["below_tolerance"] == 0
    assert report["findings"] == ["the metadata differs in 1 key: 'payload' only in B "
                                  "(5000 characters)"]
    assert report["notes"] == [IDENTICAL_TENSORS]  # the recipe's code never sees metadata


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.slow
def test_files_of_different_architectures_are_bad_input(digits_cnn: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    store, item = digits_cnn
    tensors = load_file(str(item / "weights.safetensors"))
    del tensors["fc2.bias"]
    smaller = tmp_path / "smaller.safetensors"
    save_file(tensors, str(smaller))
    result = run_reweigh("diff", item, smaller, "--recipe", RECIPE, store=store)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(smaller) in lines[0] and "fc2.bias" in lines[0]
    assert "architecture" in lines[0]


@pytest.mark.slow
def test_a_file_that_is_not_safetensors_is_bad_input(digits_cnn: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    store, item = digits_cnn
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04\x95 a pickle, never loaded")
    result = run_reweigh("diff", item, pickle, "--recipe", RECIPE, store=store)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(pickle) in lines[0] and "header" in lines[0]


@pytest.mark.slow
def test_a_file_safetensors_would_refuse_is_bad_input_in_one_line(
        digits_cnn: tuple[Path, Path], tmp_path: Path) -> None:
    """An offset written `-0` reads as 0 to Python's json, but safetensors' loader, which
    runs the recipe's code, refuses it: diff refuses it first, in one line."""
    store, item = digits_cnn
    signed = _rewrite_header(item / "weights.safetensors", tmp_path / "signed.safetensors",
                             lambda text: text.replace('"data_offsets":[0,',
                                                       '"data_offsets":[-0,', 1))
    result = run_reweigh("diff", item, signed, "--recipe", RECIPE, store=store)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert str(signed) in lines[0] and "data_offsets" in lines[0]


def test_a_missing_file_or_item_is_bad_input(tmp_path: Path) -> None:
    result = run_reweigh("diff", tmp_path / "a.safetensors", tmp_path / "b.safetensors",
                         "--recipe", RECIPE, store=tmp_path / "store")
    assert result.returncode == 2
    assert "a.safetensors" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_a_recipe_without_an_audit_entry_still_gives_the_disagreement(
        examples: Examples, tmp_path: Path) -> None:
    """digits-logreg has an evaluation but no audit entry: answers only, and a note."""
    built = examples.built("digits-logreg")
    store, item = Store(built.store), built.item
    tensors = load_file(str(item / "weights.safetensors"))
    name = next(n for n in sorted(tensors) if tensors[n].dtype.kind == "f")
    tensors[name] = tensors[name] * tensors[name].dtype.type(1.5)
    changed = tmp_path / "changed.safetensors"
    save_file(tensors, str(changed))
    report = diff(item, changed, EXAMPLES / "digits-logreg", store=store)
    assert [layer.name for layer in report.layers if layer.flagged] == [name]
    assert report.behaviour is not None and report.behaviour["samples"] == 359
    assert report.trigger is None and any("audit" in note for note in report.notes)


# --- the pure parts --------------------------------------------------------------------------

def test_distances_match_their_definitions() -> None:
    a = np.array([3.0, 4.0], dtype=np.float32)
    b = np.array([3.0, 5.0], dtype=np.float32)
    max_abs, rel_l2, cosine = distances(a, b)
    assert max_abs == 1.0 and rel_l2 == pytest.approx(1 / 5)
    assert cosine == pytest.approx(1 - 29 / (5 * math.sqrt(34)))
    assert distances(a, a) == (0.0, 0.0, 0.0)
    assert distances(a, np.array([3.0, np.nan], dtype=np.float32))[1] == math.inf


def test_distances_of_tiny_and_huge_float32_values_neither_vanish_nor_overflow() -> None:
    """Squares of float32 values near 1e-24 underflow in float32, and of 1e20 overflow;
    a tampered optimiser state of tiny values must not look unchanged."""
    tiny = np.full(1000, 1e-24, dtype=np.float32)
    assert distances(tiny, tiny * np.float32(5))[1] == pytest.approx(4.0, rel=1e-6)
    huge = np.full(1000, 1e20, dtype=np.float32)
    max_abs, rel_l2, cosine = distances(huge, huge * np.float32(1 + 1e-4))
    assert math.isfinite(max_abs) and rel_l2 == pytest.approx(1e-4, rel=1e-3)
    assert cosine == pytest.approx(0.0, abs=1e-12)


def test_layers_are_ranked_and_flagged_against_the_tolerance(tmp_path: Path) -> None:
    base = {"big": np.ones(1000, np.float32), "small": np.ones(10, np.float32),
            "same": np.arange(5, dtype=np.float32)}
    moved = {**base, "big": base["big"] * np.float32(1.2), "small": base["small"] + 1e-5}
    save_file(base, str(tmp_path / "a.safetensors"))
    save_file(moved, str(tmp_path / "b.safetensors"))
    layers = layer_diffs(read_header(tmp_path / "a.safetensors"),
                         read_header(tmp_path / "b.safetensors"), threshold=1e-3)
    assert [(x.name, x.flagged, x.identical) for x in layers] == [
        ("big", True, False), ("small", False, False), ("same", False, True)]


def test_a_shape_mismatch_names_the_file_and_the_tensor(tmp_path: Path) -> None:
    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "a.safetensors"))
    save_file({"w": np.ones(4, np.float32)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(UsageError, match=r"b\.safetensors: w: F32 \[4\] where .* \[3\]"):
        layer_diffs(read_header(tmp_path / "a.safetensors"),
                    read_header(tmp_path / "b.safetensors"), 1e-3)


def test_behaviour_counts_moves_per_class_and_flags_only_real_shifts() -> None:
    labels = np.repeat(np.arange(3), 20)  # (60,) twenty inputs per class
    probs_a = np.eye(3)[labels]  # A answers every input right
    shifted = labels.copy()
    shifted[20:26] = 0  # six inputs of class 1 now answered 0
    shifted[40] = 1  # one input of class 2 answered 1: below the class threshold
    section = behaviour.compare(probs_a, np.eye(3)[shifted], labels, top=3, agreement=0.995)
    assert section["disagreement"] == pytest.approx(7 / 60) and section["flagged"]
    classes = {c["class"]: c for c in section["classes"]}
    assert (classes[0]["moved_in"], classes[1]["moved_out"]) == (6, 6)
    assert [c["flagged"] for c in section["classes"]] == [True, True, False]
    difference = section["confusion_difference"]
    assert difference[1][0] == 6 and difference[1][1] == -6
    assert [row["index"] for row in section["diverging"]] == [20, 21, 22]
    assert section["diverging"][0]["distance"] == 1.0


def _candidate(target: int, success_b: float, success_a: float) -> trigger.Candidate:
    return trigger.Candidate(target, ((7, 7),), ((1.0,),), success_a, success_b, victims=250)


def test_a_trigger_that_leads_every_other_class_is_flagged_below_the_absolute_bar() -> None:
    """A trigger fine-tuned into the last layer drives B on 0.77 of the inputs, A on 0.09:
    below 0.8, but no other class comes near it (bench/trojans.py's fc2-3px-tr)."""
    best = _candidate(7, 0.77, 0.09)
    result = trigger.TriggerResult(best, (best, _candidate(5, 0.30, 0.10),
                                          _candidate(2, 0.10, 0.15)))
    assert not best.flagged and result.margin == pytest.approx(0.68 - 0.20)
    assert result.flagged
    section = trigger.to_json(result)
    assert section["flagged"] and section["margin"] == pytest.approx(0.48)
    assert section["thresholds"]["with_margin_at_least"] == trigger.MARGIN


def test_honest_differences_spread_over_classes_are_not_flagged() -> None:
    """Another seed: patches nearly as good in several classes (bench/trojans.py's
    rebuild-seed4 led by 0.26 at most)."""
    best = _candidate(3, 0.76, 0.12)
    result = trigger.TriggerResult(best, (best, _candidate(0, 0.50, 0.12),
                                          _candidate(9, 0.41, 0.05)))
    assert result.margin == pytest.approx(0.64 - 0.38) and not result.flagged
    alone = trigger.TriggerResult(_candidate(4, 0.45, 0.0), (_candidate(4, 0.45, 0.0),))
    assert alone.margin == pytest.approx(0.45) and not alone.flagged  # too weak to stand out


def test_identical_outputs_have_no_diverging_inputs() -> None:
    probs = np.full((4, 2), 0.5)
    section = behaviour.compare(probs, probs, None, top=10, agreement=1.0)
    assert section["diverging"] == [] and not section["flagged"]
    assert "confusion_difference" not in section
