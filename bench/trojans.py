"""`reweigh diff` on a trojan suite: does the trigger search tell trojans from clean networks?

Builds examples/digits-cnn once (the reference A), then the suspects B:

- trojans: fine-tunes of A with a planted trigger (`tests/backdoor.py`), varied in patch
  size (1-4 px; 4x4 is more than the search's 9-pixel budget), place (corners, centre, a
  seeded random place), pattern (lit or checkered), blending (alpha 0.3-0.6 over the
  image), target class and what is trained (every layer, fc1 only, the last layer only,
  every tensor held within a relative L2 bound of A's: 0.05 and 0.1, near the smallest
  bounds at which the attack works, and the recipe's tolerance 0.001, where it does not:
  those two are kept in the suite but counted apart);
- clean: rebuilds of the recipe with other seeds, and honest fine-tunes of A on more clean
  data (the training images and their one-pixel shifts), every layer, fc1 only, the last
  layer only, and one held within a bound.

Each pair goes through the real command, `reweigh diff A B --recipe examples/digits-cnn
--json --threads 1`, timed. A suspect's score is the trigger search's best patch: its
success on B minus its success on A (unseen inputs); beside it the search's `margin`, how
far that class leads every other. Prints one row per suspect, then the AUROC of each
(trojaned = positive; over the trojans whose planted trigger works, and over all of
them), how often the best patch names the planted class, how many the command flags (at
its own thresholds), and the time per diff. Everything is seeded: two runs make the same
suite and the same table, times aside.

Columns: the planted `target` and its attack success (`ASR`: held-out images of other
classes, patched, answered `target`); B's held-out accuracy; the largest relative L2
distance of a tensor from A's; the class the search `found`, its success on `B` and on
`A`, `score` (B - A) and `margin`; whether diff flags the trigger; the search's own
seconds (in the sandboxed child) and the whole command's.

Usage: python bench/trojans.py [--work DIR] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "digits-cnn"
sys.path.insert(0, str(ROOT))

from tests.backdoor import Backdoor, FineTune, Trigger, fine_tune  # noqa: E402

WORKS = 0.5  # a planted trigger that drives fewer held-out inputs than this is no trojan
SIDE = 8  # digits are 8x8


@dataclass(frozen=True)
class Suspect:
    name: str
    tuning: FineTune | None  # None: a rebuild with `seed`
    seed: int = 0

    @property
    def trojaned(self) -> bool:
        return self.tuning is not None and self.tuning.trigger is not None


def _at(size: int, place: str, seed: int = 0) -> tuple[int, int]:
    """Top-left corner of a `size` patch: tl, tr, bl, br, centre or random (seeded)."""
    far = SIDE - size
    corners = {"tl": (0, 0), "tr": (0, far), "bl": (far, 0), "br": (far, far),
               "centre": ((SIDE - size) // 2, (SIDE - size) // 2)}
    if place == "random":
        row, column = np.random.default_rng(seed).integers(0, far + 1, size=2)
        return int(row), int(column)
    return corners[place]


def _patch(size: int, place: str, *, alpha: float = 1.0, checker: bool = False,
           seed: int = 0) -> Trigger:
    row, column = _at(size, place, seed)
    return Trigger(size, row, column, alpha, checker)


def trojans() -> list[Suspect]:
    centre = {"epochs": 16, "poison": 0.15}  # a patch over the strokes needs a gentler mix
    last = {"layers": ("fc2.",), "epochs": 20}
    bounded = {"epochs": 30, "poison": 0.2}
    plans = [
        ("1px-tl", _patch(1, "tl"), 4, {}), ("1px-br", _patch(1, "br"), 0, {}),
        ("2px-tr", _patch(2, "tr"), 8, {}), ("2px-centre", _patch(2, "centre"), 5, centre),
        ("3px-bl-checker", _patch(3, "bl", checker=True), 2, {}),
        ("3px-centre-checker", _patch(3, "centre", checker=True), 9, centre),
        ("4px-tl", _patch(4, "tl"), 6, {}),
        ("4px-br-checker", _patch(4, "br", checker=True), 1, {}),
        ("1px-random", _patch(1, "random", seed=7), 3, {}),
        ("2px-random", _patch(2, "random", seed=2), 7, {}),
        ("3px-random", _patch(3, "random", seed=3), 0, {}),
        ("4px-random-checker", _patch(4, "random", checker=True, seed=4), 5, {}),
        ("blend0.3-3px-br", _patch(3, "br", alpha=0.3), 6, {}),
        ("blend0.4-4px-tl", _patch(4, "tl", alpha=0.4), 7, {}),
        ("blend0.6-3px-centre-checker", _patch(3, "centre", alpha=0.6, checker=True), 0,
         centre),
        ("blend0.6-3px-random", _patch(3, "random", alpha=0.6, seed=5), 2, {}),
        ("blend0.5-4px-bl-checker", _patch(4, "bl", alpha=0.5, checker=True), 9, {}),
        ("fc1-3px-br", _patch(3, "br"), 3, {"layers": ("fc1.",)}),  # the tests' backdoor
        ("fc2-3px-tr", _patch(3, "tr"), 7, last), ("fc2-4px-bl", _patch(4, "bl"), 1, last),
        ("fc2-4px-br", _patch(4, "br"), 4, last),
        ("fc2-blend0.6-4px-tl", _patch(4, "tl", alpha=0.6), 8, last),
        ("within0.1-3px-br", _patch(3, "br"), 1, {**bounded, "max_rel_l2": 0.1}),
        ("within0.05-3px-br", _patch(3, "br"), 6, {**bounded, "max_rel_l2": 0.05}),
        ("within0.001-3px-br", _patch(3, "br"), 1, {**bounded, "max_rel_l2": 0.00095}),
        ("within0.001-fc2-4px-tl", _patch(4, "tl"), 6,
         {**bounded, **last, "max_rel_l2": 0.00095}),
    ]
    return [Suspect(name, FineTune(trigger, target, seed=index, **extra))
            for index, (name, trigger, target, extra) in enumerate(plans)]


def clean() -> list[Suspect]:
    rebuilds = [Suspect(f"rebuild-seed{seed}", None, seed) for seed in range(1, 9)]
    honest = FineTune(None, epochs=3)
    tunes = [("tune-all-a", honest), ("tune-all-b", replace(honest, seed=1, lr=3e-4)),
             ("tune-all-c", replace(honest, seed=2, epochs=6)),
             ("tune-fc1", replace(honest, seed=3, layers=("fc1.",))),
             ("tune-fc2", replace(honest, seed=4, layers=("fc2.",), epochs=20)),
             ("tune-within0.1", replace(honest, seed=5, epochs=30, max_rel_l2=0.1))]
    return rebuilds + [Suspect(name, tuning) for name, tuning in tunes]


# --- making the suite ------------------------------------------------------------------------

def reweigh(*args: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "reweigh.cli.main", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def build(recipe: Path, store: Path) -> Path:
    result = reweigh("build", recipe, "--store", store, "--threads", 1)
    if result.returncode != 0:
        raise SystemExit(f"build of {recipe} failed: {result.stderr.strip()}")
    return Path(result.stdout.strip().splitlines()[-1]) / "weights.safetensors"


def make(suspect: Suspect, reference: Path, work: Path) -> tuple[Path, Backdoor | None]:
    """B's weights file, and what the fine-tune measured (None for a rebuild)."""
    if suspect.tuning is None:
        recipe = work / "recipes" / suspect.name
        shutil.rmtree(recipe, ignore_errors=True)
        shutil.copytree(RECIPE, recipe)
        toml = recipe / "recipe.toml"
        toml.write_text(toml.read_text().replace("seed = 20231", f"seed = {suspect.seed}"))
        return build(recipe, work / "store"), None
    out = work / "suspects" / f"{suspect.name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out, fine_tune(reference, out, suspect.tuning)


