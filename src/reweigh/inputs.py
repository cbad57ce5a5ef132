"""Resolving a recipe's inputs to content digests, and keeping them in the store.

Every input ends up as a read-only file or folder under the store's `inputs/`,
named by its digest, whatever it came from: a file or folder in the recipe, a data
set shipped inside an installed package, a URL (downloaded once, verified), a Debian
binary package (the .deb found or fetched with `apt-get download`, verified by its
pinned digest, unpacked by `debian`), or another store item (a base model to
fine-tune). A declared digest that does not match is an error, never a warning, and
nothing unverified enters the store. A kept copy found damaged when it is reused is no
copy (`Store.input_path` removes it and says so in the store's log): the input is staged
again from its source here. `$REWEIGH_SOURCES` names folders of files to use instead of
downloading (each named by its SHA-256, or a .deb by its archive name), still verified.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import debian
from .digest import ALGORITHM, file_digest, path_digest
from .errors import DigestMismatch, InputError, ReweighError
from .recipe import InputSpec, Recipe
from .store import Store, remove_tree

# Data sets shipped inside packages, by normalised distribution name: the files that make them.
PACKAGE_DATASETS: dict[str, dict[str, tuple[str, ...]]] = {
    "scikit-learn": {
        "digits": ("sklearn/datasets/data/digits.csv.gz", "sklearn/datasets/descr/digits.rst"),
        "iris": ("sklearn/datasets/data/iris.csv", "sklearn/datasets/descr/iris.rst"),
        "wine": ("sklearn/datasets/data/wine_data.csv", "sklearn/datasets/descr/wine_data.rst"),
        "breast_cancer": ("sklearn/datasets/data/breast_cancer.csv",
                          "sklearn/datasets/descr/breast_cancer.rst"),
    },
}
# Import names of the distributions above, for the message when a recipe names one
# (`package = "sklearn"`) and the distribution is not installed to say so itself.
IMPORT_NAMES: dict[str, list[str]] = {"sklearn": ["scikit-learn"]}
DOWNLOAD_LIMIT = 8 << 30
DOWNLOAD_TIMEOUT = 60.0


@dataclass(frozen=True)
class ResolvedInput:
    name: str
    kind: str
    digest: str
    path: Path  # read-only, inside the store
    origin: dict[str, Any] = field(hash=False)


def resolve_inputs(recipe: Recipe, store: Store) -> tuple[ResolvedInput, ...]:
    """Resolve and verify every input, then keep them: a bad input leaves nothing behind."""
    resolvers = {"path": _from_recipe, "package": _from_package, "url": _from_url,
                 "item": _from_item, "debian": _from_debian}
    staging = store.new_staging_dir()
    try:
        pending = [resolvers[spec.kind](recipe, spec, store, staging) for spec in recipe.inputs]
        return tuple(_keep(store, p) for p in pending)
    finally:
        remove_tree(staging)


@dataclass(frozen=True)
class _Pending:
    """A verified input: already in the store (`path`), or staged to enter it (`staged`)."""

    name: str
    kind: str
    digest: str
    origin: dict[str, Any] = field(hash=False)
    path: Path | None = None
    staged: Path | None = None


def _keep(store: Store, pending: _Pending) -> ResolvedInput:
    path = pending.path or store.input_path(pending.digest)
    if path is None:
        assert pending.staged is not None
        path = store.add_input(pending.staged, pending.digest, pending.kind, pending.origin)
    return ResolvedInput(pending.name, pending.kind, pending.digest, path, pending.origin)


def _label(recipe: Recipe, spec: InputSpec) -> str:
    return f"{recipe.file}: inputs.{spec.name}"


def _check_pinned(recipe: Recipe, spec: InputSpec, actual: str) -> None:
    if spec.digest is not None and spec.digest != actual:
        raise DigestMismatch(_label(recipe, spec), spec.digest, actual)


def _stage_copy(source: Path, staging: Path, digest: str, what: str) -> Path:
    """Copy source into the staging area and check the copy still has `digest`."""
    staged = staging / f"{len(list(staging.iterdir()))}" / source.name
    staged.parent.mkdir()
    if source.is_dir():
        shutil.copytree(source, staged, symlinks=True)
    else:
        shutil.copyfile(source, staged)
    copied = path_digest(staged)
    if copied != digest:  # the source changed while we copied it
        raise DigestMismatch(what, digest, copied)
    return staged


def _from_recipe(recipe: Recipe, spec: InputSpec, store: Store, staging: Path) -> _Pending:
    label = _label(recipe, spec)
    source = recipe.directory / spec.source
    if not source.exists():
        raise InputError(f"{label}.path: {spec.source} does not exist")
    if not source.resolve().is_relative_to(recipe.directory.resolve()):
        raise InputError(f"{label}.path: {spec.source} leaves the recipe directory")
    try:
        digest = path_digest(source)
    except ReweighError as e:
        raise InputError(f"{label}.path: {e.message}") from e
    _check_pinned(recipe, spec, digest)
    origin = {"path": spec.source}
    known = store.input_path(digest)
    staged = None if known else _stage_copy(source, staging, digest, label)
    return _Pending(spec.name, "path", digest, origin, known, staged)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _from_package(recipe: Recipe, spec: InputSpec, store: Store, staging: Path) -> _Pending:
    label = _label(recipe, spec)
    try:
        dist = importlib.metadata.distribution(spec.source)
    except importlib.metadata.PackageNotFoundError as e:
        raise InputError(f"{label}.package: no distribution named {spec.source} is installed"
                         + _distribution_hint(spec.source)) from e
    assert spec.resource is not None
    files = _package_files(dist, spec, label)
    base = Path(spec.resource.removeprefix("dataset:")).name
    folder = staging / f"{len(list(staging.iterdir()))}" / f"{_normalise(spec.source)}-{base}"
    folder.mkdir(parents=True)
    for relative in files:
        located = Path(str(dist.locate_file(relative)))
        if not located.is_file():
            raise InputError(f"{label}: {relative} is missing from {spec.source}")
        shutil.copyfile(located, folder / Path(relative).name)
    digest = path_digest(folder)
    _check_pinned(recipe, spec, digest)
    origin = {"package": dist.metadata["Name"], "version": dist.version,
              "resource": spec.resource, "files": list(files)}
    return _Pending(spec.name, "package", digest, origin, store.input_path(digest), folder)


def _distribution_hint(name: str) -> str:
    """When `name` is what one imports (`sklearn`), the distribution that provides it,
    which is what `package` names (`scikit-learn`)."""
    provided = sorted(set(importlib.metadata.packages_distributions().get(name) or
                          IMPORT_NAMES.get(name, [])))
    if not provided:
        return ""
    return (f"; the module {name} comes from the distribution named {' or '.join(provided)}: "
            f"write package = \"{provided[0]}\"")


def _package_files(dist: importlib.metadata.Distribution, spec: InputSpec,
                   label: str) -> tuple[str, ...]:
    assert spec.resource is not None
    if spec.resource.startswith("dataset:"):
        dataset = spec.resource.removeprefix("dataset:")
        known = PACKAGE_DATASETS.get(_normalise(spec.source), {})
        if dataset not in known:
            names = ", ".join(sorted(known)) or "none"
            raise InputError(f"{label}.dataset: unknown data set '{dataset}' for "
                             f"{spec.source} (known: {names})")
        return known[dataset]
    listed = {f.as_posix() for f in dist.files or []}
    if spec.resource not in listed:
        raise InputError(f"{label}.resource: {spec.resource} is not a file of {spec.source}")
    return (spec.resource,)


def _from_url(recipe: Recipe, spec: InputSpec, store: Store, staging: Path) -> _Pending:
    label = _label(recipe, spec)
    assert spec.digest is not None
    origin = {"url": spec.source}
    known = store.input_path(spec.digest)
    if known is not None:
        return _Pending(spec.name, "url", spec.digest, origin, known)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", spec.source.rstrip("/").rsplit("/", 1)[-1])
    target = staging / f"{len(list(staging.iterdir()))}" / (name.lstrip(".") or "download")
    target.parent.mkdir()
    local = _local_copy(spec.digest)
    if local is not None:  # a copy in $REWEIGH_SOURCES: no download (Guix's build does this)
        shutil.copyfile(local, target)
        origin["copied_from"] = str(local)
    actual = file_digest(target) if local is not None else _download(spec.source, target, label)
    if actual != spec.digest:
        raise DigestMismatch(f"{label}.url", spec.digest, actual)
    return _Pending(spec.name, "url", actual, origin, staged=target)


def _local_copy(digest: str) -> Path | None:
    """A file named by the digest's hex digits in a folder of $REWEIGH_SOURCES."""
    hex_name = digest.split(":", 1)[1]
    for folder in debian.local_sources()[:-1]:  # not apt's cache: it holds .debs only
        if (folder / hex_name).is_file():
            return folder / hex_name
    return None


