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
"""

from __future__ import annotations

import json
import logging
import os
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
    model_file_sha256,
    read_current,
    set_current,
)
from lookserve.client.core import each_replica
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
    with each_replica(client) as replicas:
        for replica in replicas:
            for entry in replica.statistics(model, str(version)).get("model_stats", []):
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


def _append_json(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


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

    ``client`` needs the repository key. Either ``onnx_path`` (published as the next version) or
    ``version`` (already published) names the new version. ``records`` are the shop photos to
    index (not needed with ``reuse_catalog`` when the catalog exists). ``on_step(name, "start" |
    "end")`` is called around every step (the bench marks them on its plot).
    """
    models = ModelRepository(repository)
    root = Path(catalog_root)
    name = options.model
    if (onnx_path is None) == (version is None):
        raise errors.ConfigError("give either the new ONNX file or an already published version, not both or neither")
    old_dir = read_current(root)
    built_with = Manifest.from_dict(json.loads((old_dir / MANIFEST).read_text())).embedder
    if built_with.name != name:
        raise errors.CatalogError(f"the current catalog {old_dir} was built with {built_with.name!r}, not {name!r}")
    old = int(built_with.version)
    loaded = models.loaded_versions(client, name)
    if old not in loaded:
        raise errors.PublishError(
            f"the current catalog {old_dir} needs {name} version {old}, but the server has {list(loaded) or 'none'} "
            "loaded; fix the serving pair before swapping"
        )
    steps: list[SwapStep] = []

    def run(step: str, fn, detail: str = ""):
        if on_step:
            on_step(step, "start")
        t0 = time.time()
        try:
            return fn()
        finally:
            steps.append(SwapStep(step, t0, time.time(), detail))
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
        raise errors.PublishError(f"{name} version {new} already serves with {old_dir}; nothing to swap")

    new_dir = root / catalog_dir_name(new)
    if new_dir.resolve() == old_dir.resolve():
        raise errors.CatalogError(f"{new_dir} is the serving catalog; cannot rebuild it in place")

    # 2. load both versions (Triton keeps the old one serving; a load failure restores the config)
    try:
        run("load_both", lambda: models.promote(client, name, new, keep_previous=True, timeout_s=options.load_timeout_s,
                                                allow_unverified=options.allow_unverified))
    except errors.PublishError as e:
        raise errors.PublishError(f"swap aborted, {name} version {old} and {old_dir.name} keep serving: {e}") from e

    # 3. build (and check) the new catalog; 4. flip the pointer. Any failure: retire the new version.
    try:
        def build() -> Catalog:
            sha = model_file_sha256(repository, name, str(new))

            def open_new() -> Catalog:
                return Catalog.open(new_dir, EmbedderInfo(name, str(new), sha), served_versions=[str(old), str(new)])

            if options.reuse_catalog and (new_dir / MANIFEST).is_file():
                try:
                    return open_new()
                except errors.CatalogError as e:
                    log.warning("cannot reuse %s (%s); rebuilding it", new_dir, e)
            if not records:
                raise errors.ConfigError(f"{new_dir} must be built: give the shop photos (--photos)")
            build_catalog(records, new_dir, TritonEmbedder(client, name, str(new)), options.params,
                          batch_size=options.batch_size, concurrency=options.concurrency, model_repository=repository,
                          progress=progress, images_root=images_root)
            return open_new()

        catalog = run("build", build, str(new_dir))
        _smoke(catalog)
        run("flip", lambda: set_current(root, new_dir.name), f"{old_dir.name} -> {new_dir.name}")
    except BaseException as e:
        try:
            models.retire(client, name, (new,), timeout_s=options.load_timeout_s)
        except errors.LookserveError as cleanup:
            log.error("could not retire %s version %d after the failed swap: %s", name, new, cleanup)
        if isinstance(e, errors.LookserveError):
            raise errors.PublishError(
                f"swap aborted before the switch: {e}. {name} version {old} and {old_dir.name} keep serving; "
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
    report = SwapReport(name, old, new, str(old_dir), str(new_dir), tuple(steps), tuple(serving), after_flip, drained)
    _append_json(root / SWAPS, {"time": time.time(), **report.to_dict()})
    if not drained:
        raise errors.PublishError(
            f"{old_dir.name} -> {new_dir.name} switched, but {name} version {old} still answered requests after "
            f"{options.max_wait_s:.0f} s (clients that do not follow {root / 'current'}?); both versions stay loaded. "
            f"Retire it when they have moved: lookserve models retire {name} {old}"
        )
    log.info("embedder swap done: %s v%d (%s) -> v%d (%s); serving %s", name, old, old_dir.name, new, new_dir.name,
             list(serving))
    return report


__all__ = ["STEPS", "SwapOptions", "SwapReport", "SwapStep", "swap_embedder", "version_requests", "wait_for_drain"]
