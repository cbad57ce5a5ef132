"""JSON Schemas for the files reweigh reads, shipped as package data.

`recipe.schema.json` describes recipe.toml as tomllib parses it, so that editors
and other tools can check a recipe without running reweigh. It mirrors
`reweigh.recipe.parse_recipe`, which stays the authority: the tests fuzz both and
require them to agree. Checks that need the disk (an input exists, a digest
matches, a package ships the named data set) are made when a recipe is built.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

RECIPE_SCHEMA = "recipe.schema.json"


def recipe_schema() -> dict[str, Any]:
    """The recipe's JSON Schema (draft 2020-12), as a fresh dict."""
    text = files(__name__).joinpath(RECIPE_SCHEMA).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
