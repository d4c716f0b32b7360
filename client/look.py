"""Shop the look: a street photo in, the catalog products matching each garment out.

    decode (safe limits) → letterbox to the detector's input → detector → filter
      → crop each kept instance from the ORIGINAL image (box, or mask) → embedder (one batch)
      → per-category HNSW top-K → SQLite metadata → :class:`LookResult`

    with TritonClient(url) as client:
        catalog = open_for_client("runs/catalog", client)
        result = LookPipeline(client, catalog).run("street.jpg")
        result.to_json()

The embedder is always asked for the catalog's version, and the version that answered is
checked again: a catalog built by another embedder version is an error
(:class:`CatalogVersionMismatch`), never a mixed result. A result records both sides of the
pair: ``model_versions[embedder]`` (the version that answered) and ``catalog_embedder`` (the
version in the manifest of the catalog it searched). Given a
:class:`~lookserve.client.catalog.CatalogWatcher` instead of a catalog, the chain follows a
catalog root's ``current`` pointer (embedder hot swap); a request whose catalog's embedder
version was retired between its start and its embedding moves, whole, to the current pair.
The sync (:class:`LookPipeline`) and asyncio (:class:`AsyncLookPipeline`) chains share every
step but the two requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookserve import contracts, errors
from lookserve.client.catalog import Catalog, CatalogRef, Match, parse_filter
from lookserve.client.core import image_input
from lookserve.client.pose import (
    AsyncTritonPoseModels,
    PoseConfig,
    PoseVerdict,
    TritonPoseModels,
    analyse,
    analyse_async,
    check_gate,
)
from lookserve.errors import (
    CatalogVersionMismatch,
    ConfigError,
    ContractMismatch,
    InvalidInputError,
)
from lookserve.fsutil import atomic_write_text
from lookserve.images import (
    DEFAULT_LIMITS,
    DecodeLimits,
    Letterbox,
    crop_box,
    crop_mask,
    decode_image,
    letterbox,
)
from lookserve.taxonomy import CATEGORIES

log = logging.getLogger(__name__)

# The embedder version a catalog names can be gone by the time a request reaches it (a hot swap
# retired it): the request then tries once more, on the catalog the root points to now.
_VERSION_GONE = (errors.ModelNotFound, errors.ModelNotReady)
_EMBED_ATTEMPTS = 2


@dataclass(frozen=True)
class FilterConfig:
    """The original's three filters, each switchable."""

    min_score: float = 0.75
    use_min_score: bool = True  # drop instances scoring below min_score
    catalog_categories_only: bool = True  # drop categories the catalog does not have
    best_per_category: bool = True  # keep only the highest-score instance per category
    categories: tuple[str, ...] = ()  # keep only these categories (empty: all)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"min_score must be in [0, 1], got {self.min_score}")
        unknown = sorted(set(self.categories) - set(CATEGORIES))
        if unknown:
            raise ConfigError(f"unknown categories {unknown}; expected some of {', '.join(CATEGORIES)}")


@dataclass(frozen=True)
class LookConfig:
    filter: FilterConfig = field(default_factory=FilterConfig)
    k: int = 6
    crop: str = "box"  # "box" (the original's choice) or "mask"
    mask_threshold: float = 0.5
    detector: str = contracts.DETECTOR
    detector_version: str = ""  # "" = the server's choice
    pin_embedder_version: bool = True  # ask the embedder for the catalog's version explicitly
    limits: DecodeLimits = DEFAULT_LIMITS
    timeout_s: float | None = None
    catalog_filter: str | None = None  # on product attributes (lookserve.client.catalog.filters), inside the search
    # the pose gate (lookserve.client.pose): "off", "person" or "full-shot"; a photo that fails it
    # is answered with the reason (LookResult.gate) and not searched
    gate: str = "off"
    pose: PoseConfig = field(default_factory=PoseConfig)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be ≥ 1, got {self.k}")
        if self.catalog_filter is not None:
            parse_filter(self.catalog_filter)  # a malformed filter is refused before any request
        check_gate(self.gate)
        if self.crop not in ("box", "mask"):
            raise ConfigError(f"crop must be 'box' or 'mask', got {self.crop!r}")


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Detection:
    index: int  # position in the detector's output
    category: str
    class_id: int  # index into CATEGORIES
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original pixels
    mask: np.ndarray | None  # [m, m] probabilities relative to the box

    def to_dict(self, include_mask: bool = True) -> dict:
        d = {"index": self.index, "category": self.category, "class_id": self.class_id,
             "score": round(self.score, 6), "box": [round(v, 2) for v in self.box]}
        if include_mask and self.mask is not None:
            d["mask"] = np.round(self.mask, 3).tolist()
        return d


