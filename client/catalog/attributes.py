"""Typed product attributes: the four types (number, string, boolean, list of strings), the
schema of a catalog (attribute name → type), reading values from CSV text or JSON, and the
columns a filter is evaluated on (:class:`AttributeColumns`).

A catalog's schema is inferred from its products when it is built (every product's value of an
attribute must have one type) and stored in SQLite (``attribute_schema``; values in
``attributes``, one row per value, lists as one row per element). An update must match it: a
value of another type is an :class:`~lookserve.errors.InvalidInputError` naming the product, the
attribute and the expected type.

CSV cells are text; a column's type is, in order: the catalog's schema (on update), a typed
header (``price:number``, ``in_stock:boolean``, ``tags:list``, ``brand:string``), or inferred
from the column (all numbers → number; all ``true``/``false`` → boolean; all JSON lists of
strings → list; else string). An empty cell is a missing value. A list cell is a JSON list
(``["a", "b"]``) or ``|``-separated (``a|b``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lookserve.errors import InvalidInputError

log = logging.getLogger(__name__)

NUMBER, STRING, BOOLEAN, LIST = "number", "string", "boolean", "list"
TYPES = (NUMBER, STRING, BOOLEAN, LIST)
RESERVED = frozenset({"id", "category", "image", "title", "and", "or", "not", "in", "contains", "true", "false"})

Schema = Mapping[str, str]


def type_of(value: Any) -> str | None:
    """The attribute type of a Python value (None for a missing value or an empty list);
    InvalidInputError for any other value (see :func:`filterable`)."""
    if value is None or (isinstance(value, list | tuple) and not value):
        return None
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(f"{value!r} is not a finite number")
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return LIST
    raise InvalidInputError(f"{value!r} is not a number, string, boolean or list of strings")


def filterable(value: Any) -> str | None:
    """:func:`type_of`, or None for a value of none of the four types (a dict, a list of numbers
    from products.json): such attributes stay in the product's JSON but cannot be filtered on."""
    try:
        return type_of(value)
    except InvalidInputError:
        return None


def parse_text(text: str, kind: str) -> Any:
    """A CSV cell as a value of type ``kind`` (None when empty); ValueError naming the type otherwise."""
    text = text.strip()
    if text == "":
        return None
    if kind == NUMBER:
        v = float(text)  # ValueError for non-numbers
        if not math.isfinite(v):
            raise ValueError(f"{text!r} is not a finite number")
        return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v
    if kind == BOOLEAN:
        low = text.lower()
        if low not in ("true", "false"):
            raise ValueError(f"{text!r} is not true or false")
        return low == "true"
    if kind == LIST:
        if text.startswith("["):
            v = json.loads(text)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"{text!r} is not a JSON list of strings")
            return v
        return [p.strip() for p in text.split("|") if p.strip()]
    if kind == STRING:
        return text
    raise ValueError(f"unknown attribute type {kind!r}; expected one of {', '.join(TYPES)}")


def infer_column(cells: Iterable[str]) -> str:
    """The type of a CSV column from its non-empty cells (see the module docstring)."""
    cells = [c.strip() for c in cells if c.strip()]
    if not cells:
        return STRING
    for kind in (NUMBER, BOOLEAN, LIST):
        if kind == LIST and not all(c.startswith("[") for c in cells):
            continue
        try:
            for c in cells:
                parse_text(c, kind)
        except ValueError:
            continue
        return kind
    return STRING


def split_header(name: str) -> tuple[str, str | None]:
    """``price:number`` → (``price``, ``number``); ``brand`` → (``brand``, None)."""
    if ":" in name:
        base, kind = name.rsplit(":", 1)
        kind = kind.strip().lower()
        if kind not in TYPES:
            raise InvalidInputError(f"column {name!r}: unknown attribute type {kind!r}; expected one of {', '.join(TYPES)}")
        return base.strip(), kind
    return name.strip(), None


def usable_name(name: str) -> bool:
    """Whether filters can name this attribute (an identifier, not a keyword or a column of its own)."""
    return name.isidentifier() and name.isascii() and name.lower() not in RESERVED


def _skip(name: str, why: str, warned: set[str] = set()) -> None:  # noqa: B006 - one warning per name per process
    if name not in warned:
        warned.add(name)
        log.warning("attribute %r %s: kept in the product's JSON, not filterable", name, why)


