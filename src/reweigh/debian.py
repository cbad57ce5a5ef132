"""Debian binary packages as inputs: found or fetched outside the sandbox, checked, unpacked.

A recipe may train on files a distribution already ships (the gettext catalogues of
`libgtk-3-common`, say), named as Debian names them: package, version, architecture,
and the SHA-256 of the `.deb`, the digest Debian's signed archive index records for it
(`apt-cache show PACKAGE=VERSION`). Before a build, in reweigh's own process and never
in the sandbox, the `.deb` is taken from a local folder (`$REWEIGH_SOURCES`, apt's own
cache) or fetched with the ordinary `apt-get download`; its digest must be the pinned
one (a mismatch is an error, never a warning). It is then read here, not by `dpkg-deb`:
a strict reader of the `ar` archive and of its `data.tar`, which refuses a member that
would leave the package (an absolute name, a `..`, a hard link out), a name given twice,
or an archive that ends early, and writes only the regular files the recipe selects.
Symbolic links are left out (an input holds regular files only; a package's links point
into the installed system, which the build never sees) and counted.

The package's own control file must name the pinned package, version and architecture.
It deliberately does not install anything, run maintainer scripts, read the rest of the
control data, or trust `apt-get`'s word for the digest: the bytes are hashed here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .digest import ALGORITHM, file_digest
from .errors import DigestMismatch, InputError

PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,99}$")
VERSION_RE = re.compile(r"^([0-9]{1,9}:)?[0-9][A-Za-z0-9.+~-]{0,99}$")
ARCHITECTURE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
APT_CACHE = Path("/var/cache/apt/archives")
SOURCES_VARIABLE = "REWEIGH_SOURCES"
APT_TIMEOUT = 600.0
UNPACK_LIMIT = 8 << 30  # bytes written for one package
MEMBER_LIMIT = 1_000_000  # entries in one data.tar
AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60
COMPRESSION = {f"{kind}.tar{suffix}": mode for kind in ("control", "data")
               for suffix, mode in (("", ""), (".gz", "gz"), (".xz", "xz"), (".bz2", "bz2"))}


class DebianError(InputError):
    """A .deb that is not a well-formed Debian binary package, or one that tries to
    leave its folder; the message names the file and what is wrong."""


@dataclass(frozen=True)
class DebianPin:
    """A Debian binary package as a recipe pins it."""

    package: str
    version: str
    architecture: str
    digest: str  # sha256:<hex> of the .deb
    files: tuple[str, ...] = ("*",)  # fnmatch patterns ('*' crosses '/') of the files kept

    @property
    def file_name(self) -> str:
        """The archive's name for the .deb (an epoch's ':' is written '%3a', as apt does)."""
        return f"{self.package}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"

    @property
    def apt_name(self) -> str:
        return f"{self.package}:{self.architecture}={self.version}"

    @property
    def snapshot(self) -> str:
        return f"https://snapshot.debian.org/binary/{self.package}/"


@dataclass(frozen=True)
class Unpacked:
    files: int
    bytes: int
    links_left_out: int


# --- finding or fetching the .deb -----------------------------------------------------

def local_sources() -> list[Path]:
    """Folders searched before anything is downloaded: $REWEIGH_SOURCES (colon-separated),
    then apt's cache of downloaded packages."""
    listed = [Path(p) for p in os.environ.get(SOURCES_VARIABLE, "").split(":") if p]
    return [*listed, APT_CACHE]


def find_local(pin: DebianPin, label: str) -> Path | None:
    """A local copy of the .deb, named by the archive or by its SHA-256, if one has the
    pinned digest; a copy under the package's own name with another digest is an error."""
    hex_name = pin.digest.split(":", 1)[1]
    for folder in local_sources():
        for name in (pin.file_name, hex_name):
            candidate = folder / name
            if not candidate.is_file():
                continue
            actual = file_digest(candidate)
            if actual != pin.digest:
                raise DigestMismatch(f"{label}: {candidate}", pin.digest, actual)
            return candidate
    return None


def fetch(pin: DebianPin, folder: Path, label: str) -> tuple[Path, str]:
    """The .deb in `folder` (downloaded with apt-get unless a local copy exists), its
    digest checked, and where anyone can download it: the address apt used, or for a
    local copy snapshot.debian.org's, which serves every file Debian ever published by
    its SHA-1."""
    local = find_local(pin, label)
    if local is not None:
        return local, snapshot_url(local)
    url, listed = _apt_uri(pin, folder, label)
    if listed is not None and listed != pin.digest:
        raise DigestMismatch(f"{label}: the archive's index for {pin.apt_name}", pin.digest,
                             listed)
    _apt(["download", pin.apt_name], folder, pin, label)
    deb = folder / pin.file_name
    if not deb.is_file():
        found = sorted(p.name for p in folder.glob("*.deb"))
        raise InputError(f"{label}: apt-get download left {found or 'nothing'}, not "
                         f"{pin.file_name}")
    actual = file_digest(deb)
    if actual != pin.digest:
        raise DigestMismatch(f"{label}: {pin.file_name} from {url or 'apt-get'}", pin.digest,
                             actual)
    return deb, url or snapshot_url(deb)


