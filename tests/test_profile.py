"""Profiles: install, generations, rollback, the on-disk layout other programs read."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from reweigh import build, install
from reweigh import profile as profiles
from reweigh.errors import UsageError
from reweigh.store import Store

from .helpers import run_reweigh, write_recipe

pytestmark = pytest.mark.slow  # every test here builds


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Three small items (scale 1, 2, 3) in one store."""
    root = tmp_path_factory.mktemp("profile")
    store = root / "store"
    built = [build(write_recipe(root / f"r{k}", params=f"scale = {k}.0"), store=Store(store))
             for k in (1, 2, 3)]
    return store, [b.path for b in built]


def _install(store: Path, profile: Path, item: Path, *extra: str) -> dict:
    result = run_reweigh("install", item, "--profile", profile, *extra, "--json", store=store)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_installing_writes_a_generation_that_any_program_can_read(
        items: tuple[Path, list[Path]], tmp_path: Path) -> None:
    store, (one, two, _) = items
    profile = tmp_path / "profile"
    first = _install(store, profile, one, "--as", "net")
    second = _install(store, profile, two, "--as", "net")
    assert (first["generation"], second["generation"]) == (1, 2)
    assert second["replaced"]["item"] == str(one) and second["item"] == str(two)
    # the documented layout: current -> generations/N, a manifest, one link per name
    assert os.readlink(profile / "current") == "generations/2"
    manifest = json.loads((profile / "current" / "manifest.json").read_text())
    assert manifest["format"] == "reweigh.profile/1" and manifest["generation"] == 2
    assert manifest["networks"]["net"]["item"] == str(two)
    assert manifest["networks"]["net"]["weights_digest"] == Store(store).resolve(
        str(two)).weights_digest
    assert (profile / "current" / "net").resolve() == two.resolve()
    assert (profile / "current" / "net" / "weights.safetensors").is_file()
    assert profiles.lookup("net", profile) == two


def test_rollback_switch_and_a_new_install_after_rollback(
        items: tuple[Path, list[Path]], tmp_path: Path) -> None:
    store, (one, two, three) = items
    profile = tmp_path / "p"
    for item in (one, two):
        _install(store, profile, item, "--as", "net")
    rolled = run_reweigh("profile", "rollback", "--profile", profile, "--json")
    assert rolled.returncode == 0 and json.loads(rolled.stdout)["generation"] == 1
    assert profiles.lookup("net", profile) == one
    again = run_reweigh("profile", "rollback", "--profile", profile)
    assert again.returncode == 2 and "no generation before 1" in again.stderr
    # a change made after a rollback becomes the newest generation; nothing is overwritten
    assert _install(store, profile, three, "--as", "other")["generation"] == 3
    generation = profiles.Profile(profile).current()
    assert generation is not None and set(generation.networks) == {"net", "other"}
    assert generation.networks["net"].item == one
    switched = run_reweigh("profile", "switch", "2", "--profile", profile)
    assert switched.returncode == 0 and profiles.lookup("net", profile) == two
    listed = json.loads(run_reweigh("profile", "list", "--profile", profile, "--json").stdout)
    assert [g["generation"] for g in listed["generations"]] == [1, 2, 3]
    assert [g["current"] for g in listed["generations"]] == [False, True, False]


def test_delete_and_remove(items: tuple[Path, list[Path]], tmp_path: Path) -> None:
    store, (one, two, _) = items
    profile = tmp_path / "p"
    _install(store, profile, one, "--as", "a")
    _install(store, profile, two, "--as", "b")
    current = run_reweigh("profile", "delete", "2", "--profile", profile)
    assert current.returncode == 2 and "is the current one" in current.stderr
    assert run_reweigh("profile", "delete", "1", "--profile", profile).returncode == 0
    assert profiles.Profile(profile).numbers() == [2]
    removed = run_reweigh("profile", "remove", "a", "--profile", profile, "--json")
    assert removed.returncode == 0 and json.loads(removed.stdout)["networks"].keys() == {"b"}
    with pytest.raises(UsageError, match="no network named 'a'"):
        profiles.lookup("a", profile)


def test_bad_names_unknown_items_and_empty_profiles_exit_2(
        items: tuple[Path, list[Path]], tmp_path: Path) -> None:
    store, (one, _, _) = items
    profile = tmp_path / "p"
    for name in ("Net", "../x", "manifest.json", ""):
        result = run_reweigh("install", one, "--as", name, "--profile", profile, store=store)
        assert result.returncode == 2 and "--as:" in result.stderr, name
    unknown = run_reweigh("install", "no-such-item", "--profile", profile, store=store)
    assert unknown.returncode == 2 and "no such item" in unknown.stderr
    assert not (profile / "generations").exists()
    empty = run_reweigh("profile", "list", "--profile", profile)
    assert empty.returncode == 0 and "no generations yet" in empty.stdout
    assert run_reweigh("profile", "switch", "7", "--profile", profile).returncode == 2


def test_the_default_profile_is_reweigh_profile(items: tuple[Path, list[Path]], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store, (one, _, _) = items
    monkeypatch.setenv("REWEIGH_PROFILE", str(tmp_path / "env-profile"))
    report = install(str(one), store=Store(store))
    assert report.profile == tmp_path / "env-profile" and report.name == "test-recipe"
    assert profiles.lookup("test-recipe") == one


def test_concurrent_installs_each_get_a_generation_and_none_is_lost(
        items: tuple[Path, list[Path]], tmp_path: Path) -> None:
    store, paths = items
    profile = tmp_path / "p"
    names = [f"n{i}" for i in range(8)]
    threads = [threading.Thread(target=install, args=(str(paths[i % 3]),),
                                kwargs={"name": name, "profile": profile,
                                        "store": Store(store)})
               for i, name in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    the_profile = profiles.Profile(profile)
    assert the_profile.numbers() == list(range(1, 9))
    current = the_profile.current()
    assert current is not None and sorted(current.networks) == names
