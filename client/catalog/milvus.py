"""The catalog on Milvus: :class:`MilvusCatalog`, a :class:`~lookserve.client.catalog.backend.CatalogBackend`
on a Milvus server (the embedded one of :mod:`~lookserve.client.catalog.milvus_server`, or a cluster).

Address: ``milvus://HOST:PORT/NAME`` — ``NAME`` is an alias (the ``current`` pointer) or a
collection. A token for a secured cluster comes from ``$LOOKSERVE_MILVUS_TOKEN`` (never from
the address, which is logged); ``milvus+https://`` speaks TLS.

Layout: **one collection per (embedder version, catalog version)**, named
``<alias>__e<embedder version>__v<N>``; one row per shop photo (``pk``, ``product_id``,
``category``, ``image``, the product's ``title``/``product_image``/``attributes_json`` and one
typed field per filterable attribute: ``a_<name>`` with its value, ``h_<name>`` whether the
product has it) and its L2-normalised ``vector`` (HNSW, metric IP, so the score is the cosine
similarity). The collection's description is a JSON document recording the embedder (name,
version, model sha256), the catalog version, the attribute schema, the per-category counts and
the index parameters: a collection says what it is without any file beside it.

Versions: :func:`publish_catalog` writes a whole catalog into a **new** collection, flushes it,
builds the index, loads it, counts its rows back with ``consistency_level="Strong"`` and only
then points the alias at it (``create_alias``/``alter_alias`` — Milvus's own atomic switch). An
update (:func:`update_milvus_catalog`) copies the current version's rows minus the removed and
replaced products, plus the new photos, into the next collection the same way. Readers never
see a half-applied change: a :class:`MilvusCatalog` resolves the alias once, when it is opened,
and searches that collection only, so every answer names one version; a
:class:`MilvusCatalogRef` re-resolves the alias (``describe_alias``) every ``interval_s`` and
swaps in the new version, like :class:`~lookserve.client.catalog.watcher.CatalogWatcher` does
for a root's ``current`` symlink. Old collections stay until pruned (``keep``).

Reads use ``consistency_level="Bounded"`` by default: a version is immutable once the alias
names it, and its rows were counted back Strong before that, so nothing newer can be missed
(and a Strong read costs a wait for the next time tick, ~200 ms on the standalone server).

Filters: the tree of :mod:`~lookserve.client.catalog.filters` is checked against the schema and
translated node by node into a Milvus boolean expression: field names only from the schema
(``a_<name>``), literals quoted and escaped here (strings as JSON literals), never user text
pasted in. A test on a product without the attribute is false (``h_<name> and …``), so ``not``
makes it true, as in the directory backend.

A server that cannot be reached, or does not answer within the deadline, is a
:class:`~lookserve.errors.CatalogUnavailable`; the same object answers again once it is back
(a collection the restarted server has not loaded yet is loaded on the way).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from lookserve import contracts
from lookserve.client.catalog.address import MILVUS_SCHEMES, is_milvus_address
from lookserve.client.catalog.attributes import BOOLEAN, LIST, NUMBER, STRING, infer_schema
from lookserve.client.catalog.backend import Match
from lookserve.client.catalog.build import embed_records
from lookserve.client.catalog.directory import Catalog, check_embedder
from lookserve.client.catalog.embedder import Embedder, EmbedderInfo, model_file_sha256
from lookserve.client.catalog.filters import (
    And,
    Compare,
    Contains,
    Expr,
    Flag,
    In,
    Not,
    Or,
    as_expr,
    check,
)
from lookserve.client.catalog.records import PhotoRecord
from lookserve.client.catalog.store import DATABASE
from lookserve.client.catalog.watcher import CatalogRef
from lookserve.errors import (
    CatalogError,
    CatalogUnavailable,
    CatalogVersionMismatch,
    ConfigError,
    InvalidInputError,
)
from lookserve.images import DEFAULT_LIMITS, DecodeLimits

log = logging.getLogger(__name__)

TOKEN_ENV = "LOOKSERVE_MILVUS_TOKEN"
FORMAT = 1  # of the description document
VECTOR, PK = "vector", "pk"
MAX_TOPK = 16384  # Milvus's limit on a search's limit
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,190}$")
_VERSIONED = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*?)__e(?P<e>[A-Za-z0-9_]+?)__v(?P<n>\d+)$")
_BASE_FIELDS = (PK, "product_id", "category", "image", "title", "product_image", "attributes_json", VECTOR)
_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_NOT_LOADED = 101  # Milvus: collection not loaded (e.g. just after a restart)
_ERRORS = (MilvusException, grpc.RpcError)  # pymilvus lets some gRPC errors (DEADLINE_EXCEEDED) through raw


# --- the address ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MilvusAddress:
    """``milvus://host:port/name`` parsed."""

    host: str
    port: int
    name: str
    tls: bool = False

    @property
    def uri(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def with_name(self, name: str) -> MilvusAddress:
        return MilvusAddress(self.host, self.port, name, self.tls)

    def __str__(self) -> str:
        return f"{'milvus+https' if self.tls else 'milvus'}://{self.host}:{self.port}/{self.name}"


def parse_address(address: str) -> MilvusAddress:
    """``milvus://HOST:PORT/NAME`` (port 19530 when left out); :class:`ConfigError` naming what is wrong."""
    if not is_milvus_address(address):
        raise ConfigError(f"catalog address {address!r} is not a Milvus address; expected milvus://HOST:PORT/NAME")
    parts = urlsplit(address)
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"catalog address {address!r}: put no credentials or options in the address "
                          f"(a token goes in ${TOKEN_ENV}); expected milvus://HOST:PORT/NAME")
    try:
        port = parts.port or 19530
    except ValueError as e:
        raise ConfigError(f"catalog address {address!r}: bad port ({e}); expected milvus://HOST:PORT/NAME") from e
    name = parts.path.strip("/")
    if not parts.hostname or not _NAME.match(name):
        raise ConfigError(f"catalog address {address!r}: expected milvus://HOST:PORT/NAME with NAME a collection "
                          "or alias (letters, digits, underscores, not starting with a digit)")
    return MilvusAddress(parts.hostname, port, name, parts.scheme.lower() == "milvus+https")


