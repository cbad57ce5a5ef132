"""`install` and the `profile` verbs: which store item a program gets under a name.

Installing resolves the item in its store, writes a new profile generation naming
it, and registers the profile with the store as a gc root, all under the store's
gc lock (shared), so a concurrent `gc` either sees the new generation or runs
before the item is named. The profile itself is `reweigh.profile`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..profile import Entry, Generation, Profile, check_name
from ..store import Store, StoreItem


@dataclass(frozen=True)
class InstallReport:
    profile: Path
    generation: int
    name: str
    entry: Entry
    replaced: Entry | None  # what the name pointed at before, if anything

    def to_json(self) -> dict[str, Any]:
        return {"profile": str(self.profile), "generation": self.generation, "name": self.name,
                **self.entry.to_json(),
                "replaced": self.replaced.to_json() if self.replaced else None}


def entry_of(item: StoreItem, store: Store) -> Entry:
    return Entry(item.path, store.root, item.name, item.version, item.derivation,
                 item.weights_digest)


def install(ref: str, *, name: str | None = None, profile: Path | str | None = None,
            store: Store | None = None) -> InstallReport:
    """Point `name` (default: the item's own name) at the item, in a new generation."""
    store = store or Store()
    the_profile = Profile(profile)
    with store.gc_lock(exclusive=False):
        item = store.resolve(ref)
        name = check_name(item.name if name is None else name)
        current = the_profile.current()
        replaced = current.networks.get(name) if current else None
        entry = entry_of(item, store)
        generation = the_profile.install(name, entry)
        store.add_root(the_profile.root)
    return InstallReport(the_profile.root, generation.number, name, entry, replaced)


def uninstall(name: str, profile: Path | str | None = None) -> Generation:
    return Profile(profile).remove(name)


@dataclass(frozen=True)
class GenerationsReport:
    profile: Path
    current: int | None
    generations: list[Generation]

    def to_json(self) -> dict[str, Any]:
        return {"profile": str(self.profile), "current": self.current, "generations": [
            {"generation": g.number, "created_at": g.created_at,
             "current": g.number == self.current,
             "networks": {n: {**e.to_json(), "present": e.item.is_dir()}
                          for n, e in g.networks.items()}}
            for g in self.generations]}


def list_generations(profile: Path | str | None = None) -> GenerationsReport:
    the_profile = Profile(profile)
    return GenerationsReport(the_profile.root, the_profile.current_number(),
                             the_profile.generations())


def rollback(profile: Path | str | None = None) -> Generation:
    return Profile(profile).rollback()


def switch_generation(number: int, profile: Path | str | None = None) -> Generation:
    return Profile(profile).switch(number)


def delete_generations(numbers: list[int], profile: Path | str | None = None) -> list[int]:
    return Profile(profile).delete(numbers)
