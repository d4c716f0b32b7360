"""A catalog root: one catalog per embedder version (``catalog-v1``, ``catalog-v2``, …) and a
``current`` symlink naming the one clients use, replaced atomically (:func:`set_current`).
:class:`~lookserve.client.catalog.watcher.CatalogWatcher` follows that pointer."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from lookserve.client.catalog.store import MANIFEST
from lookserve.errors import CatalogError
from lookserve.fsutil import fsync_dir

log = logging.getLogger(__name__)

CURRENT = "current"  # in a catalog root: symlink to the catalog clients use


def catalog_dir_name(version: str | int) -> str:
    """The directory of the catalog built with embedder version ``version`` in a catalog root."""
    return f"catalog-v{version}"


def resolve_catalog(path: str | os.PathLike) -> Path:
    """A catalog directory from a path: a symlink is resolved; a catalog root (no manifest, a
    ``current`` pointer) gives the catalog its pointer names; anything else is returned as is."""
    path = Path(path)
    if path.is_symlink():
        return path.resolve()
    if not (path / MANIFEST).exists() and (path / CURRENT).is_symlink():
        return read_current(path)
    return path


def read_current(root: str | os.PathLike) -> Path:
    """The catalog directory ``<root>/current`` points to (one readlink: cheap enough per request)."""
    root = Path(root)
    try:
        name = os.readlink(root / CURRENT)
    except FileNotFoundError as e:
        raise CatalogError(
            f"{root} has no {CURRENT} pointer; point it at a catalog with lookserve models catalog-current "
            f"--catalog-root {root} NAME"
        ) from e
    except OSError as e:
        raise CatalogError(f"{root / CURRENT} is not a symlink to a catalog: {e}") from e
    target = Path(name) if os.path.isabs(name) else root / name
    if not (target / MANIFEST).is_file():
        raise CatalogError(f"{root / CURRENT} points to {target}, which is not a catalog ({MANIFEST} is missing)")
    return target


def set_current(root: str | os.PathLike, name: str | os.PathLike) -> Path:
    """Point ``<root>/current`` at the catalog ``name`` (a directory inside ``root``), atomically:
    a new symlink is made beside it and renamed over the old one, so a reader sees the old
    target or the new one, never neither. Returns the catalog directory."""
    root = Path(root)
    name = Path(name)
    if name.is_absolute() or len(name.parts) != 1:
        if name.parent.resolve() != root.resolve():
            raise CatalogError(f"{name} is not inside the catalog root {root}; the pointer names a sibling directory")
        name = Path(name.name)
    target = root / name
    if not (target / MANIFEST).is_file():
        raise CatalogError(f"{target} is not a catalog ({MANIFEST} is missing); build it first")
    tmp = root / f".{CURRENT}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(str(name), tmp)
    try:
        os.replace(tmp, root / CURRENT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(root)
    log.info("catalog pointer %s now names %s", root / CURRENT, name)
    return target
