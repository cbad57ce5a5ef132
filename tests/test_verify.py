"""verify: replaying transcript segments catches tampered weights and forged checkpoints."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from reweigh import build
from reweigh.compare import value_drift
from reweigh.digest import file_digest
from reweigh.store import Store
from reweigh.transcript import chain

from .helpers import EXAMPLES, run_reweigh, write_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """digits-cnn, checkpointed every 10 batches: 345 batches, 35 segments."""
    store = tmp_path_factory.mktemp("verify") / "store"
    return store, build(EXAMPLES / "digits-cnn", store=Store(store)).path


def _verify(store: Path, *args: object) -> tuple[int, dict]:
    result = run_reweigh("verify", *args, "--json", store=store)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _published(item: Path, folder: Path) -> Path:
    """A copy of the item's weights, transcript and checkpoints, as a publisher ships them."""
    shutil.copytree(item, folder, ignore=shutil.ignore_patterns("source"))
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def _rewrite_transcript(folder: Path) -> None:
    """Recompute every digest and chain link, as a careful forger would."""
    path = folder / "transcript.json"
    data = json.loads(path.read_text())
    entries = [{"step": c["step"], "file": c["file"], "digest": file_digest(folder / c["file"])}
               for c in data["checkpoints"]]
    data["checkpoints"] = chain(data["derivation"], entries)
    path.write_text(json.dumps(data))


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
    assert code == 0 and len(report["segments"]) == 4 + 1  # ceil(10% of 35), and the last
    for bad in ("120%", "ten%", "-1"):
        result = run_reweigh("verify", item, "--transcript", item / "transcript.json",
                             "--spot", bad, store=store)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        assert "--spot" in result.stderr


def _verify_fine_tuned(store: Path, folder: Path) -> tuple[int, dict]:
    """Nudge the published final weights (as a fine-tune would), then verify the last
    segment only."""
    tensors = load_file(str(folder / "weights.safetensors"))
    tensors["fc2.bias"] = tensors["fc2.bias"] + np.float32(0.01)
    save_file(tensors, str(folder / "weights.safetensors"))
    return _verify(store, folder / "weights.safetensors", "--recipe", EXAMPLES / "digits-cnn",
                   "--transcript", folder / "transcript.json", "--spot", "0")


def test_weights_fine_tuned_after_training_fail_the_last_segment(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = built
    code, report = _verify_fine_tuned(store, _published(item, tmp_path / "published"))
    assert code == 1 and not report["holds"]
    (last,) = report["segments"]
    assert last["stop_step"] == 345 and not last["holds"]
    assert "final weights" in last["note"]


def test_a_replaced_middle_checkpoint_is_caught_when_its_segments_are_replayed(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = built
    folder = _published(item, tmp_path / "published")
    middle = folder / "checkpoints" / "step-000000170.safetensors"
    other = _published(build(_other_seed(tmp_path), store=Store(tmp_path / "s2")).path,
                       tmp_path / "other")
    shutil.copyfile(other / "checkpoints" / "step-000000170.safetensors", middle)
    _rewrite_transcript(folder)
    code, report = _verify(store, folder / "weights.safetensors", "--recipe",
                           EXAMPLES / "digits-cnn", "--transcript", folder / "transcript.json",
                           "--spot", "34")  # every segment: then the forgery is always caught
    assert code == 1 and report["chain_ok"]
    failed = [(s["start_step"], s["stop_step"]) for s in report["segments"] if not s["holds"]]
    assert failed == [(160, 170), (170, 180)]
    assert len(report["segments"]) == 35


def _other_seed(tmp_path: Path) -> Path:
    recipe = tmp_path / "other-seed"
    shutil.copytree(EXAMPLES / "digits-cnn", recipe)
    text = (recipe / "recipe.toml").read_text()
    (recipe / "recipe.toml").write_text(text.replace("seed = 20231", "seed = 99"))
    return recipe


def test_a_transcript_that_does_not_chain_fails_before_any_replay(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    store, item = built
    folder = _published(item, tmp_path / "published")
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
                                                   tmp_path: Path) -> None:
    store, item = built
    other = build(write_recipe(tmp_path / "r"), store=Store(store)).path
    result = run_reweigh("verify", other, "--transcript", item / "transcript.json", "--spot",
                         "1", store=store)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "transcript.json: derivation: the transcript is of" in line


def test_on_another_environment_segments_may_drift_within_the_recipes_tolerance(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    """A transcript recorded with AVX2 kernels (other bits than this machine's default
    AVX-512 ones), verified here: each segment is judged by its drift, and fine-tuned
    final weights still fail."""
    store, _ = built
    avx2 = run_reweigh("build", EXAMPLES / "digits-cnn", "--json", store=tmp_path / "avx2",
                       env={"ATEN_CPU_CAPABILITY": "avx2"})
    assert avx2.returncode == 0, avx2.stderr
    folder = _published(Path(json.loads(avx2.stdout)["path"]), tmp_path / "published")
    ours = json.loads((_item_of(store) / "transcript.json").read_text())
    theirs = json.loads((folder / "transcript.json").read_text())
    assert theirs["environment"]["cpu_capability"] != ours["environment"]["cpu_capability"]
    code, report = _verify(store, folder / "weights.safetensors", "--recipe",
                           EXAMPLES / "digits-cnn", "--transcript", folder / "transcript.json",
                           "--spot", "3", "--seed", "7")
    assert code == 0 and report["environment"] == "other", report
    assert 0 < report["tolerance"] < 1e-3
    drifts = [s["drift"] for s in report["segments"] if s["drift"] is not None]
    assert all(d <= report["tolerance"] for d in drifts)
    code, report = _verify_fine_tuned(store, folder)
    assert code == 1 and not report["segments"][-1]["holds"]
    # The slack across environments does not hide a forged checkpoint: one whose floats
    # were all moved by 0.1% (50 times the allowed drift, far less than another seed's).
    forged = _published(Path(json.loads(avx2.stdout)["path"]), tmp_path / "forged")
    _scale_floats(forged / "checkpoints" / "step-000000170.safetensors", 1.001)
    _rewrite_transcript(forged)
    code, report = _verify(store, forged / "weights.safetensors", "--recipe",
                           EXAMPLES / "digits-cnn", "--transcript", forged / "transcript.json",
                           "--spot", "34")
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
    folder = _published(item, tmp_path / "published")
    start = folder / "checkpoints" / "step-000000340.safetensors"
    save_file({"t0": np.zeros(2, dtype=np.float32)}, str(start),
              metadata={"reweigh.state": skeleton})
    _rewrite_transcript(folder)
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
    folder = _published(item, tmp_path / "published")
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
    folder = _published(item, tmp_path / "published")
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
    folder = _published(item, tmp_path / "published")
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
    state = ctx.resume() or {"w": np.zeros(2, dtype=np.float32), "step": 0}
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