def infer_schema(products: Iterable[tuple[int, Mapping[str, Any]]]) -> dict[str, str]:
    """The schema of these (product id, attributes) pairs; InvalidInputError when one attribute
    has two types (naming it, both types and a product of each)."""
    schema: dict[str, str] = {}
    first: dict[str, int] = {}
    for pid, attrs in products:
        for name, value in attrs.items():
            kind = filterable(value)
            if kind is None:
                continue
            if not usable_name(name):
                _skip(name, f"is not a name filters can use (letters, digits, _; none of {', '.join(sorted(RESERVED))})")
                continue
            known = schema.setdefault(name, kind)
            first.setdefault(name, pid)
            if known != kind:
                raise InvalidInputError(
                    f"attribute {name!r} is {known} for product {first[name]} but {kind} for product {pid}; "
                    "one attribute has one type"
                )
    return dict(sorted(schema.items()))


def check_against(schema: Schema, pid: int, attrs: Mapping[str, Any]) -> None:
    """InvalidInputError unless every attribute of ``attrs`` is in ``schema`` with its type."""
    for name, value in attrs.items():
        want = schema.get(name)
        try:
            kind = type_of(value)
        except InvalidInputError as e:
            if want is None:
                continue  # not filterable, as at build time
            raise InvalidInputError(f"product {pid}: attribute {name!r} expects {want}, got {value!r}") from e
        if kind is None or want is None:  # a new attribute joins the schema (when its name is usable)
            continue
        if want != kind:
            raise InvalidInputError(f"product {pid}: attribute {name!r} expects {want}, got {kind} {value!r}")


def sql_rows(pid: int, attrs: Mapping[str, Any]) -> list[tuple[int, str, float | None, str | None]]:
    """The ``attributes`` table rows (product_id, name, num, text) of one product."""
    rows = []
    for name, value in sorted(attrs.items()):
        kind = filterable(value)
        if kind is None or not usable_name(name):
            continue
        if kind == LIST:
            rows += [(pid, name, None, v) for v in value]
        elif kind == STRING:
            rows.append((pid, name, None, value))
        else:
            rows.append((pid, name, float(value), None))
    return rows


@dataclass(frozen=True)
class Column:
    """One attribute over the catalog's products (row = product position).

    number: ``values`` float64 (NaN missing); boolean: ``values`` int8 (-1 missing, 0, 1);
    string: ``values`` int32 codes into ``vocabulary`` (-1 missing); list: ``postings`` term →
    product positions holding it.
    """

    name: str
    kind: str
    values: np.ndarray | None = None
    vocabulary: Mapping[str, int] | None = None
    postings: Mapping[str, np.ndarray] | None = None


class AttributeColumns:
    """The typed columns of every attribute, read once when a catalog is opened."""

    def __init__(self, schema: Schema, product_ids: np.ndarray, columns: Mapping[str, Column]) -> None:
        self.schema = dict(schema)
        self.product_ids = product_ids  # sorted; position = row
        self.columns = dict(columns)

    @property
    def size(self) -> int:
        return len(self.product_ids)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row of each product id (ids must be present)."""
        return np.searchsorted(self.product_ids, ids)

    @classmethod
    def from_rows(cls, schema: Schema, product_ids: Sequence[int],
                  rows: Iterable[tuple[int, str, float | None, str | None]]) -> AttributeColumns:
        ids = np.array(sorted(product_ids), dtype=np.int64)
        n = len(ids)
        nums: dict[str, np.ndarray] = {}
        texts: dict[str, dict[str, list[int]]] = {}
        for name, kind in schema.items():
            if kind == NUMBER:
                nums[name] = np.full(n, np.nan)
            elif kind == BOOLEAN:
                nums[name] = np.full(n, np.nan)
            else:
                texts[name] = {}
        pos_of = {int(p): i for i, p in enumerate(ids.tolist())}
        for pid, name, num, text in rows:
            pos = pos_of.get(int(pid))
            if pos is None:
                continue
            if name in nums:
                nums[name][pos] = num
            elif name in texts:
                texts[name].setdefault(text, []).append(pos)
        columns: dict[str, Column] = {}
        for name, kind in schema.items():
            if kind == NUMBER:
                columns[name] = Column(name, kind, values=nums[name])
            elif kind == BOOLEAN:
                v = nums[name]
                columns[name] = Column(name, kind, values=np.where(np.isnan(v), -1, v).astype(np.int8))
            elif kind == STRING:
                vocab = {t: i for i, t in enumerate(sorted(texts[name]))}
                codes = np.full(n, -1, np.int32)
                for t, positions in texts[name].items():
                    codes[positions] = vocab[t]
                columns[name] = Column(name, kind, values=codes, vocabulary=vocab)
            else:
                columns[name] = Column(name, kind, postings={t: np.unique(np.array(p, np.int64))
                                                             for t, p in texts[name].items()})
        return cls(schema, ids, columns)


__all__ = [
    "BOOLEAN", "LIST", "NUMBER", "RESERVED", "STRING", "TYPES", "AttributeColumns", "Column", "Schema",
    "check_against", "filterable", "infer_column", "infer_schema", "parse_text", "split_header", "sql_rows", "type_of", "usable_name",
]
