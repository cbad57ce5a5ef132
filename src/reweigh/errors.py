"""One error hierarchy for the whole tool.

Each error carries the exit code the command line turns it into, so that the
CLI's entry point is the only place that maps failures to exit codes
(0 success, 1 a check or comparison failed, 2 bad input or usage).
"""

from __future__ import annotations


class ReweighError(Exception):
    """Base of every error the tool raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details  # shown above the one line (a build log's tail, say)

    def one_line(self) -> str:
        """The single line a user sees: the message, then the hint if any."""
        text = " ".join(self.message.split())
        return f"{text} (hint: {self.hint})" if self.hint else text


class UsageError(ReweighError):
    """A command was called wrongly (unknown item, missing file, bad option)."""


class RecipeError(ReweighError):
    """A recipe is malformed: names the file, the field and the reason."""

    def __init__(self, file: str, field: str, reason: str) -> None:
        super().__init__(f"{file}: {field}: {reason}")
        self.file = file
        self.field = field
        self.reason = reason


class InputError(ReweighError):
    """An input cannot be resolved (missing file, unknown package, download failed)."""


class DigestMismatch(InputError):
    """Content did not have the digest it was declared or recorded with."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class WeightsError(ReweighError):
    """A weights file cannot be read safely (not safetensors, truncated, bad header)."""


class BuildError(ReweighError):
    """The training code failed; the store is left untouched."""

    exit_code = 1


class EntryResultError(BuildError):
    """The recipe's code ran, but an entry point returned what reweigh cannot use (an
    evaluation without predictions): a mistake in the recipe, so bad input, not a failed
    build."""

    exit_code = 2


class StoreError(ReweighError):
    """The store is damaged or an item is missing."""

    exit_code = 1


class IndexUnreadable(StoreError):
    """The store's SQLite index cannot be read (overwritten, truncated): every command
    stops with one line; `reweigh store repair` rebuilds it from the items."""

    exit_code = 2


class SignatureError(ReweighError):
    """A signature, key or substitute does not hold: an untrusted, revoked or expired key,
    fewer distinct trusted signers than required, signers that disagree, a file that is not
    what its signature says, a transfer cut short. Nothing was written to the store."""

    exit_code = 1


class CheckFailed(ReweighError):
    """A rebuild or comparison did not give the required result."""

    exit_code = 1
