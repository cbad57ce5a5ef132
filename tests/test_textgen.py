"""examples/textgen: a text model built from source on its own generated corpus, and diff's
text probes on it (a fine-tune toward one word after one topic; two clean builds).

The tests read the run's shared build of a smoke variant of the shipped recipe (fewer
training steps, nothing else changed), so that it trains in seconds.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

from reweigh import build
from reweigh.audit.probes import load_probes
from reweigh.store import Store
from reweigh.verbs.diff import IDENTICAL_TENSORS

from . import textbias
from .conftest import AVX2, Examples, emulated
from .helpers import EXAMPLES, run_reweigh, variant

pytestmark = pytest.mark.slow
FOLDER = EXAMPLES / "textgen"


@pytest.fixture(scope="module")
def textgen(examples: Examples) -> tuple[Path, Path, Path]:
    """(store, item, recipe) of the run's shared smoke build (conftest.RECIPES)."""
    built = examples.built("textgen-smoke")
    return built.store, built.item, built.recipe


def _params(recipe: Path) -> dict:
    return tomllib.loads((recipe / "recipe.toml").read_text())["params"]


def _platform(item: Path) -> dict:
    statement = json.loads((item / "provenance.json").read_text())
    return statement["predicate"]["runDetails"]["environment"]["platform"]


def _continue(item: Path, recipe: Path, prompt: str, length: int) -> list[str]:
    corpus, model_module = textbias._example_module("corpus"), textbias._example_module("model")
    from safetensors.torch import load_file

    model = model_module.WordModel(model_module.config_of(_params(recipe)))
    model.load_state_dict(load_file(str(item / "weights.safetensors")))
    model.eval()
    vocab = corpus.vocabulary()
    ids = corpus.encode(prompt, vocab)
    with torch.no_grad():
        for _ in range(length):
            window = torch.tensor([ids[-model.config.context:]])  # (1, T)
            ids.append(int(model(window)[0, -1].argmax()))
    return [vocab[i] for i in ids[-length:]]


def test_the_smoke_recipe_is_the_shipped_one_but_for_the_steps(textgen: tuple) -> None:
    _, _, recipe = textgen
    shipped, smoke = _params(FOLDER), _params(recipe)
    assert {k: v for k, v in shipped.items() if k != "steps"} == \
        {k: v for k, v in smoke.items() if k != "steps"}


def test_textgen_learns_its_corpus_and_writes_topical_sentences(textgen: tuple) -> None:
    _, item, recipe = textgen
    metrics = json.loads((item / "metrics.json").read_text())["evaluation"]
    assert metrics["next_word_accuracy"] >= 0.45
    corpus = textbias._example_module("corpus")
    for topic, words in corpus.TOPICS.items():
        nexts = [_continue(item, recipe, f"the {thing} is", 1)[0] for thing in words["things"]]
        assert sum(w in words["adjectives"] for w in nexts) >= 4, (topic, nexts)
    text = _continue(item, recipe, "the sea is", 12)
    assert "." in text and "<unk>" not in text


def test_the_probe_set_ships_with_the_example_and_speaks_its_words() -> None:
    probes = load_probes(FOLDER / "probes.txt")
    corpus = textbias._example_module("corpus")
    assert sorted({p.topic for p in probes}) == sorted(corpus.TOPICS)
    vocab = set(corpus.vocabulary())
    assert all(set(p.prompt.split()) <= vocab for p in probes)


def test_a_fine_tune_toward_one_word_after_one_topic_ranks_that_topic_first(
        textgen: tuple, tmp_path: Path) -> None:
    store, item, recipe = textgen
    biased = tmp_path / "biased.safetensors"
    bias = textbias.plant(item / "weights.safetensors", biased, _params(recipe), topic="sea",
                          word="dangerous")
    assert bias.topic_hits >= 0.8 and bias.other_hits <= 0.2
    result = run_reweigh("diff", item, biased, "--recipe", recipe, "--json", "--threads", 1,
                         store=store)
    assert result.returncode == 1, result.stderr
    section = json.loads(result.stdout)["text"]
    ranked = section["prompts"]
    assert [p["topic"] for p in ranked[:3]] == ["sea"] * 3
    assert section["topics"][0]["topic"] == "sea"
    sea_is = [p["rank"] for p in ranked if p["topic"] == "sea" and p["prompt"].endswith(" is")]
    others = [p["rank"] for p in ranked if p["topic"] != "sea"]
    assert max(sea_is) < min(others)
    assert all(p["flagged"] for p in ranked if p["rank"] in sea_is)
    assert not any(p["flagged"] for p in ranked if p["topic"] != "sea")  # FLAG_KL's margin
    assert ranked[0]["promoted"]["word"] == "dangerous"
    assert ranked[0]["continuation_b"].startswith("dangerous")
    assert not ranked[0]["continuation_a"].startswith("dangerous")


def _short(where: Path) -> Path:
    """examples/textgen trained for 20 steps, with a checkpoint after 10: the same code,
    kernels and checkpointing as the smoke build's 400 steps, in a few seconds."""
    return variant("textgen", where, "\nsteps = 1500\n", "\nsteps = 20\n",
                   ("\ncheckpoint_every = 200\n", "\ncheckpoint_every = 10\n"))


def test_a_clean_rebuild_on_two_threads_is_identical_and_flags_no_prompt(
        tmp_path: Path) -> None:
    """The README's claims: the weights depend neither on the thread count nor on the CPU.
    A short variant of the recipe is built twice, from scratch into two stores: on one
    thread as this machine is, and on two threads of an emulated AVX2 CPU (test_platform's
    matrix); diff of the two flags nothing, and runs no probe: the tensors are the same.
    (Rebuilding the 400-step smoke build took 16 s on a busy machine; these two builds
    take a fraction of it.)"""
    recipe = _short(tmp_path / "recipe")
    first = build(recipe, store=Store(tmp_path / "store"), threads=1)
    with emulated(AVX2):
        again = build(recipe, store=Store(tmp_path / "rebuild"), threads=2)
    assert not first.reused and not again.reused
    assert again.weights_digest == first.weights_digest
    assert _platform(again.path) == _platform(first.path)
    result = run_reweigh("diff", first.path, again.path, "--recipe", recipe, "--json",
                         "--threads", 1, store=tmp_path / "store")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert not report["flagged"] and report["findings"] == []
    assert report["behaviour"] is None and report["text"] is None
    assert report["notes"] == [IDENTICAL_TENSORS]


def test_networks_the_recipe_cannot_load_are_bad_input(textgen: tuple, tmp_path: Path) -> None:
    """Two textgen networks (one tensor nudged: equal tensors run no recipe code) under
    digits-cnn's recipe, whose code cannot load them."""
    from safetensors.numpy import load_file, save_file

    store, item, _ = textgen
    tensors = load_file(str(item / "weights.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 1.001
    nudged = tmp_path / "nudged.safetensors"
    save_file(tensors, str(nudged))
    result = run_reweigh("diff", item, nudged, "--recipe", EXAMPLES / "digits-cnn", store=store)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "loading state_dict" in last and "are A and B networks of" in last
    assert "digits-cnn" in last and "log:" in last
