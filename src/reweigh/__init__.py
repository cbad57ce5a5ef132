"""reweigh: trained weights you can rebuild, check and replace.

The public API mirrors the command line: `build`, `challenge`, `verify`, `list_items`,
`show`, `path`, `verify_store`, `repair_store` (`store repair`), `check`, `estimate`,
`import_weights` (the `import` command), `adapt`, `install`, `uninstall`,
`list_generations`, `rollback`, `switch_generation`, `delete_generations` (the `profile`
commands), `gc` and `diff`. Each returns a report record and prints nothing.

The verbs are imported on first use, so that the build process, which imports
`reweigh.runtime`, does not pay for the whole library before training starts.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_VERBS = {
    "build": "build", "BuildReport": "build",
    "challenge": "challenge", "ChallengeReport": "challenge",
    "verify": "verify", "VerifyReport": "verify", "Sampling": "verify",
    "check": "check", "CheckReport": "check",
    "estimate": "estimate", "EstimateReport": "estimate",
    "import_weights": "importing", "ImportReport": "importing",
    "list_items": "store", "path": "store", "show": "store", "verify_store": "store",
    "repair_store": "repair", "RepairReport": "repair",
    "adapt": "adapt", "AdaptReport": "adapt",
    "install": "profile", "InstallReport": "profile", "uninstall": "profile",
    "list_generations": "profile", "rollback": "profile", "switch_generation": "profile",
    "delete_generations": "profile",
    "gc": "gc", "GcReport": "gc",
    "diff": "diff", "DiffReport": "diff", "DiffOptions": "diff",
}

__all__ = ["__version__", *_VERBS]


def __getattr__(name: str) -> Any:
    if name not in _VERBS:
        raise AttributeError(f"module 'reweigh' has no attribute {name!r}")
    return getattr(importlib.import_module(f".verbs.{_VERBS[name]}", __name__), name)
