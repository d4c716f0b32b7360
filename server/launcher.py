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
a key that :class:`lookserve.client.core.TritonClient` sends as a header and never logs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lookserve.client.core import RESTRICTED_KEY_NAME
from lookserve.errors import ServerStartError

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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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
        if o.model_config_name:
            args.append(f"--model-config-name={o.model_config_name}")
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
        import grpc
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

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
                    raise ServerStartError(
                        f"tritonserver exited with code {self._process.returncode} during start-up; "
                        f"log {self.log_file}:\n{self.log_tail()}"
                    )
                try:
                    if client.is_server_live(client_timeout=1.0) and client.is_server_ready(client_timeout=1.0):
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
        if self._own_work_dir and self.options.log_file is None:
            log.debug("server log kept at %s", self.log_file)
        return code

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (fault tests)."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(10)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
