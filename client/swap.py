"""The embedder hot swap, coupled with the catalog: a new (embedder version, index) pair replaces
the serving one while clients keep running, and no request ever mixes the two.

A catalog root holds one catalog per embedder version and a ``current`` pointer::

    catalogs/
        catalog-v1/        built with embedder version 1 (manifest: name, version, model sha256)
        catalog-v2/        built with embedder version 2
        current -> catalog-v2
        swaps.jsonl        one line per swap: what served before and after, step times

Clients follow the pointer with a :class:`~lookserve.client.catalog.CatalogWatcher`
(``LookPipeline(client, CatalogWatcher(root, client))``): each request takes one catalog and asks
the embedder for *that catalog's* version explicitly, so the pair moves together.

:func:`swap_embedder` (``lookserve models swap-embedder``) does, in order:

1. ``publish`` — validate the new ONNX file and write it as version N+1 (nothing served yet);
   without an export.json recording its parity gate it is published as unverified, and the swap
   stops at the next step unless ``allow_unverified``;
2. ``load_both`` — version_policy ``specific {old, new}``: Triton loads the new version beside the
   old one, which keeps serving;
3. ``build`` — embed every shop photo with the new version, pinned explicitly, into
   ``catalog-v<new>`` (resumable; the serving catalog is never touched), then open it with its
   checksums and the new version's model-file checksum, and query each category with one of its
   own vectors;
4. ``flip`` — replace the ``current`` symlink atomically: clients switch at their next request;
5. ``drain`` — wait until Triton's statistics show no request for the old version during
   ``quiet_s`` (so every client, in every process, has moved) — at most ``max_wait_s``;
6. ``unload`` — version_policy ``specific {new}``: the old version is unloaded.

A failure before the flip (bad file, load failure inside Triton, a build error or Ctrl-C) retires
the new version again and leaves the pointer alone: the old pair keeps serving, and a rerun
resumes the build. A drain that times out leaves both versions loaded (clients that did not move
keep working) and says so. Swapping back is the same command with ``--version OLD --reuse-catalog``.

On a Milvus catalog (``catalog_root`` = ``milvus://HOST:PORT/ALIAS``) the steps are the same; the
alias is the pointer: ``build`` embeds the shop photos with the new version into the alias's next
collection (``<alias>__e<new>__v<N>``, staged: ``publish_records(..., flip=False)``), opens it bound
to the new version and its model checksum and queries each category with one of its own rows;
``flip`` is ``alter_alias`` (Milvus's own atomic switch), which running clients follow
(:class:`~lookserve.client.catalog.milvus.MilvusCatalogRef`, via ``follow_catalog``) and whose
requests pin the collection's embedder version, as with a directory. The old collection is kept
(``--reuse-catalog`` finds it to swap back); a failure before the flip drops the staged collection
(its embeddings stay under the work folder, so a rerun resumes). The swap is logged, not journalled
in a file (there is no root folder).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookserve import contracts, errors
from lookserve.client.catalog import (
    MANIFEST,
    Catalog,
    EmbedderInfo,
    IndexParams,
    Manifest,
    PhotoRecord,
    TritonEmbedder,
    build_catalog,
    catalog_dir_name,
    is_milvus_address,
    model_file_sha256,
    read_current,
    set_current,
)
from lookserve.client.catalog.address import milvus_backend
from lookserve.client.models import ModelRepository

log = logging.getLogger(__name__)

SWAPS = "swaps.jsonl"
STEPS = ("publish", "load_both", "build", "flip", "drain", "unload")


@dataclass(frozen=True)
class SwapOptions:
    model: str = contracts.EMBEDDER
    # no request for the old version during this long ⇒ every client moved; keep it above the
    # clients' CatalogWatcher interval_s (a request that still meets the retired version moves
    # to the new pair by itself, see lookserve.client.look)
    quiet_s: float = 2.0
    max_wait_s: float = 120.0  # give up draining after this long (both versions stay loaded)
    poll_s: float = 0.1  # how often the drain reads Triton's statistics
    load_timeout_s: float = 300.0
    params: IndexParams = field(default_factory=IndexParams)
    batch_size: int = 32
    concurrency: int = 4
    unload_old: bool = True
    reuse_catalog: bool = False  # use an existing catalog-v<new> when it verifies for that version
    # serve a new version whose file no passed parity gate recorded (see ModelRepository.promote)
    allow_unverified: bool = False
    # a Milvus catalog: flush before indexing (MilvusParams.flush; off = searchable sooner, small catalogs)
    milvus_flush: bool = True

    def __post_init__(self) -> None:
        if self.quiet_s <= 0 or self.max_wait_s < self.quiet_s or self.poll_s <= 0:
            raise errors.ConfigError(
                f"need quiet_s > 0, max_wait_s ≥ quiet_s and poll_s > 0 (got {self.quiet_s}, {self.max_wait_s}, {self.poll_s})"
            )
        if self.batch_size < 1 or self.concurrency < 1:
            raise errors.ConfigError("batch_size and concurrency must be ≥ 1")


@dataclass(frozen=True)
class SwapStep:
    name: str
    started: float  # time.time()
    ended: float
    detail: str = ""


@dataclass(frozen=True)
class SwapReport:
    model: str
    old_version: int
    new_version: int
    old_catalog: str
    new_catalog: str
    steps: tuple[SwapStep, ...]
    serving: tuple[int, ...]  # versions loaded at the end
    old_requests_after_flip: int  # requests the old version answered after the pointer moved
    drained: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [asdict(s) for s in self.steps]
        d["serving"] = list(self.serving)
        return d

    def step(self, name: str) -> SwapStep | None:
        return next((s for s in self.steps if s.name == name), None)


def version_requests(client, model: str, version: int | str) -> int:
    """Requests (successful and failed) Triton has answered for one version of a model (summed
    over the replicas behind ``client``)."""
    total = 0
    for entry in client.statistics(model, str(version)).get("model_stats", []):
        if str(entry.get("version")) == str(version):
            inference = entry.get("inference_stats", {})
            for key in ("success", "fail"):
                total += int(inference.get(key, {}).get("count", 0) or 0)
    return total


def wait_for_drain(client, model: str, version: int | str, quiet_s: float, max_wait_s: float,
                   poll_s: float = 0.1) -> tuple[bool, int]:
    """Wait until ``version`` of ``model`` answers no request for ``quiet_s`` seconds (at most
    ``max_wait_s``). Returns (drained, requests answered meanwhile)."""
    start = time.monotonic()
    first = last = version_requests(client, model, version)
    quiet_since = start
    while True:
        now = time.monotonic()
        if now - quiet_since >= quiet_s:
            return True, last - first
        if now - start >= max_wait_s:
            return False, last - first
        time.sleep(poll_s)
        count = version_requests(client, model, version)
        if count != last:
            last, quiet_since = count, time.monotonic()


def _smoke(catalog: Catalog) -> None:
    """Each category, queried with one of its own vectors, finds that photo first."""
    for category in sorted(catalog.categories):
        vectors = catalog.vectors(category)
        labels, sims = catalog.search_labels(category, vectors[:1], 1)
        if labels[0, 0] != 0 and not np.isclose(sims[0, 0], 1.0, atol=1e-4):
            raise errors.CatalogError(f"smoke test of {catalog.path}: category {category} does not find its own photo")


def _smoke_milvus(catalog) -> None:
    """Each category of a Milvus collection, queried with one of its own stored rows, finds that
    photo first (similarity 1)."""
    for category in sorted(catalog.categories):
        vectors = catalog.vectors(category, limit=1)
        if not len(vectors):
            raise errors.CatalogError(f"smoke test of {catalog.path}: category {category} has no rows")
        (found,) = catalog.search(category, vectors, k=1)
        if not found or not np.isclose(found[0].similarity, 1.0, atol=1e-4):
            raise errors.CatalogError(f"smoke test of {catalog.path}: category {category} does not find its own photo")


def _append_json(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


class _DirectoryPointer:
    """A catalog root: ``catalog-v<N>`` directories and the ``current`` symlink."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.old_dir = read_current(self.root)
        self.old_embedder = Manifest.from_dict(json.loads((self.old_dir / MANIFEST).read_text())).embedder
        self.old_label, self.old_name = str(self.old_dir), self.old_dir.name
        self.where = str(self.root / "current")

    def target(self, new: int) -> None:
        self.new_dir = self.root / catalog_dir_name(new)
        if self.new_dir.resolve() == self.old_dir.resolve():
            raise errors.CatalogError(f"{self.new_dir} is the serving catalog; cannot rebuild it in place")
        self.new_label, self.new_name = str(self.new_dir), self.new_dir.name

    def build(self, client, repository, name: str, old: int, new: int, records, options: SwapOptions,
              images_root, progress: bool) -> None:
        sha = model_file_sha256(repository, name, str(new))

        def open_new() -> Catalog:
            return Catalog.open(self.new_dir, EmbedderInfo(name, str(new), sha), served_versions=[str(old), str(new)])

        catalog = None
        if options.reuse_catalog and (self.new_dir / MANIFEST).is_file():
            try:
                catalog = open_new()
            except errors.CatalogError as e:
                log.warning("cannot reuse %s (%s); rebuilding it", self.new_dir, e)
        if catalog is None:
            if not records:
                raise errors.ConfigError(f"{self.new_dir} must be built: give the shop photos (--photos)")
            build_catalog(records, self.new_dir, TritonEmbedder(client, name, str(new)), options.params,
                          batch_size=options.batch_size, concurrency=options.concurrency, model_repository=repository,
                          progress=progress, images_root=images_root)
            catalog = open_new()
        _smoke(catalog)

    def flip(self) -> None:
        set_current(self.root, self.new_dir.name)

    def abandon(self) -> None:
        """A failed swap keeps ``catalog-v<new>`` (or its .partial) so that a rerun resumes."""

    def record(self, report: SwapReport) -> None:
        _append_json(self.root / SWAPS, {"time": time.time(), **report.to_dict()})


