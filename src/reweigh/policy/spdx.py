"""SPDX licence expressions (SPDX 2.3, Annex D), parsed by recursive descent.

`WITH` binds tighter than `AND`, which binds tighter than `OR`; operators are upper
case; `+` after an identifier means "or any later version"; `LicenseRef-` (optionally
`DocumentRef-...:LicenseRef-...`) names a licence outside the SPDX list; `NONE` and
`NOASSERTION` stand alone. A string that is not an expression raises
`LicenceExpressionError` naming the column and the reason; nothing is guessed. Pure:
this module knows the grammar, not which licences are free (see `licenses`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_LENGTH = 1000
MAX_DEPTH = 20
# SPDX exceptions reweigh knows: each grants permissions beyond the licence it follows.
EXCEPTIONS = {e.lower(): e for e in (
    "Autoconf-exception-3.0", "Bison-exception-2.2", "Classpath-exception-2.0",
    "GCC-exception-3.1", "LLVM-exception", "OpenJDK-assembly-exception-1.0",
    "Font-exception-2.0", "GPL-3.0-linking-exception", "LGPL-3.0-linking-exception")}


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


# --- the parser (recursive descent) -----------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<paren>[()])|(?P<word>[A-Za-z0-9.+:-]+)|(?P<bad>\S))")
_ID = re.compile(r"[A-Za-z0-9.-]+")
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


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = list(_tokens(text))
        self.index = 0

    def fail(self, reason: str) -> LicenceExpressionError:
        at = self.tokens[self.index][1] if self.index < len(self.tokens) else len(self.text)
        return LicenceExpressionError(self.text, at, reason)

    def peek(self) -> str | None:
        return self.tokens[self.index][0] if self.index < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise self.fail("the expression ends too early")
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
        """term := "(" expression ")" | simple ["WITH" exception]"""
        if self.peek() == "(":
            if depth >= MAX_DEPTH:
                raise self.fail(f"parentheses nested deeper than {MAX_DEPTH}")
            self.take()
            inner = self.expression(depth + 1)
            if self.peek() != ")":
                raise self.fail("expected ')'")
            self.take()
            if self.peek() == "WITH":
                raise self.fail("WITH follows a single licence, not a parenthesised group")
            return inner
        simple = self.simple()
        if self.peek() != "WITH":
            return simple
        self.take()
        token = self.take()
        if token in OPERATORS or not _ID.fullmatch(token):
            self.index -= 1
            raise self.fail(f"expected an exception identifier after WITH, got {token!r}")
        return WithException(simple, EXCEPTIONS.get(token.lower(), token))

    def simple(self) -> Licence:
        token = self.take()
        if token in ("(", ")") or token in OPERATORS:
            self.index -= 1
            raise self.fail(f"expected a licence identifier, got {token!r}")
        if token in ("NONE", "NOASSERTION"):
            self.index -= 1
            raise self.fail(f"{token} stands alone, not inside a compound expression")
        if _REF.fullmatch(token):
            return Licence(token)
        or_later = token.endswith("+")
        bare = token[:-1] if or_later else token
        if not _ID.fullmatch(bare) or bare.startswith(("LicenseRef-", "DocumentRef-")):
            self.index -= 1
            raise self.fail(f"{token!r} is not a licence identifier")
        return Licence(bare, or_later)

    def finish(self, expression: Expression) -> Expression:
        token = self.peek()
        if token is None:
            return expression
        if token.lower() in ("and", "or", "with"):
            raise self.fail(f"operators are upper case: {token.upper()}, not {token!r}")
        raise self.fail(f"unexpected {token!r}")


def parse(text: str) -> Expression:
    """Parse an SPDX licence expression; raise LicenceExpressionError naming the column."""
    if not isinstance(text, str):
        raise LicenceExpressionError(str(text), 0, "not a string")
    if len(text) > MAX_LENGTH:
        raise LicenceExpressionError(text, MAX_LENGTH, f"longer than {MAX_LENGTH} characters")
    parser = _Parser(text)
    if not parser.tokens:
        raise LicenceExpressionError(text, 0, "empty")
    if [token for token, _ in parser.tokens] in (["NONE"], ["NOASSERTION"]):
        return Special(parser.tokens[0][0])
    return parser.finish(parser.expression(0))
