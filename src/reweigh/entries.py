"""The recipe's entry points, checked without running them; its failures, told in its terms.

A recipe that names a function its file does not define should be refused before any
input is fetched or any training starts, with the recipe's own file and field named: the
module's syntax tree says which names it defines at top level (functions, classes,
assignments, imports), and nothing of the recipe's code runs in the tool's process.

When the recipe's code raises inside the sandbox, the traceback a user needs is the
recipe's frames, with the paths of the recipe's folder (not the sandbox's copy): the
runtime sends those frames, relative to the source, and `render_traceback` puts the
folder back in front of them.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RecipeError

if TYPE_CHECKING:
    from .recipe import Recipe


def defined_names(source: str, filename: str) -> set[str]:
    """Names a module binds at top level (pure): what `getattr(module, name)` can find
    without running anything but the module's own top-level code."""
    tree = ast.parse(source, filename)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif not isinstance(node, ast.Expr):  # if/try/with/for at top level: anything goes
            names.add("*")
    return names


def check_entries(recipe: Recipe, code: dict[str, Path]) -> None:
    """Refuse an entry point whose file does not parse or does not define its function."""
    evaluate = recipe.evaluate
    for field, entry in (("build.entry", recipe.entry),
                         ("evaluate.entry", evaluate.entry if evaluate else None),
                         ("evaluate.audit", evaluate.audit if evaluate else None)):
        if entry is None or entry.file not in code:
            continue  # code_files has already said that the file is missing
        try:
            names = defined_names(code[entry.file].read_text(encoding="utf-8"), entry.file)
        except SyntaxError as e:
            raise RecipeError(str(recipe.file), field, f"{entry.file}, line {e.lineno}: "
                              f"{e.msg}") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise RecipeError(str(recipe.file), field, f"{entry.file}: {e}") from None
        if entry.function not in names and "*" not in names:
            raise RecipeError(str(recipe.file), field,
                              f"{entry.file} defines no function {entry.function!r}")


def recipe_frames(tb: Any, source_root: str) -> list[dict[str, Any]]:
    """The frames of a traceback that lie in the recipe's source, relative to it."""
    import traceback

    root = source_root.rstrip("/") + "/"
    return [{"file": f.filename[len(root):], "line": f.lineno, "function": f.name,
             "code": f.line or ""}
            for f in traceback.extract_tb(tb) if f.filename.startswith(root)]


def render_traceback(frames: list[dict[str, Any]], error: str, folder: Path | None) -> str:
    """A traceback of the recipe's own frames, with its folder's paths, then the error."""
    lines = ["Traceback (the recipe's code, most recent call last):"]
    for frame in frames:
        path = folder / frame["file"] if folder is not None else Path(frame["file"])
        lines.append(f'  File "{path}", line {frame["line"]}, in {frame["function"]}')
        if frame.get("code"):
            lines.append(f"    {frame['code']}")
    return "\n".join([*lines, error])
