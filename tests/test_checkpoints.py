"""Items at the size of real models: files read once, checkpoints kept by content and
compressed, retention, verify on what is kept, and the store's upkeep of chunks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from reweigh import build
from reweigh.digest import file_digest
from reweigh.errors import BuildError, WeightsError
from reweigh.store import Store
from reweigh.store_checkpoints import CHUNK, Chunks, Manifest, decode, encode, pieces
from reweigh.transcript import Segment, Why, choose, replay_plan
from reweigh.verbs.importing import import_weights

from .helpers import EXAMPLES, ROOT, run_json, run_reweigh, write_recipe

# Adam on a linear layer and a frozen one (the frozen tensor is equal in every
# checkpoint: stored once), checkpointed every 2 steps, resumable for replays.
TRAIN = """
import torch

def train(ctx):
    p = ctx.params
    torch.manual_seed(ctx.seed)
    model = torch.nn.Linear(p["width"], p["width"])
    frozen = torch.nn.Linear(p["width"], p["width"]).weight.detach()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    state = ctx.resume_into(model, optimizer)
    for step in range(state.get("step", 0) + 1, p["steps"] + 1):
        g = torch.Generator().manual_seed(step)
        loss = model(torch.randn(8, p["width"], generator=g)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ctx.checkpoint(step, ctx.training_state(model, optimizer, step=step, frozen=frozen),
                       final=step == p["steps"])
    ctx.save_weights(model.state_dict())
"""


def _recipe(folder: Path, *, width: int = 32, steps: int = 12, keep: str = "",
            name: str = "test-recipe") -> Path:
    recipe = write_recipe(folder, TRAIN, params=f"width = {width}\nsteps = {steps}",
                          build=f"checkpoint_every = 2\n{keep}")
    text = (recipe / "recipe.toml").read_text()
    (recipe / "recipe.toml").write_text(text.replace('name = "test-recipe"', f'name = "{name}"'))
    return recipe


def _rchar() -> int:
    """Bytes this process has read through read(2) and friends, page cache included."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


# --- one read per byte ---------------------------------------------------------------------

def test_import_reads_the_file_once(tmp_path: Path) -> None:
    source = tmp_path / "big.safetensors"
    save_file({"w": np.random.default_rng(0).standard_normal(8 << 20).astype(np.float32)},
              str(source))  # 32 MiB
    size = source.stat().st_size
    store = Store(tmp_path / "store")
    before = _rchar()
    report = import_weights(source, name="big", store=store)
    read = _rchar() - before
    assert report.weights_digest == file_digest(source) == report.source_digest
    assert size <= read < 1.1 * size  # was 3 reads: the source, the copy, again at commit
    assert (report.path / "weights.safetensors").read_bytes() == source.read_bytes()


@pytest.mark.slow
def test_a_build_reads_its_weights_and_each_checkpoint_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    recipe = _recipe(tmp_path / "r", width=1024, steps=4)  # 4 MiB weights, 16 MiB a state
    before = _rchar()
    item = build(recipe, store=store, threads=1).path
    read = _rchar() - before
    transcript = json.loads((item / "transcript.json").read_text())
    states = sum(Manifest.read(item / (Path(c["file"]).with_suffix(".json"))).size
                 for c in transcript["checkpoints"])
    written = states + (item / "weights.safetensors").stat().st_size
    assert written > 36 << 20
    assert written <= read < 1.15 * written  # was twice each: the child's hash and commit


# --- kept by content, compressed, shared ----------------------------------------------------

@pytest.mark.slow
def test_equal_tensors_are_stored_once_within_an_item_and_between_items(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    first = build(_recipe(tmp_path / "a", width=256), store=store, threads=1)
    chunks = sorted(store.chunks.all())
    on_disk = sum(store.chunks.path(c).stat().st_size for c in chunks)
    manifests = [Manifest.read(p) for p in sorted((first.path / "checkpoints").glob("*.json"))]
    listed = [c for m in manifests for c, _ in m.chunks]
    assert len(manifests) == 6 and len(set(listed)) < len(listed)  # the frozen layer, once
    raw = sum(m.size for m in manifests)
    assert on_disk < 0.9 * raw  # compressed, and the frozen tensor kept once
    # the same training under another name: another item, no new chunk
    second = build(_recipe(tmp_path / "b", width=256, name="other"), store=store, threads=1)
    assert second.path != first.path and sorted(store.chunks.all()) == chunks
    theirs = sorted(json.loads(p.read_text())["digest"]
                    for p in (second.path / "checkpoints").glob("*.json"))
    assert theirs == sorted(m.digest for m in manifests)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), itemsize=st.sampled_from([1, 2, 4, 8]))
