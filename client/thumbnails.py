"""Best thumbnail and footwear type per product.

For each product, all its view images go to ``view_classifier`` in ONE batched request; the
view with the highest ``best_view`` probability becomes the thumbnail, and the footwear type is
the arg-max of the views' mean ``type_probs``.

    with TritonClient(url) as client:
        result = ThumbnailPipeline(client).run("shoe-17", ["a.jpg", "b.jpg", ...])
        result.thumbnail, result.footwear_type, result.to_json()
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lookserve import contracts, errors
from lookserve.client.core import image_input
from lookserve.client.look_remote import error_from_server, server_message
from lookserve.errors import ConfigError, ContractMismatch, DataError, InvalidInputError
from lookserve.fsutil import atomic_write_text
from lookserve.images import (
    DEFAULT_LIMITS,
    IMAGE_SUFFIXES,
    DecodeLimits,
    decode_image,
    read_source,
    resize_square,
)
from lookserve.taxonomy import FOOTWEAR_TYPES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThumbnailConfig:
    model: str = contracts.VIEW_CLASSIFIER
    version: str = ""
    limits: DecodeLimits = DEFAULT_LIMITS
    timeout_s: float | None = None
    types: tuple[str, ...] = FOOTWEAR_TYPES


@dataclass(frozen=True)
class ViewScore:
    image: str
    best_view: float
    type_probs: tuple[float, ...]


@dataclass(frozen=True)
class ThumbnailResult:
    product: str
    thumbnail: str
    best_view: float  # probability that the thumbnail is the best view
    footwear_type: str
    type_probability: float  # mean over the views
    type_probs: Mapping[str, float]
    views: tuple[ViewScore, ...]
    model_version: str
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "thumbnail": self.thumbnail,
            "best_view": round(self.best_view, 6),
            "footwear_type": self.footwear_type,
            "type_probability": round(self.type_probability, 6),
            "type_probs": {k: round(v, 6) for k, v in self.type_probs.items()},
            "views": [{"image": v.image, "best_view": round(v.best_view, 6),
                       "type_probs": [round(p, 6) for p in v.type_probs]} for v in self.views],
            "model_version": self.model_version,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThumbnailResult:
        """The result :meth:`to_dict` wrote (e.g. the ``thumbnails`` model's ``thumbnails_json``)."""
        try:
            return cls(
                product=str(d["product"]), thumbnail=str(d["thumbnail"]), best_view=float(d["best_view"]),
                footwear_type=str(d["footwear_type"]), type_probability=float(d["type_probability"]),
                type_probs={str(k): float(v) for k, v in d["type_probs"].items()},
                views=tuple(ViewScore(str(v["image"]), float(v["best_view"]), tuple(float(p) for p in v["type_probs"]))
                            for v in d["views"]),
                model_version=str(d["model_version"]),
                timings_ms={str(k): float(v) for k, v in d.get("timings_ms", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ContractMismatch(f"not a thumbnails result: {e!r} in {str(d)[:200]}") from e


def decide(product: str, names: Sequence[str], type_probs: np.ndarray, best_view: np.ndarray, version: str,
           types: Sequence[str] = FOOTWEAR_TYPES) -> ThumbnailResult:
    """The thumbnail rule on the classifier's outputs for one product's views."""
    type_probs = np.asarray(type_probs, dtype=np.float32).reshape(len(names), -1)
    best_view = np.asarray(best_view, dtype=np.float32).reshape(-1)
    if type_probs.shape[1] != len(types) or best_view.shape[0] != len(names):
        raise ContractMismatch(
            f"view classifier returned type_probs {type_probs.shape} and best_view {best_view.shape} "
            f"for {len(names)} views and {len(types)} types"
        )
    best = int(np.argmax(best_view))  # first of equals: input order breaks ties
    mean = type_probs.mean(axis=0)
    t = int(np.argmax(mean))
    return ThumbnailResult(
        product=product, thumbnail=names[best], best_view=float(best_view[best]), footwear_type=types[t],
        type_probability=float(mean[t]), type_probs={name: float(p) for name, p in zip(types, mean, strict=True)},
        views=tuple(ViewScore(n, float(b), tuple(float(p) for p in tp))
                    for n, b, tp in zip(names, best_view, type_probs, strict=True)),
        model_version=version,
    )


class _Steps:
    def __init__(self, config: ThumbnailConfig) -> None:
        self.config = config
        self._input = "images"
        self._size = contracts.CROP_SIZE
        self._max_batch = 0  # 0: unknown

    def _learn(self, meta) -> None:
        image_in = image_input(meta)
        missing = {"type_probs", "best_view"} - {t.name for t in meta.outputs}
        if missing:
            raise ContractMismatch(f"{meta.name!r} lacks outputs {sorted(missing)}")
        self._input, self._size = image_in.name, image_in.size

    def prepare(self, views: Sequence) -> tuple[list[str], np.ndarray, float]:
        if not views:
            raise InvalidInputError("a product needs at least one view image")
        if self._max_batch and len(views) > self._max_batch:
            raise InvalidInputError(
                f"{len(views)} views, but {self.config.model!r} takes at most {self._max_batch} images per request"
            )
        t0 = time.perf_counter()
        names = [str(v) if isinstance(v, str | os.PathLike) else f"view {i}" for i, v in enumerate(views)]
        batch = np.stack([resize_square(decode_image(v, self.config.limits), self._size) for v in views])
        return names, batch, (time.perf_counter() - t0) * 1e3


class ThumbnailPipeline(_Steps):
    """Sync chain over a :class:`~lookserve.client.core.TritonClient` (thread-safe)."""

    def __init__(self, client, config: ThumbnailConfig | None = None) -> None:
        super().__init__(config or ThumbnailConfig())
        self.client = client
        self._learn(client.model_metadata(self.config.model, self.config.version))
        self._max_batch = client.model_config(self.config.model, self.config.version).max_batch_size

    def run(self, product: str, views: Sequence) -> ThumbnailResult:
        names, batch, prep_ms = self.prepare(views)
        t0 = time.perf_counter()
        r = self.client.infer(self.config.model, {self._input: batch}, outputs=["type_probs", "best_view"],
                              version=self.config.version, timeout_s=self.config.timeout_s)
        infer_ms = (time.perf_counter() - t0) * 1e3
        result = decide(product, names, r.outputs["type_probs"], r.outputs["best_view"], r.model_version, self.config.types)
        return _with_timings(result, prep_ms, infer_ms)

    def run_many(self, products: Mapping[str, Sequence], concurrency: int = 4) -> Iterator[ThumbnailResult | errors.LookserveError]:
        """Results in input order, ``concurrency`` products in flight; a bad product yields its error."""
        return _run_many(self.run, products, concurrency)


class AsyncThumbnailPipeline(_Steps):
    """Asyncio twin; create with ``await AsyncThumbnailPipeline.create(client, config)``."""

    def __init__(self, client, config: ThumbnailConfig | None = None) -> None:
        super().__init__(config or ThumbnailConfig())
        self.client = client

    @classmethod
    async def create(cls, client, config: ThumbnailConfig | None = None) -> AsyncThumbnailPipeline:
        self = cls(client, config)
        self._learn(await client.model_metadata(self.config.model, self.config.version))
        return self

    async def run(self, product: str, views: Sequence) -> ThumbnailResult:
        names, batch, prep_ms = await asyncio.to_thread(self.prepare, views)
        t0 = time.perf_counter()
        r = await self.client.infer(self.config.model, {self._input: batch}, outputs=["type_probs", "best_view"],
                                    version=self.config.version, timeout_s=self.config.timeout_s)
        infer_ms = (time.perf_counter() - t0) * 1e3
        result = decide(product, names, r.outputs["type_probs"], r.outputs["best_view"], r.model_version, self.config.types)
        return _with_timings(result, prep_ms, infer_ms)

    async def run_many(self, products: Mapping[str, Sequence], concurrency: int = 4) -> list[ThumbnailResult | errors.LookserveError]:
        gate = asyncio.Semaphore(concurrency)

        async def one(product, views):
            async with gate:
                try:
                    return await self.run(product, views)
                except errors.InvalidInputError as e:
                    return e

        return list(await asyncio.gather(*(one(p, v) for p, v in products.items())))


class RemoteThumbnails:
    """One call per product to the server's ``thumbnails`` model (the chain above, run inside
    Triton: server/pipelines/thumbnails.py) over a :class:`~lookserve.client.core.TritonClient`
    (thread-safe): the views go as encoded bytes; the result is the client chain's, its view
    names those given here."""

    def __init__(self, client, config: ThumbnailConfig | None = None, model: str = contracts.THUMBNAILS,
                 version: str = "") -> None:
        self.client, self.config, self.model, self.version = client, config or ThumbnailConfig(), model, version

    def run(self, product: str, views: Sequence) -> ThumbnailResult:
        if not views:
            raise InvalidInputError("a product needs at least one view image")
        names = [str(v) if isinstance(v, str | os.PathLike) else f"view {i}" for i, v in enumerate(views)]
        data = np.array([read_source(v, self.config.limits) for v in views], dtype=np.object_)
        t0 = time.perf_counter()
        try:
            r = self.client.infer(self.model, {"images": data}, outputs=["thumbnails_json"], version=self.version,
                                  timeout_s=self.config.timeout_s)
        except errors.ServerError as e:
            raise error_from_server(server_message(e)) from e
        result = ThumbnailResult.from_dict(json.loads(r.outputs["thumbnails_json"].reshape(-1)[0]))
        if len(result.views) != len(names):
            raise ContractMismatch(f"{self.model!r} scored {len(result.views)} views of the {len(names)} sent")
        # the server names the views it was sent "view <i>": give them back their names here
        named = tuple(replace(v, image=n) for v, n in zip(result.views, names, strict=True))
        best = next(i for i, v in enumerate(result.views) if v.image == result.thumbnail)
        return replace(result, product=product, thumbnail=names[best], views=named,
                       timings_ms={**result.timings_ms, "request": (time.perf_counter() - t0) * 1e3})

    def run_many(self, products: Mapping[str, Sequence], concurrency: int = 4) -> Iterator[ThumbnailResult | errors.LookserveError]:
        """Results in input order, ``concurrency`` products in flight; a bad product yields its error."""
        return _run_many(self.run, products, concurrency)


def _run_many(run, products: Mapping[str, Sequence], concurrency: int) -> Iterator[ThumbnailResult | errors.LookserveError]:
    if concurrency < 1:
        raise ConfigError("concurrency must be ≥ 1")

    def one(item):
        try:
            return run(*item)
        except errors.InvalidInputError as e:
            return e

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        yield from pool.map(one, products.items())


def _with_timings(result: ThumbnailResult, prep_ms: float, infer_ms: float) -> ThumbnailResult:
    return replace(result, timings_ms={"decode_resize": prep_ms, "classify": infer_ms, "total": prep_ms + infer_ms})


def find_products(root: str | os.PathLike) -> dict[str, list[Path]]:
    """``ROOT/<product>/<view image>`` (e.g. a data set's ``footwear/views``) → product → views."""
    root = Path(root)
    if (root / "footwear" / "views").is_dir():
        root = root / "footwear" / "views"
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of product folders")
    products = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        views = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if views:
            products[d.name] = views
    if not products:
        raise DataError(f"no product folders with images under {root} (expected ROOT/<product>/<view>.jpg)")
    return products


def write_outputs(results: Sequence[ThumbnailResult], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``thumbnails.csv`` and ``thumbnails.json`` under ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["product", "thumbnail", "best_view", "footwear_type", "type_probability", "model_version"])
    for r in results:
        w.writerow([r.product, r.thumbnail, f"{r.best_view:.6f}", r.footwear_type, f"{r.type_probability:.6f}", r.model_version])
    paths = []
    for name, text in (("thumbnails.csv", buf.getvalue()),
                       ("thumbnails.json", json.dumps([r.to_dict() for r in results], indent=2))):
        paths.append(atomic_write_text(out_dir / name, text))
    return paths[0], paths[1]


__all__ = [
    "AsyncThumbnailPipeline", "RemoteThumbnails", "ThumbnailConfig", "ThumbnailPipeline", "ThumbnailResult", "ViewScore",
    "decide",
    "find_products", "write_outputs",
]
