"""The catalog address: which backend opens a catalog.

An address is a path — a catalog directory, or a catalog root whose ``current`` symlink
names one — written plainly or as ``file://PATH``; or ``milvus://HOST:PORT/<collection-or-alias>``,
a catalog on a Milvus server (:mod:`~lookserve.client.catalog.milvus`, the ``[milvus]`` extra,
imported only when such an address is opened). Any other ``scheme://`` is refused by name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lookserve.client.catalog.backend import CatalogBackend
from lookserve.client.catalog.directory import Catalog, open_for_client
from lookserve.client.catalog.root import CURRENT
from lookserve.client.catalog.watcher import CatalogRef, CatalogWatcher
from lookserve.errors import ConfigError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
MILVUS_SCHEMES = ("milvus", "milvus+https")
SCHEMES = ("file", *MILVUS_SCHEMES)  # besides a plain path


def is_milvus_address(address: object) -> bool:
    """Whether ``address`` names a catalog on a Milvus server (``milvus://…``)."""
    match = _SCHEME.match(address) if isinstance(address, str) else None
    return match is not None and match.group(1).lower() in MILVUS_SCHEMES


def milvus_backend():
    """The Milvus backend module (lazily: it needs the [milvus] extra)."""
    try:
        from lookserve.client.catalog import milvus
    except ImportError as e:
        raise ConfigError(f"milvus:// catalogs need the Milvus client ({e}); install it with pip install 'lookserve[milvus]'") from e
    return milvus


def catalog_path(address: str | os.PathLike) -> Path:
    """The directory a path address names; :class:`ConfigError` for an address of another backend."""
    if isinstance(address, os.PathLike):
        return Path(address)
    match = _SCHEME.match(str(address))
    if match is None:
        return Path(address)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "file":
        if not rest:
            raise ConfigError(f"catalog address {address!r} names no directory; expected file:///path/to/catalog")
        return Path(rest)
    if scheme in MILVUS_SCHEMES:
        raise ConfigError(f"catalog address {address!r} is a catalog on a Milvus server, not a directory: this command "
                          "needs a catalog directory (open_catalog opens either)")
    raise ConfigError(
        f"catalog address {address!r}: scheme {scheme!r} is not supported; this lookserve opens catalog "
        "directories (a path, or file://PATH)"
    )


def open_catalog(address: str | os.PathLike, client=None, model_repository: str | os.PathLike | None = None,
                 verify: bool = True) -> CatalogBackend:
    """Open the catalog at ``address`` and verify it.

    With ``client`` (a :class:`~lookserve.client.core.TritonClient`): also check that its server
    serves the catalog's embedder version (and, with ``model_repository``, the model file's
    checksum) — :func:`~lookserve.client.catalog.directory.open_for_client`; without:
    :meth:`~lookserve.client.catalog.directory.Catalog.open`. A ``milvus://`` address opens a
    :class:`~lookserve.client.catalog.milvus.MilvusCatalog` with the same checks.
    """
    if is_milvus_address(address):
        milvus = milvus_backend()
        if client is not None:
            return milvus.open_milvus_for_client(str(address), client, model_repository)
        return milvus.MilvusCatalog.open(str(address))
    path = catalog_path(address)
    if client is not None:
        return open_for_client(path, client, model_repository, verify=verify)
    return Catalog.open(path, verify=verify)


def follow_catalog(address: str | os.PathLike, client=None, interval_s: float = 0.5,
                   model_repository: str | os.PathLike | None = None):
    """A :class:`~lookserve.client.catalog.watcher.CatalogRef` that follows the address's pointer
    when it has one: a catalog root's ``current`` symlink (a
    :class:`~lookserve.client.catalog.watcher.CatalogWatcher`) or a Milvus alias (a
    :class:`~lookserve.client.catalog.milvus.MilvusCatalogRef`); a fixed reference otherwise."""
    if is_milvus_address(address):
        return milvus_backend().MilvusCatalogRef(str(address), client, interval_s, model_repository=model_repository)
    path = catalog_path(address)
    if (path / CURRENT).is_symlink():
        return CatalogWatcher(path, client, interval_s, model_repository)
    return CatalogRef(open_catalog(path, client, model_repository))


__all__ = ["MILVUS_SCHEMES", "SCHEMES", "catalog_path", "follow_catalog", "is_milvus_address", "milvus_backend", "open_catalog"]
