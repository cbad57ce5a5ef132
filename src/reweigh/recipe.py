"""recipe.toml -> Recipe: parsing and validation, nothing else.

A recipe is a directory holding `recipe.toml` and the training code beside it. Other
`.toml` files in the same directory are variants of it (a quick `smoke.toml`, say):
given by path, they are read instead of `recipe.toml` and share its code.
This module turns the TOML into a frozen `Recipe` and refuses anything odd with a
`RecipeError` naming the file, the field and the reason. It does not touch the
inputs or the code files (see `inputs` and `derivation`): parsing stays pure
apart from reading the one file, so it can be fuzzed cheaply.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, overload

from .debian import ARCHITECTURE_RE, PACKAGE_RE, VERSION_RE, DebianPin
from .digest import MAX_SAFE_INTEGER, is_digest
from .errors import RecipeError
from .numerics import LEVELS, NATIVE, PORTABLE

RECIPE_FILE = "recipe.toml"
MAX_RECIPE_BYTES = 1 << 20
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes 32 bits
MAX_STRING = 10_000
MAX_DEPTH = 4

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_ENTRY_RE = re.compile(r"^([A-Za-z0-9_./-]+\.py):([A-Za-z_][A-Za-z0-9_]*)$")
_SPDX_RE = re.compile(r"^[A-Za-z0-9.+\-:() ]{1,200}$")
_URL_RE = re.compile(r"^https?://[^\s]{1,2000}$")
_PACKAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

TOP_FIELDS = {"name", "version", "description", "seed", "license", "inputs", "build",
              "params", "evaluate"}
INPUT_KINDS = ("path", "package", "url", "item", "debian")
DEBIAN_FIELDS = {"version", "architecture", "files"}


@dataclass(frozen=True)
class EntryPoint:
    file: str  # relative POSIX path inside the recipe directory
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.function}"


@dataclass(frozen=True)
class License:
    code: str
    data: str
    weights: str


@dataclass(frozen=True)
class InputSpec:
    """One declared input; exactly one of path/package/url/item/debian says where it
    comes from."""

    name: str
    kind: str
    source: str  # the path, package name, URL, item reference or Debian package name
    resource: str | None = None  # for packages: a data set name or a path inside the package
    digest: str | None = None  # pinned digest, required for URLs and Debian packages (.deb)
    debian: DebianPin | None = None  # for Debian packages: version, architecture, files


@dataclass(frozen=True)
class Tolerance:
    """How far a rebuild on another environment may drift and still count as equivalent."""

    weights_rel_l2: float = 1e-3
    agreement: float = 0.995
    metric: str = "accuracy"
    metric_delta: float = 0.005
    segment_rel_l2: float | None = None  # one replayed segment's drift (verify); None: derived


@dataclass(frozen=True)
class Retention:
    """Which checkpoints an item keeps (`[build] keep_every`, `keep_last`): every n-th and
    the last m; 0 for both (the default) keeps them all. The transcript lists the digests
    of all of them either way; this only decides which files the store holds. It cannot
    change the weights, so it is no part of the derivation."""

    every: int = 0
    last: int = 0

    def keeps(self, index: int, count: int) -> bool:
        """Whether the index-th (from 1) of `count` checkpoints is kept."""
        return (self.every == 0 and self.last == 0) or (
            self.every > 0 and index % self.every == 0) or index > count - self.last


@dataclass(frozen=True)
class Evaluation:
    entry: EntryPoint
    tolerance: Tolerance
    audit: EntryPoint | None = None  # the view `reweigh diff` probes (model and data)
    probes: str | None = None  # a probe set of prompts, relative to the recipe directory


@dataclass(frozen=True)
class Recipe:
    directory: Path
    name: str
    version: str
    description: str
    seed: int
    license: License
    inputs: tuple[InputSpec, ...]
    entry: EntryPoint
    code: tuple[str, ...]  # fnmatch patterns of code files ('*' crosses '/'), relative paths
    params: dict[str, Any] = field(hash=False)
    evaluate: Evaluation | None = None
    checkpoint_every: int = 0  # 0: the recipe decides when to call ctx.checkpoint
    file_name: str = RECIPE_FILE  # the variant read, beside the code
    # The numerics platform (reweigh.numerics): "portable", a level such as "x86-64-v4",
    # or "native" with platform_reason saying why the recipe gives up portable bits.
    platform: str = "portable"
    platform_reason: str | None = None
    retention: Retention = Retention()

    @property
    def file(self) -> Path:
        return self.directory / self.file_name

    def input(self, name: str) -> InputSpec:
        return next(spec for spec in self.inputs if spec.name == name)


def is_recipe_path(path: Path) -> bool:
    """A recipe directory, or a recipe file (recipe.toml or a variant) given by path."""
    return (path.is_dir() and (path / RECIPE_FILE).is_file()) or \
        (path.suffix == ".toml" and path.is_file())


def load_recipe(path: Path | str) -> Recipe:
    """Read a recipe directory (its recipe.toml) or a recipe file into a validated Recipe."""
    path = Path(path)
    file = path if path.suffix == ".toml" and not path.is_dir() else path / RECIPE_FILE
    directory = file.parent
    label = str(file)
    if not file.is_file():
        raise RecipeError(label, "(file)", f"no {file.name} here")
    if file.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(label, "(file)", f"larger than {MAX_RECIPE_BYTES} bytes")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(label, "(file)", "not UTF-8 text") from e
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(label, "(syntax)", str(e)) from e
    except ValueError as e:  # an integer of more digits than Python converts (4300)
        raise RecipeError(label, "(syntax)", "an integer with too many digits") from e
    except RecursionError as e:
        raise RecipeError(label, "(syntax)", "arrays or tables nested too deeply") from e
    return parse_recipe(data, directory.resolve(), label, file.name)


def parse_recipe(data: dict[str, Any], directory: Path, label: str,
                 file_name: str = RECIPE_FILE) -> Recipe:
    """Validate parsed TOML; pure apart from `directory`, which is only stored."""
    v = _Validator(label)
    v.no_unknown(data, TOP_FIELDS, "")
    build = v.table(data, "build", required=True)
    v.no_unknown(build, {"entry", "code", "checkpoint_every", "platform", "platform_reason",
                         "keep_every", "keep_last"}, "build")
    platform, platform_reason = _platform(v, build)
    code = tuple(v.string_list(build, "code", "build.code") or ["*.py"])
    for i, pattern in enumerate(code):
        v.relative_path(pattern, f"build.code[{i}]")
    evaluate = v.table(data, "evaluate", required=False)
    return Recipe(
        directory=directory,
        name=v.matching(data, "name", _NAME_RE,
                        "a lowercase name of letters, digits, '.', '_', '-'"),
        version=v.matching(data, "version", _VERSION_RE, "a version such as 1.0.0"),
        description=v.string(data, "description", required=False) or "",
        seed=v.integer(data, "seed", "seed", 0, MAX_SEED),
        license=_license(v, v.table(data, "license", required=True)),
        inputs=tuple(_inputs(v, v.table(data, "inputs", required=False))),
        entry=v.entry(build, "entry", "build.entry"),
        code=code,
        params=v.params(v.table(data, "params", required=False), "params", 0),
        evaluate=_evaluation(v, evaluate) if evaluate else None,
        checkpoint_every=v.integer(build, "checkpoint_every", "build.checkpoint_every", 0,
                                   10**9, required=False) or 0,
        file_name=file_name,
        platform=platform,
        platform_reason=platform_reason,
        retention=Retention(
            v.integer(build, "keep_every", "build.keep_every", 0, 10**9, required=False) or 0,
            v.integer(build, "keep_last", "build.keep_last", 0, 10**9, required=False) or 0),
    )


def _platform(v: _Validator, build: dict[str, Any]) -> tuple[str, str | None]:
    """[build] platform and platform_reason: a known platform; native only with a reason."""
    platform = v.string(build, "platform", where="build.platform", required=False) or PORTABLE
    if platform not in (PORTABLE, NATIVE, *LEVELS):
        raise RecipeError(v.label, "build.platform", f"{platform!r} is not one of "
                          f"{', '.join([PORTABLE, NATIVE, *LEVELS])}")
    reason = v.string(build, "platform_reason", where="build.platform_reason", required=False)
    if platform == NATIVE and not (reason or "").strip():
        raise RecipeError(v.label, "build.platform_reason", "a native platform gives up bits "
                          "that other machines can reproduce; say why in platform_reason")
    return platform, reason


def _license(v: _Validator, table: dict[str, Any]) -> License:
    v.no_unknown(table, {"code", "data", "weights"}, "license")
    parts = {}
    for key in ("code", "data", "weights"):
        parts[key] = v.matching(table, key, _SPDX_RE, "an SPDX licence expression",
                                where=f"license.{key}")
    return License(**parts)


def _inputs(v: _Validator, table: dict[str, Any]) -> list[InputSpec]:
    specs = []
    for name, entry in table.items():
        where = f"inputs.{name}"
        if not _KEY_RE.fullmatch(name):
            raise RecipeError(v.label, where, "input names are letters, digits, '_' and '-'")
        if not isinstance(entry, dict):
            raise RecipeError(v.label, where, "must be a table")
        specs.append(_input(v, name, entry, where))
    return specs


def _input(v: _Validator, name: str, entry: dict[str, Any], where: str) -> InputSpec:
    v.no_unknown(entry, {*INPUT_KINDS, "dataset", "resource", "digest", *DEBIAN_FIELDS}, where)
    kinds = [k for k in INPUT_KINDS if k in entry]
    if len(kinds) != 1:
        raise RecipeError(v.label, where, f"needs exactly one of {', '.join(INPUT_KINDS)}")
    kind = kinds[0]
    source = v.string(entry, kind, where=f"{where}.{kind}")
    digest = v.string(entry, "digest", required=False, where=f"{where}.digest")
    # is_digest uses re.match, whose '$' also matches before a final newline
    if digest is not None and (not is_digest(digest) or digest.endswith("\n")):
        raise RecipeError(v.label, f"{where}.digest", "expected sha256:<64 lowercase hex digits>")
    resource, pin = None, None
    if kind == "path":
        v.relative_path(source, f"{where}.path")
    elif kind == "package":
        if not _PACKAGE_RE.fullmatch(source):
            raise RecipeError(v.label, f"{where}.package", "not a package name")
        resource = _package_resource(v, entry, where)
    elif kind == "url":
        if not _URL_RE.fullmatch(source):
            raise RecipeError(v.label, f"{where}.url", "expected an http:// or https:// URL")
        if digest is None:
            raise RecipeError(v.label, f"{where}.digest", "a URL input needs a digest")
    elif kind == "debian":
        pin = _debian(v, entry, where, source, digest)
    _no_foreign_fields(v, entry, kind, where)
    return InputSpec(name=name, kind=kind, source=source, resource=resource, digest=digest,
                     debian=pin)


def _no_foreign_fields(v: _Validator, entry: dict[str, Any], kind: str, where: str) -> None:
    """Fields of one kind of input given to another are refused, not ignored."""
    if kind != "package" and ({"dataset", "resource"} & entry.keys()):
        raise RecipeError(v.label, where, "'dataset' and 'resource' apply to package inputs only")
    if kind != "debian" and (DEBIAN_FIELDS & entry.keys()):
        raise RecipeError(v.label, where, "'version', 'architecture' and 'files' apply to "
                          "debian inputs only")


def _debian(v: _Validator, entry: dict[str, Any], where: str, package: str,
            digest: str | None) -> DebianPin:
    """A Debian binary package: name, version and architecture as the archive writes
    them, the .deb's SHA-256, and which of its files to keep (default: all)."""
    if not PACKAGE_RE.fullmatch(package):
        raise RecipeError(v.label, f"{where}.debian", "not a Debian package name")
    version = v.matching(entry, "version", VERSION_RE, "a Debian version such as 4.15.0-1",
                         where=f"{where}.version")
    architecture = v.matching(entry, "architecture", ARCHITECTURE_RE,
                              "a Debian architecture such as all or amd64",
                              where=f"{where}.architecture")
    if digest is None:
        raise RecipeError(v.label, f"{where}.digest", "a debian input needs the .deb's "
                          "digest (apt-cache show PACKAGE=VERSION lists its SHA256)")
    files = tuple(v.string_list(entry, "files", f"{where}.files") or ["*"])
    for i, pattern in enumerate(files):
        v.relative_path(pattern, f"{where}.files[{i}]")
    return DebianPin(package, version, architecture, digest, files)