class _MilvusPointer:
    """A Milvus alias: one collection per (embedder version, catalog version), the alias the pointer."""

    def __init__(self, address: str, options: SwapOptions) -> None:
        self.mv = milvus_backend()
        self.address = self.mv.parse_address(str(address))
        p = options.params
        self.params = self.mv.MilvusParams(M=p.M, ef_construction=p.ef_construction, flush=options.milvus_flush)
        old = self.mv.MilvusCatalog.open(self.address, self.params)
        if old.collection == self.address.name:
            raise errors.ConfigError(f"{self.address} names a collection, not an alias: swap-embedder flips an alias "
                                     "(e.g. milvus://HOST:PORT/shop)")
        self.old_embedder, self.old_label, self.old_name = old.embedder, old.path, old.collection
        self.where = f"alias {self.address}"
        self.staged: str | None = None  # a collection this run wrote (dropped again if the swap fails)

    def target(self, new: int) -> None:
        self.new_label = self.new_name = ""  # known once built

    def _open(self, collection: str, name: str, old: int, new: int, sha: str | None):
        return self.mv.MilvusCatalog.open(self.address.with_name(collection), self.params,
                                          embedder=EmbedderInfo(name, str(new), sha),
                                          served_versions=[str(old), str(new)])

    def _reusable(self, name: str, old: int, new: int, sha: str | None):
        """The newest collection of this alias built with version ``new`` that opens for it."""
        for collection in reversed(self.mv.versions_of(self.address, str(new), self.params)):
            try:
                return self._open(collection, name, old, new, sha)
            except errors.CatalogError as e:
                log.warning("cannot reuse %s (%s)", collection, e)
        return None

    def build(self, client, repository, name: str, old: int, new: int, records, options: SwapOptions,
              images_root, progress: bool) -> None:
        sha = model_file_sha256(repository, name, str(new))
        catalog = self._reusable(name, old, new, sha) if options.reuse_catalog else None
        if catalog is None:
            if not records:
                raise errors.ConfigError(f"a collection of {name} version {new} behind {self.address} must be built: "
                                         "give the shop photos (--photos)")
            work = Path(tempfile.gettempdir()) / f"lookserve-{self.address.name}__e{new}.swap-partial"
            staged = self.mv.publish_records(records, TritonEmbedder(client, name, str(new)), str(self.address), work,
                                             params=self.params, model_sha256=sha, keep=0,
                                             batch_size=options.batch_size, concurrency=options.concurrency,
                                             progress=progress, flip=False)
            self.staged = staged.collection
            catalog = self._open(staged.collection, name, old, new, sha)
            shutil.rmtree(work, ignore_errors=True)
        _smoke_milvus(catalog)
        self.new_label, self.new_name = catalog.path, catalog.collection

    def flip(self) -> None:
        self.mv.flip_alias(self.address, self.new_name, self.params)

    def abandon(self) -> None:
        if self.staged is None:
            return
        try:
            self.mv.drop_collection(self.address, self.staged, self.params)
        except errors.CatalogError as e:  # the swap's own error is the news; say what is left behind
            log.error("could not drop the staged collection %s: %s", self.staged, e)

    def record(self, report: SwapReport) -> None:
        log.info("embedder swap on %s: %s", self.address, json.dumps(report.to_dict()))


