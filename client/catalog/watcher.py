"""Swapping catalogs under running clients: :class:`CatalogRef` (a reference readers take once
per request) and :class:`CatalogWatcher`, a reference that follows a catalog root's ``current``
pointer, so a running client picks up a new (embedder version, index) pair without a restart
(see :mod:`lookserve.client.swap`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from lookserve.client.catalog.directory import Catalog, open_for_client
from lookserve.client.catalog.root import read_current
from lookserve.client.catalog.store import MANIFEST
from lookserve.errors import CatalogError, ConfigError, InvalidInputError, LookserveError

log = logging.getLogger(__name__)


class CatalogRef:
    """A swappable reference to the current catalog: readers take :meth:`get` once per request
    and keep using that object; :meth:`swap` publishes a new one without touching the old."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._lock = threading.Lock()

    def get(self) -> Catalog:
        return self._catalog

    def swap(self, catalog: Catalog) -> Catalog:
        with self._lock:
            old, self._catalog = self._catalog, catalog
        return old

    def refresh(self) -> Catalog:
        """The newest catalog the reference knows of (a :class:`CatalogWatcher` looks again now)."""
        return self.get()


class CatalogWatcher(CatalogRef):
    """A :class:`CatalogRef` that follows a catalog root's ``current`` pointer.

    Every :meth:`get` (once per request) looks at the pointer when ``interval_s`` has passed
    since the last look — one ``readlink``. When it names another catalog, one thread opens and
    verifies it (with ``client``: also that the server serves its embedder version) while the
    others keep using the old one, then swaps it in; requests in flight finish on the catalog
    they started with. A catalog that fails to open is logged and skipped (the old one keeps
    serving) until its manifest changes.

        watcher = CatalogWatcher("catalogs", client)
        pipeline = LookPipeline(client, watcher)   # picks up lookserve models swap-embedder
    """

    def __init__(self, root: str | os.PathLike, client=None, interval_s: float = 0.5,
                 model_repository: str | os.PathLike | None = None, verify: bool = True,
                 on_swap=None) -> None:
        if interval_s < 0:
            raise ConfigError(f"interval_s must be ≥ 0, got {interval_s}")
        self.root = Path(root)
        self.client = client
        self.interval_s = interval_s
        self.model_repository = model_repository
        self.verify = verify
        self.on_swap = on_swap  # called with (old, new) catalogs after a swap
        self._target = read_current(self.root)
        super().__init__(self._open(self._target))
        self._poll_lock = threading.Lock()
        self._checked = time.monotonic()
        self._bad: tuple[str, float] | None = None
        self.swaps = 0

    def _open(self, target: Path) -> Catalog:
        if self.client is not None:
            return open_for_client(target, self.client, self.model_repository, verify=self.verify)
        return Catalog.open(target, verify=self.verify)

    def get(self) -> Catalog:
        if time.monotonic() - self._checked >= self.interval_s:
            self.poll()
        return self._catalog

    def refresh(self) -> Catalog:
        self.poll(blocking=True)
        return self._catalog

    def poll(self, blocking: bool = False) -> bool:
        """Look at the pointer now; True when a new catalog was swapped in."""
        if not self._poll_lock.acquire(blocking=blocking):
            return False  # another thread is looking (or opening); use the current catalog
        try:
            self._checked = time.monotonic()
            try:
                target = read_current(self.root)
            except CatalogError as e:
                log.warning("catalog pointer unreadable, keeping %s: %s", self._catalog.path, e)
                return False
            if target == self._target:
                return False
            try:
                stamp = (str(target), (target / MANIFEST).stat().st_mtime)
            except OSError:
                return False
            if stamp == self._bad:
                return False
            try:
                catalog = self._open(target)
            except (CatalogError, InvalidInputError) as e:
                self._bad = stamp
                log.error("the catalog pointer names %s, which cannot serve: %s; keeping %s", target, e, self._catalog.path)
                return False
            except LookserveError as e:  # a server error must not break the requests using the old catalog
                log.warning("could not check %s against the server (%s); will look again", target, e)
                return False
            old = self.swap(catalog)
            self._target = target
            self._bad = None
            self.swaps += 1
            log.info("catalog swapped: %s (embedder v%s) -> %s (embedder v%s)", old.path, old.embedder.version,
                     catalog.path, catalog.embedder.version)
            if self.on_swap is not None:
                self.on_swap(old, catalog)
            return True
        finally:
            self._poll_lock.release()
