"""The catalog backend interface: what the look chain, the UI and the CLI need of a catalog.

A :class:`CatalogBackend` is one **immutable catalog version** bound to the embedder that built
it (name, version, model checksum: :attr:`CatalogBackend.embedder`): searches only read, and a
new version replaces an old one by reference
(:class:`~lookserve.client.catalog.watcher.CatalogRef`), never in place. Implementations:

* :class:`~lookserve.client.catalog.directory.Catalog` — a hnswlib catalog directory (the
  default; a path, or a catalog root whose ``current`` symlink names the version clients use);
* :class:`~lookserve.client.catalog.milvus.MilvusCatalog` — a Milvus collection
  (``milvus://HOST:PORT/<collection-or-alias>``: one collection per version behind an alias).

:func:`~lookserve.client.catalog.address.open_catalog` picks the implementation from the
catalog's address. Filters on product attributes arrive as the
``filter`` keyword of :meth:`CatalogBackend.search`, incremental updates as new versions
(:mod:`~lookserve.client.catalog.update`), without changing what callers already use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lookserve.client.catalog.embedder import EmbedderInfo


@dataclass(frozen=True)
class Match:
    """One product found for one query."""

    product_id: int
    similarity: float  # cosine similarity of the best photo of the product
    category: str
    title: str
    image: str
    photo_image: str  # the matching shop photo
    attributes: Mapping[str, Any]

    def to_dict(self) -> dict:
        return {**asdict(self), "attributes": dict(self.attributes)}


@runtime_checkable
class CatalogBackend(Protocol):
    """One catalog version, searchable from many threads at once."""

    @property
    def address(self) -> str:
        """Where the catalog is, in the form :func:`~lookserve.client.catalog.address.open_catalog` takes."""
        ...

    @property
    def version(self) -> str:
        """This catalog version's identity: equal for the same content, different after any change."""
        ...

    @property
    def embedder(self) -> EmbedderInfo:
        """The embedder the catalog was built with; queries must come from the same one."""
        ...

    @property
    def dim(self) -> int:
        """The embedding dimension queries must have."""
        ...

    @property
    def categories(self) -> frozenset[str]:
        """The categories that hold products (searching another one is a :class:`CatalogError`)."""
        ...

    def search(self, category: str, queries: np.ndarray, k: int = 6, filter: str | Any | None = None) -> list[list[Match]]:
        """Per query row (``[n, dim]`` float32, L2-normalised), the top-``k`` products of
        ``category``, best first; a product counts once, with its best photo. ``filter``: a
        filter on product attributes (text or tree, :mod:`~lookserve.client.catalog.filters`);
        the top-``k`` of the products it accepts."""
        ...

    def products(self, ids: Iterable[int]) -> dict[int, dict]:
        """Metadata (id, category, title, image, attributes) of the products with these ids."""
        ...

    def image_path(self, image: str) -> Path | None:
        """Where a stored image name is on this machine (None when it is not local)."""
        ...

    def describe(self) -> dict:
        """What the catalog is, JSON-ready (address, version, embedder, counts, …)."""
        ...


__all__ = ["CatalogBackend", "Match"]