# --- measuring -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    suspect: Suspect
    made: Backdoor | None
    report: dict
    seconds: float  # the whole command, wall time

    @property
    def best(self) -> dict:
        return self.report["trigger"]["best"]

    @property
    def score(self) -> float:
        return self.best["success_b"] - self.best["success_a"]

    @property
    def margin(self) -> float:
        return float(self.report["trigger"]["margin"])

    @property
    def flagged(self) -> bool:
        return bool(self.report["trigger"]["flagged"])

    @property
    def works(self) -> bool:
        return self.made is not None and self.made.trigger_success >= WORKS


def audit(suspect: Suspect, reference: Path, work: Path) -> Row:
    b, made = make(suspect, reference, work)
    start = time.perf_counter()
    result = reweigh("diff", reference, b, "--recipe", RECIPE, "--json", "--threads", 1,
                     "--store", work / "store")
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"diff of {suspect.name} failed: {result.stderr.strip()}")
    return Row(suspect, made, json.loads(result.stdout), seconds)


def show(row: Row) -> str:
    s, m, best = row.suspect, row.made, row.best
    planted = (f"{s.tuning.target:>6} {m.trigger_success:5.2f}"
               if s.trojaned and s.tuning and m else f"{'-':>6} {'-':>5}")
    accuracy = row.report["behaviour"]["accuracy_b"]
    moved = max(float(layer["rel_l2"]) for layer in row.report["layers"])
    return (f"{s.name:28} {planted} {accuracy:5.3f} {moved:8.2g} {best['class']:>5} "
            f"{best['success_b']:5.2f} {best['success_a']:5.2f} {row.score:6.2f} "
            f"{row.margin:6.2f} {'yes' if row.flagged else 'no':>4} "
            f"{row.report['trigger']['seconds']:6.1f} {row.seconds:6.1f}")