def test_a_chunk_reads_back_as_it_was_written(data: bytes, itemsize: int) -> None:
    assert decode(encode(data, itemsize), "chunk") == data


@settings(max_examples=200, deadline=None)
@given(stored=st.binary(max_size=200))
def test_anything_but_a_chunk_is_refused_with_one_error(stored: bytes) -> None:
    """Whatever the bytes, decode gives bytes (or a view of them) or refuses with
    WeightsError (never an IndexError, a struct.error or a zstd error)."""
    try:
        assert isinstance(decode(stored, "chunk"), bytes | memoryview)
    except WeightsError as e:
        assert e.message.startswith("chunk: ")


def test_a_flipped_byte_in_a_chunk_is_never_handed_out(tmp_path: Path) -> None:
    chunks = Chunks(tmp_path)
    (tmp_path / "tmp").mkdir()
    data = np.arange(4096, dtype=np.float32).tobytes()
    from reweigh.store_checkpoints import chunk_digest

    digest = chunk_digest(data)
    chunks.put(digest, data, 4)
    path = chunks.path(digest)
    stored = bytearray(path.read_bytes())
    stored[-1] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(stored))
    with pytest.raises(WeightsError):
        chunks.get(digest, len(data))


def test_a_checkpoint_is_cut_at_its_tensors_and_a_large_tensor_in_pieces(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_file({"a": np.zeros(3, np.float32), "b": np.zeros(CHUNK // 4 + 5, np.float32)},
              str(path))
    cut = pieces(path, path.stat().st_size)
    assert [p.itemsize for p in cut] == [1, 4, 4, 4]
    assert [p.length for p in cut[1:]] == [12, CHUNK, 20]
    assert sum(p.length for p in cut) == path.stat().st_size


# --- retention --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A build that keeps every 3rd and the last 2 of its 6 checkpoints: (store, item,
    recipe)."""
    folder = tmp_path_factory.mktemp("pruned")
    recipe = _recipe(folder / "r", width=128, keep="keep_every = 3\nkeep_last = 2")
    store = folder / "store"
    return store, build(recipe, store=Store(store), threads=1).path, recipe


@pytest.mark.slow
def test_retention_keeps_exactly_what_the_recipe_says(pruned: tuple[Path, Path, Path]) -> None:
    _, item, _ = pruned
    transcript = json.loads((item / "transcript.json").read_text())
    assert transcript["format"] == "reweigh.transcript/2"
    assert transcript["retention"] == {"keep_every": 3, "keep_last": 2}
    steps = [c["step"] for c in transcript["checkpoints"]]
    kept = [c["step"] for c in transcript["checkpoints"] if "file" in c]
    assert steps == [2, 4, 6, 8, 10, 12] and kept == [6, 10, 12]  # 3rd, and the last 2
    assert sorted(p.name for p in (item / "checkpoints").iterdir()) == [
        f"step-{s:09d}.json" for s in kept]
    assert all(len(c["digest"]) == 71 for c in transcript["checkpoints"])


@pytest.mark.slow
def test_verify_on_a_pruned_transcript_replays_through_what_was_not_kept(
        pruned: tuple[Path, Path, Path]) -> None:
    store, item, _ = pruned
    report = run_json("verify", item, "--transcript", item / "transcript.json", "--spot", "100%",
                      store=store)
    assert report["holds"] and report["kept_checkpoints"] == 3 and report["skipped"] == []
    by_stop = {s["stop_step"]: s for s in report["segments"]}
    assert len(by_stop) == 6 and all(s["holds"] for s in by_stop.values())
    assert not by_stop[10]["start_kept"] and by_stop[10]["replayed_from"] == 6
    assert "its start (step 8) was not kept: replayed from step 6" in by_stop[10]["note"]
    assert by_stop[8]["start_kept"] and by_stop[12]["start_kept"]
    # an update is measured only between kept checkpoints
    assert by_stop[10]["update"] is not None and by_stop[8]["update"] is None


@pytest.mark.slow
def test_verify_kept_only_names_the_random_picks_it_skips(
        pruned: tuple[Path, Path, Path]) -> None:
    store, item, _ = pruned
    report = run_json("verify", item, "--transcript", item / "transcript.json", "--spot", "100%",
                      "--kept-only", store=store)
    skipped = {s["stop_step"] for s in report["segments"] if s["skipped"]}
    assert report["holds"] and skipped == {4, 6}  # random picks whose start was not kept
    assert set(report["skipped"]) == {1, 2}
    replayed = [s for s in report["segments"] if not s["skipped"]]
    assert {s["why"] for s in replayed} >= {"first", "last"} and all(s["holds"] for s in replayed)
    text = run_reweigh("verify", item, "--transcript", item / "transcript.json", "--spot",
                       "100%", "--kept-only", store=store)
    assert "skipped 2 chosen segments: 2..4, 4..6" in text.stdout


@pytest.mark.slow
def test_a_forged_digest_of_a_checkpoint_not_kept_fails_the_replay_through_it(
        pruned: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A publisher who rewrites the digest of a checkpoint whose file nobody keeps (and
    rechains) is caught when a chosen segment's replay runs through it."""
    from reweigh.transcript import chain

    store, item, recipe = pruned
    folder = tmp_path / "published"
    run_reweigh("export", "transcript", item, folder, store=store)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
        "step-000000006.safetensors", "step-000000010.safetensors",
        "step-000000012.safetensors"]
    data = json.loads((folder / "transcript.json").read_text())
    forged = data["checkpoints"][3]  # step 8, not kept
    assert "file" not in forged
    forged["digest"] = "sha256:" + "0" * 64
    data["checkpoints"] = chain(data["derivation"], [
        {k: v for k, v in c.items() if k != "chain"} for c in data["checkpoints"]])
    (folder / "transcript.json").write_text(json.dumps(data))
    report = run_json("verify", folder / "weights.safetensors", "--recipe", recipe,
                      "--transcript", folder / "transcript.json", "--spot", "100%",
                      store=tmp_path / "empty-store")
    assert not report["holds"] and report["chain_ok"]
    failed = {s["stop_step"]: s["note"] for s in report["segments"] if not s["holds"]}
    assert set(failed) == {8, 10}
    assert "did not reproduce step 8" in failed[10]


@pytest.mark.slow
def test_a_kept_checkpoint_not_at_hand_is_replayed_through_not_trusted(
        pruned: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """What an item pulled without its chunks, or a publisher who left a file out, gives:
    the replay runs through the absent checkpoint and checks its digest."""
    store, item, recipe = pruned
    folder = tmp_path / "published"
    run_reweigh("export", "transcript", item, folder, store=store)
    (folder / "checkpoints" / "step-000000010.safetensors").unlink()
    report = run_json("verify", folder / "weights.safetensors", "--recipe", recipe,
                      "--transcript", folder / "transcript.json", "--spot", "0",
                      "--largest", "0", store=tmp_path / "empty-store")
    assert report["holds"] and report["chain_ok"] and report["absent"] == [10]
    (last,) = report["segments"]
    assert last["stop_step"] == 12 and last["replayed_from"] == 6 and not last["start_kept"]
    assert "its start (step 10) is not at hand: replayed from step 6" in last["note"]


# --- store upkeep: verify, gc ---------------------------------------------------------------

def _copy_of(pruned: tuple[Path, Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the pruned build's store (to damage or collect), and its item there."""
    store, item, _ = pruned
    root = tmp_path / "store"
    shutil.copytree(store, root, symlinks=True)
    return root, root / "items" / item.name


@pytest.mark.slow
def test_store_verify_finds_a_damaged_chunk_and_verify_refuses_it(
        pruned: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, item = _copy_of(pruned, tmp_path)
    assert run_json("store", "verify", store=root)["ok"]
    manifest = Manifest.read(item / "checkpoints" / "step-000000006.json")
    victim = Store(root).chunks.path(manifest.chunks[1][0])
    stored = bytearray(victim.read_bytes())
    stored[-1] ^= 1
    victim.chmod(0o644)
    victim.write_bytes(bytes(stored))
    report = run_json("store", "verify", store=root)
    assert not report["ok"]
    assert {"item": victim.relative_to(root).as_posix(), "relpath": "",
            "problem": "modified"} in report["corrupted"]
    verified = run_json("verify", item, "--transcript", item / "transcript.json", "--spot", "0",
                        store=root)
    assert not verified["holds"] and not verified["chain_ok"]
    assert any("step 6" in p and "damaged" in p for p in verified["problems"])


@pytest.mark.slow
def test_gc_removes_the_chunks_only_removed_items_needed(
        pruned: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, _ = _copy_of(pruned, tmp_path)
    store = Store(root)
    only_a = set(store.chunks.all())
    other = build(_recipe(tmp_path / "c", steps=4, width=128, name="c"), store=store,
                  threads=1)
    assert set(store.chunks.all()) > only_a
    profile = tmp_path / "profile"
    assert run_reweigh("install", other.path, "--profile", profile, store=root).returncode == 0
    report = run_json("gc", "--grace", "0", store=root)
    assert len(report["removed_items"]) == 1
    needed = {c for m in (other.path / "checkpoints").glob("*.json")
              for c, _ in Manifest.read(m).chunks}
    # the frozen 128x128 tensor (64 KiB: a chunk of its own) is the same in both items,
    # from the same seed: one chunk that a removed item and a kept one both need
    assert only_a & needed
    assert set(store.chunks.all()) == needed  # c's stay, the shared one with them
    assert only_a - needed and not (only_a - needed) & set(store.chunks.all())
    assert run_json("store", "verify", store=root)["ok"]
    assert run_json("verify", other.path, "--transcript", other.path / "transcript.json",
                    "--spot", "1", store=root)["holds"]


@pytest.mark.slow
def test_a_forged_checkpoint_event_fails_the_build_and_touches_nothing(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    forger = """
import json, os
import numpy as np

def train(ctx):  # what the runtime's own event would say, written to its pipe by hand
    event = {"type": "checkpoint", "step": 1, "file": "../../../outside.txt"}
    os.write(int(os.environ["REWEIGH_EVENT_FD"]), (json.dumps(event) + "\\n").encode())
    ctx.save_weights({"w": np.zeros(2, np.float32)})
"""
    recipe = write_recipe(tmp_path / "r", forger, build="checkpoint_every = 1")
    with pytest.raises(BuildError, match="not one the runtime writes"):
        build(recipe, store=Store(tmp_path / "store"), sandbox="none")
    assert outside.read_text() == "keep me" and not Store(tmp_path / "store").items()


@pytest.mark.slow
def test_bytes_that_are_not_a_checkpoint_down_the_pipe_fail_the_build(tmp_path: Path) -> None:
    forger = """
import os
import numpy as np

def train(ctx):  # what is not a checkpoint frame, down the builder's pipe by hand
    os.write(int(os.environ["REWEIGH_CHECKPOINT_FD"]), b"twenty bytes or more, no frame")
    ctx.checkpoint(1, {"w": np.zeros(2, np.float32)}, final=True)
    ctx.save_weights({"w": np.zeros(2, np.float32)})
"""
    recipe = write_recipe(tmp_path / "r", forger, build="checkpoint_every = 1")
    with pytest.raises(BuildError, match="could not be kept: the build's checkpoint pipe: "
                       "not a checkpoint frame"):
        build(recipe, store=Store(tmp_path / "store"), sandbox="none")
    store = Store(tmp_path / "store")
    assert not store.items() and not list(store.chunks.all())


# A numpy recipe that checkpoints (a view among its arrays, a float16 one) and resumes,
# checking what resume gave it and that torch never loaded unless it asked for tensors
NUMPY_RESUME = """
import sys
import numpy as np

def train(ctx):
    framework = ctx.params["framework"]
    state = ctx.resume(framework)
    if state is not None:
        module = type(state["w"]).__module__.split(".")[0]
        assert module == {"numpy": "numpy", "pt": "torch"}[framework], module
    w = np.asarray(state["w"]) if state else np.zeros(3, np.float32)
    for step in range(state["step"] + 1 if state else 1, 5):
        w = w + np.float32(step)
        ctx.checkpoint(step, {"w": w, "halves": w.astype(np.float16)[::-1], "step": step},
                       final=step == 4)
    loaded = "torch" in sys.modules
    assert loaded == (framework == "pt" and state is not None), f"torch loaded: {loaded}"
    ctx.save_weights({"w": w})
"""


@pytest.mark.slow
def test_a_numpy_recipe_checkpoints_and_resumes_without_loading_torch(tmp_path: Path) -> None:
    """With ctx.resume("numpy"), its build and every replay run without torch (a second
    less each), and write the checkpoints they wrote when a state's arrays went through
    torch (the same digests as the build that asks for tensors back, which loads it)."""
    digests = {}
    for framework in ("numpy", "pt"):
        recipe = write_recipe(tmp_path / f"r{framework}", NUMPY_RESUME,
                              params=f'framework = "{framework}"', build="checkpoint_every = 1")
        store = tmp_path / f"store{framework}"
        item = Path(run_json("build", recipe, store=store)["path"])
        report = run_json("verify", item, "--transcript", item / "transcript.json",
                          "--spot", "4", store=store)
        assert report["holds"] and len(report["segments"]) == 4, report
        transcript = json.loads((item / "transcript.json").read_text())
        digests[framework] = [c["digest"] for c in transcript["checkpoints"]]
    assert digests["numpy"] == digests["pt"] and len(set(digests["numpy"])) == 4
    recipe = write_recipe(tmp_path / "odd", NUMPY_RESUME.replace(
        "ctx.resume(framework)", 'ctx.resume("tensorflow")'), params='framework = "numpy"')
    result = run_reweigh("build", recipe, store=tmp_path / "odd-store")
    assert result.returncode == 1 and "framework must be one of pt, numpy" in result.stderr


# --- the pure plan ----------------------------------------------------------------------------

def _segments(count: int) -> list[Segment]:
    from reweigh.transcript import Checkpoint

    points = [Checkpoint(2 * (i + 1), None, "", "") for i in range(count)]
    return [Segment(i, points[i - 1] if i else None, points[i], i == count - 1)
            for i in range(count)]


def test_a_replay_plan_runs_each_segment_once_from_the_nearest_kept_start() -> None:
    segments = _segments(8)
    plan = replay_plan(segments, [segments[3], segments[5], segments[7]], {2, 6})
    assert [s.index for s in plan.runs] == [3, 4, 5, 7]
    assert plan.origin == {3: 3, 5: 3, 7: 7} and plan.chained == frozenset({4, 5})
    skipping = replay_plan(segments, [segments[1], segments[7]], {6}, skippable={1, 7})
    assert skipping.skipped == frozenset({1}) and [s.index for s in skipping.runs] == [7]
    from_scratch = replay_plan(segments, [segments[2]], set())
    assert [s.index for s in from_scratch.runs] == [0, 1, 2] and from_scratch.steps() == 6


def test_a_stretch_with_no_measured_update_gives_a_random_pick_instead() -> None:
    """The same share of segments is replayed when few checkpoints were kept: what the
    largest updates cannot choose, the verifier's seed does."""
    segments = _segments(20)
    every = {i: float(i) for i in range(1, 20)}
    for updates, measured in ((every, 3), ({11: 1.0}, 1), ({}, 0)):
        picked = choose(segments, updates, stretches=3, spot=2, seed=7)
        assert len(picked.picks) == 7  # the first, 3 largest or random, 2 random, the last
        assert picked.stretches == measured and picked.drawn == 2 + 3 - measured
        whys = [p.why for p in picked.picks]
        assert whys.count(Why.FIRST) == whys.count(Why.LAST) == 1


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_the_shipped_digits_cnn_item_is_at_most_ten_times_its_weights(
        digits_cnn: tuple[Path, Path], tmp_path: Path) -> None:
    """examples/digits-cnn as shipped keeps the files of its last 3 checkpoints: the
    weights and every chained digest of the build that keeps all 35, in at most 10x the
    weights (the item's files and the chunks its checkpoints need)."""
    full_store, full = digits_cnn
    store = tmp_path / "store"
    item = build(EXAMPLES / "digits-cnn", store=Store(store), threads=1).path
    assert file_digest(item / "weights.safetensors") == file_digest(full / "weights.safetensors")
    ours, theirs = (json.loads((i / "transcript.json").read_text())["checkpoints"]
                    for i in (item, full))
    assert [(c["digest"], c["chain"]) for c in ours] == [(c["digest"], c["chain"])
                                                         for c in theirs]
    assert [c["step"] for c in ours if "file" in c] == [330, 340, 345] and len(ours) == 35
    weights = (item / "weights.safetensors").stat().st_size
    size = _bytes(item) + _bytes(store / "chunks")
    assert size <= 10 * weights
    assert _bytes(full) + _bytes(full_store / "chunks") > 8 * size  # keeping all 35


@pytest.mark.slow
def test_a_transcript_without_a_file_the_recipe_keeps_fails_naming_the_step(
        pruned: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A publisher who leaves out the checkpoints around a forged segment leaves its update
    unmeasured: the recipe says which files its transcript keeps, and verify holds the
    transcript to it before any replay."""
    store, item, recipe = pruned
    folder = tmp_path / "published"
    run_reweigh("export", "transcript", item, folder, store=store)
    data = json.loads((folder / "transcript.json").read_text())
    assert data["checkpoints"][4]["step"] == 10
    del data["checkpoints"][4]["file"]  # as if the recipe had not kept it
    (folder / "checkpoints" / "step-000000010.safetensors").unlink()
    (folder / "transcript.json").write_text(json.dumps(data))
    report = run_json("verify", folder / "weights.safetensors", "--recipe", recipe,
                      "--transcript", folder / "transcript.json", "--spot", "0",
                      store=tmp_path / "empty-store")
    assert not report["holds"] and report["segments"] == []
    assert report["problems"] == ["step 10: the recipe keeps this checkpoint's file "
                                  "(keep_every = 3, keep_last = 2); the transcript does not"]


# --- a user who is not root -------------------------------------------------------------------

@pytest.mark.slow
def test_an_unprivileged_user_builds_keeps_verifies_and_collects(tmp_path: Path) -> None:
    import sysconfig
    import tempfile

    if not shutil.which("bwrap"):
        pytest.skip("no bubblewrap")
    folder = Path(tempfile.mkdtemp(prefix="reweigh-nobody-", dir="/tmp"))
    try:
        recipe = _recipe(folder / "r", keep="keep_every = 2\nkeep_last = 1", steps=8)
        (folder / "home").mkdir()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(folder / "home"),
               "LANG": "C.UTF-8", "PYTHONPATH": os.pathsep.join(
                   [str(ROOT / "src"), sysconfig.get_paths()["purelib"]])}
        prefix = [sys.executable]
        if os.geteuid() == 0:
            for path in [folder, *folder.rglob("*")]:
                os.chown(path, 65534, 65534)
            python = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}",
                                  path="/usr/bin") or sys.executable
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python]
        store = folder / "store"

        def reweigh(*args: object) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*prefix, "-m", "reweigh.cli.main", *map(str, args),
                                   "--store", str(store)], capture_output=True, text=True,
                                  env=env, timeout=600, check=False)

        built = reweigh("build", recipe, "--json")
        assert built.returncode == 0, built.stderr
        item = Path(json.loads(built.stdout)["path"])
        chunk = next((store / "chunks").rglob("*/*"))
        assert chunk.stat().st_mode & 0o777 == 0o444
        assert item.stat().st_uid == (65534 if os.geteuid() == 0 else os.geteuid())
        verified = reweigh("verify", item, "--transcript", item / "transcript.json",
                           "--spot", "2", "--json")
        assert verified.returncode == 0, verified.stderr
        collected = reweigh("gc", "--grace", "0", "--json")
        assert collected.returncode == 0, collected.stderr
        assert not list((store / "chunks").rglob("*/*")) and not any((store / "items").iterdir())
        assert [p.name for p in (store / "locks").iterdir()] == ["gc.lock"]
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
