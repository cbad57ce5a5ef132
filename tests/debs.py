"""Debian packages written byte by byte: an ar archive holding debian-binary, a
control.tar.gz and a data.tar.gz of whatever members a test needs, including ones that
dpkg-deb would never make (a name with '..', an absolute name, a hard link out)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def _tar(entries: list[tarfile.TarInfo], contents: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info in entries:
            data = contents.get(info.name)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def hostile_deb(path: Path, entries: list[tarfile.TarInfo], contents: dict[str, bytes],
                package: str = "evil", version: str = "1.0") -> Path:
    """A .deb at `path` whose control file names `package` `version` (all)."""
    text = f"Package: {package}\nVersion: {version}\nArchitecture: all\n".encode()
    control = _tar([member("./control")], {"./control": text})
    path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.gz", control),
                          ("data.tar.gz", _tar(entries, contents))]))
    return path