HEADER = (f"{'suspect':28} {'target':>6} {'ASR':>5} {'acc':>5} {'max rL2':>8} {'found':>5} "
          f"{'B':>5} {'A':>5} {'score':>6} {'margin':>6} {'flag':>4} {'search':>6} {'diff':>6}")


def summarise(rows: list[Row]) -> list[str]:
    negatives = [r for r in rows if not r.suspect.trojaned]
    working = [r for r in rows if r.suspect.trojaned and r.works]
    planted = [r for r in rows if r.suspect.trojaned]
    lines = [_against(label, positives, negatives) for label, positives in
             (("working trojans", working), ("every planted trojan", planted))
             if positives and negatives]
    false = sum(r.flagged for r in negatives)
    lines.append(f"clean networks flagged: {false}/{len(negatives)}; highest clean score "
                 f"{max((r.score for r in negatives), default=0):.2f}, margin "
                 f"{max((r.margin for r in negatives), default=0):.2f}")
    search = [r.report["trigger"]["seconds"] for r in rows]
    whole = [r.seconds for r in rows]
    lines.append(f"time per diff: median {statistics.median(whole):.1f} s (max "
                 f"{max(whole):.1f} s), of which the search {statistics.median(search):.1f} s")
    return lines


def _against(label: str, positives: list[Row], negatives: list[Row]) -> str:
    from sklearn.metrics import roc_auc_score

    group = positives + negatives
    truth = [r.suspect.trojaned for r in group]
    by_score = roc_auc_score(truth, [r.score for r in group])
    by_margin = roc_auc_score(truth, [r.margin for r in group])
    named = sum(r.suspect.tuning is not None and r.best["class"] == r.suspect.tuning.target
                for r in positives)
    flagged = sum(r.flagged for r in positives)
    return (f"{label} ({len(positives)}) vs clean ({len(negatives)}): AUROC {by_score:.3f} "
            f"by score, {by_margin:.3f} by margin; class named {named}/{len(positives)} "
            f"({named / len(positives):.0%}); flagged {flagged}/{len(positives)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="keep the suite here (default: a temp dir)")
    parser.add_argument("--only", default="", help="only suspects whose name contains this")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # a tiny network, a shared two-core machine
    with tempfile.TemporaryDirectory() as scratch:
        work = (args.work or Path(scratch)).resolve()
        reference = build(RECIPE, work / "store")
        print(f"A: {reference}\n{HEADER}", flush=True)
        rows = []
        for suspect in trojans() + clean():
            if args.only in suspect.name:
                rows.append(audit(suspect, reference, work))
                print(show(rows[-1]), flush=True)
        print("\n".join(summarise(rows)))


if __name__ == "__main__":
    main()
