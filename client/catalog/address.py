"""The catalog address: which backend opens a catalog.

Today an address is a path — a catalog directory, or a catalog root whose ``current`` symlink
names one — written plainly or as ``file://PATH``. Any other ``scheme://`` is refused by name,
so a backend added later (e.g. ``milvus://host:port/<collection-or-alias>``) is one more branch
here, not a change for callers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lookserve.client.catalog.backend import CatalogBackend
from lookserve.client.catalog.directory import Catalog, open_for_client
from lookserve.errors import ConfigError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
SCHEMES = ("file",)  # besides a plain path


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
    :meth:`~lookserve.client.catalog.directory.Catalog.open`.
    """
    path = catalog_path(address)
    if client is not None:
        return open_for_client(path, client, model_repository, verify=verify)
    return Catalog.open(path, verify=verify)


__all__ = ["SCHEMES", "catalog_path", "open_catalog"]
