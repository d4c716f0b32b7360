"""Start and stop a real NVIDIA Triton Inference Server without Docker.

The ``tritonserver`` binary comes from the ``nvidia-pytriton`` wheel. lookserve assembles a
backend directory for it::

    <work_dir>/backends/python/        libtriton_python.so, triton_python_backend_utils.py,
                                       triton_python_backend_stub (built for this Python)
    <work_dir>/backends/onnxruntime/   model.py  (lookserve's python-based "onnxruntime" backend)

so that a ``config.pbtxt`` naming ``backend: "onnxruntime"`` loads unchanged here and on the NGC
container (where Triton's native onnxruntime backend takes it).

Defaults are the safe ones: bind 127.0.0.1, explicit model control, HTTP and metrics off, and the
``model-repository``, ``shared-memory``, ``logging`` and ``trace`` gRPC protocols restricted with
a key (:mod:`lookserve.keys`) that :class:`lookserve.client.core.TritonClient` sends as a header
and never logs.

``start()`` is ready only when *this* process is: the ports are checked free before it starts,
and readiness counts only while the child is alive and itself listens on the gRPC port (another
server answering on that port is never taken for ours). When the child exits during start-up,
the error lines of Triton's log are shown. A temp work dir is removed after a clean stop.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from lookserve.errors import ConfigError, ServerStartError
from lookserve.keys import RESTRICTED_KEY_NAME
from lookserve.modelconfig import ModelConfig

log = logging.getLogger(__name__)

RESTRICTED_PROTOCOLS = ("model-repository", "shared-memory", "logging", "trace")
_BACKEND_SOURCE = Path(__file__).parent / "backends" / "onnxruntime" / "model.py"


@dataclass(frozen=True)
class ServerOptions:
    """Everything ``lookserve serve`` can set. Ports of 0 mean "pick a free port"."""

    model_repository: Path
    grpc_address: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int | None = None  # None: HTTP endpoint off
    metrics_port: int | None = None  # None: metrics endpoint off
    model_control: str = "explicit"  # "explicit" or "poll" or "none"
    load_models: tuple[str, ...] = ()  # explicit mode: models to load at start ("*" = all)
    model_config_name: str | None = None  # e.g. "gpu" picks <model>/configs/gpu.pbtxt
    repository_key: str | None = None  # None: a random key per start
    restrict_protocols: bool = True
    exit_timeout_s: int = 30
    ready_timeout_s: float = 120.0
    log_file: Path | None = None  # None: <work_dir>/tritonserver.log
    log_verbose: int = 0
    work_dir: Path | None = None  # None: a temp dir, removed at stop
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    ssl_root_cert: Path | None = None
    extra_args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.model_control not in ("explicit", "poll", "none"):
            raise ValueError(f"model_control must be explicit, poll or none, not {self.model_control!r}")
        if bool(self.ssl_cert) != bool(self.ssl_key):
            raise ValueError("TLS needs both ssl_cert and ssl_key")


def cuda_devices_visible() -> bool:
    """True when this machine shows an NVIDIA device node (what Triton needs for KIND_GPU)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def gpu_config_fallback(repository: Path, config_name: str | None) -> str | None:
    """The ``--model-config-name`` to pass: ``config_name``, or None (each model's config.pbtxt)
    when a model's ``configs/<config_name>.pbtxt`` asks for KIND_GPU on a machine without a GPU
    (Triton would refuse to load it); the fallback is logged as a warning naming the models."""
    if not config_name or cuda_devices_visible():
        return config_name

    gpu_models = []
    for variant in sorted(Path(repository).glob(f"*/configs/{config_name}.pbtxt")):
        try:
            config = ModelConfig.read(variant)
        except ConfigError:
            continue  # Triton reports a broken config itself
        if any(g.kind == "KIND_GPU" for g in config.instance_groups):
            gpu_models.append(variant.parent.parent.name)
    if not gpu_models:
        return config_name
    log.warning("model config %r asks for KIND_GPU (%s) but no GPU is visible (no /dev/nvidia*): "
                "falling back to each model's config.pbtxt (CPU)", config_name, ", ".join(gpu_models))
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int, what: str = "gRPC") -> None:
    """Raise ServerStartError naming the port when something already listens on ``host:port``.

    The probe binds with ``SO_REUSEADDR`` (as a server does), so connections of a server that
    just stopped (TIME_WAIT) do not count; only a live listener does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise ServerStartError(f"cannot bind {what} port {host}:{port}: {e.strerror}") from e
            raise ServerStartError(
                f"{what} port {host}:{port} is already in use (another tritonserver or program listens there); "
                "stop it, or pick another port (0 picks a free one)"
            ) from e


#: Triton's log lines of errors: ``E1201 20:10:00.123456 1234 file.cc:12] message``.
_LOG_ERROR = re.compile(r"^E\d{4} [\d:.]+ +\d+ [^\]]*\] ?(.*)$")


#: Error lines Triton logs on every start of a machine without a GPU: not a cause.
_LOG_NOISE = ("CudaDriverHelper has not been initialized",)


def log_errors(text: str) -> list[str]:
    """The messages of the error lines of a Triton log, in order: first line of each, unquoted."""
    found = []
    for line in text.splitlines():
        m = _LOG_ERROR.match(line)
        if not m:
            continue
        message = m.group(1).strip()
        if len(message) > 1 and message[0] == message[-1] == '"':
            message = message[1:-1]
        message = message.split("\\n")[0].strip()  # Triton escapes a multi-line message as \n
        if message and not any(noise in message for noise in _LOG_NOISE):
            found.append(message)
    return found


def pytriton_root() -> Path:
    """The ``tritonserver`` folder of the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError(
            "nvidia-pytriton is not installed: install lookserve with the server extra "
            "(pip install 'lookserve[server]') to get the tritonserver binary"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerStartError(f"no tritonserver binary under {root}; reinstall nvidia-pytriton")
    return root


def _libs_dir(root: Path) -> Path:
    return root.parent.parent / "nvidia_pytriton.libs"


def assemble_backends(dest: Path) -> Path:
    """Build the backend directory Triton is pointed at; returns it."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerStartError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (
        root / "backends" / "python" / "libtriton_python.so",
        root / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        shutil.copy2(src, python_dir / src.name)
    ort_dir = dest / "onnxruntime"
    ort_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(_BACKEND_SOURCE, ort_dir / "model.py")
    return dest


class TritonServer:
    """A tritonserver process: ``with TritonServer(options) as server: ...``.

    ``start()`` returns once the server is live and ready (or raises ServerStartError with the
    tail of its log); ``stop()`` sends SIGTERM so in-flight requests finish (up to
    ``exit_timeout_s``), then SIGKILL.
    """

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.repository_key = options.repository_key or secrets.token_urlsafe(24)
        self._process: subprocess.Popen | None = None
        self._own_work_dir = options.work_dir is None
        self.work_dir = Path(options.work_dir or tempfile.mkdtemp(prefix="lookserve-triton-"))
        self.log_file = Path(options.log_file or self.work_dir / "tritonserver.log")
        self.grpc_port = options.grpc_port or free_port(options.grpc_address)
        self.http_port = (options.http_port or free_port()) if options.http_port is not None else None
        self.metrics_port = (options.metrics_port or free_port()) if options.metrics_port is not None else None

    # --- properties -------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        host = "127.0.0.1" if self.options.grpc_address in ("0.0.0.0", "") else self.options.grpc_address
        return f"{host}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def listens_on_grpc_port(self) -> bool:
        """True when this tritonserver process itself listens on its gRPC port."""
        if not self.is_alive():
            return False
        import psutil  # the [server] extra: `lookserve --help` must not need it

        try:
            connections = psutil.Process(self.pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # cannot tell here: the liveness and port checks must do
            log.debug("cannot list the sockets of tritonserver pid %s", self.pid)
            return True
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.grpc_port for c in connections)

    # --- command line -------------------------------------------------------------------
    def command(self) -> list[str]:
        o = self.options
        root = pytriton_root()
        args = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={Path(o.model_repository).resolve()}",
            f"--backend-directory={self.work_dir / 'backends'}",
            f"--grpc-address={o.grpc_address}",
            f"--grpc-port={self.grpc_port}",
            f"--model-control-mode={o.model_control}",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--log-verbose={o.log_verbose}",
            "--strict-readiness=true",
            "--disable-auto-complete-config",
        ]
        if self.http_port is None:
            args.append("--allow-http=false")
        else:
            args += ["--allow-http=true", "--http-address=127.0.0.1", f"--http-port={self.http_port}"]
        if self.metrics_port is None:
            args.append("--allow-metrics=false")
        else:
            args += ["--allow-metrics=true", "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}"]
        if o.model_control == "poll":
            args.append("--repository-poll-secs=2")
        for name in o.load_models:
            args.append(f"--load-model={name}")
        config_name = gpu_config_fallback(Path(o.model_repository), o.model_config_name)
        if config_name:
            args.append(f"--model-config-name={config_name}")
        if o.restrict_protocols:
            args.append(
                f"--grpc-restricted-protocol={','.join(RESTRICTED_PROTOCOLS)}:"
                f"{RESTRICTED_KEY_NAME}={self.repository_key}"
            )
        if o.ssl_cert:
            args += ["--grpc-use-ssl=true", f"--grpc-server-cert={o.ssl_cert}", f"--grpc-server-key={o.ssl_key}"]
            if o.ssl_root_cert:
                args.append(f"--grpc-root-cert={o.ssl_root_cert}")
        args += list(o.extra_args)
        return args

    def _redacted(self, command: list[str]) -> list[str]:
        return [a.replace(self.repository_key, "***") for a in command]

    def _env(self) -> dict[str, str]:
        env = os.environ.copy()
        libs = str(_libs_dir(pytriton_root()))
        env["LD_LIBRARY_PATH"] = f"{libs}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else libs
        # The python backend stub embeds Python; it must find this interpreter's packages
        # (numpy, onnxruntime) — the same environment that runs lookserve.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
        site = [p for p in sys.path if p.endswith("site-packages")]
        if site:
            env["PYTHONPATH"] = os.pathsep.join([*site, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> TritonServer:
        if self.is_alive():
            return self
        try:
            check_port_free(self.options.grpc_address or "0.0.0.0", self.grpc_port, "gRPC")
            for what, port in (("HTTP", self.http_port), ("metrics", self.metrics_port)):
                if port is not None:
                    check_port_free("127.0.0.1", port, what)
        except ServerStartError:
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)  # nothing in it yet
            raise
        assemble_backends(self.work_dir / "backends")
        command = self.command()
        log.info("starting tritonserver: %s", " ".join(self._redacted(command)))
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log_handle:
            self._process = subprocess.Popen(
                command,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it cleanly
            )
        try:
            self.wait_ready(self.options.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("tritonserver ready on %s (pid %d, log %s)", self.grpc_url, self.pid, self.log_file)
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:]).replace(self.repository_key, "***")

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        o = self.options
        client = grpcclient.InferenceServerClient(
            self.grpc_url,
            ssl=bool(o.ssl_cert),
            root_certificates=str(o.ssl_root_cert or o.ssl_cert) if o.ssl_cert else None,
        )
        try:
            while time.monotonic() < deadline:
                if not self.is_alive():
                    raise self._exited_error()
                try:
                    # Ready only when the answer is ours: the child still runs and listens there.
                    if (client.is_server_live(client_timeout=1.0) and client.is_server_ready(client_timeout=1.0)
                            and self.listens_on_grpc_port()):
                        return
                except (InferenceServerException, grpc.RpcError):
                    pass
                time.sleep(0.1)
        finally:
            client.close()
        raise ServerStartError(
            f"tritonserver was not ready on {self.grpc_url} within {timeout_s:.0f} s; "
            f"log {self.log_file}:\n{self.log_tail()}"
        )

    def _exited_error(self) -> ServerStartError:
        try:
            found = log_errors(self.log_file.read_text(errors="replace"))
        except OSError:
            found = []
        code = self._process.returncode
        if found:  # the cause, then where to read more
            cause = "; ".join(found).replace(self.repository_key, "***")
            return ServerStartError(f"tritonserver exited with code {code} during start-up: {cause} (log {self.log_file})")
        return ServerStartError(
            f"tritonserver exited with code {code} during start-up (no error line in its log); "
            f"log {self.log_file}:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, wait for in-flight requests (Triton's exit timeout), then SIGKILL."""
        if self._process is None:
            return None
        timeout = timeout_s if timeout_s is not None else self.options.exit_timeout_s + 10
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop within %.0f s; killing it", timeout)
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(10)
        code = self._process.returncode
        # The python backend stubs are children in the same session: never leave them behind.
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._process = None
        self._clean_work_dir(code)
        return code

    def _clean_work_dir(self, code: int | None) -> None:
        """Remove a work dir lookserve created: all of it after a clean exit (code 0), else all but
        the log (kept for a post-mortem when the log is in it)."""
        if not self._own_work_dir:
            return
        log_inside = self.log_file.parent == self.work_dir
        if code == 0 or not log_inside:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        else:
            shutil.rmtree(self.work_dir / "backends", ignore_errors=True)
            log.warning("tritonserver exited with code %s; its log is kept at %s", code, self.log_file)

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (fault tests)."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(10)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


#: Port step between replicas of ``lookserve serve --replicas`` given a fixed base port
#: (8001, 8011, 8021, ...: the HTTP and metrics ports of one replica stay apart from the next).
REPLICA_PORT_STEP = 10


def replica_options(options: ServerOptions, index: int, replicas: int) -> ServerOptions:
    """The options of replica ``index`` (0-based) of ``replicas``: the same flags, its own ports
    (0 stays "a free one"; a fixed port steps by :data:`REPLICA_PORT_STEP`), its own log file and
    work dir. One replica's options are ``options`` unchanged."""
    if replicas == 1:
        return options

    def port(p: int | None) -> int | None:
        return p if not p else p + REPLICA_PORT_STEP * index

    log_file = options.log_file
    if log_file is not None:
        log_file = log_file.with_name(f"{log_file.stem}-{index}{log_file.suffix}")
    work_dir = options.work_dir / f"replica-{index}" if options.work_dir is not None else None
    return replace(options, grpc_port=port(options.grpc_port), http_port=port(options.http_port),
                   metrics_port=port(options.metrics_port), log_file=log_file, work_dir=work_dir)


class TritonReplicas:
    """``replicas`` tritonserver processes with the same options and one repository key, each on
    its own port with its own log and work dir (:func:`replica_options`).

    ``start()`` starts them one after the other (each with :meth:`TritonServer.start`: port check,
    readiness wait, log errors); when one fails, the ones started are stopped and the error names
    the replica. ``grpc_url`` is the combined address ``127.0.0.1:8001,127.0.0.1:8011,...`` that
    :class:`lookserve.client.core.ClientOptions` balances over. One replica behaves exactly as
    :class:`TritonServer`.
    """

    def __init__(self, options: ServerOptions, replicas: int = 1) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        shared = replace(options, repository_key=options.repository_key or secrets.token_urlsafe(24))
        self.servers = [TritonServer(replica_options(shared, i, replicas)) for i in range(replicas)]
        self.repository_key = self.servers[0].repository_key

    @property
    def grpc_url(self) -> str:
        return ",".join(s.grpc_url for s in self.servers)

    def dead(self) -> list[TritonServer]:
        """The replicas whose process is not running."""
        return [s for s in self.servers if not s.is_alive()]

    def start(self) -> TritonReplicas:
        started: list[TritonServer] = []
        for i, server in enumerate(self.servers):
            try:
                server.start()
            except BaseException as e:
                for other in reversed(started):
                    other.stop()
                if len(self.servers) == 1 or not isinstance(e, ServerStartError):
                    raise
                raise ServerStartError(
                    f"replica {i + 1} of {len(self.servers)} ({server.grpc_url}) did not start, so the "
                    f"{len(started)} started before it were stopped: {e}"
                ) from e
            started.append(server)
        return self

    def stop(self) -> list[int | None]:
        """Stop every replica, all at once (each drains its in-flight requests); their exit codes."""
        with ThreadPoolExecutor(len(self.servers), thread_name_prefix="triton-stop") as pool:
            return list(pool.map(TritonServer.stop, self.servers))

    def __enter__(self) -> TritonReplicas:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
