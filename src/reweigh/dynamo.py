"""torch.compile's front end (`torch._dynamo`), loaded when something compiles.

torch's optimizers import `torch._dynamo` on their first `step()` and `zero_grad()`, to
call two functions that do nothing outside compilation: `graph_break()`, and
`disable(fn)`, whose wrapper only calls `fn` when nothing is compiling. Loading it takes a
second of CPU (sympy and the tracer's rule tables): about as long as torch itself, and
more than the training of a small recipe or of a replayed segment.

So in recipe processes `torch._dynamo` stands in for itself until something needs more
than those two functions (`install`). While it waits nothing can compile, since
compiling goes through it, so its `graph_break` does nothing and its `disable(fn)` calls
`fn`, exactly as the real ones do then. Anything else asked of it (an attribute, a
submodule, `torch.compile`) loads the real module first and is answered by it; a
function disabled while it waited is from then on disabled by the real `disable`. A
training step computes the same bits either way: tests/test_dynamo.py builds a
recipe with and without the real module loaded first, and one that compiles.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

NAME = "torch._dynamo"
_loading = threading.RLock()  # its own import may ask torch._dynamo again: answered as usual


class _Waiting(types.ModuleType):
    """`torch._dynamo` before it has loaded: `graph_break` and `disable` of its own,
    everything else from the real module, loaded at the first such question."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__") and name not in _PACKAGE:
            raise AttributeError(name)  # introspection (__file__, __wrapped__) loads nothing
        return getattr(_real(), name)


_PACKAGE = frozenset({"__path__", "__all__"})  # a submodule's import, `import *`: the real ones


def install() -> None:
    """Put the stand-in in place, torch being loaded; nothing if the real module is."""
    if NAME in sys.modules:
        return
    waiting = _Waiting(NAME)
    waiting.graph_break = _graph_break  # type: ignore[attr-defined]
    waiting.disable = _disable  # type: ignore[attr-defined]
    sys.modules[NAME] = waiting
    setattr(sys.modules["torch"], "_dynamo", waiting)  # noqa: B010 (torch's submodule)


def loaded() -> bool:
    """Whether the real `torch._dynamo` has loaded in this process."""
    return NAME in sys.modules and not isinstance(sys.modules[NAME], _Waiting)


def _real() -> types.ModuleType:
    with _loading:
        if not loaded():
            sys.modules.pop(NAME, None)
            importlib.import_module(NAME)  # sets torch._dynamo to the real module too
        return sys.modules[NAME]


def _graph_break() -> None:
    """Nothing compiles while the stand-in waits: there is no graph to break."""


def _disable(fn: Callable[..., Any] | None = None, recursive: bool = True, *,
             reason: str | None = None, wrapping: bool = True) -> Any:
    if fn is None or reason is not None:  # the decorator's other forms: the real one's
        return _real().disable(fn, recursive, reason=reason, wrapping=wrapping)
    return _Disabled(fn, recursive)


class _Disabled:
    """`fn` as `disable(fn)` makes it: called as it is while nothing can compile, through
    the real `disable` once `torch._dynamo` has loaded (torch caches this object on `fn`)."""

    def __init__(self, fn: Callable[..., Any], recursive: bool) -> None:
        self.fn = fn
        self.recursive = recursive
        self.real: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not loaded():
            return self.fn(*args, **kwargs)
        if self.real is None:
            self.real = _real().disable(self.fn, self.recursive, wrapping=False)
        return self.real(*args, **kwargs)