def snapshot_url(deb: Path) -> str:
    sha1 = hashlib.sha1()
    with open(deb, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha1.update(chunk)
    return f"https://snapshot.debian.org/file/{sha1.hexdigest()}"


def _apt_uri(pin: DebianPin, folder: Path, label: str) -> tuple[str | None, str | None]:
    """Where apt would download the package from, and the SHA-256 its index lists."""
    out = _apt(["download", "--print-uris", pin.apt_name], folder, pin, label)
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4 and words[1] == pin.file_name:
            checksum = words[3]
            listed = (f"{ALGORITHM}:{checksum.split(':', 1)[1].lower()}"
                      if checksum.upper().startswith("SHA256:") else None)
            return words[0].strip("'"), listed
    return None, None


def _apt(arguments: list[str], folder: Path, pin: DebianPin, label: str) -> str:
    how = (f"put {pin.file_name} (from {pin.snapshot}, or any Debian mirror) in a folder "
           f"named by ${SOURCES_VARIABLE}")
    if shutil.which("apt-get") is None:
        raise InputError(f"{label}: {pin.file_name} is not in the store, and apt-get is "
                         "not installed here to download it", hint=how)
    env = {**os.environ, "LC_ALL": "C"}
    try:
        done = subprocess.run(["apt-get", "-q", *arguments], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=APT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InputError(f"{label}: apt-get {' '.join(arguments)} failed: {e}", hint=how) from e
    if done.returncode != 0:
        errors = [line.removeprefix("E: ") for line in done.stderr.splitlines()
                  if line.startswith("E: ")]
        reason = "; ".join(errors) or done.stderr.strip() or f"exit code {done.returncode}"
        raise InputError(f"{label}: apt-get cannot fetch {pin.apt_name}: {reason}",
                         hint="`apt-get update` refreshes the package lists; an old version "
                         f"may have left the archive: {how}")
    return done.stdout


# --- reading the .deb -----------------------------------------------------------------

def ar_members(data: BinaryIO, size: int, label: str) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each member of an `ar` archive, strictly: the global header,
    60-byte member headers with decimal sizes and their end mark, members inside the file,
    an even padding byte, nothing after the last member."""
    if data.read(len(AR_MAGIC)) != AR_MAGIC:
        raise DebianError(f"{label}: not an ar archive (a .deb starts with '!<arch>')")
    offset = len(AR_MAGIC)
    while offset < size:
        data.seek(offset)
        header = data.read(AR_HEADER)
        if len(header) != AR_HEADER or header[58:60] != b"`\n":
            raise DebianError(f"{label}: broken ar member header at byte {offset}")
        name = header[:16].decode("ascii", "replace").rstrip(" ").removesuffix("/")
        length_text = header[48:58].decode("ascii", "replace").strip(" ")
        if not length_text.isdigit() or not name.isprintable() or not name:
            raise DebianError(f"{label}: ar member at byte {offset} has a bad name or size")
        length = int(length_text)
        start = offset + AR_HEADER
        if start + length > size:
            raise DebianError(f"{label}: ar member {name} ends after the file does")
        yield name, start, length
        offset = start + length + (length % 2)
    if offset != size:
        raise DebianError(f"{label}: the last ar member's padding is missing")


def members(deb: Path, label: str) -> dict[str, tuple[int, int, str]]:
    """The package's `control` and `data` tar members: (offset, size, compression), after
    checking the layout: debian-binary saying 2.x, then control.tar.*, then data.tar.*."""
    with open(deb, "rb") as handle:
        found = list(ar_members(handle, deb.stat().st_size, label))
        names = [m[0] for m in found]
        if len(found) < 3 or names[0] != "debian-binary" or names[1] not in COMPRESSION:
            raise DebianError(f"{label}: not a Debian binary package (members {names[:4]})")
        handle.seek(found[0][1])
        if not handle.read(found[0][2]).startswith(b"2."):
            raise DebianError(f"{label}: debian-binary does not say format 2.x")
    data = [m for m in found[2:] if m[0].startswith("data.tar")]
    if len(data) != 1 or data[0][0] != names[2]:
        raise DebianError(f"{label}: expected one data.tar member third, found {names[2:]}")
    if data[0][0] not in COMPRESSION:
        raise DebianError(f"{label}: {data[0][0]} is compressed in a way this reader does not "
                          f"know (it reads {', '.join(COMPRESSION)})")
    return {kind: (start, length, COMPRESSION[name])
            for kind, (name, start, length) in (("control", found[1]), ("data", data[0]))}


def data_member(deb: Path, label: str) -> tuple[int, int, str]:
    """Offset, size and compression of the package's data.tar (see `members`)."""
    return members(deb, label)["data"]


def check_control(deb: Path, pin: DebianPin, label: str) -> None:
    """The package's own control file must name the pinned package, version and
    architecture: a .deb of another package is refused even under the right digest."""
    start, length, compression = members(deb, label)["control"]
    fields: dict[str, str] = {}
    with open(deb, "rb") as handle:
        try:
            with tarfile.open(fileobj=_Window(handle, start, length),  # type: ignore[call-overload]
                              mode=f"r|{compression}") as tar:
                for member in tar:
                    if member_path(member.name, label) == "control" and member.isfile():
                        source = tar.extractfile(member)
                        text = source.read(1 << 20).decode("utf-8") if source else ""
                        fields = _control_fields(text)
                        break
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise DebianError(f"{label}: {deb.name}: unreadable control.tar: {e}") from e
    said = (fields.get("Package"), fields.get("Version"), fields.get("Architecture"))
    if said != (pin.package, pin.version, pin.architecture):
        raise DebianError(f"{label}: {deb.name} says it is {said[0]} {said[1]} ({said[2]}), "
                          f"not {pin.package} {pin.version} ({pin.architecture})")


def _control_fields(text: str) -> dict[str, str]:
    """The fields of a control paragraph (continuation lines ignored)."""
    fields = {}
    for line in text.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


class _Window:
    """A read-only file view of one ar member, so tarfile never reads past it."""

    def __init__(self, handle: BinaryIO, start: int, length: int) -> None:
        self.handle, self.start, self.length, self.position = handle, start, length, 0

    def read(self, size: int = -1) -> bytes:
        left = self.length - self.position
        size = left if size < 0 else min(size, left)
        self.handle.seek(self.start + self.position)
        chunk = self.handle.read(size)
        self.position += len(chunk)
        return chunk


def member_path(name: str, label: str) -> str:
    """The member's path inside the package ('./usr/x' -> 'usr/x'), or DebianError when
    it would leave the package or cannot be a file name here."""
    if "\x00" in name or "\\" in name:
        raise DebianError(f"{label}: member {name!r} has a NUL or backslash in its name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DebianError(f"{label}: member {name!r} is not named in UTF-8") from e
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise DebianError(f"{label}: member {name!r} leaves the package")
    return "/".join(p for p in pure.parts if p != ".")


def wanted(path: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def unpack(deb: Path, target: Path, patterns: tuple[str, ...], label: str) -> Unpacked:
    """Write the package's regular files that match `patterns` under `target` (created),
    refusing any member that would leave it; hard links become copies of their target."""
    start, length, compression = data_member(deb, label)
    target.mkdir(parents=True)
    unpacker = _Unpacker(target, patterns, label)
    with open(deb, "rb") as handle:
        try:
            with tarfile.open(fileobj=_Window(handle, start, length),  # type: ignore[call-overload]
                              mode=f"r|{compression}") as tar:
                for member in tar:
                    unpacker.take(tar, member)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise DebianError(f"{label}: {deb.name}: unreadable data.tar: {e}") from e
    if not unpacker.written:
        raise DebianError(f"{label}: no file of {deb.name} matches files = {list(patterns)}")
    return Unpacked(len(unpacker.written), unpacker.total, unpacker.links)


class _Unpacker:
    """The members of one data.tar, in order: what is kept, and the checks on each."""

    def __init__(self, target: Path, patterns: tuple[str, ...], label: str) -> None:
        self.target, self.patterns, self.label = target, patterns, label
        self.written: dict[str, Path] = {}
        self.seen: set[str] = set()
        self.total = self.links = self.count = 0

    def take(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > MEMBER_LIMIT:
            raise DebianError(f"{self.label}: more than {MEMBER_LIMIT} members")
        path = member_path(member.name, self.label)
        if path in self.seen and not member.isdir():
            raise DebianError(f"{self.label}: member {path} is given twice")
        self.seen.add(path)
        if member.issym():
            self.links += 1
        elif member.islnk():
            self._hard_link(path, member_path(member.linkname, self.label))
        elif member.isfile() and path and wanted(path, self.patterns):
            self.total += member.size
            if self.total > UNPACK_LIMIT:
                raise DebianError(f"{self.label}: more than {UNPACK_LIMIT} bytes")
            self.written[path] = self._write(tar, member, path)

    def _hard_link(self, path: str, source: str) -> None:
        if not wanted(path, self.patterns):
            return
        if source not in self.written:
            raise DebianError(f"{self.label}: hard link {path} points at {source}, which is "
                              "not a file kept before it")
        self.total += self.written[source].stat().st_size
        self.written[path] = self._place(path)
        shutil.copyfile(self.written[source], self.written[path])

    def _write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> Path:
        source = tar.extractfile(member)
        if source is None:
            raise DebianError(f"{self.label}: member {member.name} has no content")
        placed = self._place(path)
        with open(placed, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        if placed.stat().st_size != member.size:
            raise DebianError(f"{self.label}: member {member.name} ends early")
        return placed

    def _place(self, path: str) -> Path:
        """Where a kept file goes; its folders are made, never through a file."""
        placed = self.target / path
        for parent in reversed(placed.relative_to(self.target).parents[:-1]):
            if (self.target / parent).is_file():
                raise DebianError(f"{self.label}: member {path} lies under the file {parent}")
        placed.parent.mkdir(parents=True, exist_ok=True)
        if placed.exists():
            raise DebianError(f"{self.label}: member {path} is a folder of another member")
        return placed
