"""File-system helpers: atomic writes, directory fsync, file checksums — the one owner of each.

An atomic write puts the bytes in a temporary file *in the destination's folder* (so the final
``os.replace`` is a rename within one file system), flushes and fsyncs it, renames it over the
destination and fsyncs the folder: a reader sees the old file or the new one, never a part of
one, and a crash leaves at most a hidden ``.<name>.<random>.tmp`` file. A failed write removes
its temporary file and leaves the destination untouched.

    atomic_write_json(out / "manifest.json", manifest.to_dict(), sort_keys=True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    # mkstemp makes 0600 files; a plain open() makes 0666 less the umask. The umask can only be
    # read by setting it, so read it once, at import, rather than racing other threads later.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_DEFAULT_MODE = _default_mode()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives a crash (best effort: some file systems
    cannot open a directory for fsync, which is then skipped)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``,
    folder fsync). ``mode``: the file's permission bits (e.g. ``0o600``), set before any byte is
    written; default: those of a new file (``0o666`` less the umask). Creates missing parent
    folders. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _DEFAULT_MODE if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", mode: int | None = None) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      default: Any = None) -> Path:
    """:func:`atomic_write_text` of ``data`` as JSON (``indent``, ``sort_keys``, ``default`` as in
    :func:`json.dumps`) with a final newline."""
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """For a writer that writes a file itself (``savefig``, ``PIL.Image.save``, Keras
    ``save_weights``): yields a temporary path in ``path``'s folder that keeps ``path``'s
    suffixes (writers pick the format from them, e.g. ``.png``, ``.weights.h5``); when the block
    succeeds, the file is fsynced and renamed onto ``path`` (then the folder fsynced); when it
    fails, the temporary file is removed and ``path`` is untouched.

        with atomic_output(out / "plot.png") as tmp:
            fig.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.removesuffix(suffix)}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _DEFAULT_MODE if mode is None else mode)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sha256_file(path: str | os.PathLike, chunk: int | None = None, entered: threading.Event | None = None) -> str:
    """Hex sha256 of a file's bytes, hashed straight from a memory map (no copies) in one
    hashlib call, or ``chunk`` bytes per call. hashlib releases the GIL for each call, so files
    hashed by several threads (:func:`sha256_files`) hash in parallel, and a call once begun goes
    on while another thread runs C code that holds the GIL (hnswlib's ``load_index``).
    ``entered``: set just before the first call (not for an empty file)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:  # an empty file cannot be mapped
            return h.hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m, memoryview(m) as view:
            step = chunk or len(view)
            if entered is not None:
                entered.set()
            for start in range(0, len(view), step):
                h.update(view[start : start + step])
    return h.hexdigest()


class BackgroundSha256:
    """The sha256 of files, hashed by background threads while the caller goes on
    (:meth:`result` waits for them): e.g. :meth:`Catalog.open
    <lookserve.client.catalog.directory.Catalog.open>` loads its HNSW indexes meanwhile and
    refuses the catalog after, when a file does not match. The largest files are hashed first,
    one per thread, and the constructor returns once each thread is inside its first hashlib call,
    which then runs to its end without the GIL, whatever the caller runs."""

    def __init__(self, paths: Iterable[str | os.PathLike], threads: int | None = None) -> None:
        files = sorted({Path(p) for p in paths}, key=lambda p: -p.stat().st_size)
        workers = max(1, min(threads or min(4, os.cpu_count() or 1), len(files)))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sha256")
        entered = [threading.Event() for _ in files[:workers]]
        self._futures = {p: self._pool.submit(self._one, p, entered[i] if i < workers else None)
                         for i, p in enumerate(files)}
        self._pool.shutdown(wait=False)
        for event in entered:
            event.wait(1.0)  # bounded: a thread that fails before hashing sets nothing

    @staticmethod
    def _one(path: Path, entered: threading.Event | None) -> tuple[str, int]:
        try:
            return sha256_file(path, entered=entered), path.stat().st_size
        finally:
            if entered is not None:
                entered.set()

    def result(self) -> dict[Path, tuple[str, int]]:
        """{path: (hex sha256, bytes)}; the first error of a thread (e.g. a missing file) is raised."""
        return {p: f.result() for p, f in self._futures.items()}


def sha256_files(paths: Iterable[str | os.PathLike], threads: int | None = None) -> dict[Path, tuple[str, int]]:
    """{path: (hex sha256, bytes)} of each file, hashed by ``threads`` threads at once (default:
    the CPUs, at most 4; see :class:`BackgroundSha256`)."""
    return BackgroundSha256(paths, threads).result()


__all__ = ["BackgroundSha256", "atomic_output", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir", "sha256_file",
           "sha256_files"]
