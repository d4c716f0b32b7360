"""The filter language on product attributes: text → expression tree → a mask over products.

Never ``eval``'d: a tokenizer and a recursive-descent parser build a tree of frozen dataclasses
(:func:`parse`), :func:`check` types it against a catalog's schema, and :func:`evaluate` turns it
into a boolean mask over the catalog's products with numpy. Grammar::

    expr       := or
    or         := and ("or" and)*
    and        := unary ("and" unary)*
    unary      := "not" unary | "(" expr ")" | test
    test       := NAME                                     boolean attribute is true
                | NAME ("<"|"<="|">"|">="|"=="|"!=") literal
                | NAME ["not"] "in" "[" literal ("," literal)* "]"
                | NAME "contains" STRING                   list attribute holds the string
    literal    := NUMBER | STRING ("..." or '...') | true | false

    price < 50 and brand in ["a", "b"] and in_stock
    not (colour == "red" or tags contains "sale")

Types: number (all comparisons, ``in``), string (``==``, ``!=``, ``in``), boolean (bare name,
``==``/``!=`` true/false), list of strings (``contains``; ``in`` = holds any of). A test on a
product without the attribute is false (``not`` makes it true). An unknown attribute or a type
mismatch names the attribute and the expected type; a filter longer than :data:`MAX_LENGTH`
characters or nested deeper than :data:`MAX_DEPTH` is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from lookserve.client.catalog.attributes import (
    BOOLEAN,
    LIST,
    NUMBER,
    STRING,
    AttributeColumns,
    Schema,
)
from lookserve.errors import InvalidInputError

MAX_LENGTH = 2000  # characters of filter text
MAX_DEPTH = 24  # nesting of parentheses / not / and-or levels
MAX_LIST = 1000  # literals in one `in [...]`

_OPS = ("<=", ">=", "==", "!=", "<", ">")


class FilterError(InvalidInputError):
    """A filter that does not parse, names an unknown attribute, or mixes types."""


# --- the tree -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Flag:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Compare:
    name: str
    op: str
    value: float | str | bool

    def __str__(self) -> str:
        return f"{self.name} {self.op} {_literal(self.value)}"


@dataclass(frozen=True)
class In:
    name: str
    values: tuple[float | str | bool, ...]

    def __str__(self) -> str:
        return f"{self.name} in [{', '.join(_literal(v) for v in self.values)}]"


@dataclass(frozen=True)
class Contains:
    name: str
    value: str

    def __str__(self) -> str:
        return f"{self.name} contains {_literal(self.value)}"


@dataclass(frozen=True)
class Not:
    item: Expr

    def __str__(self) -> str:
        return f"not ({self.item})"


@dataclass(frozen=True)
class And:
    items: tuple[Expr, ...]

    def __str__(self) -> str:
        return " and ".join(f"({i})" for i in self.items)


@dataclass(frozen=True)
class Or:
    items: tuple[Expr, ...]

    def __str__(self) -> str:
        return " or ".join(f"({i})" for i in self.items)


Expr = Union[Flag, Compare, In, Contains, Not, And, Or]  # noqa: UP007 - a runtime alias of the node classes


def _literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


# --- parsing ------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>"(?:[^"\\]|\\.)*"|'[^'\\]*')
      | (?P<op><=|>=|==|!=|<|>)
      | (?P<punct>[()\[\],])
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "contains", "true", "false"}


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FilterError(f"filter {text!r}: unexpected character {text[pos:].lstrip()[:1]!r} at {pos}")
        kind = m.lastgroup
        value = m.group(kind)
        start = m.start(kind)
        if kind == "name" and value.lower() in _KEYWORDS:
            kind, value = "kw", value.lower()
        out.append((kind, value, start))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def fail(self, what: str) -> FilterError:
        tok = self.peek()
        where = f"at {tok[2]} ({tok[1]!r})" if tok else "at the end"
        return FilterError(f"filter {self.text!r}: expected {what} {where}")

    def take(self, kind: str, value: str | None = None) -> str | None:
        tok = self.peek()
        if tok and tok[0] == kind and (value is None or tok[1] == value):
            self.i += 1
            return tok[1]
        return None

    def expect(self, kind: str, value: str | None, what: str) -> str:
        got = self.take(kind, value)
        if got is None:
            raise self.fail(what)
        return got

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"filter is nested deeper than {MAX_DEPTH} levels")

    def parse(self) -> Expr:
        if not self.toks:
            raise FilterError("filter is empty")
        expr = self.or_()
        if self.peek() is not None:
            raise self.fail("`and`, `or` or the end")
        return expr

    def or_(self) -> Expr:
        self.nest()
        items = [self.and_()]
        while self.take("kw", "or"):
            items.append(self.and_())
        self.depth -= 1
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_(self) -> Expr:
        items = [self.unary()]
        while self.take("kw", "and"):
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self) -> Expr:
        if self.take("kw", "not"):
            self.nest()
            item = self.unary()
            self.depth -= 1
            return Not(item)
        if self.take("punct", "("):
            expr = self.or_()
            self.expect("punct", ")", "`)`")
            return expr
        return self.test()

    def literal(self) -> float | str | bool:
        tok = self.peek()
        if tok is None:
            raise self.fail("a value")
        kind, value, _ = tok
        if kind == "number":
            self.i += 1
            return float(value)
        if kind == "string":
            self.i += 1
            if value[0] == "'":
                return value[1:-1]
            try:
                return json.loads(value)
            except ValueError as e:
                raise FilterError(f"filter {self.text!r}: bad string {value}: {e}") from e
        if kind == "kw" and value in ("true", "false"):
            self.i += 1
            return value == "true"
        raise self.fail("a number, a quoted string, true or false")

    def test(self) -> Expr:
        name = self.take("name")
        if name is None:
            raise self.fail("an attribute name, `not` or `(`")
        op = self.take("op")
        if op is not None:
            return Compare(name, op, self.literal())
        negate = False
        if self.take("kw", "not"):
            negate = True
            if self.peek() is None or self.peek()[:2] != ("kw", "in"):
                raise self.fail("`in` after `not`")
        if self.take("kw", "in"):
            self.expect("punct", "[", "`[`")
            values = [self.literal()]
            while self.take("punct", ","):
                values.append(self.literal())
                if len(values) > MAX_LIST:
                    raise FilterError(f"filter: a list holds more than {MAX_LIST} values")
            self.expect("punct", "]", "`]` or `,`")
            node: Expr = In(name, tuple(values))
            return Not(node) if negate else node
        if self.take("kw", "contains"):
            value = self.literal()
            if not isinstance(value, str):
                raise FilterError(f"filter: `{name} contains` takes a quoted string, got {_literal(value)}")
            return Contains(name, value)
        return Flag(name)


def parse(text: str) -> Expr:
    """The expression tree of a filter string (:class:`FilterError` naming what is wrong)."""
    if not isinstance(text, str):
        raise FilterError(f"a filter is a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter is {len(text)} characters long; the limit is {MAX_LENGTH}")
    return _Parser(text).parse()


def as_expr(filter: str | Expr | None) -> Expr | None:
    """A filter given as text or as a tree, as a tree (None stays None)."""
    if filter is None or isinstance(filter, Flag | Compare | In | Contains | Not | And | Or):
        return filter
    return parse(filter)


# --- typing against a schema --------------------------------------------------------------
def _value_type(v) -> str:
    return BOOLEAN if isinstance(v, bool) else NUMBER if isinstance(v, float | int) else STRING


def check(expr: Expr, schema: Schema, depth: int = 0) -> None:
    """:class:`FilterError` when the tree names an attribute the schema lacks or tests one with
    a value or operator of another type (naming the attribute and its type)."""
    if depth > MAX_DEPTH * 2:
        raise FilterError(f"filter is nested deeper than {MAX_DEPTH} levels")
    if isinstance(expr, Not):
        return check(expr.item, schema, depth + 1)
    if isinstance(expr, And | Or):
        for item in expr.items:
            check(item, schema, depth + 1)
        return None
    kind = schema.get(expr.name)
    if kind is None:
        known = ", ".join(f"{n} ({t})" for n, t in sorted(schema.items())) or "none"
        raise FilterError(f"filter: unknown attribute {expr.name!r}; this catalog's attributes: {known}")

    def mismatch(what: str) -> FilterError:
        return FilterError(f"filter: attribute {expr.name!r} is a {kind}; {what}")

    if isinstance(expr, Flag):
        if kind != BOOLEAN:
            raise mismatch(f"`{expr.name}` alone tests a boolean; compare it instead")
    elif isinstance(expr, Contains):
        if kind != LIST:
            raise mismatch("`contains` needs a list attribute")
    elif isinstance(expr, Compare):
        if kind == LIST:
            raise mismatch("test it with `contains` or `in`")
        if _value_type(expr.value) != kind:
            raise mismatch(f"expected a {kind} value, got {_literal(expr.value)}")
        if kind != NUMBER and expr.op not in ("==", "!="):
            raise mismatch(f"`{expr.op}` needs a number attribute; use == or !=")
    elif isinstance(expr, In):
        want = STRING if kind == LIST else kind
        bad = [v for v in expr.values if _value_type(v) != want]
        if bad:
            raise mismatch(f"expected {want} values in the list, got {_literal(bad[0])}")
    return None


# --- evaluation ---------------------------------------------------------------------------
def evaluate(expr: Expr, columns: AttributeColumns) -> np.ndarray:
    """Boolean mask over ``columns``' products (row = position in ``columns.product_ids``)."""
    check(expr, columns.schema)
    return _eval(expr, columns)


