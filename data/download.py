"""Download the real street2shop photos listed in ``photos/photos.txt`` (``id,url`` lines).

* bounded concurrency (a thread pool of ``workers``) with a progress bar;
* every image is decoded before it is kept (truncated files, HTML error pages and other
  non-images are refused); non-JPEG images are re-encoded as JPEG;
* atomic writes: ``images/.<id>.jpg.tmp-*`` then ``os.replace`` to ``images/<id>.jpg``;
* retry with exponential backoff on transient failures (timeouts, resets, 5xx, 408/429,
  truncated bodies, undecodable bodies); 4xx answers are final;
* resumable: an image already present that decodes is not fetched again;
* the usable pairs are selected only after every download has finished
  (:func:`select_pairs`), and nothing is ever deleted: a street photo shared by several pairs
  stays even when the shop photos of one of its products failed — the race the original
  analysis ran into when it deleted street photos while downloads were still running.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from lookserve.data import street2shop
from lookserve.errors import ConfigError, DataError
from lookserve.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

REPORT = "download_report.json"
USABLE = "usable_pairs.json"


@dataclass(frozen=True)
class DownloadConfig:
    workers: int = 8
    retries: int = 3  # extra attempts after the first
    backoff_s: float = 1.0  # wait backoff_s * 2**attempt before a retry
    timeout_s: float = 20.0  # per request (connect and each read)
    max_bytes: int = 25 * 2**20
    jpeg_quality: int = 95  # for images that arrive in another format
    user_agent: str = "lookserve-data/0.1 (+street2shop downloader)"
    verify_existing: bool = False  # on resume, fully decode present files (slow on 400k photos)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ConfigError(f"invalid download config {self}: workers >= 1, retries >= 0, timeout > 0, backoff >= 0")


@dataclass
class DownloadReport:
    downloaded: list[int] = field(default_factory=list)
    already_present: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # id → last error
    attempts: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = {str(k): v for k, v in sorted(self.failed.items())}
        d["downloaded"] = sorted(self.downloaded)
        d["already_present"] = sorted(self.already_present)
        return d


class _Permanent(Exception):
    """A failure that retrying will not fix (404, 403, ...)."""


class _Transient(Exception):
    """A failure worth retrying."""


def decode_check(data: bytes) -> tuple[str, Any]:
    """(format, PIL image) of ``data`` fully decoded; ``_Transient`` when it is not an image or
    is truncated."""

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            im.load()  # decodes every pixel: truncation raises here
            return fmt, im.convert("RGB") if fmt != "JPEG" else None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _Transient(f"not a decodable image ({type(e).__name__}: {e})") from e


def file_is_good(path: Path, full: bool = False) -> bool:
    """Whether a present image can be kept on resume. Files are only ever written whole (after a
    full decode, then renamed), so by default a cheap check suffices — a JPEG header that PIL
    identifies and the JPEG end marker, which catches files cut or damaged later; ``full``
    decodes every pixel."""
    try:
        if full:
            decode_check(path.read_bytes())
            return True
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 4:
                return False
            f.seek(-2, os.SEEK_END)
            if f.read(2) != b"\xff\xd9":
                return False
        with Image.open(path) as im:
            return im.format == "JPEG"
    except (_Transient, OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False


def _fetch(url: str, config: DownloadConfig) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": config.user_agent})
    try:
        with urllib.request.urlopen(req, timeout=config.timeout_s) as r:
            declared = r.headers.get("Content-Length")
            data = r.read(config.max_bytes + 1)
    except urllib.error.HTTPError as e:
        if e.code in (408, 429) or e.code >= 500:
            raise _Transient(f"HTTP {e.code}") from e
        raise _Permanent(f"HTTP {e.code}") from e
    except http.client.IncompleteRead as e:
        raise _Transient(f"truncated body ({len(e.partial)} bytes received)") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ValueError):  # unknown url type and the like
            raise _Permanent(f"bad url: {reason}") from e
        raise _Transient(f"{type(e).__name__}: {reason}") from e
    except ValueError as e:  # malformed url
        raise _Permanent(f"bad url: {e}") from e
    if len(data) > config.max_bytes:
        raise _Permanent(f"larger than {config.max_bytes} bytes")
    if declared is not None and declared.isdigit() and int(declared) != len(data):
        raise _Transient(f"truncated body ({len(data)} of {declared} bytes)")
    return data




def _one(pid: int, url: str, dest: Path, config: DownloadConfig, stop: threading.Event) -> tuple[int, str | None, int]:
    """Download one photo; (id, error or None, attempts)."""
    err = None
    for attempt in range(config.retries + 1):
        if stop.is_set():
            return pid, "interrupted", attempt
        if attempt:
            stop.wait(config.backoff_s * 2 ** (attempt - 1))
        try:
            data = _fetch(url, config)
            fmt, rgb = decode_check(data)
            if rgb is not None:  # PNG, GIF, WebP...: keep a JPEG, as the layout promises
                buf = io.BytesIO()
                rgb.save(buf, format="JPEG", quality=config.jpeg_quality)
                data = buf.getvalue()
            atomic_write_bytes(dest, data)
            return pid, None, attempt + 1
        except _Permanent as e:
            return pid, str(e), attempt + 1
        except _Transient as e:
            err = str(e)
            log.debug("photo %d attempt %d: %s", pid, attempt + 1, err)
    return pid, err, config.retries + 1


def download(
    root: str | os.PathLike,
    config: DownloadConfig | None = None,
    photos_txt: str | os.PathLike | None = None,
    ids: set[int] | None = None,
    progress: bool = False,
) -> DownloadReport:
    """Fetch every photo of ``photos_txt`` (default ``root/photos/photos.txt``) into
    ``root/images/<id>.jpg``; write ``root/download_report.json``. Only ``ids`` when given."""
    config = config or DownloadConfig()
    root = Path(root)
    txt = Path(photos_txt) if photos_txt else root / "photos" / "photos.txt"
    urls = street2shop.read_photos_txt(txt)
    if ids is not None:
        unknown = set(ids) - set(urls)
        if unknown:
            raise DataError(f"{len(unknown)} requested ids are not in {txt}, e.g. {sorted(unknown)[:5]}")
        urls = {k: v for k, v in urls.items() if k in ids}
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.glob(".*.tmp-*"):  # leftovers of an interrupted run
        stale.unlink(missing_ok=True)
    report = DownloadReport()
    todo = []
    for pid, url in sorted(urls.items()):
        dest = images / f"{pid}.jpg"
        if dest.exists() and file_is_good(dest, full=config.verify_existing):
            report.already_present.append(pid)
        else:
            todo.append((pid, url, dest))
    log.info("%d photos: %d already present, %d to download", len(urls), len(report.already_present), len(todo))
    t0 = time.perf_counter()
    stop = threading.Event()

    with Progress(TextColumn("downloading"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
                  TimeRemainingColumn(), disable=not progress, transient=True) as bar, \
            ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="s2s-dl") as pool:
        task = bar.add_task("download", total=len(todo), failed=0)
        futures = [pool.submit(_one, pid, url, dest, config, stop) for pid, url, dest in todo]
        try:
            for fut in as_completed(futures):
                pid, err, attempts = fut.result()
                report.attempts += attempts
                if err is None:
                    report.downloaded.append(pid)
                else:
                    report.failed[pid] = err
                bar.update(task, advance=1, failed=len(report.failed))
        except BaseException:  # Ctrl-C: stop the workers between attempts, keep what is done
            stop.set()
            for f in futures:
                f.cancel()
            raise
    report.seconds = round(time.perf_counter() - t0, 3)
    if report.failed:
        log.warning("%d of %d photos failed; see %s", len(report.failed), len(todo), root / REPORT)
    atomic_write_bytes(root / REPORT, (json.dumps(report.as_dict(), indent=1, sort_keys=True) + "\n").encode())
    return report


def select_pairs(root: str | os.PathLike) -> dict[str, Any]:
    """After all downloads: the usable pairs (street image present — the downloader keeps only
    decoded images —, ≥ 1 shop image
    of the product present) per category and pair file, written to ``root/usable_pairs.json``.
    Deletes nothing."""
    root = Path(root)
    ds = street2shop.load(root, check_images=True)
    usable: dict[str, dict[str, list[dict]]] = {}
    for p in ds.pairs:
        usable.setdefault(p.category, {}).setdefault(p.pair_file, []).append(
            {"photo": p.photo, "product": p.product, "bbox": {"left": p.bbox.left, "top": p.bbox.top,
                                                              "width": p.bbox.width, "height": p.bbox.height},
             "shop_photos": list(p.shop_photos)})
    doc = {
        "summary": ds.summary(),
        "skipped": [asdict(m) for m in ds.missing],
        "pairs": usable,
    }
    atomic_write_bytes(root / USABLE, (json.dumps(doc, sort_keys=True) + "\n").encode())
    return doc


def referenced_ids(root: str | os.PathLike) -> set[int]:
    """Photo ids used by any pair or retrieval file under ``root/meta/json``."""
    meta = Path(root) / "meta" / "json"
    out: set[int] = set()
    for f in sorted(meta.glob("*.json")):
        if f.name.startswith(("train_pairs_", "test_pairs_", "retrieval_")):
            for i, r in enumerate(street2shop._list_file(f)):
                out.add(street2shop._int_field(r, "photo", f"{f}[{i}]"))
    return out