@dataclass(frozen=True)
class Dropped:
    detection: Detection
    reason: str  # "score", "category_not_in_catalog", "not_best_in_category"


@dataclass(frozen=True)
class LookItem:
    detection: Detection
    matches: tuple[Match, ...]


@dataclass(frozen=True)
class LookResult:
    source: str
    width: int
    height: int
    items: tuple[LookItem, ...]
    dropped: tuple[Dropped, ...]
    model_versions: dict[str, str]
    timings_ms: dict[str, float]
    catalog: str
    catalog_embedder: dict[str, str] = field(default_factory=dict)  # name, version of the catalog's manifest
    catalog_version: str = ""  # the catalog version searched (CatalogBackend.version; changes with every update)
    gate: dict[str, Any] | None = None  # the pose gate's verdict (PoseVerdict.to_dict) when a gate was on

    def to_dict(self, include_masks: bool = True) -> dict[str, Any]:
        return {
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "items": [
                {**i.detection.to_dict(include_masks), "matches": [m.to_dict() for m in i.matches]} for i in self.items
            ],
            "dropped": [{**d.detection.to_dict(False), "reason": d.reason} for d in self.dropped],
            "model_versions": dict(self.model_versions),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "catalog": self.catalog,
            "catalog_embedder": dict(self.catalog_embedder),
            "catalog_version": self.catalog_version,
            **({} if self.gate is None else {"gate": self.gate}),
        }

    def to_json(self, include_masks: bool = True, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(include_masks), indent=indent)


# ------------------------------------------------------------------------------------------
# The steps both chains share
# ------------------------------------------------------------------------------------------
@dataclass
class _Job:
    source: str
    image: np.ndarray
    square: np.ndarray
    lb: Letterbox
    catalog: Catalog
    timings: dict[str, float]
    versions: dict[str, str]
    t0: float
    gate: dict[str, Any] | None = None


def _source_name(source) -> str:
    return str(source) if isinstance(source, str | os.PathLike) else f"<{len(source)} bytes>"


def filter_detections(
    outputs: dict[str, np.ndarray], lb: Letterbox, config: FilterConfig, catalog_categories: Iterable[str]
) -> tuple[list[Detection], list[Dropped]]:
    """Parse one image's detector outputs (batch row 0) into detections in original pixels and
    apply the filters in the original's order: score, catalog category, best per category."""
    boxes = np.asarray(outputs["boxes"])[0]
    scores = np.asarray(outputs["scores"])[0]
    classes = np.asarray(outputs["classes"])[0]
    masks = np.asarray(outputs["masks"])[0] if "masks" in outputs else None
    n = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    if n < 0 or n > len(scores):
        raise errors.InvalidRequest(f"detector returned num_detections={n} for {len(scores)} slots")
    detections = []
    original = lb.to_original(boxes[:n])
    for i in range(n):
        cls = int(classes[i])
        if not 0 <= cls < len(CATEGORIES):
            raise errors.InvalidRequest(f"detector returned class {cls}, outside 0..{len(CATEGORIES) - 1}")
        detections.append(
            Detection(i, CATEGORIES[cls], cls, float(scores[i]), tuple(float(v) for v in original[i]),
                      None if masks is None else np.asarray(masks[i], dtype=np.float32))
        )
    kept, dropped = [], []
    available = set(catalog_categories)
    for d in detections:
        if config.use_min_score and d.score < config.min_score:
            dropped.append(Dropped(d, "score"))
        elif config.catalog_categories_only and d.category not in available:
            dropped.append(Dropped(d, "category_not_in_catalog"))
        elif config.categories and d.category not in config.categories:
            dropped.append(Dropped(d, "category_not_requested"))
        elif d.box[2] - d.box[0] < 2 or d.box[3] - d.box[1] < 2:
            dropped.append(Dropped(d, "empty_box"))
        else:
            kept.append(d)
    if config.best_per_category:
        best: dict[str, Detection] = {}
        for d in kept:
            if d.category not in best or d.score > best[d.category].score:
                best[d.category] = d
        dropped += [Dropped(d, "not_best_in_category") for d in kept if best[d.category] is not d]
        kept = [d for d in kept if best[d.category] is d]
    return kept, dropped


