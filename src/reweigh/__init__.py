"""reweigh: trained weights you can rebuild, check and replace.

The public API mirrors the command line: `build`, `challenge`, `list_items`,
`show`, `path`, `verify_store`, `check`, `estimate`, `import_weights` (the `import`
command). Each returns a report record and prints nothing.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .verbs.build import BuildReport, build
from .verbs.challenge import ChallengeReport, challenge
from .verbs.check import CheckReport, check
from .verbs.estimate import EstimateReport, estimate
from .verbs.importing import ImportReport, import_weights
from .verbs.store import list_items, path, show, verify_store

__all__ = ["BuildReport", "ChallengeReport", "CheckReport", "EstimateReport", "ImportReport",
           "__version__", "build", "challenge", "check", "estimate", "import_weights",
           "list_items", "path", "show", "verify_store"]
