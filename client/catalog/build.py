"""Building a catalog: embed every shop photo through the served embedder (batched, concurrent,
resumable from ``<out>.partial``) and write the catalog directory (:func:`build_catalog`)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lookserve.client.catalog.embedder import Embedder, EmbedderInfo, model_file_sha256
from lookserve.client.catalog.index import IndexParams
from lookserve.client.catalog.records import PhotoRecord
from lookserve.client.catalog.store import Manifest, write_catalog
from lookserve.errors import CatalogError, CatalogVersionMismatch, ConfigError, InvalidInputError
from lookserve.fsutil import atomic_write_bytes, atomic_write_text
from lookserve.images import DEFAULT_LIMITS, DecodeLimits, decode_image, resize_square

log = logging.getLogger(__name__)


def _records_key(records: Sequence[PhotoRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.product_id}\t{r.category}\t{r.image}\n".encode())
    return h.hexdigest()


def partial_dir_for(out_dir: Path) -> Path:
    """Where :func:`build_catalog` keeps the finished batches of ``out_dir``'s embeddings until the
    catalog is written (kept when a build fails, so the next one resumes)."""
    return out_dir.with_name(f"{out_dir.name}.partial")


def embed_records(
    records: Sequence[PhotoRecord],
    embedder: Embedder,
    partial_dir: Path,
    batch_size: int = 32,
    concurrency: int = 4,
    limits: DecodeLimits = DEFAULT_LIMITS,
    progress: bool = False,
) -> tuple[np.ndarray, str, list[str]]:
    """Embed every record's photo. Finished batches are saved under ``partial_dir`` (one
    ``.npz`` per batch, written atomically) so an interrupted run resumes where it stopped;
    batches embedded by another embedder version are redone.

    Returns (vectors [N, dim] — zero rows for skipped photos, the version, skipped image names).
    """
    if batch_size < 1 or concurrency < 1:
        raise ConfigError("batch_size and concurrency must be ≥ 1")
    size = embedder.input_size
    # Probe: which version answers now, and the dimension.
    probe, version = embedder.embed(np.zeros((1, size, size, 3), np.uint8))
    dim = probe.shape[1]
    partial_dir.mkdir(parents=True, exist_ok=True)
    state_path = partial_dir / "state.json"
    state = {"records": _records_key(records), "embedder": embedder.name, "version": version, "batch_size": batch_size, "dim": dim}
    if state_path.is_file() and json.loads(state_path.read_text()) != state:
        log.info("partial embeddings in %s are from another run (records, version or batch size differ); starting over", partial_dir)
        shutil.rmtree(partial_dir)
        partial_dir.mkdir(parents=True)
    atomic_write_text(state_path, json.dumps(state, sort_keys=True))

    starts = list(range(0, len(records), batch_size))
    todo = [s for s in starts if not (partial_dir / f"batch-{s:09d}.npz").is_file()]
    if len(todo) < len(starts):
        log.info("resuming: %d of %d batches already embedded", len(starts) - len(todo), len(starts))

    def work(start: int) -> int:
        chunk = records[start : start + batch_size]
        crops = np.zeros((len(chunk), size, size, 3), np.uint8)
        ok = np.zeros(len(chunk), bool)
        for j, r in enumerate(chunk):
            if r.path is None:
                log.warning("product %d: photo %s is not available locally; skipped", r.product_id, r.image)
                continue
            try:
                crops[j] = resize_square(decode_image(r.path, limits), size)
                ok[j] = True
            except InvalidInputError as e:
                log.warning("product %d: %s; skipped", r.product_id, e)
        vecs = np.zeros((len(chunk), dim), np.float32)
        got = version
        if ok.any():
            out, got = embedder.embed(crops[ok])
            vecs[ok] = out
        if got != version:
            raise CatalogVersionMismatch(
                f"the embedder changed version during the build ({version} → {got}); run the build again"
            )
        buffer = io.BytesIO()
        np.savez(buffer, vectors=vecs, ok=ok)
        atomic_write_bytes(partial_dir / f"batch-{start:09d}.npz", buffer.getvalue())
        return len(chunk)

    with _progress(progress, len(records), f"embedding with {embedder.name} v{version}") as advance:
        advance(len(records) - sum(min(batch_size, len(records) - s) for s in todo))
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            pending: set[Future] = set()
            queue = iter(todo)
            try:
                for start in queue:
                    pending.add(pool.submit(work, start))
                    if len(pending) >= concurrency * 2:  # bounded in flight
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            advance(fut.result())
                for fut in pending:
                    advance(fut.result())
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise

    vectors = np.zeros((len(records), dim), np.float32)
    skipped: list[str] = []
    for start in starts:
        with np.load(partial_dir / f"batch-{start:09d}.npz") as z:
            vectors[start : start + len(z["vectors"])] = z["vectors"]
            skipped += [records[start + j].image for j in np.flatnonzero(~z["ok"])]
    return vectors, version, skipped


@contextlib.contextmanager
def _progress(enabled: bool, total: int, description: str):
    if not enabled:
        yield lambda n: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def build_catalog(
    records: Sequence[PhotoRecord],
    out_dir: str | os.PathLike,
    embedder: Embedder,
    params: IndexParams = IndexParams(),
    batch_size: int = 32,
    concurrency: int = 4,
    model_repository: str | os.PathLike | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    progress: bool = False,
    images_root: str | os.PathLike | None = None,
) -> Manifest:
    """Embed every shop photo through ``embedder`` and write the catalog at ``out_dir``."""
    out_dir = Path(out_dir)
    partial = partial_dir_for(out_dir)
    vectors, version, skipped = embed_records(records, embedder, partial, batch_size, concurrency, limits, progress)
    keep = [i for i, r in enumerate(records) if r.image not in set(skipped)]
    if not keep:
        raise CatalogError("no shop photo could be embedded; see the warnings above")
    info = EmbedderInfo(embedder.name, version, model_file_sha256(model_repository, embedder.name, version))
    manifest = write_catalog(out_dir, [records[i] for i in keep], vectors[keep], info, params, skipped, progress,
                             images_root=images_root)
    shutil.rmtree(partial, ignore_errors=True)
    return manifest