class _Steps:
    """Everything but the two requests."""

    def __init__(self, catalog: Catalog | CatalogRef, config: LookConfig) -> None:
        self._catalog = catalog if isinstance(catalog, CatalogRef) else CatalogRef(catalog)
        self.config = config
        self._detector_size: int | None = None
        self._detector_input = "images"
        self._embedder_input = "crops"
        self._embedder_output = "embedding"
        self._crop_size = contracts.CROP_SIZE
        self._pose: TritonPoseModels | AsyncTritonPoseModels | None = None  # set when the gate is on

    @property
    def catalog(self) -> Catalog:
        return self._catalog.get()

    def swap_catalog(self, catalog: Catalog) -> Catalog:
        """Publish a new catalog; requests in flight finish on the one they started with."""
        return self._catalog.swap(catalog)

    def _learn(self, detector_meta, embedder_meta) -> None:
        image_in = image_input(detector_meta, "detector")
        missing = {"boxes", "scores", "classes", "num_detections"} - {t.name for t in detector_meta.outputs}
        if missing:
            raise ContractMismatch(f"detector {detector_meta.name!r} lacks outputs {sorted(missing)}")
        crops_in = image_input(embedder_meta, "embedder")
        self._detector_input, self._detector_size = image_in.name, image_in.size
        self._embedder_input, self._crop_size = crops_in.name, crops_in.size
        self._embedder_output = embedder_meta.outputs[0].name

    def embedder_version(self, catalog: Catalog) -> str:
        return catalog.embedder.version if self.config.pin_embedder_version else ""

    def prepare(self, source) -> _Job:
        t0 = time.perf_counter()
        catalog = self.catalog  # one catalog for the whole request
        image = decode_image(source, self.config.limits)
        t1 = time.perf_counter()
        square, lb = letterbox(image, self._detector_size)
        t2 = time.perf_counter()
        timings = {"decode": (t1 - t0) * 1e3, "letterbox": (t2 - t1) * 1e3}
        return _Job(_source_name(source), image, square, lb, catalog, timings, {}, t0)

    def gated(self, job: _Job, verdict: PoseVerdict) -> LookResult | None:
        """Record the pose gate's verdict on ``job``; the answer for a photo that fails the gate
        (its reason, no items, nothing searched), else None."""
        job.versions.update(verdict.model_versions)
        job.timings["gate"] = verdict.timings_ms.get("gate", 0.0)
        job.gate = verdict.to_dict(self.config.gate)
        if verdict.passes(self.config.gate):
            return None
        log.info("%s fails the %s gate: %s", job.source, self.config.gate, job.gate["reason"])
        return self.finish(job, [], [], None)

    def after_detect(self, job: _Job, result) -> tuple[list[Detection], list[Dropped], np.ndarray | None]:
        job.versions[self.config.detector] = result.model_version
        t0 = time.perf_counter()
        kept, dropped = filter_detections(result.outputs, job.lb, self.config.filter, job.catalog.categories)
        t1 = time.perf_counter()
        crops = None
        if kept:
            crops = np.stack([self._crop(job.image, d) for d in kept])
        t2 = time.perf_counter()
        job.timings.update(filter=(t1 - t0) * 1e3, crop=(t2 - t1) * 1e3)
        return kept, dropped, crops

    def _crop(self, image: np.ndarray, d: Detection) -> np.ndarray:
        box = np.array(d.box, np.float32)
        if self.config.crop == "mask":
            if d.mask is None:
                raise InvalidInputError("crop='mask' needs the detector's masks output")
            return crop_mask(image, box, d.mask, self._crop_size, threshold=self.config.mask_threshold)
        return crop_box(image, box, self._crop_size)

    def check_embedder(self, job: _Job, result) -> np.ndarray:
        want = job.catalog.embedder.version
        if str(result.model_version) != str(want):
            raise CatalogVersionMismatch(
                f"embedder version {result.model_version} answered, but the catalog {job.catalog.path} was built with "
                f"version {want}: refusing to search it with incomparable embeddings"
            )
        job.versions[job.catalog.embedder.name] = result.model_version
        return np.asarray(result.outputs[self._embedder_output], dtype=np.float32)

    def moved_catalog(self, job: _Job) -> Catalog | None:
        """After the job's embedder version failed: the current catalog, if it now pairs with
        another embedder version (the version was retired by a hot swap), else None."""
        fresh = self._catalog.refresh()
        if fresh is job.catalog or fresh.embedder.version == job.catalog.embedder.version:
            return None
        log.info("embedder version %s is gone; request moves to catalog %s (version %s)", job.catalog.embedder.version,
                 fresh.path, fresh.embedder.version)
        return fresh

    def embed_options(self, job: _Job) -> dict[str, Any]:
        """``client.infer``'s options for the embedder request on the job's catalog now."""
        return {"outputs": [self._embedder_output], "version": self.embedder_version(job.catalog),
                "timeout_s": self.config.timeout_s}

    @staticmethod
    def may_move(attempt: int) -> bool:
        """Whether a failed embedder attempt (from 0) may look for a catalog to move to: all but the last."""
        return attempt + 1 < _EMBED_ATTEMPTS

    def retry_embed(self, job: _Job, error: errors.ServerError, fresh: Catalog | None) -> None:
        """The retry policy of the embedder request, which the sync and async chains both follow:
        a version the server cannot serve (``_VERSION_GONE``) moves the request, once, to ``fresh``,
        the catalog the root points to now (:meth:`moved_catalog`; None when :meth:`may_move`
        says no, or when the root still pairs with the gone version); else the request
        fails with a CatalogVersionMismatch."""
        if fresh is None:
            raise self.version_error(job, error) from error
        job.catalog = fresh

    def version_error(self, job: _Job, e: errors.ServerError) -> CatalogVersionMismatch:
        c = job.catalog.embedder
        return CatalogVersionMismatch(
            f"the catalog {job.catalog.path} needs {c.name} version {c.version}, which the server cannot serve now ({e}); "
            f"load that version or rebuild the catalog"
        )

    def finish(self, job: _Job, kept: list[Detection], dropped: list[Dropped], vectors: np.ndarray | None) -> LookResult:
        t0 = time.perf_counter()
        items: list[LookItem] = []
        if kept:
            by_cat: dict[str, list[int]] = {}
            for i, d in enumerate(kept):
                by_cat.setdefault(d.category, []).append(i)
            found: dict[int, list[Match]] = {}
            for category, rows in by_cat.items():
                if category not in job.catalog.categories:  # filter switched off: nothing to match
                    for i in rows:
                        found[i] = []
                    continue
                extra = {} if self.config.catalog_filter is None else {"filter": self.config.catalog_filter}
                for i, matches in zip(rows, job.catalog.search(category, vectors[rows], self.config.k, **extra), strict=True):
                    found[i] = matches
            items = [LookItem(d, tuple(found[i])) for i, d in enumerate(kept)]
        t1 = time.perf_counter()
        job.timings["search"] = (t1 - t0) * 1e3
        job.timings["total"] = (t1 - job.t0) * 1e3
        served = job.timings.get("detect", 0.0) + job.timings.get("embed", 0.0)
        job.timings["client"] = job.timings["total"] - served
        return LookResult(
            source=job.source, width=job.image.shape[1], height=job.image.shape[0], items=tuple(items),
            dropped=tuple(dropped), model_versions=dict(job.versions), timings_ms=dict(job.timings),
            catalog=str(job.catalog.path),
            catalog_embedder={"name": job.catalog.embedder.name, "version": str(job.catalog.embedder.version)},
            catalog_version=str(getattr(job.catalog, "version", "")), gate=job.gate,
        )


