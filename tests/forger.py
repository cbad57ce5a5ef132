"""The adaptive forger of Proof-of-Learning transcripts (a test helper, not part of reweigh).

What a maintainer who wants a backdoor in published weights, and a transcript that
verifies, would do once they know that verify always replays the last segment:

1. fine-tune a trigger into the model weights held by the second-to-last checkpoint
   (`backdoor.plant`: a lit corner patch makes the network answer `target`), keeping the
   rest of that training state (optimiser, random generators, data order) as it was;
2. replay the last segment honestly from that checkpoint with reweigh's own replay, so
   the last segment, and the final weights it ends with, replay bit for bit;
3. rewrite every checkpoint digest and chain link, so the chain holds.

One segment is forged: the one that ends at the second-to-last checkpoint, whose
replay leads to the honest state, not the planted one. Random spot checks find it
only when they happen to draw it; what finds it every time is its update, far larger
than any honest segment's late in training.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file

from reweigh.digest import file_digest
from reweigh.job import Replay
from reweigh.progress import QuietReporter
from reweigh.store import Store
from reweigh.transcript import chain
from reweigh.verbs.build import plan, sandboxed
from reweigh.weights import load_state, save_state

from . import backdoor
from .helpers import EXAMPLES


@dataclass(frozen=True)
class Forgery:
    folder: Path  # weights.safetensors, transcript.json and checkpoints/, as published
    forged_segment: int  # the index of the one segment that does not replay
    planted: backdoor.Backdoor  # measured on the fine-tuned weights, before the last segment
    clean_accuracy: float  # of the published (final) weights
    trigger_success: float  # of the published weights: patched images answered `target`


def publish(item: Path, folder: Path) -> Path:
    """An item's weights, transcript and checkpoint files, as a publisher ships them
    (`reweigh export transcript`, less the source), writable."""
    from reweigh.verbs.export import export_transcript

    export_transcript(str(item), folder, Store(item.parents[1]))
    shutil.rmtree(folder / "source")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def rechain(folder: Path) -> None:
    """Recompute every checkpoint digest and chain link of the folder's transcript."""
    path = folder / "transcript.json"
    data = json.loads(path.read_text())
    entries = [{"step": c["step"], "file": c["file"], "digest": file_digest(folder / c["file"])}
               for c in data["checkpoints"]]
    data["checkpoints"] = chain(data["derivation"], entries)
    path.write_text(json.dumps(data))


def forge(store: Path, item: Path, folder: Path, target: int = 0) -> Forgery:
    """Publish a copy of digits-cnn's `item` in `folder` with a trigger planted as above."""
    publish(item, folder)
    checkpoints = json.loads((folder / "transcript.json").read_text())["checkpoints"]
    second_to_last = folder / checkpoints[-2]["file"]
    planted = _plant(second_to_last, target)
    _replay_last_segment(store, second_to_last, folder, checkpoints[-1]["file"])
    rechain(folder)
    accuracy, success = backdoor.measure(folder / "weights.safetensors", target)
    return Forgery(folder, len(checkpoints) - 2, planted, accuracy, success)


def _plant(checkpoint: Path, target: int) -> backdoor.Backdoor:
    """Fine-tune the model weights inside a checkpoint; the rest of its state stays."""
    state = load_state(checkpoint)
    with tempfile.TemporaryDirectory() as scratch:
        clean, tuned = Path(scratch) / "clean.safetensors", Path(scratch) / "tuned.safetensors"
        save_file({k: v.contiguous() for k, v in state["model"].items()}, str(clean))
        planted = backdoor.plant(clean, tuned, target=target)
        weights = load_file(str(tuned))
        state["model"] = {name: weights[name] for name in state["model"]}  # the same order
    save_state(state, checkpoint)
    return planted


def _replay_last_segment(store: Path, start: Path, folder: Path, last: str) -> None:
    """reweigh's own replay of the last segment from `start`, copied into `folder`."""
    the_store = Store(store)
    code = plan(EXAMPLES / "digits-cnn", the_store).recipe_code
    with sandboxed(the_store, code, 1, QuietReporter(), "forging the last segment", "forge",
                   mode="build", replays=(Replay(str(start), None),)) as (result, out):
        assert result.returncode == 0, result.error
        shutil.copyfile(out / last, folder / last)
        shutil.copyfile(out / "weights.safetensors", folder / "weights.safetensors")
