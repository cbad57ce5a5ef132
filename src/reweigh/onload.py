"""Run a function the moment a module has loaded, before any other code can use it.

The build process pins torch's numerics this way when recipe code first imports torch,
and inductor's deterministic mode when (and if) torch.compile's configuration loads:
both are settings that must hold before the first use, and loading either module only
to set them cost a second of every run's start (runtime.TorchPins).
"""

from __future__ import annotations

import gc
import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

Action = Callable[[ModuleType], None]


def after_load(name: str, action: Action, *, collect: bool = True) -> None:
    """Call `action(module)` once module `name` has loaded: now if it has already, else
    right after its code has run. `collect=False` keeps the garbage collector off while
    it loads (torch: hundreds of thousands of objects, a third of a second of passes)."""
    if name in sys.modules:
        action(sys.modules[name])
        return
    # a process set up again (a Ray worker, task after task) replaces what it asked before
    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if not (isinstance(finder, _AfterLoad) and finder.name == name)]
    sys.meta_path.insert(0, _AfterLoad(name, action, collect))


class _AfterLoad(importlib.abc.MetaPathFinder):
    """The module's own spec, from the finders after this one, with a loader that then
    calls the action. Asked without an import (`importlib.util.find_spec`, as libraries
    ask whether a module is there), it stays in place for the import."""

    def __init__(self, name: str, action: Action, collect: bool) -> None:
        self.name = name
        self.action = action
        self.collect = collect

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.name:
            return None
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is not self and find is not None and (
                    spec := find(name, path, target)) is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            collecting = gc.isenabled()
            if not self.collect:
                gc.disable()
            try:
                load(module)
            finally:
                if collecting:
                    gc.enable()
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            self.action(module)

        setattr(spec.loader, "exec_module", exec_module)  # noqa: B010 (this spec's loader)
        return spec
