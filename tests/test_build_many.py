"""`reweigh build R1 R2 ...`: several recipes at once, each result as if built alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from .helpers import run_reweigh, store_is_empty, write_recipe


@pytest.mark.slow
def test_several_recipes_build_at_once_and_one_failure_stops_none_of_the_others(
        tmp_path: Path) -> None:
    recipes = [write_recipe(tmp_path / f"scale-{scale}", params=f"scale = {scale}.0")
               for scale in (1, 2, 3)]
    missing = tmp_path / "not-there"
    given = [recipes[0], missing, recipes[1], recipes[2]]
    result = run_reweigh("build", *given, "--workers", "2", "--json", store=tmp_path / "store")
    assert result.returncode == 2, result.stderr  # the worst of them: a usage error
    assert result.stderr.count("\n") == 1 and str(missing) in result.stderr
    rows = json.loads(result.stdout)
    assert [row["recipe"] for row in rows] == [str(r) for r in given]
    assert rows[1]["exit_code"] == 2 and str(missing) in rows[1]["error"]
    built = [rows[0], rows[2], rows[3]]
    assert len({row["derivation"] for row in built}) == 3
    for row, scale in zip(built, (1, 2, 3), strict=True):
        weights = load_file(str(Path(row["path"]) / "weights.safetensors"))
        np.testing.assert_array_equal(weights["w"], np.arange(4, dtype=np.float32) * scale)
        provenance = json.loads((Path(row["path"]) / "provenance.json").read_text())
        internal = provenance["predicate"]["buildDefinition"]["internalParameters"]
        assert internal["workers"] == 1  # the two workers build two recipes, each on one
    # each is the item a build of that recipe alone finds: the same derivation, reused
    alone = run_reweigh("build", recipes[1], "--json", store=tmp_path / "store")
    assert json.loads(alone.stdout)["derivation"] == rows[2]["derivation"]
    assert json.loads(alone.stdout)["reused"] is True


@pytest.mark.parametrize("how", ["option", "environment"])
def test_several_recipes_do_not_go_to_a_cluster(tmp_path: Path, how: str) -> None:
    a, b = write_recipe(tmp_path / "a"), write_recipe(tmp_path / "b", params="scale = 2.0")
    asked = {"option": (["--cluster", "127.0.0.1:6379"], {}),
             "environment": ([], {"REWEIGH_CLUSTER": "127.0.0.1:6379"})}
    options, env = asked[how]
    result = run_reweigh("build", a, b, *options, store=tmp_path / "s", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == ("reweigh: --cluster ($REWEIGH_CLUSTER): several recipes "
                                     "build on this machine (give one recipe to spread its "
                                     "build over a cluster)")
    assert store_is_empty(tmp_path / "s")
