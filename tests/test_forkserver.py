"""The tests' commands are forks of a server that has loaded reweigh (tests.forkserver):
each must answer as a fresh `python -m reweigh.cli.main` does, exit status, standard
output and standard error alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from . import forkserver
from .helpers import run_reweigh, write_recipe


@pytest.mark.parametrize("case", ["version", "usage", "bad recipe", "build", "unknown item"])
def test_a_forked_command_answers_as_a_fresh_interpreter_does(tmp_path: Path,
                                                              case: str) -> None:
    """Each way into its own store (a build changes it), named alike in the output."""
    recipe = write_recipe(tmp_path / "r")
    bad = tmp_path / "bad" / "recipe.toml"
    write_recipe(bad.parent)
    bad.write_text(bad.read_text().replace("seed = 1", "sead = 1"))
    args: dict[str, tuple[object, ...]] = {
        "version": ("--version",), "usage": ("build", "--no-such-option"),
        "bad recipe": ("build", bad), "build": ("build", recipe, "--json"),
        "unknown item": ("show", "nothing-here")}
    answers = []
    for way, env in (("forked", {}), ("fresh", {forkserver.FRESH: "1"})):
        store = tmp_path / way
        result = run_reweigh(*args[case], "--store", store, env=env)
        answers.append((result.returncode, result.stdout.replace(str(store), "STORE"),
                        result.stderr.replace(str(store), "STORE")))
    assert answers[0] == answers[1]
    assert answers[0][0] == {"version": 0, "usage": 2, "bad recipe": 2, "build": 0,
                             "unknown item": 2}[case], answers[0]


def test_the_environment_working_folder_and_umask_are_the_callers(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """REWEIGH_STORE set for this call only, a relative recipe path and the umask:
    each as the calling test had them."""
    write_recipe(tmp_path / "r")
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o077)
    try:
        result = run_reweigh("build", "r", env={"REWEIGH_STORE": str(tmp_path / "s")})
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "s" / "items").iterdir())) == 1  # REWEIGH_STORE, from r
    assert (tmp_path / "s").stat().st_mode & 0o077 == 0  # made under the caller's umask


def test_what_an_interpreter_reads_as_it_starts_gets_a_fresh_one() -> None:
    server = forkserver.server()
    plain = {k: v for k, v in os.environ.items() if k != forkserver.FRESH}
    assert server.takes(plain)
    assert not server.takes({**plain, "PYTHONPATH": "/elsewhere"})
    assert not server.takes({**plain, forkserver.FRESH: "1"})