def _package_resource(v: _Validator, entry: dict[str, Any], where: str) -> str:
    has = [k for k in ("dataset", "resource") if k in entry]
    if len(has) != 1:
        raise RecipeError(v.label, where, "a package input needs exactly one of dataset, resource")
    text = v.string(entry, has[0], where=f"{where}.{has[0]}")
    if has[0] == "resource":
        v.relative_path(text, f"{where}.resource")
        return text
    if not _KEY_RE.fullmatch(text):
        raise RecipeError(v.label, f"{where}.dataset", "not a data set name")
    return f"dataset:{text}"


def _evaluation(v: _Validator, table: dict[str, Any]) -> Evaluation:
    v.no_unknown(table, {"entry", "tolerance", "audit", "probes"}, "evaluate")
    probes = v.string(table, "probes", required=False, where="evaluate.probes")
    if probes is not None:
        v.relative_path(probes, "evaluate.probes")
    tol = v.table(table, "tolerance", required=False, where="evaluate.tolerance")
    v.no_unknown(tol, {"weights_rel_l2", "agreement", "metric", "metric_delta",
                       "segment_rel_l2"}, "evaluate.tolerance")
    default = Tolerance()
    return Evaluation(
        entry=v.entry(table, "entry", "evaluate.entry"),
        tolerance=Tolerance(
            weights_rel_l2=v.fraction(tol, "weights_rel_l2", default.weights_rel_l2),
            agreement=v.fraction(tol, "agreement", default.agreement),
            metric=v.string(tol, "metric", required=False, where="evaluate.tolerance.metric")
            or default.metric,
            metric_delta=v.fraction(tol, "metric_delta", default.metric_delta),
            segment_rel_l2=v.fraction(tol, "segment_rel_l2", 0.0) if "segment_rel_l2" in tol
            else None,  # absent: verify derives it from weights_rel_l2
        ),
        audit=v.entry(table, "audit", "evaluate.audit") if "audit" in table else None,
        probes=probes,
    )