# --- settings ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MilvusParams:
    """How a collection is indexed and read (defaults: the directory backend's HNSW parameters)."""

    M: int = 16
    ef_construction: int = 200
    ef: int = 64  # search ef (at least the number of rows asked for)
    timeout_s: float = 10.0  # each call's deadline
    read_consistency: str = "Bounded"  # see the module docstring; "Strong" to wait for the newest time tick
    shards: int = 1
    # flush before indexing: seals the segments so HNSW is built on all of them now (a few
    # seconds even for a tiny collection); without it, rows stay in growing segments (searched
    # by brute force) until Milvus seals them itself — fine for small catalogs
    flush: bool = True

    def __post_init__(self) -> None:
        if self.read_consistency not in ("Strong", "Bounded", "Session", "Eventually"):
            raise ConfigError(f"read_consistency must be Strong, Bounded, Session or Eventually, got {self.read_consistency!r}")
        if self.M < 2 or self.ef_construction < 1 or self.ef < 1 or self.timeout_s <= 0 or self.shards < 1:
            raise ConfigError(f"bad Milvus parameters: {self}")


_clients: dict[tuple[str, str], MilvusClient] = {}
_clients_lock = threading.Lock()


def connect(address: MilvusAddress, timeout_s: float = 10.0) -> MilvusClient:
    """The process's (thread-safe, shared) client of the server at ``address``."""
    token = os.environ.get(TOKEN_ENV, "")
    key = (address.uri, hashlib.sha256(token.encode()).hexdigest())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            try:
                client = MilvusClient(uri=address.uri, token=token, timeout=timeout_s)
            except _ERRORS as e:  # pymilvus says "Fail connecting to server" without a gRPC status
                raise CatalogUnavailable(f"cannot connect to Milvus at {address.uri} within {timeout_s:.0f} s: "
                                         f"{_short(e)}") from e
            _clients[key] = client
    return client


def _unavailable(e: BaseException) -> bool:
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, grpc.RpcError) and callable(getattr(e, "code", None)) and e.code() in _UNAVAILABLE:
            return True
        code = getattr(e, "code", None)
        if callable(code):  # pymilvus wraps the grpc error's bound .code as its code
            try:
                code = code()
            except Exception:  # noqa: BLE001 - a foreign object: not an availability signal
                code = None
        if code in _UNAVAILABLE:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _translate(e: BaseException, what: str) -> CatalogError:
    if _unavailable(e):
        return CatalogUnavailable(f"{what}: the Milvus server cannot be reached or did not answer in time ({_short(e)})")
    return CatalogError(f"{what}: Milvus refused: {_short(e)}")


def _short(e: BaseException) -> str:
    message = getattr(e, "message", None) or str(e)
    return " ".join(str(message).split())[:300]


def _code(e: BaseException) -> Any:
    code = getattr(e, "code", None)
    return None if callable(code) else code


# --- filters → Milvus expressions ---------------------------------------------------------
def _field(name: str) -> str:
    return f"a_{name}"


def _has(name: str) -> str:
    return f"h_{name}"


def _quote(value: str) -> str:
    """A Milvus string literal: JSON's escaping (quotes, backslashes, control characters) is what
    Milvus's parser unquotes; non-ASCII characters are escaped too."""
    if not isinstance(value, str):
        raise FilterTranslationError(f"expected a string literal, got {value!r}")
    return json.dumps(value, ensure_ascii=True)


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise FilterTranslationError(f"expected a finite number literal, got {value!r}")
    return repr(float(value))


class FilterTranslationError(InvalidInputError):
    """A filter tree that cannot be written as a Milvus expression (a bug or a hand-made tree)."""


def to_milvus_expression(expr: Expr, schema: Mapping[str, str]) -> str:
    """The Milvus boolean expression of a filter tree, checked against ``schema`` first."""
    check(expr, schema)
    return _expr(expr, schema)


def _expr(expr: Expr, schema: Mapping[str, str]) -> str:
    if isinstance(expr, Not):
        return f"(not {_expr(expr.item, schema)})"
    if isinstance(expr, And | Or):
        joiner = " and " if isinstance(expr, And) else " or "
        return "(" + joiner.join(_expr(i, schema) for i in expr.items) + ")"
    kind = schema[expr.name]  # check() made sure the name is in the schema
    field, has = _field(expr.name), _has(expr.name)
    if kind == LIST:
        if isinstance(expr, Contains):
            return f"array_contains({field}, {_quote(expr.value)})"
        if isinstance(expr, In):
            return f"array_contains_any({field}, [{', '.join(_quote(v) for v in expr.values)}])"
        raise FilterTranslationError(f"attribute {expr.name!r} is a list: only contains/in apply")
    if isinstance(expr, Flag):
        return f"({has} == true and {field} == true)"
    if isinstance(expr, Contains):
        raise FilterTranslationError(f"attribute {expr.name!r} is not a list: contains does not apply")
    literal: Callable[[Any], str]
    if kind == NUMBER:
        literal = _number
    elif kind == STRING:
        literal = _quote
    elif kind == BOOLEAN:
        def literal(v: Any) -> str:
            if not isinstance(v, bool):
                raise FilterTranslationError(f"expected a boolean literal, got {v!r}")
            return "true" if v else "false"
    else:  # pragma: no cover - the schema has four types
        raise FilterTranslationError(f"attribute {expr.name!r} has unknown type {kind!r}")
    if isinstance(expr, In):
        if kind == BOOLEAN:  # Milvus has no `in` on booleans
            return f"({has} == true and (" + " or ".join(f"{field} == {literal(v)}" for v in expr.values) + "))"
        return f"({has} == true and {field} in [{', '.join(literal(v) for v in expr.values)}])"
    if not isinstance(expr, Compare) or expr.op not in ("<", "<=", ">", ">=", "==", "!="):
        raise FilterTranslationError(f"cannot translate {expr!r}")
    return f"({has} == true and {field} {expr.op} {literal(expr.value)})"