# ------------------------------------------------------------------------------------------
# Sync and async chains
# ------------------------------------------------------------------------------------------
class LookPipeline(_Steps):
    """Shop the look over a :class:`~lookserve.client.core.TritonClient` (thread-safe)."""

    def __init__(self, client, catalog: Catalog | CatalogRef, config: LookConfig | None = None) -> None:
        super().__init__(catalog, config or LookConfig())
        self.client = client
        cat = self.catalog
        self._learn(client.model_metadata(self.config.detector, self.config.detector_version),
                    client.model_metadata(cat.embedder.name, self.embedder_version(cat)))
        if self.config.gate != "off":
            self._pose = TritonPoseModels(client, self.config.pose, self.config.timeout_s)

    def run(self, source) -> LookResult:
        job = self.prepare(source)
        if self._pose is not None:
            refused = self.gated(job, analyse(job.image, self._pose, self.config.pose))
            if refused is not None:
                return refused
        t0 = time.perf_counter()
        det = self.client.infer(self.config.detector, {self._detector_input: job.square[None]},
                                version=self.config.detector_version, timeout_s=self.config.timeout_s)
        job.timings["detect"] = (time.perf_counter() - t0) * 1e3
        kept, dropped, crops = self.after_detect(job, det)
        vectors = None
        if crops is not None:
            t0 = time.perf_counter()
            for attempt in range(_EMBED_ATTEMPTS):
                try:
                    emb = self.client.infer(job.catalog.embedder.name, {self._embedder_input: crops}, **self.embed_options(job))
                    break
                except _VERSION_GONE as e:
                    self.retry_embed(job, e, self.moved_catalog(job) if self.may_move(attempt) else None)
            job.timings["embed"] = (time.perf_counter() - t0) * 1e3
            vectors = self.check_embedder(job, emb)
        return self.finish(job, kept, dropped, vectors)

    def run_many(self, sources: Sequence, concurrency: int = 4) -> Iterator[LookResult | errors.LookserveError]:
        """Results in input order, ``concurrency`` images in flight; a bad image yields its error."""
        if concurrency < 1:
            raise ConfigError("concurrency must be ≥ 1")

        def one(source):
            try:
                return self.run(source)
            except (errors.InvalidInputError, errors.CatalogVersionMismatch) as e:
                return e

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            yield from pool.map(one, sources)