def swap_embedder(
    client,
    repository: str | os.PathLike,
    catalog_root: str | os.PathLike,
    records: Sequence[PhotoRecord] | None = None,
    onnx_path: str | os.PathLike | None = None,
    version: int | None = None,
    options: SwapOptions = SwapOptions(),
    images_root: str | os.PathLike | None = None,
    progress: bool = False,
    on_step: Callable[[str, str], None] | None = None,
) -> SwapReport:
    """Swap the embedder and its catalog together (see the module docstring for the steps).

    ``client`` needs the repository key. ``catalog_root`` is a catalog root (folder with the
    ``current`` pointer) or a ``milvus://HOST:PORT/ALIAS`` address. Either ``onnx_path``
    (published as the next version) or ``version`` (already published) names the new version.
    ``records`` are the shop photos to index (not needed with ``reuse_catalog`` when the catalog
    exists). ``on_step(name, "start" | "end")`` is called around every step (the bench marks them
    on its plot).
    """
    models = ModelRepository(repository)
    name = options.model
    if (onnx_path is None) == (version is None):
        raise errors.ConfigError("give either the new ONNX file or an already published version, not both or neither")
    pointer = _MilvusPointer(str(catalog_root), options) if is_milvus_address(catalog_root) \
        else _DirectoryPointer(catalog_root)
    built_with = pointer.old_embedder
    if built_with.name != name:
        raise errors.CatalogError(f"the current catalog {pointer.old_label} was built with {built_with.name!r}, not {name!r}")
    old = int(built_with.version)
    loaded = models.loaded_versions(client, name)
    if old not in loaded:
        raise errors.PublishError(
            f"the current catalog {pointer.old_label} needs {name} version {old}, but the server has "
            f"{list(loaded) or 'none'} loaded; fix the serving pair before swapping"
        )
    steps: list[SwapStep] = []

    def run(step: str, fn, detail: str | Callable[[], str] = ""):
        if on_step:
            on_step(step, "start")
        t0 = time.time()
        try:
            return fn()
        finally:
            steps.append(SwapStep(step, t0, time.time(), detail() if callable(detail) else detail))
            if on_step:
                on_step(step, "end")

    # 1. publish (validates; writes nothing on failure)
    if onnx_path is not None:
        info = run("publish", lambda: models.publish(name, onnx_path), str(onnx_path))
        new = info.version
    else:
        new = int(version)
        if new not in [v.version for v in models.versions(name)]:
            raise errors.PublishError(f"{name} has no published version {new}; publish it or pass --onnx")
    if new == old:
        raise errors.PublishError(f"{name} version {new} already serves with {pointer.old_label}; nothing to swap")
    pointer.target(new)

    # 2. load both versions (Triton keeps the old one serving; a load failure restores the config)
    try:
        run("load_both", lambda: models.promote(client, name, new, keep_previous=True, timeout_s=options.load_timeout_s,
                                                allow_unverified=options.allow_unverified))
    except errors.PublishError as e:
        raise errors.PublishError(f"swap aborted, {name} version {old} and {pointer.old_name} keep serving: {e}") from e

    # 3. build (and check) the new catalog; 4. flip the pointer. Any failure: retire the new version.
    try:
        run("build", lambda: pointer.build(client, repository, name, old, new, records, options, images_root, progress),
            lambda: pointer.new_label)
        run("flip", pointer.flip, f"{pointer.old_name} -> {pointer.new_name}")
    except BaseException as e:
        pointer.abandon()
        try:
            models.retire(client, name, (new,), timeout_s=options.load_timeout_s)
        except errors.LookserveError as cleanup:
            log.error("could not retire %s version %d after the failed swap: %s", name, new, cleanup)
        if isinstance(e, errors.LookserveError):
            raise errors.PublishError(
                f"swap aborted before the switch: {e}. {name} version {old} and {pointer.old_name} keep serving; "
                f"version {new} was retired (a rerun resumes the catalog build)"
            ) from e
        raise

    # 5. wait until no client uses the old version; 6. unload it
    drained, after_flip = run(
        "drain", lambda: wait_for_drain(client, name, old, options.quiet_s, options.max_wait_s, options.poll_s)
    )
    if drained and options.unload_old:
        serving = run("unload", lambda: models.retire(client, name, (old,), timeout_s=options.load_timeout_s))
    else:
        serving = models.loaded_versions(client, name)
    report = SwapReport(name, old, new, pointer.old_label, pointer.new_label, tuple(steps), tuple(serving), after_flip,
                        drained)
    pointer.record(report)
    if not drained:
        raise errors.PublishError(
            f"{pointer.old_name} -> {pointer.new_name} switched, but {name} version {old} still answered requests after "
            f"{options.max_wait_s:.0f} s (clients that do not follow {pointer.where}?); both versions stay loaded. "
            f"Retire it when they have moved: lookserve models retire {name} {old}"
        )
    log.info("embedder swap done: %s v%d (%s) -> v%d (%s); serving %s", name, old, pointer.old_name, new,
             pointer.new_name, list(serving))
    return report


__all__ = ["STEPS", "SwapOptions", "SwapReport", "SwapStep", "swap_embedder", "version_requests", "wait_for_drain"]
