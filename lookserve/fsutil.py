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
import os
import tempfile
from collections.abc import Iterator
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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


__all__ = ["atomic_output", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir", "sha256_file"]
