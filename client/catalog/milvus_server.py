"""The embedded Milvus server for development and tests, reachable on 127.0.0.1 only.

``pip install milvus==2.3.5`` ships the real Milvus standalone binary (etcd, rocksmq, the
coordinators and knowhere's HNSW in one process). Its gRPC and HTTP servers listen on
``":PORT"`` — every interface — and 2.3.5 has no setting that changes that: the ``<role>.ip``
keys of its ``milvus.yaml`` only set the address a component *advertises* (we set them to
127.0.0.1 all the same). So :func:`start_milvus` runs it in a **private network namespace**
whose only interface is ``lo``: nothing it opens is reachable from outside that namespace. A
small supervisor process (this module's file run as a script) binds the one public port on the
host's 127.0.0.1 *before* it enters the namespace, starts Milvus inside, and relays each
connection to Milvus's proxy port (19530 inside the namespace). ``ss -ltnp`` on the host shows
that one socket, on 127.0.0.1.

::

    with start_milvus("/tmp/milvus-dev") as server:
        MilvusClient(uri=server.uri)          # server.address == "127.0.0.1:PORT"

Creating a network namespace needs root or unprivileged user namespaces (the supervisor tries
both); without either, :func:`start_milvus` fails with :class:`~lookserve.errors.CatalogUnavailable`
naming the cause, rather than listening on every interface.

The 250 MB of binaries the wheel unpacks are unpacked once into
``$XDG_CACHE_HOME/lookserve/milvus-<version>/bin`` (under a lock) and linked into each data
directory. A stopped server can be started again on the same data directory and port
(:meth:`EmbeddedMilvus.start`): its collections are still there and clients that kept their
address reconnect.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from lookserve.errors import CatalogUnavailable
from lookserve.fsutil import atomic_write_json

log = logging.getLogger(__name__)

MILVUS_VERSION = "2.3.5"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
MILVUS_GRACE_S = 5.0  # SIGTERM, then SIGKILL: inserts are in its write-ahead log (rocksmq) before they are acknowledged
SESSION_TTL_S = 5
READY_FILE = "lookserve-milvus.json"
SUPERVISOR_LOG = "lookserve-milvus-supervisor.log"

# The components of a standalone server: each advertises 127.0.0.1 (see the module docstring).
_ROLES = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_PR_SET_PDEATHSIG = 1
_SIOCGIFFLAGS, _SIOCSIFFLAGS = 0x8913, 0x8914
_IFF_UP, _IFF_RUNNING = 0x1, 0x40


class EmbeddedMilvus:
    """A Milvus standalone server on ``127.0.0.1:port`` with its data in ``data_dir``.

    Made by :func:`start_milvus`; a context manager that stops the server on exit.
    """

    def __init__(self, data_dir: str | os.PathLike, port: int = 0, start_timeout_s: float = START_TIMEOUT_S):
        self.data_dir = Path(data_dir).resolve()
        self.port = int(port)
        self.start_timeout_s = float(start_timeout_s)
        self._proc: subprocess.Popen | None = None
        self.milvus_pid: int | None = None

    # -- where ------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, the gRPC address clients connect to."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def uri(self) -> str:
        """The address as pymilvus's ``uri`` (``http://127.0.0.1:PORT``)."""
        return f"http://{self.address}"

    @property
    def catalog_address(self) -> str:
        """``milvus://127.0.0.1:PORT`` (append ``/<collection-or-alias>`` to name a catalog)."""
        return f"milvus://{self.address}"

    @property
    def pids(self) -> tuple[int, ...]:
        """The supervisor's and Milvus's process ids (empty when stopped)."""
        if self._proc is None:
            return ()
        return tuple(p for p in (self._proc.pid, self.milvus_pid) if p)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- life -------------------------------------------------------------------------------
    def start(self) -> EmbeddedMilvus:
        """Start the server (again: same data, same port) and wait until it accepts clients."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _link_binaries(self.data_dir)
        ready = self.data_dir / READY_FILE
        ready.unlink(missing_ok=True)
        # the file itself, not `-m`: importing the catalog package (hnswlib, numpy, …) would cost the
        # supervisor seconds on a busy machine, at every start; -P keeps this file's folder (which
        # holds milvus.py, the backend) off sys.path, so `import milvus` finds the server's wheel
        cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--data", str(self.data_dir), "--port", str(self.port),
               "--ready", str(ready), "--timeout", str(self.start_timeout_s)]
        with open(self.data_dir / SUPERVISOR_LOG, "ab") as out:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s + 10
        while time.monotonic() < deadline:
            if ready.exists():
                info = json.loads(ready.read_text())
                self.port, self.milvus_pid = int(info["port"]), int(info["milvus_pid"])
                log.info("milvus %s started on %s (data %s)", MILVUS_VERSION, self.address, self.data_dir)
                return self
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise CatalogUnavailable(f"the embedded Milvus server did not start (exit {code}): "
                                         f"{self._log_tail()}")
            time.sleep(0.1)
        self.stop()
        raise CatalogUnavailable(f"the embedded Milvus server was not ready within {self.start_timeout_s:.0f} s: "
                                 f"{self._log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, kill: bool = False) -> None:
        """Stop the server (its data stays in ``data_dir``); a no-op when it is not running.
        ``kill``: SIGKILL Milvus and the relay at once, as a crash would."""
        proc, self._proc, self.milvus_pid = self._proc, None, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("milvus supervisor %d did not stop in %.0f s; killing it", proc.pid, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def _log_tail(self, lines: int = 15) -> str:
        path = self.data_dir / SUPERVISOR_LOG
        try:
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return f"(no log at {path})"
        return " | ".join(text) if text else f"(empty log {path})"

    def __enter__(self) -> EmbeddedMilvus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedMilvus({self.address}, data={self.data_dir}, running={self.running})"


def start_milvus(data_dir: str | os.PathLike, *, port: int = 0,
                 start_timeout_s: float = START_TIMEOUT_S) -> EmbeddedMilvus:
    """Start an embedded Milvus with its data in ``data_dir``, on ``127.0.0.1:port`` (0: any free
    port); returns it running. Use as a context manager, or call :meth:`EmbeddedMilvus.stop`."""
    return EmbeddedMilvus(data_dir, port, start_timeout_s).start()


# --- the binaries, unpacked once ---------------------------------------------------------
def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lookserve" / f"milvus-{MILVUS_VERSION}"


def _link_binaries(data_dir: Path) -> None:
    """Unpack the wheel's binaries into the cache (once, under a lock); link ``data_dir/bin`` to them."""
    import milvus

    if milvus.__version__ != MILVUS_VERSION:
        raise CatalogUnavailable(f"milvus=={milvus.__version__} is installed; lookserve runs milvus=={MILVUS_VERSION}")
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / f".unpacked-{milvus.__version__}"
    if not stamp.exists():  # checking the markers costs an md5 of ~100 MB: once per cache, not per start
        with open(root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            milvus._initialize_data_files(str(root))  # skips files whose checksum marker matches
            stamp.touch()
    link = data_dir / "bin"
    if link.is_symlink() and link.resolve() == (root / "bin").resolve():
        return
    if link.exists() and not link.is_symlink():
        return  # a data dir made by the milvus wheel itself: it unpacked its own copy
    link.unlink(missing_ok=True)
    link.symlink_to(root / "bin", target_is_directory=True)


# --- the supervisor (this file run as a script) ------------------------------------------------
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _enter_private_network() -> None:
    """Move this process into a new network namespace (root: directly; else via a user namespace)."""
    libc = _libc()
    if libc.unshare(_CLONE_NEWNET) == 0:
        return
    first = ctypes.get_errno()
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot create a private network namespace for Milvus (unshare: {os.strerror(first)}; "
                           f"with a user namespace: {os.strerror(err)}); Milvus 2.3.5 can only listen on every "
                           "interface, so it is not started")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


def _loopback_up() -> None:
    """``ip link set lo up`` in the current network namespace, by ioctl."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP | _IFF_RUNNING))


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class _Relay:
    """Accepts on the host's 127.0.0.1:PORT, relays each connection to Milvus inside the namespace."""

    def __init__(self, listener: socket.socket, target_port: int):
        self.listener, self.target_port = listener, target_port
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()

    def serve(self, alive) -> None:
        self.listener.settimeout(0.2)
        while alive():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
            except OSError as e:
                log.warning("relay: milvus proxy port %d refused: %s", self.target_port, e)
                conn.close()
                continue
            upstream.settimeout(None)
            conn.settimeout(None)
            for s in (conn, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.open.update((conn, upstream))
            threading.Thread(target=self._pair, args=(conn, upstream), daemon=True).start()

    def _pair(self, a: socket.socket, b: socket.socket) -> None:
        back = threading.Thread(target=_pump, args=(b, a), daemon=True)
        back.start()
        _pump(a, b)
        back.join()
        with self.lock:
            self.open.difference_update((a, b))
        a.close()
        b.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            for s in list(self.open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _stop_milvus(proc: subprocess.Popen, timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _supervise(data_dir: Path, port: int, ready: Path, timeout_s: float) -> int:
    from milvus import MilvusServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # die with whoever started us
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((LOOPBACK, port))
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", LOOPBACK, port, e)
        return 2
    listener.listen(128)
    port = listener.getsockname()[1]
    try:
        _enter_private_network()
        _loopback_up()
    except OSError as e:
        log.error("%s", e.strerror or e)
        return 2

    server = MilvusServer(wait_for_started=False)
    server.set_base_dir(str(data_dir))
    for role in _ROLES:
        server.config.set(f"{role}.ip", LOOPBACK)
    # A component that was killed leaves its etcd session behind until the lease expires; the
    # restarted server waits for it (30 s by default) before it serves the collections again.
    server.config.set("common.session.ttl", SESSION_TTL_S)
    server.start()  # inside the namespace: every port it chooses is free here
    proc = server.server_proc
    log.info("milvus pid %d; waiting for it (proxy port %d inside the namespace)", proc.pid, server.listen_port)
    try:
        server.wait_started(timeout=int(timeout_s * 1000))
    except (TimeoutError, RuntimeError) as e:
        server.server_proc = None
        _stop_milvus(proc, 5)
        log.error("milvus did not become healthy: %s (logs in %s)", e, data_dir / "logs")
        return 3
    server.server_proc = None  # we stop it ourselves, more patiently than the wheel's 1 s

    relay = _Relay(listener, server.listen_port)
    atomic_write_json(ready, {"port": port, "milvus_pid": proc.pid, "data_dir": str(data_dir)})
    log.info("milvus ready on %s:%d", LOOPBACK, port)
    relay_thread = threading.Thread(target=relay.serve, args=(lambda: not stopping.is_set(),), daemon=True)
    relay_thread.start()
    code = 0
    while not stopping.wait(0.5):
        if proc.poll() is not None:
            log.error("milvus exited on its own (code %s)", proc.returncode)
            code = 4
            break
    relay.close()
    ready.unlink(missing_ok=True)
    _stop_milvus(proc, MILVUS_GRACE_S)
    for fd in server.proc_fds.values():
        fd.close()
    log.info("milvus stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="lookserve's embedded-Milvus supervisor (internal)")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready", required=True, type=Path)
    parser.add_argument("--timeout", type=float, default=START_TIMEOUT_S)
    args = parser.parse_args(argv)
    try:
        return _supervise(args.data, args.port, args.ready, args.timeout)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            log.error("port %d is in use", args.port)
            return 2
        raise


__all__ = ["LOOPBACK", "MILVUS_VERSION", "EmbeddedMilvus", "start_milvus"]

if __name__ == "__main__":
    sys.exit(main())