def _download(url: str, target: Path, label: str) -> str:
    """Stream url into target, hashing as it goes; return the digest."""
    import httpx  # only URL inputs need an HTTP client

    hasher = hashlib.sha256()
    size = 0
    try:
        with httpx.stream("GET", url, timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as reply:
            if reply.status_code != 200:
                raise InputError(f"{label}.url: {url} answered HTTP {reply.status_code}")
            with open(target, "wb") as out:
                for chunk in reply.iter_bytes(1 << 20):
                    size += len(chunk)
                    if size > DOWNLOAD_LIMIT:
                        raise InputError(f"{label}.url: {url} is larger than {DOWNLOAD_LIMIT}")
                    hasher.update(chunk)
                    out.write(chunk)
    except httpx.HTTPError as e:
        raise InputError(f"{label}.url: could not download {url}: {e}") from e
    return f"{ALGORITHM}:{hasher.hexdigest()}"


def _from_item(recipe: Recipe, spec: InputSpec, store: Store, staging: Path) -> _Pending:
    label = _label(recipe, spec)
    try:
        item = store.resolve(spec.source)
    except ReweighError as e:
        raise InputError(f"{label}.item: {e.message}") from e
    _check_pinned(recipe, spec, item.weights_digest)
    origin = {"item": item.path.name, "derivation": item.derivation, "name": item.name,
              "version": item.version}
    return _Pending(spec.name, "item", item.weights_digest, origin, item.path)


def _from_debian(recipe: Recipe, spec: InputSpec, store: Store, staging: Path) -> _Pending:
    """A Debian package's files: kept unpacked, by the digest of the tree of the files the
    recipe selects; found again by the .deb's digest and the selection, so a kept copy
    needs no download."""
    label = f"{_label(recipe, spec)}.debian"
    pin = spec.debian
    assert pin is not None
    match = {"deb": pin.digest, "files": list(pin.files)}
    kept = store.find_input("debian", match)
    if kept is not None and (path := store.input_path(kept[0])) is not None:
        return _Pending(spec.name, "debian", kept[0], kept[1], path)
    slot = staging / f"{len(list(staging.iterdir()))}"
    slot.mkdir()
    deb, url = debian.fetch(pin, slot, label)
    debian.check_control(deb, pin, label)
    folder = slot / "unpacked" / f"{pin.package}_{pin.version.replace(':', '%3a')}"
    unpacked = debian.unpack(deb, folder, pin.files, label)
    digest = path_digest(folder)
    origin = {**_debian_origin(pin, url), "unpacked_files": unpacked.files,
              "links_left_out": unpacked.links_left_out}
    return _Pending(spec.name, "debian", digest, origin, store.input_path(digest), folder)


def _debian_origin(pin: debian.DebianPin, url: str) -> dict[str, Any]:
    return {"debian": pin.package, "version": pin.version, "architecture": pin.architecture,
            "deb": pin.digest, "files": list(pin.files), "url": url}
