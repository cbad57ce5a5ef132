"""Profiles: which network a program gets under a name, with generations, as in Guix.

A program should not hard-code a store path: it asks its profile for a name
("digits-cnn") and gets whatever item the user installed under it. Every change
(`install`, `remove`) writes a new generation and switches to it with one rename,
so `rollback` (or `switch`) brings back exactly what was there before.

The layout is a plain directory, readable from any language:

    PROFILE/                            $REWEIGH_PROFILE, else ~/.reweigh-profile
      current -> generations/3          relative symlink to the generation in use
      generations/N/
        manifest.json                   {"format": "reweigh.profile/1", "generation": N,
                                         "created_at": ..., "networks": {NAME: {"item": PATH,
                                         "store": ROOT, "name", "version", "derivation",
                                         "weights_digest"}}}
        NAME -> /STORE/items/<hash>-<name>-<version>     one symlink per installed name
      lock                              taken while a generation is written

So `PROFILE/current/NAME/weights.safetensors` is the network and
`PROFILE/current/NAME/source/model.json` says how to call it. This module reads and
writes profiles only; resolving items and keeping them from `gc` is the verbs' work.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .network import Network

FORMAT = "reweigh.profile/1"
MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ENTRY_KEYS = ("name", "version", "derivation", "weights_digest")


def default_profile() -> Path:
    if env := os.environ.get("REWEIGH_PROFILE"):
        return Path(env)
    return Path.home() / ".reweigh-profile"


def check_name(name: str) -> str:
    """Names become file names in every generation: keep them plain."""
    if not _NAME_RE.fullmatch(name) or name == MANIFEST:
        raise UsageError(f"--as: {name!r}: expected a lowercase name of letters, digits, "
                         "'.', '_', '-'")
    return name


@dataclass(frozen=True)
class Entry:
    """One installed network: a store item, and what it was when installed."""

    item: Path
    store: Path
    name: str
    version: str
    derivation: str
    weights_digest: str

    def to_json(self) -> dict[str, str]:
        return {"item": str(self.item), "store": str(self.store),
                **{k: getattr(self, k) for k in _ENTRY_KEYS}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(Path(data["item"]), Path(data["store"]),
                   **{k: str(data[k]) for k in _ENTRY_KEYS})


@dataclass(frozen=True)
class Generation:
    number: int
    created_at: float
    networks: dict[str, Entry]


class Profile:
    """A profile directory; it need not exist until the first install."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root or default_profile()).absolute()

    @property
    def _generations_dir(self) -> Path:
        return self.root / "generations"

    # --- reading -------------------------------------------------------------------
    def numbers(self) -> list[int]:
        if not self._generations_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self._generations_dir.iterdir() if p.name.isdigit())

    def generation(self, number: int) -> Generation:
        file = self._generations_dir / str(number) / MANIFEST
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{self.root}: no generation {number}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"{file}: unreadable ({e})") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f"{file}: format: expected {FORMAT!r}")
        try:
            return Generation(number, float(data["created_at"]),
                              {n: Entry.from_json(e) for n, e in data["networks"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"{file}: networks: malformed ({e!r})") from e

    def generations(self) -> list[Generation]:
        return [self.generation(n) for n in self.numbers()]

    def current_number(self) -> int | None:
        try:
            target = os.readlink(self.root / "current")
        except OSError:
            return None
        name = Path(target).name
        return int(name) if name.isdigit() else None

    def current(self) -> Generation | None:
        number = self.current_number()
        return None if number is None else self.generation(number)

    def lookup(self, name: str) -> Entry:
        """The entry installed under `name` in the current generation."""
        current = self.current()
        if current is None or name not in current.networks:
            raise UsageError(f"{self.root}: no network named {name!r} in this profile",
                             hint=f"reweigh install ITEM --as {name}")
        return current.networks[name]

    # --- writing: each change is a new generation -----------------------------------
    def install(self, name: str, entry: Entry) -> Generation:
        with self._lock():
            current = self.current()
            networks = dict(current.networks) if current else {}
            networks[check_name(name)] = entry
            return self._new_generation(networks)

    def remove(self, name: str) -> Generation:
        with self._lock():
            current = self.current()
            if current is None or name not in current.networks:
                raise UsageError(f"{self.root}: no network named {name!r} to remove")
            return self._new_generation({n: e for n, e in current.networks.items()
                                         if n != name})

    def rollback(self) -> Generation:
        """Switch to the newest generation before the current one."""
        with self._lock():
            current = self.current_number()
            earlier = [n for n in self.numbers() if current is not None and n < current]
            if not earlier:
                raise UsageError(f"{self.root}: no generation before "
                                 f"{current if current is not None else 'the first'} "
                                 "to roll back to")
            self._point_current(earlier[-1])
            return self.generation(earlier[-1])

    def switch(self, number: int) -> Generation:
        with self._lock():
            generation = self.generation(number)
            self._point_current(number)
            return generation

    def delete(self, numbers: list[int]) -> list[int]:
        """Delete generations (never the current one); their items become garbage."""
        from .store import remove_tree

        with self._lock():
            if self.current_number() in numbers:
                raise UsageError(f"{self.root}: generation {self.current_number()} is the "
                                 "current one; switch away from it first")
            missing = sorted(set(numbers) - set(self.numbers()))
            if missing:
                raise UsageError(f"{self.root}: no generation {missing[0]}")
            for number in sorted(set(numbers)):
                remove_tree(self._generations_dir / str(number))
            return sorted(set(numbers))

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _new_generation(self, networks: dict[str, Entry]) -> Generation:
        """Write generation max+1 beside the others, then switch to it with one rename."""
        number = max(self.numbers(), default=0) + 1
        self._generations_dir.mkdir(parents=True, exist_ok=True)
        staging = self._generations_dir / f".new-{number}-{os.getpid()}"
        staging.mkdir()
        created = time.time()
        manifest = {"format": FORMAT, "generation": number, "created_at": created,
                    "networks": {n: e.to_json() for n, e in sorted(networks.items())}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n",
                                        encoding="utf-8")
        for name, entry in networks.items():
            (staging / name).symlink_to(entry.item, target_is_directory=True)
        os.rename(staging, self._generations_dir / str(number))
        self._point_current(number)
        return Generation(number, created, dict(networks))

    def _point_current(self, number: int) -> None:
        link = self.root / f".current-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(Path("generations") / str(number), target_is_directory=True)
        os.replace(link, self.root / "current")


# --- for programs ---------------------------------------------------------------------

def lookup(name: str, profile: Path | str | None = None) -> Path:
    """The store item a program should use for `name` (the current generation's)."""
    entry = Profile(profile).lookup(name)
    if not entry.item.is_dir():
        raise UsageError(f"{entry.item}: the item installed as {name!r} is no longer in "
                         "its store", hint="reweigh profile rollback, or install it again")
    return entry.item


def network(name: str, profile: Path | str | None = None) -> Network:
    """The network installed as `name`, built from its item's source and weights."""
    from .network import load

    return load(lookup(name, profile))
