"""Shop the look in one call: the client of Triton's ``look`` model, and the wire format that
both sides of that call share.

The ``look`` model (:mod:`lookserve.server.pipelines.look`) runs the very same
:class:`~lookserve.client.look.LookPipeline` as ``lookserve look`` — decode, letterbox, filter,
crop, search and result assembly are one implementation — over a BLS transport instead of gRPC.
What travels is the encoded photo (``image``, BYTES) and a few optional knobs; what comes back
is the JSON document ``lookserve look`` writes (``look_json``) and typed tensors for clients
that prefer them (:func:`look_tensors`).

    with TritonClient(url) as client:
        doc = RemoteLook(client).run("street.jpg")      # the same dict as LookResult.to_dict()

A failed request comes back as the error the client chain raises, message included
(:func:`error_from_server`), because the server sends ``<ErrorClass>: <message>``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

from lookserve import contracts, errors
from lookserve.client.catalog import Match
from lookserve.client.look import Detection, Dropped, LookConfig, LookItem, LookResult
from lookserve.errors import ConfigError, InvalidInputError
from lookserve.fsutil import atomic_write_text
from lookserve.images import DEFAULT_LIMITS, DecodeLimits, read_source

log = logging.getLogger(__name__)

#: the errors a ``look`` request may answer with, by the class name the server puts first
_ERRORS: dict[str, type[errors.LookserveError]] = {
    cls.__name__: cls
    for cls in (errors.InvalidInputError, errors.CatalogVersionMismatch, errors.CatalogError, errors.ConfigError,
                errors.ContractMismatch, errors.ModelNotFound, errors.ModelNotReady, errors.InvalidRequest,
                errors.ServerUnavailable, errors.DeadlineExceeded, errors.ResourceExhausted,
                errors.InternalServerError, errors.ServerError)
}


# ------------------------------------------------------------------------------------------
# The wire format (both sides)
# ------------------------------------------------------------------------------------------
def error_text(e: errors.LookserveError) -> str:
    """What the server answers for a failed request: ``<ErrorClass>: <message>``."""
    return f"{type(e).__name__}: {e}"


def error_from_server(message: str) -> errors.LookserveError:
    """The lookserve error a ``look``/``thumbnails`` error message names (see :func:`error_text`);
    an unknown prefix stays an :class:`~lookserve.errors.InternalServerError` with the message."""
    for name, cls in _ERRORS.items():
        marker = f"{name}: "
        at = message.find(marker)
        if at >= 0:
            return cls(message[at + len(marker):])
    return errors.InternalServerError(message)


def server_message(e: errors.ServerError) -> str:
    """The server's own message of a failed call (without the client's diagnosis around it)."""
    cause = e.__cause__
    return cause.message() if isinstance(cause, InferenceServerException) else str(e)


def request_tensors(data: bytes, k: int | None = None, min_score: float | None = None,
                    categories: Sequence[str] = (), catalog_filter: str | None = None,
                    source: str | None = None, masks: bool | None = None, gate: str | None = None,
                    ) -> dict[str, np.ndarray]:
    """The inputs of one ``look`` request (batch of 1): the encoded photo and the knobs given."""
    tensors = {"image": np.array([[bytes(data)]], dtype=np.object_)}
    if gate is not None:
        tensors["gate"] = np.array([[gate.encode()]], dtype=np.object_)
    if masks is not None:
        tensors["masks"] = np.array([[masks]], dtype=np.bool_)
    if source is not None:
        tensors["source"] = np.array([[source.encode()]], dtype=np.object_)
    if k is not None:
        tensors["k"] = np.array([[k]], dtype=np.int32)
    if min_score is not None:
        tensors["min_score"] = np.array([[min_score]], dtype=np.float32)
    if categories:
        tensors["categories"] = np.array([[c.encode() for c in categories]], dtype=np.object_)
    if catalog_filter is not None:
        tensors["filter"] = np.array([[catalog_filter.encode()]], dtype=np.object_)
    return tensors


def config_for_request(base: LookConfig, k: int | None = None, min_score: float | None = None,
                       categories: Sequence[str] = (), catalog_filter: str | None = None,
                       gate: str | None = None) -> LookConfig:
    """``base`` (the model's defaults) with one request's knobs; a bad knob is an
    :class:`~lookserve.errors.InvalidInputError` naming it."""
    try:
        f = base.filter
        if min_score is not None:
            f = replace(f, min_score=float(min_score))
        if categories:
            f = replace(f, categories=tuple(categories))
        changes: dict[str, Any] = {"filter": f}
        if k is not None:
            changes["k"] = int(k)
        if catalog_filter is not None:
            changes["catalog_filter"] = catalog_filter
        if gate is not None:
            changes["gate"] = gate
        return replace(base, **changes)
    except (ConfigError, errors.CatalogError) as e:  # a malformed filter is a FilterError (a CatalogError)
        raise InvalidInputError(f"look request: {e}") from e


def look_tensors(result: LookResult, k: int) -> dict[str, np.ndarray]:
    """The typed outputs of one result, without the batch axis: per kept item its category,
    score and box; per match (``[items, k]``, padded with product -1 / similarity 0) its product
    id and similarity."""
    n = len(result.items)
    ids = np.full((n, k), -1, np.int64)
    sims = np.zeros((n, k), np.float32)
    for i, item in enumerate(result.items):
        for j, m in enumerate(item.matches[:k]):
            ids[i, j], sims[i, j] = m.product_id, m.similarity
    return {
        "item_category": np.array([i.detection.category.encode() for i in result.items], dtype=np.object_),
        "item_score": np.array([i.detection.score for i in result.items], np.float32),
        "item_box": np.array([i.detection.box for i in result.items], np.float32).reshape(n, 4),
        "match_product_id": ids,
        "match_similarity": sims,
    }


def result_from_dict(d: dict[str, Any]) -> LookResult:
    """A :class:`LookResult` back from :meth:`LookResult.to_dict` (e.g. the ``look`` model's JSON)."""

    def detection(x: dict) -> Detection:
        mask = np.asarray(x["mask"], np.float32) if x.get("mask") is not None else None
        return Detection(x["index"], x["category"], x["class_id"], x["score"], tuple(x["box"]), mask)

    items = tuple(LookItem(detection(i), tuple(Match(**m) for m in i["matches"])) for i in d["items"])
    dropped = tuple(Dropped(detection(x), x["reason"]) for x in d["dropped"])
    return LookResult(d["source"], d["width"], d["height"], items, dropped, dict(d["model_versions"]),
                      dict(d["timings_ms"]), d["catalog"], dict(d.get("catalog_embedder", {})),
                      str(d.get("catalog_version", "")), d.get("gate"))


# ------------------------------------------------------------------------------------------
# The client
# ------------------------------------------------------------------------------------------
class RemoteLook:
    """Shop the look in one ``look`` call over a :class:`~lookserve.client.core.TritonClient`
    (thread-safe). :meth:`run` returns the document :meth:`LookResult.to_dict` gives, its
    ``source`` the name of what was sent (as the client chain records it)."""

    def __init__(self, client, config: LookConfig | None = None, model: str = contracts.LOOK, version: str = "",
                 limits: DecodeLimits = DEFAULT_LIMITS) -> None:
        self.client = client
        self.config = config or LookConfig()
        self.model = model
        self.version = version
        self.limits = limits
        default = LookConfig()
        c = self.config
        unsupported = [what for what, same in (
            ("--no-score-filter (use min_score 0)", c.filter.use_min_score == default.filter.use_min_score),
            ("--all-categories", c.filter.catalog_categories_only == default.filter.catalog_categories_only),
            ("--all-instances", c.filter.best_per_category == default.filter.best_per_category),
            ("crop", c.crop == default.crop),
        ) if not same]
        if unsupported:
            raise ConfigError(f"the look model takes k, min_score, categories, filter and gate per request, not "
                              f"{', '.join(unsupported)}; change the model's defaults or use the client chain")

    def request(self, source, name: str | None = None, include_masks: bool = True) -> dict[str, np.ndarray]:
        data = read_source(source, self.limits)
        f = self.config.filter
        return request_tensors(data, self.config.k, f.min_score, f.categories, self.config.catalog_filter, name,
                               masks=None if include_masks else False,
                               gate=None if self.config.gate == "off" else self.config.gate)

    def run(self, source, include_masks: bool = True) -> dict[str, Any]:
        """The document for one photo; without ``include_masks`` the server leaves the masks out."""
        name = str(source) if isinstance(source, str | os.PathLike) else None
        try:
            r = self.client.infer(self.model, self.request(source, name, include_masks), outputs=["look_json"],
                                  version=self.version, timeout_s=self.config.timeout_s)
        except errors.ServerError as e:
            raise error_from_server(server_message(e)) from e
        return json.loads(r.outputs["look_json"].reshape(-1)[0])

    def run_many(self, sources: Sequence, concurrency: int = 4,
                 include_masks: bool = True) -> Iterator[dict[str, Any] | errors.LookserveError]:
        """Documents in input order, ``concurrency`` photos in flight; a bad photo yields its error."""
        if concurrency < 1:
            raise ConfigError("concurrency must be ≥ 1")

        def one(source):
            try:
                return self.run(source, include_masks)
            except (errors.InvalidInputError, errors.CatalogVersionMismatch) as e:
                return e

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            yield from pool.map(one, sources)


def write_document(doc: dict[str, Any], path: Path) -> Path:
    """Write a look document's JSON atomically (the layout :func:`~lookserve.client.look.write_result` writes)."""
    return atomic_write_text(path, json.dumps(doc, indent=2))


__all__ = [
    "RemoteLook", "config_for_request", "error_from_server", "error_text", "server_message", "look_tensors", "request_tensors",
    "result_from_dict", "write_document",
]