class _Validator:
    """Small typed accessors that raise RecipeError with the field's dotted name."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, where: str, reason: str) -> RecipeError:
        return RecipeError(self.label, where, reason)

    def no_unknown(self, table: dict[str, Any], known: set[str], where: str) -> None:
        for key in table:
            if key not in known:
                raise self.fail(f"{where}.{key}" if where else key,
                                "unknown field" + _did_you_mean(key, known))

    def table(self, data: dict[str, Any], key: str, required: bool,
              where: str | None = None) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            if required:
                raise self.fail(where or key, "missing")
            return {}
        if not isinstance(value, dict):
            raise self.fail(where or key, "must be a table")
        return value

    @overload
    def string(self, data: dict[str, Any], key: str, required: Literal[True] = ...,
               where: str | None = None) -> str: ...

    @overload
    def string(self, data: dict[str, Any], key: str, required: bool,
               where: str | None = None) -> str | None: ...

    def string(self, data: dict[str, Any], key: str, required: bool = True,
               where: str | None = None) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                raise self.fail(where or key, "missing")
            return None
        if not isinstance(value, str):
            raise self.fail(where or key, f"must be a string, not {_type_name(value)}")
        if len(value) > MAX_STRING or "\x00" in value:
            raise self.fail(where or key, "string too long or holds a NUL byte")
        return value

    def matching(self, data: dict[str, Any], key: str, pattern: re.Pattern[str], what: str,
                 where: str | None = None) -> str:
        value = self.string(data, key, where=where)
        if not pattern.fullmatch(value):
            raise self.fail(where or key, f"expected {what}")
        return value

    @overload
    def integer(self, data: dict[str, Any], key: str, where: str, low: int, high: int,
                required: Literal[True] = ...) -> int: ...

    @overload
    def integer(self, data: dict[str, Any], key: str, where: str, low: int, high: int,
                required: bool) -> int | None: ...

    def integer(self, data: dict[str, Any], key: str, where: str, low: int, high: int,
                required: bool = True) -> int | None:
        value = data.get(key)
        if value is None:
            if required:
                raise self.fail(where, "missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be an integer, not {_type_name(value)}")
        if not low <= value <= high:
            raise self.fail(where, f"must be between {low} and {high}")
        return value

    def fraction(self, data: dict[str, Any], key: str, default: float) -> float:
        where = f"evaluate.tolerance.{key}"
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"must be a number, not {_type_name(value)}")
        if not 0.0 <= value <= 1.0:  # refuses nan and inf too, and never float()s a huge int
            raise self.fail(where, "must be a number between 0 and 1")
        return float(value)

    def string_list(self, data: dict[str, Any], key: str, where: str) -> list[str] | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not value or len(value) > 100:
            raise self.fail(where, "must be a non-empty list of at most 100 strings")
        for i, item in enumerate(value):
            self.string({"item": item}, "item", where=f"{where}[{i}]")
        return value

    def entry(self, data: dict[str, Any], key: str, where: str) -> EntryPoint:
        text = self.string(data, key, where=where)
        assert text is not None
        match = _ENTRY_RE.fullmatch(text)
        if not match:
            raise self.fail(where, "expected 'file.py:function'")
        self.relative_path(match.group(1), where)
        return EntryPoint(match.group(1), match.group(2))

    def relative_path(self, text: str, where: str) -> None:
        """Refuse paths that could leave the recipe directory, before anything is opened."""
        if not text or "\\" in text or "\x00" in text:
            raise self.fail(where, "not a usable relative path")
        pure = PurePosixPath(text)
        if pure.is_absolute() or text.startswith("~"):
            raise self.fail(where, "must be relative to the recipe directory")
        if ".." in pure.parts:
            raise self.fail(where, "leaves the recipe directory ('..' is not allowed)")

    def params(self, value: Any, where: str, depth: int) -> Any:
        """Parameters: tables, lists and scalars that survive JSON exactly."""
        if depth > MAX_DEPTH:
            raise self.fail(where, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key in value:
                if not _KEY_RE.fullmatch(key):
                    raise self.fail(f"{where}.{key}", "parameter names are letters, digits, '_'")
            return {k: self.params(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            if len(value) > 10_000:
                raise self.fail(where, "list longer than 10000 items")
            return [self.params(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return self.scalar(value, where)

    def scalar(self, value: Any, where: str) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if abs(value) > MAX_SAFE_INTEGER:  # not I-JSON beyond it
                raise self.fail(where, "integer beyond 2**53 - 1 in magnitude, which canonical "
                                "JSON (RFC 8785) cannot hold exactly")
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.fail(where, "must be a finite number")
            return value
        if isinstance(value, str):
            return self.string({"v": value}, "v", where=where)
        raise self.fail(where, f"unsupported value of type {_type_name(value)}")


def _did_you_mean(key: str, known: set[str]) -> str:
    """The nearest known field, as a suggestion (`sead` -> `seed`), or nothing."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
             dict: "table"}
    return names.get(type(value), type(value).__name__)
