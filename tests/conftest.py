"""Shared fixtures: real tritonserver processes on free 127.0.0.1 ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lookserve.server.launcher import ServerOptions, TritonServer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def triton_factory(tmp_path: Path) -> Iterator:
    """``triton_factory(repo, models=[...], **ServerOptions) -> TritonServer`` (started).

    Every server started through the factory is stopped after the test, and its log is printed
    when the test failed, so a failure inside Triton is visible in the test report.
    """

    servers: list[TritonServer] = []

    def start(repository: Path, models: list[str] | tuple[str, ...] = (), **options) -> TritonServer:
        options.setdefault("grpc_port", 0)
        options.setdefault("ready_timeout_s", 120.0)
        options.setdefault("exit_timeout_s", 10)
        work_dir = tmp_path / f"triton-{len(servers)}"
        server = TritonServer(
            ServerOptions(model_repository=Path(repository), load_models=tuple(models), work_dir=work_dir, **options)
        )
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def pytest_runtest_makereport(item, call):  # pragma: no cover - reporting only
    if call.when == "call" and call.excinfo is not None and "triton_factory" in getattr(item, "fixturenames", ()):
        logs = sorted(Path(item.funcargs.get("tmp_path", ".")).glob("triton-*/tritonserver.log"))
        for path in logs:
            item.add_report_section("call", f"tritonserver log {path.parent.name}", path.read_text(errors="replace")[-4000:])
