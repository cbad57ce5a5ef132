"""fortunes-lm: the fortune-file reader, the held-out split, and the smoke build on 1, 2
and 3 workers (issue 14: a text transformer whose data-parallel training gives one digest
whatever the worker count).

The builds use the smoke variant (fortunes-min, fetched once with apt-get, a tiny
network, 30 steps); the default recipe's perplexity and the speed-up from workers are
measured by its own build and bench/workers.py, recorded in bench/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .helpers import EXAMPLES, run_json

FORTUNES = EXAMPLES / "fortunes-lm"
SMOKE = FORTUNES / "smoke.toml"


def _load(name: str):  # type: ignore[no-untyped-def]
    """The example's module under a name of its own: as plain `corpus` it would stand in
    for textgen's module of that name in every test run after it."""
    spec = importlib.util.spec_from_file_location(f"fortunes_lm_{name}", FORTUNES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


corpus = _load("corpus")

# --- the reader and the split ---------------------------------------------------------------


def test_a_fortune_file_is_read_as_strfile_writes_it() -> None:
    text = "%\nFirst.\n%\nSecond,\n\ton two lines.\n%\n%\nLast, without its % line"
    assert corpus.fortunes(text) == ["First.\n", "Second,\n\ton two lines.\n",
                                     "Last, without its % line\n"]
    assert corpus.join(["a\n", "b\n"]) == "a\n%\nb\n%\n"


TEXT = st.text(st.sampled_from(["%", "\n", "a", " ", "\t", "é"]), max_size=60)


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_fortunes_never_hold_a_separator_and_read_back_from_their_own_file(text: str) -> None:
    found = corpus.fortunes(text)
    for fortune in found:
        assert fortune.endswith("\n") and fortune.strip()
        assert "\n%\n" not in "\n" + fortune
    assert corpus.fortunes(corpus.join(found)) == found


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_the_alphabet_spells_what_it_holds_and_marks_the_rest(text: str) -> None:
    ids = corpus.encode(text)
    assert all(0 <= i < len(corpus.ALPHABET) for i in ids)
    back = corpus.decode(ids)
    assert len(back) == len(text)
    for original, read in zip(text, back, strict=True):
        assert read == (original if original in corpus.IDS else corpus.UNKNOWN)


def test_the_split_follows_the_seed_and_keeps_duplicates_on_one_side() -> None:
    fortunes = [f"fortune number {i}\n" for i in range(400)]
    fortunes += fortunes[:50]  # the same fortune in two files
    training, held = corpus.split(fortunes, 0, 0.1)
    assert 20 <= len(held) <= 70
    assert not set(training) & set(held)
    assert corpus.split(fortunes, 0, 0.1) == (training, held)
    assert corpus.split(fortunes, 1, 0.1)[1] != held


def test_only_the_fortune_files_of_an_input_are_read(tmp_path: Path) -> None:
    root = tmp_path / "fortunes-min_1.0" / "usr" / "share"
    (root / "games" / "fortunes").mkdir(parents=True)
    (root / "doc" / "fortunes").mkdir(parents=True)
    (root / "games" / "fortunes" / "riddles").write_text("Q: Why?\nA: Because.\n%\n")
    (root / "games" / "fortunes" / "riddles.dat").write_bytes(b"\x00\x00\x00\x02%\n")
    (root / "doc" / "fortunes" / "copyright").write_text("This program falls under BSD\n")
    assert corpus.load({"min": tmp_path}) == ["Q: Why?\nA: Because.\n"]
    (root / "games" / "fortunes" / "latin1").write_bytes(b"caf\xe9\n%\n")
    with pytest.raises(ValueError, match="min:latin1: not UTF-8"):
        corpus.load({"min": tmp_path})


# --- the smoke build on 1, 2 and 3 workers ------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The smoke variant built on the plain path (one process) into a store of its own."""
    store = tmp_path_factory.mktemp("fortunes") / "store"
    return store, run_json("build", SMOKE, store=store)


@pytest.mark.slow
def test_the_smoke_build_is_bit_identical_on_2_and_3_workers(smoke: tuple[Path, dict]) -> None:
    store, built = smoke
    for workers in ("2", "3"):
        check = run_json("build", SMOKE, "--check", "--workers", workers, store=store)
        assert check["check"]["identical"], (workers, check["check"])
        assert check["weights_digest"] == built["weights_digest"]
        assert check["derivation"] == built["derivation"]


@pytest.mark.slow
def test_the_smoke_build_reports_held_out_perplexity_and_writes_samples(
        smoke: tuple[Path, dict]) -> None:
    _, built = smoke
    item = Path(built["path"])
    metrics = json.loads((item / "metrics.json").read_text())["evaluation"]
    assert metrics["held_out_fortunes"] > 10 and metrics["held_out_chars"] > 1000
    assert math.log2(metrics["perplexity"]) == pytest.approx(metrics["bits_per_char"])
    # 30 steps of a tiny network already beat the characters' own frequencies
    assert 1 < metrics["perplexity"] < metrics["unigram_perplexity"] < 98
    assert metrics["uniform_perplexity"] == len(corpus.ALPHABET) == 98
    samples = (item / "samples.txt").read_text()
    assert samples.endswith(corpus.END) and len(corpus.fortunes(samples)) >= 1


@pytest.mark.slow
def test_the_smoke_build_verifies_segment_by_segment(smoke: tuple[Path, dict]) -> None:
    store, built = smoke
    transcript = Path(built["path"]) / "transcript.json"
    verified = run_json("verify", built["path"], "--transcript", transcript, "--spot", "1",
                        "--largest", "0", store=store)
    assert verified["verdict"] == "holds", verified
