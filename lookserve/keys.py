"""The repository key: its gRPC header name, where it is kept, and how it is read and written.

``lookserve serve`` restricts Triton's ``model-repository``, ``shared-memory``, ``logging`` and
``trace`` protocols with a key (:data:`RESTRICTED_KEY_NAME`); clients send it in the
:data:`RESTRICTED_HEADER` gRPC header. Both the server (:mod:`lookserve.server`) and the client
(:mod:`lookserve.client`) import this module, so neither imports the other for it.

Key files are kept **per server address** (:func:`key_file_for`): two servers on one machine never
share one. A running ``lookserve serve`` holds an exclusive lock on its key file
(:class:`KeyFile`), so a second server refuses to overwrite the key of a live one.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from lookserve.errors import ServerStartError

#: The key name given to Triton's ``--grpc-restricted-protocol``; Triton expects the key in the
#: header ``triton-grpc-protocol-<name>``.
RESTRICTED_KEY_NAME = "lookserve-admin-key"
RESTRICTED_HEADER = f"triton-grpc-protocol-{RESTRICTED_KEY_NAME}"

#: Environment variable that carries the key (wins over any key file).
KEY_ENVVAR = "LOOKSERVE_REPOSITORY_KEY"

#: Folder of the per-address key files (relative to the working directory).
KEY_DIR = Path(".lookserve")

_LOCAL_HOSTS = ("", "0.0.0.0", "localhost", "::", "[::]")


def key_file_for(url: str, key_dir: Path = KEY_DIR) -> Path:
    """The default key file of the server at ``url`` (``host:port``): ``.lookserve/<host>-<port>.key``.

    ``localhost``, ``0.0.0.0`` and an empty host all name ``127.0.0.1``, so a server bound to
    every address and a client of ``localhost`` agree on the file.
    """
    host, _, port = url.rpartition(":")
    host = "127.0.0.1" if host in _LOCAL_HOSTS else host.strip("[]")
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    return key_dir / f"{safe}-{port}.key"


def read_key(key_file: Path | None = None, url: str | None = None) -> str | None:
    """The repository key: ``LOOKSERVE_REPOSITORY_KEY``, else ``key_file``, else the key file of
    ``url`` (:func:`key_file_for`); None when there is none.

    Replicas share one key: for a list of addresses ``a:p1,b:p2`` (or ``dns:///host:port``) it is
    the first key file found among theirs (``lookserve serve --replicas`` writes one per address)."""
    if os.environ.get(KEY_ENVVAR):
        return os.environ[KEY_ENVVAR]
    if key_file is not None:
        paths = [Path(key_file)]
    else:
        paths = [key_file_for(u.strip()) for u in url.removeprefix("dns:///").split(",")] if url else []
    for path in paths:
        try:
            key = path.read_text().strip()
        except FileNotFoundError:
            continue
        if key:
            return key
    return None


class KeyFile:
    """A key file claimed by one running server: ``claim()`` locks it (or refuses), ``write()`` writes
    the key readable by the owner only (0600), ``release()`` (or process exit) unlocks it.

    The lock is an ``flock`` on the file itself, so it dies with the process that holds it: a key
    file left by a server that crashed is simply claimed again.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._created = False  # claim() made the file and write() never filled it: release() removes it

    def claim(self) -> KeyFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, stat.S_IRUSR | stat.S_IWUSR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise ServerStartError(
                f"key file {self.path} belongs to a running lookserve serve; its key is left as it is. "
                "Stop that server first, or give this one another --key-file"
            ) from e
        self._fd = fd
        self._created = not existed
        return self

    def write(self, key: str) -> None:
        if self._fd is None:
            raise RuntimeError("claim() the key file before writing it")
        os.fchmod(self._fd, stat.S_IRUSR | stat.S_IWUSR)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, key.encode(), 0)
        os.fsync(self._fd)
        self._created = False

    def release(self) -> None:
        if self._fd is not None:
            if self._created:  # the server never started: leave no empty key file behind
                self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> KeyFile:
        return self.claim()

    def __exit__(self, *exc) -> None:
        self.release()