class AsyncLookPipeline(_Steps):
    """The asyncio twin over an :class:`~lookserve.client.core.AsyncTritonClient`.
    Create with ``await AsyncLookPipeline.create(client, catalog, config)``."""

    def __init__(self, client, catalog: Catalog | CatalogRef, config: LookConfig | None = None) -> None:
        super().__init__(catalog, config or LookConfig())
        self.client = client

    @classmethod
    async def create(cls, client, catalog: Catalog | CatalogRef, config: LookConfig | None = None) -> AsyncLookPipeline:
        self = cls(client, catalog, config)
        cat = self.catalog
        self._learn(await client.model_metadata(self.config.detector, self.config.detector_version),
                    await client.model_metadata(cat.embedder.name, self.embedder_version(cat)))
        if self.config.gate != "off":
            self._pose = await AsyncTritonPoseModels.create(client, self.config.pose, self.config.timeout_s)
        return self

    async def run(self, source) -> LookResult:
        job = await asyncio.to_thread(self.prepare, source)
        if self._pose is not None:
            verdict = await analyse_async(job.image, self._pose, self.config.pose)
            refused = self.gated(job, verdict)
            if refused is not None:
                return refused
        t0 = time.perf_counter()
        det = await self.client.infer(self.config.detector, {self._detector_input: job.square[None]},
                                      version=self.config.detector_version, timeout_s=self.config.timeout_s)
        job.timings["detect"] = (time.perf_counter() - t0) * 1e3
        kept, dropped, crops = await asyncio.to_thread(self.after_detect, job, det)
        vectors = None
        if crops is not None:
            t0 = time.perf_counter()
            for attempt in range(_EMBED_ATTEMPTS):
                try:
                    emb = await self.client.infer(job.catalog.embedder.name, {self._embedder_input: crops}, **self.embed_options(job))
                    break
                except _VERSION_GONE as e:
                    fresh = await asyncio.to_thread(self.moved_catalog, job) if self.may_move(attempt) else None
                    self.retry_embed(job, e, fresh)
            job.timings["embed"] = (time.perf_counter() - t0) * 1e3
            vectors = self.check_embedder(job, emb)
        return self.finish(job, kept, dropped, vectors)

    async def run_many(self, sources: Sequence, concurrency: int = 4) -> list[LookResult | errors.LookserveError]:
        if concurrency < 1:
            raise ConfigError("concurrency must be ≥ 1")
        gate = asyncio.Semaphore(concurrency)

        async def one(source):
            async with gate:
                try:
                    return await self.run(source)
                except (errors.InvalidInputError, errors.CatalogVersionMismatch) as e:
                    return e

        return list(await asyncio.gather(*(one(s) for s in sources)))


def write_result(result: LookResult, path: Path, include_masks: bool = True) -> Path:
    """Write a result's JSON atomically."""
    return atomic_write_text(path, result.to_json(include_masks))


__all__ = [
    "AsyncLookPipeline", "Detection", "Dropped", "FilterConfig", "LookConfig", "LookItem", "LookPipeline",
    "LookResult", "filter_detections", "write_result",
]
