"""`export guix`: a recipe as a Guix package definition that rebuilds it (`export` holds
the other export, of transcripts).

Resolves the recipe as `build` does (its inputs enter the store, so their digests and
addresses are known), then gathers what `guix_export` writes: every file of the recipe
the build reads, every input from elsewhere, the licences, the Python packages the code
imports. Builds nothing.
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..digest import file_digest, tree_files
from ..errors import UsageError
from ..guix_export import Origin, Package, guix_licences, python_packages, render
from ..inputs import ResolvedInput
from ..recipe import Recipe
from ..store import Store
from .build import plan


def export_guix(recipe_dir: Path | str, *, store: Store | None = None,
                base_url: str | None = None, home_page: str | None = None) -> str:
    """The package definition's text. `base_url` is where the recipe's files are
    published (default: file:// URLs of this machine's copy)."""
    store = store or Store()
    the_plan = plan(recipe_dir, store)
    recipe = the_plan.recipe
    root = recipe.directory.resolve()
    files = _recipe_files(recipe, the_plan.code, the_plan.inputs)
    origins = tuple(Origin(rel, _uri(root, rel, base_url), file_digest(root / rel))
                    for rel in files)
    licences = []
    for role in ("weights", "code", "data"):
        licences += guix_licences(getattr(recipe.license, role), f"{recipe.file}: license.{role}")
    if not licences:
        raise UsageError(f"{recipe.file}: license: no licence to give the package")
    own = {Path(rel).stem for rel in the_plan.code if rel.endswith(".py")}
    package = Package(
        name=recipe.name, version=recipe.version, description=recipe.description,
        recipe_file=recipe.file_name, derivation=the_plan.derivation.digest,
        item=the_plan.derivation.item_name, recipe_files=origins,
        sources=tuple(_source(recipe, i) for i in the_plan.inputs if i.kind in ("url", "debian")),
        inputs=tuple(sorted({*python_packages(the_plan.code, own),
                             *(_distribution(i) for i in the_plan.inputs if i.kind == "package")})),
        licences=tuple(dict.fromkeys(licences)),
        licence_comment=(f"weights {recipe.license.weights}; code {recipe.license.code}; "
                         f"data {recipe.license.data}"),
        home_page=home_page or root.as_uri(), reweigh_source=_reweigh_source(),
        reweigh_version=__version__)
    return render(package)


def _recipe_files(recipe: Recipe, code: dict[str, Path],
                  inputs: tuple[ResolvedInput, ...]) -> list[str]:
    """The recipe file, the code files, the probe set and every file of a path input,
    as paths relative to the recipe directory; a store-item input is refused."""
    root = recipe.directory.resolve()
    files = {recipe.file_name, *code}
    if recipe.evaluate and recipe.evaluate.probes:
        files.add(recipe.evaluate.probes)
    for spec, resolved in zip(recipe.inputs, inputs, strict=True):
        if resolved.kind == "item":
            raise UsageError(f"{recipe.file}: inputs.{spec.name}: a store item has no address "
                             "Guix could fetch it from; export and build its own recipe first")
        if resolved.kind == "path":
            source = root / spec.source
            files.update(f.relative_to(root).as_posix() for f in
                         ([source] if source.is_file() else tree_files(source)))
    return sorted(files)


def _uri(root: Path, rel: str, base_url: str | None) -> str:
    if base_url:
        return f"{base_url.rstrip('/')}/{rel}"
    return (root / rel).as_uri()


def _source(recipe: Recipe, resolved: ResolvedInput) -> Origin:
    """A url or debian input as an origin named by its SHA-256 (the .deb's for Debian)."""
    if resolved.kind == "url":
        return Origin(resolved.digest.split(":", 1)[1], str(resolved.origin["url"]),
                      resolved.digest, f"input {resolved.name}")
    pin = recipe.input(resolved.name).debian
    assert pin is not None
    url = resolved.origin.get("url")
    if not isinstance(url, str):  # kept by a reweigh that did not record it
        raise UsageError(f"{recipe.file}: inputs.{resolved.name}: the store does not know where "
                         f"{pin.file_name} can be downloaded from",
                         hint="`reweigh gc` it and build again")
    return Origin(pin.digest.split(":", 1)[1], url, pin.digest,
                  f"input {resolved.name}: Debian {pin.package} {pin.version} ({pin.architecture})")


def _distribution(resolved: ResolvedInput) -> str:
    """The Guix package of the Python distribution a `package` input's data ships in."""
    name = str(resolved.origin.get("package", resolved.name)).lower().replace("_", "-")
    return f"python-{name}"


def _reweigh_source() -> Path:
    """The source tree reweigh runs from (its checkout, for an editable install)."""
    package = Path(__file__).resolve().parents[1]  # src/reweigh
    checkout = package.parents[1]
    return checkout if (checkout / "pyproject.toml").is_file() else package