# --- the description document -------------------------------------------------------------
@dataclass(frozen=True)
class CollectionInfo:
    """What a catalog collection is (stored as JSON in its description)."""

    embedder: EmbedderInfo
    dim: int
    attributes: Mapping[str, str]
    categories: Mapping[str, Mapping[str, int]]  # category -> {photos, products, max_photos, ef}
    M: int
    ef_construction: int
    created_utc: str
    source: str = ""  # what it was published from (a directory catalog's version, or records)
    parent: str = ""  # the collection it was updated from

    def to_json(self) -> str:
        d = asdict(self)
        d["format"], d["lookserve"] = FORMAT, "catalog"
        d["attributes"], d["categories"] = dict(self.attributes), {k: dict(v) for k, v in self.categories.items()}
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: str) -> CollectionInfo:
        try:
            d = json.loads(text)
            if d.get("lookserve") != "catalog" or d.get("format") != FORMAT:
                raise ValueError("not a lookserve catalog description")
            return cls(
                embedder=EmbedderInfo(**d["embedder"]), dim=int(d["dim"]), attributes=dict(d["attributes"]),
                categories={k: dict(v) for k, v in d["categories"].items()}, M=int(d["M"]),
                ef_construction=int(d["ef_construction"]), created_utc=str(d["created_utc"]),
                source=str(d.get("source", "")), parent=str(d.get("parent", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CatalogError(f"Milvus collection {where} is not a lookserve catalog (its description: {e}); "
                               "publish one with lookserve catalog milvus-push") from e


# --- the backend ---------------------------------------------------------------------------
class MilvusCatalog:
    """One catalog version: a Milvus collection, searched by many threads at once."""

    def __init__(self, address: MilvusAddress, collection: str, info: CollectionInfo, client: MilvusClient,
                 params: MilvusParams = MilvusParams()) -> None:
        self._address = address  # as given (alias or collection)
        self.collection = collection  # the collection this object reads, fixed
        self.info = info
        self.client = client
        self.params = params

    @classmethod
    def open(cls, address: str | MilvusAddress, params: MilvusParams = MilvusParams(),
             embedder: EmbedderInfo | None = None, served_versions: Sequence[str] | None = None) -> MilvusCatalog:
        """Resolve the alias (or take the collection), read its description, check the embedder
        (as :meth:`Catalog.open` does) and make sure it is loaded."""
        addr = parse_address(address) if isinstance(address, str) else address
        client = connect(addr, params.timeout_s)
        collection = resolve_alias(client, addr, params.timeout_s)
        try:
            desc = client.describe_collection(collection, timeout=params.timeout_s)
        except _ERRORS as e:
            raise _translate(e, f"opening catalog {addr}") from e
        info = CollectionInfo.from_json(desc.get("description", ""), f"{addr.with_name(collection)}")
        catalog = cls(addr, collection, info, client, params)
        check_embedder(catalog, embedder, served_versions)  # reads .embedder only
        catalog._ensure_loaded()
        log.info("opened Milvus catalog %s -> %s (embedder %s v%s)", addr, collection, info.embedder.name,
                 info.embedder.version)
        return catalog

    # -- identity -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return str(self._address)

    @property
    def path(self) -> str:
        """The collection's own address (what look results name as their catalog)."""
        return str(self._address.with_name(self.collection))

    @property
    def version(self) -> str:
        """The collection's name: each version is a new collection, never changed after publishing."""
        return self.collection

    @property
    def embedder(self) -> EmbedderInfo:
        return self.info.embedder

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(c for c, v in self.info.categories.items() if v.get("photos", 0) > 0)

    @property
    def attributes(self) -> Mapping[str, str]:
        return self.info.attributes

    def describe(self) -> dict:
        i = self.info
        return {
            "address": self.address, "backend": "milvus", "collection": self.collection, "version": self.version,
            "embedder": asdict(i.embedder), "dim": i.dim, "space": "ip", "index": "HNSW", "M": i.M,
            "ef_construction": i.ef_construction, "ef": self.params.ef,
            "read_consistency": self.params.read_consistency,
            "counts": {"photos": sum(v["photos"] for v in i.categories.values()),
                       "products": sum(v["products"] for v in i.categories.values()), "categories": len(self.categories)},
            "categories": {c: dict(v) for c, v in i.categories.items()}, "attributes": dict(i.attributes),
            "created_utc": i.created_utc, "source": i.source, "parent": i.parent,
        }

    # -- calls ----------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """One read within ``params.timeout_s``: retried here while the server is unreachable
        (pymilvus's own retries — 75 by default — are switched off: they ignore a float timeout),
        a collection the server has not loaded (after a restart) loaded once on the way."""
        deadline = time.monotonic() + self.params.timeout_s
        back_off, loaded = 0.05, False
        while True:
            left = deadline - time.monotonic()
            try:
                return fn(**kwargs, timeout=max(left, 0.05), retry_times=0)
            except _ERRORS as e:
                if not loaded and _code(e) == _NOT_LOADED:
                    log.info("collection %s is not loaded (server restarted?); loading it", self.collection)
                    loaded = True
                    self._ensure_loaded()
                    continue
                if _unavailable(e) and time.monotonic() + back_off < deadline:
                    time.sleep(back_off)
                    back_off = min(2 * back_off, 0.5)
                    continue
                raise _translate(e, f"{what} in {self.path}") from e

    def _ensure_loaded(self) -> None:
        try:
            self.client.load_collection(self.collection, timeout=max(self.params.timeout_s, 60))
        except _ERRORS as e:
            raise _translate(e, f"loading {self.path}") from e

    # -- searching ------------------------------------------------------------------------
    def search(self, category: str, queries: np.ndarray, k: int = 6, filter: str | Expr | None = None) -> list[list[Match]]:
        info = self.info.categories.get(category)
        if info is None or info.get("photos", 0) == 0:
            raise CatalogError(f"the catalog has no {category!r} products (it has: {', '.join(sorted(self.categories))})")
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidInputError(f"queries must be [n, {self.dim}], got {q.shape}")
        if len(q) == 0:
            return []
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        expression = f"category == {_quote(category)}"
        tree = as_expr(filter)
        if tree is not None:
            expression += f" and {to_milvus_expression(tree, self.info.attributes)}"
        want = min(info["photos"], k * max(1, info.get("max_photos", 1)), MAX_TOPK)
        ef = max(self.params.ef, info.get("ef", 0), want)
        hits = self._call("searching", self.client.search, collection_name=self.collection, data=q.tolist(),
                          anns_field=VECTOR, limit=want, filter=expression,
                          output_fields=["product_id", "image", "title", "product_image", "attributes_json"],
                          search_params={"metric_type": "IP", "params": {"ef": ef}},
                          consistency_level=self.params.read_consistency)
        out: list[list[Match]] = []
        for row in hits:  # every photo row carries its product's fields: no second query for them
            best: dict[int, Match] = {}
            for hit in row:
                e = hit.get("entity", {})
                pid = int(e["product_id"])
                if pid not in best:
                    best[pid] = Match(pid, float(hit["distance"]), category, e["title"], e["product_image"], e["image"],
                                      json.loads(e["attributes_json"] or "{}"))
                if len(best) == k:
                    break
            out.append(list(best.values()))
        return out

    def products(self, ids: Iterable[int]) -> dict[int, dict]:
        ids = sorted({int(i) for i in ids})
        if not ids:
            return {}
        got = self._call("reading products", self.client.query, collection_name=self.collection,
                         filter=f"product_id in [{', '.join(str(i) for i in ids)}]",
                         output_fields=["product_id", "category", "title", "product_image", "attributes_json"],
                         consistency_level=self.params.read_consistency)
        out: dict[int, dict] = {}
        for r in got:
            pid = int(r["product_id"])
            if pid not in out:
                out[pid] = {"id": pid, "category": r["category"], "title": r["title"], "image": r["product_image"],
                            "attributes": json.loads(r["attributes_json"] or "{}")}
        return out

    def vectors(self, category: str, limit: int = 1) -> np.ndarray:
        """Up to ``limit`` stored (L2-normalised) vectors of ``category``, read Strong — what a
        smoke test queries the collection with."""
        got = self._call("reading vectors", self.client.query, collection_name=self.collection,
                         filter=f"category == {_quote(category)}", output_fields=[VECTOR], limit=int(limit),
                         consistency_level="Strong")
        return np.asarray([r[VECTOR] for r in got], dtype=np.float32).reshape(-1, self.dim)

    def image_path(self, image: str) -> Path | None:
        if image.startswith(("http://", "https://")):
            return None
        return Path(image)

    def rows(self, fields: Sequence[str] = _BASE_FIELDS, batch: int = 2000) -> Iterable[dict]:
        """Every row of the collection (Strong), in batches — what an update copies."""
        try:
            it = self.client.query_iterator(self.collection, batch_size=batch, filter=f"{PK} >= 0",
                                            output_fields=list(fields), timeout=self.params.timeout_s,
                                            consistency_level="Strong")
            while True:
                chunk = it.next()
                if not chunk:
                    it.close()
                    return
                yield from chunk
        except _ERRORS as e:
            raise _translate(e, f"reading {self.path}") from e

    def __repr__(self) -> str:
        return f"MilvusCatalog({self.path})"


def resolve_alias(client: MilvusClient, address: MilvusAddress, timeout_s: float = 10.0) -> str:
    """The collection ``address.name`` names: the alias's target, or the collection itself."""
    try:
        return client.describe_alias(address.name, timeout=timeout_s)["collection_name"]
    except _ERRORS as e:
        if _unavailable(e):
            raise _translate(e, f"resolving {address}") from e
    try:
        if client.has_collection(address.name, timeout=timeout_s):
            return address.name
    except _ERRORS as e:
        raise _translate(e, f"resolving {address}") from e
    raise CatalogError(f"Milvus at {address.uri} has no alias or collection {address.name!r} "
                       "(publish one with lookserve catalog milvus-push)")


# --- following the alias -------------------------------------------------------------------
class MilvusCatalogRef(CatalogRef):
    """A :class:`CatalogRef` that follows a Milvus alias: every :meth:`get` (once per request)
    asks ``describe_alias`` when ``interval_s`` has passed; when the alias names another
    collection, one thread opens it (checking the embedder against ``client``'s server when
    given) while the others keep using the old one, then swaps it in."""

    def __init__(self, address: str, client=None, interval_s: float = 0.5, params: MilvusParams = MilvusParams(),
                 model_repository: str | os.PathLike | None = None, on_swap=None) -> None:
        if interval_s < 0:
            raise ConfigError(f"interval_s must be ≥ 0, got {interval_s}")
        self.address = parse_address(address)
        self.client, self.interval_s, self.params = client, interval_s, params
        self.model_repository, self.on_swap = model_repository, on_swap
        super().__init__(self._open())
        self._poll_lock = threading.Lock()
        self._checked = time.monotonic()
        self.swaps = 0

    def _open(self) -> MilvusCatalog:
        return open_milvus_for_client(self.address, self.client, self.model_repository, self.params) \
            if self.client is not None else MilvusCatalog.open(self.address, self.params)

    def get(self) -> MilvusCatalog:
        if time.monotonic() - self._checked >= self.interval_s:
            self.poll()
        return self._catalog

    def refresh(self) -> MilvusCatalog:
        self.poll(blocking=True)
        return self._catalog

    def poll(self, blocking: bool = False) -> bool:
        """Resolve the alias now; True when a new version was swapped in."""
        if not self._poll_lock.acquire(blocking=blocking):
            return False
        try:
            self._checked = time.monotonic()
            current = self._catalog
            try:
                target = resolve_alias(current.client, self.address, self.params.timeout_s)
                if target == current.collection:
                    return False
                catalog = self._open()
            except CatalogError as e:  # unreachable, or a bad new version: keep serving the old one
                log.warning("could not follow %s (%s); keeping %s", self.address, e, current.collection)
                return False
            old = self.swap(catalog)
            self.swaps += 1
            log.info("catalog swapped: %s -> %s", old.collection, catalog.collection)
            if self.on_swap is not None:
                self.on_swap(old, catalog)
            return True
        finally:
            self._poll_lock.release()


def open_milvus_for_client(address: str | MilvusAddress, client, model_repository: str | os.PathLike | None = None,
                           params: MilvusParams = MilvusParams()) -> MilvusCatalog:
    """:meth:`MilvusCatalog.open`, checking that ``client``'s Triton serves its embedder version
    (and, with ``model_repository``, the model file's checksum) — as ``open_for_client`` does."""
    catalog = MilvusCatalog.open(address, params)
    meta = client.model_metadata(catalog.embedder.name or contracts.EMBEDDER)
    check_embedder(catalog, None, meta.versions)
    if model_repository is not None:
        sha = model_file_sha256(model_repository, catalog.embedder.name, catalog.embedder.version)
        check_embedder(catalog, EmbedderInfo(catalog.embedder.name, catalog.embedder.version, sha))
    return catalog


# --- publishing ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Photo:
    """One row to write: a shop photo of a product, with its product's metadata."""

    product_id: int
    category: str
    image: str
    title: str
    product_image: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class PublishResult:
    address: str  # the alias
    collection: str
    previous: str | None
    photos: int
    products: int
    dropped: tuple[str, ...]
    seconds: Mapping[str, float]


def collection_name(base: str, embedder_version: str, n: int) -> str:
    ev = re.sub(r"[^A-Za-z0-9_]", "_", str(embedder_version)) or "0"
    return f"{base}__e{ev}__v{n}"


def _versions(names: Iterable[str], base: str) -> list[tuple[int, str]]:
    """The collections of alias ``base`` among ``names`` (``<base>__e<embedder>__v<N>``), as (N, name), oldest first."""
    return sorted((int(m.group("n")), n) for n in names if (m := _VERSIONED.match(n)) and m.group("base") == base)


def _next_name(client: MilvusClient, base: str, embedder_version: str, timeout_s: float) -> str:
    mine = _versions(client.list_collections(timeout=timeout_s), base)
    return collection_name(base, embedder_version, (mine[-1][0] if mine else 0) + 1)


def _schema(dim: int, attributes: Mapping[str, str], photos: Sequence[Photo], info: CollectionInfo):
    def longest(values: Iterable[str], floor: int = 16) -> int:
        n = max((len(v.encode()) for v in values), default=0)
        if n > 65535:
            raise CatalogError(f"a text value is {n} bytes long; Milvus keeps at most 65535")
        return max(floor, min(65535, 2 * n))

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=info.to_json())
    schema.add_field(PK, DataType.INT64, is_primary=True)
    schema.add_field("product_id", DataType.INT64)
    schema.add_field("category", DataType.VARCHAR, max_length=64)
    schema.add_field("image", DataType.VARCHAR, max_length=longest(p.image for p in photos))
    schema.add_field("title", DataType.VARCHAR, max_length=longest(p.title for p in photos))
    schema.add_field("product_image", DataType.VARCHAR, max_length=longest(p.product_image for p in photos))
    schema.add_field("attributes_json", DataType.VARCHAR,
                     max_length=longest(json.dumps(dict(p.attributes), sort_keys=True) for p in photos))
    for name, kind in sorted(attributes.items()):
        if not _NAME.match(name):
            raise CatalogError(f"attribute name {name!r} cannot be a Milvus field name")
        values = [p.attributes.get(name) for p in photos]
        if kind == NUMBER:
            schema.add_field(_field(name), DataType.DOUBLE)
        elif kind == BOOLEAN:
            schema.add_field(_field(name), DataType.BOOL)
        elif kind == STRING:
            schema.add_field(_field(name), DataType.VARCHAR, max_length=longest(v for v in values if isinstance(v, str)))
        else:
            lists = [v for v in values if isinstance(v, list | tuple)]
            schema.add_field(_field(name), DataType.ARRAY, element_type=DataType.VARCHAR,
                             max_capacity=max(1, min(4096, max((len(v) for v in lists), default=1))),
                             max_length=longest(s for v in lists for s in v))
        schema.add_field(_has(name), DataType.BOOL)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
    return schema


def _row(pk: int, photo: Photo, vector: np.ndarray, attributes: Mapping[str, str]) -> dict:
    row = {PK: pk, "product_id": int(photo.product_id), "category": photo.category, "image": photo.image,
           "title": photo.title or "", "product_image": photo.product_image or "",
           "attributes_json": json.dumps(dict(photo.attributes), sort_keys=True), VECTOR: vector.tolist()}
    for name, kind in attributes.items():
        value = photo.attributes.get(name)
        present = value is not None and not (isinstance(value, list | tuple) and not value)
        default: Any = {NUMBER: 0.0, BOOLEAN: False, STRING: "", LIST: []}[kind]
        if kind == NUMBER and present:
            value = float(value)
        elif kind == LIST and present:
            value = list(value)
        row[_field(name)] = value if present else default
        row[_has(name)] = present
    return row


def write_collection(client: MilvusClient, name: str, photos: Sequence[Photo], vectors: np.ndarray,
                     info_base: dict, params: MilvusParams, batch: int = 1000) -> CollectionInfo:
    """Create collection ``name`` holding ``photos``, flushed, indexed, loaded and counted back
    (Strong). The collection is dropped again when anything fails."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(photos) or not len(photos):
        raise CatalogError(f"need one vector per photo: {vectors.shape} for {len(photos)} photos")
    if not np.isfinite(vectors).all():
        raise CatalogError("embeddings contain NaN or infinity")
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    products: dict[int, Photo] = {}
    for p in photos:
        first = products.setdefault(p.product_id, p)
        if first.category != p.category:
            raise CatalogError(f"product {p.product_id} is in two categories: {first.category}, {p.category}")
    try:
        attributes = infer_schema((pid, p.attributes) for pid, p in products.items())
    except InvalidInputError as e:
        raise CatalogError(f"product attributes: {e}") from e
    cats: dict[str, dict[str, int]] = {}
    per_product: dict[int, int] = {}
    for p in photos:
        per_product[p.product_id] = per_product.get(p.product_id, 0) + 1
    for p in photos:
        c = cats.setdefault(p.category, {"photos": 0, "products": 0, "max_photos": 1,
                                         "ef": int(info_base.get("ef", {}).get(p.category, 0))})
        c["photos"] += 1
    for pid, p in products.items():
        cats[p.category]["products"] += 1
        cats[p.category]["max_photos"] = max(cats[p.category]["max_photos"], per_product[pid])
    info = CollectionInfo(embedder=info_base["embedder"], dim=vectors.shape[1], attributes=attributes,
                          categories=cats, M=params.M, ef_construction=params.ef_construction,
                          created_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                          source=info_base.get("source", ""), parent=info_base.get("parent", ""))
    schema = _schema(vectors.shape[1], attributes, photos, info)
    t = params.timeout_s
    try:
        client.create_collection(name, schema=schema, consistency_level="Strong", num_shards=params.shards,
                                 timeout=max(t, 120))
        for start in range(0, len(photos), batch):
            chunk = [_row(start + i, p, vectors[start + i], attributes)
                     for i, p in enumerate(photos[start:start + batch])]
            client.insert(name, chunk, timeout=max(t, 60))
        if params.flush:
            client.flush(name, timeout=max(t, 300))
        index = client.prepare_index_params()
        index.add_index(field_name=VECTOR, index_type="HNSW", metric_type="IP",
                        params={"M": params.M, "efConstruction": params.ef_construction})
        client.create_index(name, index, timeout=max(t, 300))
        client.load_collection(name, timeout=max(t, 300))
        counted = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong", timeout=t)
        got = int(counted[0]["count(*)"])
        if got != len(photos):
            raise CatalogError(f"collection {name} holds {got} rows after writing {len(photos)}")
    except BaseException as e:
        try:
            client.drop_collection(name, timeout=t)
        except _ERRORS:
            log.warning("could not drop the half-written collection %s", name)
        if isinstance(e, MilvusException):
            raise _translate(e, f"writing collection {name}") from e
        raise
    return info


def flip_alias(address: str | MilvusAddress, collection: str, params: MilvusParams = MilvusParams()) -> str | None:
    """Point ``address``'s alias at ``collection`` (``alter_alias``: atomic for every reader);
    returns the collection it named before."""
    addr = parse_address(address) if isinstance(address, str) else address
    return _flip(connect(addr, params.timeout_s), addr.name, collection, params.timeout_s)


def _flip(client: MilvusClient, alias: str, collection: str, timeout_s: float) -> str | None:
    """Point ``alias`` at ``collection`` (atomically); the collection it named before, if any."""
    try:
        previous = client.describe_alias(alias, timeout=timeout_s)["collection_name"]
    except _ERRORS as e:
        if _unavailable(e):
            raise _translate(e, f"reading alias {alias}") from e
        previous = None
    try:
        if previous is None:
            client.create_alias(collection, alias, timeout=timeout_s)
        else:
            client.alter_alias(collection, alias, timeout=timeout_s)
    except _ERRORS as e:
        raise _translate(e, f"pointing alias {alias} at {collection}") from e
    log.info("alias %s: %s -> %s", alias, previous, collection)
    return previous


def versions_of(address: str | MilvusAddress, embedder_version: str | None = None,
                params: MilvusParams = MilvusParams()) -> list[str]:
    """The alias's collections (``<alias>__e<embedder>__v<N>``), oldest first; only those of
    ``embedder_version`` when given."""
    addr = parse_address(address) if isinstance(address, str) else address
    try:
        names = connect(addr, params.timeout_s).list_collections(timeout=params.timeout_s)
    except _ERRORS as e:
        raise _translate(e, f"listing the collections of {addr}") from e
    mine = _versions(names, addr.name)
    return [n for i, n in mine
            if embedder_version is None or n == collection_name(addr.name, str(embedder_version), i)]


def drop_collection(address: str | MilvusAddress, collection: str, params: MilvusParams = MilvusParams()) -> None:
    """Drop one of the alias's collections — never the one the alias names (e.g. a staged one
    that failed its check)."""
    addr = parse_address(address) if isinstance(address, str) else address
    client = connect(addr, params.timeout_s)
    if resolve_alias(client, addr, params.timeout_s) == collection:
        raise CatalogError(f"{collection} is what {addr} serves; flip the alias away from it first")
    try:
        client.drop_collection(collection, timeout=params.timeout_s)
    except _ERRORS as e:
        raise _translate(e, f"dropping {addr.with_name(collection)}") from e


def prune(address: str | MilvusAddress, keep: int = 3, params: MilvusParams = MilvusParams()) -> list[str]:
    """Drop the alias's older versions beyond the newest ``keep`` (never the one it names)."""
    addr = parse_address(address) if isinstance(address, str) else address
    client = connect(addr, params.timeout_s)
    current = resolve_alias(client, addr, params.timeout_s)
    try:
        mine = _versions(client.list_collections(timeout=params.timeout_s), addr.name)
        dropped = []
        for _, name in mine[:-keep] if keep > 0 else mine:
            if name != current:
                client.drop_collection(name, timeout=params.timeout_s)
                dropped.append(name)
    except _ERRORS as e:
        raise _translate(e, f"pruning {addr}") from e
    if dropped:
        log.info("pruned %s", ", ".join(dropped))
    return dropped


def publish_photos(address: str | MilvusAddress, photos: Sequence[Photo], vectors: np.ndarray,
                   embedder: EmbedderInfo, params: MilvusParams = MilvusParams(), *, source: str = "",
                   parent: str = "", ef: Mapping[str, int] | None = None, keep: int = 3,
                   flip: bool = True) -> PublishResult:
    """Write ``photos`` into the alias's next collection and flip the alias to it (``flip=False``:
    only stage it — check it, then :func:`flip_alias`; e.g. a new embedder version's catalog)."""
    addr = parse_address(address) if isinstance(address, str) else address
    if _VERSIONED.match(addr.name):
        raise ConfigError(f"{addr}: publish to an alias (e.g. milvus://HOST:PORT/shop), not to a versioned collection")
    client = connect(addr, params.timeout_s)
    t0 = time.perf_counter()
    try:
        name = _next_name(client, addr.name, embedder.version, params.timeout_s)
    except _ERRORS as e:
        raise _translate(e, f"listing collections at {addr.uri}") from e
    write_collection(client, name, photos, vectors,
                     {"embedder": embedder, "source": source, "parent": parent, "ef": dict(ef or {})}, params)
    t1 = time.perf_counter()
    if not flip:
        return PublishResult(str(addr), name, None, len(photos), len({p.product_id for p in photos}), (),
                             {"write": round(t1 - t0, 3)})
    previous = _flip(client, addr.name, name, params.timeout_s)
    dropped = tuple(prune(addr, keep, params)) if keep > 0 else ()
    return PublishResult(str(addr), name, previous, len(photos), len({p.product_id for p in photos}), dropped,
                         {"write": round(t1 - t0, 3), "flip": round(time.perf_counter() - t1, 3)})


def photos_of_directory(catalog: Catalog) -> tuple[list[Photo], np.ndarray, dict[str, int]]:
    """A directory catalog's live photos, their stored vectors and each category's tuned ef."""
    db = sqlite3.connect(f"file:{catalog.path / DATABASE}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT category, label, product_id, image FROM photos ORDER BY category, label").fetchall()
    except sqlite3.DatabaseError as e:
        raise CatalogError(f"{catalog.path / DATABASE} is unreadable: {e}") from e
    finally:
        db.close()
    meta = catalog.products({r[2] for r in rows})
    photos, labels = [], {}
    for category, label, pid, image in rows:  # category by category: the vectors gathered so below
        m = meta[pid]
        photos.append(Photo(pid, category, image, m["title"] or "", m["image"] or "", m["attributes"]))
        labels.setdefault(category, []).append(label)
    if not photos:
        raise CatalogError(f"catalog {catalog.path} holds no photos")
    ef = {c: int(v.ef) for c, v in catalog.manifest.categories.items()}
    return photos, np.concatenate([catalog.vector_rows(c, np.array(ls)) for c, ls in labels.items()]), ef


def publish_catalog(source: str | os.PathLike | Catalog, address: str, params: MilvusParams | None = None,
                    keep: int = 3, verify: bool = True) -> PublishResult:
    """Publish the hnswlib catalog directory (or root) at ``source`` (or the catalog opened from
    it) — its stored vectors and SQLite products, nothing re-embedded — as the next version behind
    ``address``'s alias."""
    catalog = source if isinstance(source, Catalog) else Catalog.open(source, verify=verify)
    p = catalog.manifest.params
    params = params or MilvusParams(M=p.M, ef_construction=p.ef_construction)
    photos, vectors, ef = photos_of_directory(catalog)
    return publish_photos(address, photos, vectors, catalog.embedder, params, source=f"directory:{catalog.version}",
                          ef=ef, keep=keep)


def photos_of_records(records: Sequence[PhotoRecord]) -> list[Photo]:
    first: dict[int, PhotoRecord] = {}
    for r in records:
        first.setdefault(r.product_id, r)
    return [Photo(r.product_id, r.category, r.image, first[r.product_id].title, first[r.product_id].image,
                  dict(first[r.product_id].attributes)) for r in records]


def publish_records(records: Sequence[PhotoRecord], embedder: Embedder, address: str, work_dir: str | os.PathLike,
                    params: MilvusParams = MilvusParams(), model_sha256: str | None = None, keep: int = 3,
                    batch_size: int = 32, concurrency: int = 4, limits: DecodeLimits = DEFAULT_LIMITS,
                    progress: bool = False, flip: bool = True) -> PublishResult:
    """Embed ``records`` with ``embedder`` (resumably, batches under ``work_dir``) and publish
    them as a collection of the version that answered (``flip=False``: staged, see :func:`publish_photos`)."""
    vectors, version, skipped = embed_records(records, embedder, Path(work_dir), batch_size, concurrency, limits, progress)
    keep_rows = [i for i, r in enumerate(records) if r.image not in set(skipped)]
    if skipped:
        log.warning("%d photo(s) could not be read and are left out: %s", len(skipped), ", ".join(skipped[:5]))
    return publish_photos(address, photos_of_records([records[i] for i in keep_rows]), vectors[keep_rows],
                          EmbedderInfo(embedder.name, str(version), model_sha256), params, source="records", keep=keep,
                          flip=flip)


# --- updating ------------------------------------------------------------------------------
def update_milvus_catalog(address: str, *, add: Sequence[PhotoRecord] = (), replace: Sequence[PhotoRecord] = (),
                          remove: Sequence[int] = (), embedder: Embedder | None = None,
                          new_vectors: np.ndarray | None = None, params: MilvusParams = MilvusParams(),
                          keep: int = 3, work_dir: str | os.PathLike | None = None) -> PublishResult:
    """Add, replace and remove products as the alias's next collection: the current version's
    rows (stored vectors, not re-embedded) minus ``remove`` and the replaced products, plus the
    photos of ``add`` and ``replace`` — embedded by ``embedder`` (which must answer with the
    catalog's embedder version) or given as ``new_vectors`` (one row per photo of ``add`` then
    ``replace``). The alias flips only once the new collection is complete."""
    old = MilvusCatalog.open(address, params)
    new_records = list(add) + list(replace)
    add_ids, rep_ids, rm_ids = {r.product_id for r in add}, {r.product_id for r in replace}, {int(i) for i in remove}
    if not new_records and not rm_ids:
        raise InvalidInputError("nothing to update: give products to add, replace or remove")
    existing = {pid for pid in old.products(add_ids | rep_ids | rm_ids)}
    if add_ids & existing:
        raise InvalidInputError(f"products {sorted(add_ids & existing)[:5]} are already in the catalog: replace them")
    for label, ids in (("replace", rep_ids), ("remove", rm_ids)):
        if ids - existing:
            raise InvalidInputError(f"cannot {label} products {sorted(ids - existing)[:5]}: not in the catalog")
    partial: Path | None = None
    if new_vectors is not None:
        vectors = np.asarray(new_vectors, dtype=np.float32)
        if vectors.shape != (len(new_records), old.dim):
            raise CatalogError(f"new_vectors must be [{len(new_records)}, {old.dim}], got {vectors.shape}")
    elif new_records:
        if embedder is None:
            raise CatalogError("new photos need the embedder (or new_vectors)")
        partial = Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / f"lookserve-{old.collection}.update-partial"
        vectors, version, skipped = embed_records(new_records, embedder, partial)
        if str(version) != str(old.embedder.version):
            raise CatalogVersionMismatch(f"embedder version {version} answered, but the catalog is bound to version "
                                         f"{old.embedder.version}; its vectors are not comparable")
        if skipped:
            raise CatalogError(f"{len(skipped)} new photo(s) could not be read: {', '.join(skipped[:5])}")
    else:
        vectors = np.zeros((0, old.dim), np.float32)
    drop = rep_ids | rm_ids
    photos: list[Photo] = []
    kept: list[np.ndarray] = []
    for row in old.rows():
        if int(row["product_id"]) in drop:
            continue
        photos.append(Photo(int(row["product_id"]), row["category"], row["image"], row["title"], row["product_image"],
                            json.loads(row["attributes_json"] or "{}")))
        kept.append(np.asarray(row[VECTOR], dtype=np.float32))
    photos += photos_of_records(new_records)
    allv = np.concatenate([np.stack(kept) if kept else np.zeros((0, old.dim), np.float32), vectors])
    ef = {c: int(v.get("ef", 0)) for c, v in old.info.categories.items()}
    result = publish_photos(parse_address(address), photos, allv, old.embedder, params, source=old.info.source,
                            parent=old.collection, ef=ef, keep=keep)
    if partial is not None:
        shutil.rmtree(partial, ignore_errors=True)  # the embedded batches a failed try would reuse
    return result


__all__ = [
    "MILVUS_SCHEMES", "TOKEN_ENV", "CollectionInfo", "FilterTranslationError", "MilvusAddress", "MilvusCatalog",
    "MilvusCatalogRef", "MilvusParams", "Photo", "PublishResult", "collection_name", "connect", "drop_collection",
    "flip_alias",
    "is_milvus_address",
    "open_milvus_for_client", "parse_address", "photos_of_directory", "prune", "publish_catalog", "publish_photos",
    "publish_records", "resolve_alias", "to_milvus_expression", "update_milvus_catalog", "versions_of",
    "write_collection",
]