def _eval(expr: Expr, cols: AttributeColumns) -> np.ndarray:
    n = cols.size
    if isinstance(expr, Not):
        return ~_eval(expr.item, cols)
    if isinstance(expr, And):
        out = np.ones(n, bool)
        for item in expr.items:
            out &= _eval(item, cols)
        return out
    if isinstance(expr, Or):
        out = np.zeros(n, bool)
        for item in expr.items:
            out |= _eval(item, cols)
        return out
    col = cols.columns[expr.name]
    if col.kind == LIST:
        wanted = (expr.value,) if isinstance(expr, Contains) else expr.values
        out = np.zeros(n, bool)
        for term in wanted:
            hits = col.postings.get(term)
            if hits is not None:
                out[hits] = True
        return out
    if isinstance(expr, Flag):
        return col.values == 1
    values: Sequence = expr.values if isinstance(expr, In) else (expr.value,)
    if col.kind == NUMBER:
        v = col.values
        if isinstance(expr, In):
            return np.isin(v, np.array(values, dtype=np.float64))
        x = float(expr.value)
        with np.errstate(invalid="ignore"):
            out = {"<": v < x, "<=": v <= x, ">": v > x, ">=": v >= x, "==": v == x, "!=": v != x}[expr.op]
        return out & ~np.isnan(v)  # a missing value fails every test
    if col.kind == BOOLEAN:
        v = col.values
        if isinstance(expr, In):
            return np.isin(v, [int(b) for b in values])
        x = int(bool(expr.value))
        return (v == x) if expr.op == "==" else ((v != x) & (v >= 0))
    # string: compare codes
    codes = [col.vocabulary[s] for s in values if s in col.vocabulary]
    v = col.values
    if isinstance(expr, In):
        return np.isin(v, codes)
    hit = v == codes[0] if codes else np.zeros(n, bool)
    return hit if expr.op == "==" else (~hit & (v >= 0))


__all__ = [
    "MAX_DEPTH", "MAX_LENGTH", "MAX_LIST", "And", "Compare", "Contains", "Expr", "FilterError", "Flag", "In", "Not",
    "Or", "as_expr", "check", "evaluate", "parse",
]
