"""``lookserve serve`` as a user runs it: a subprocess, Ctrl-C, the key file."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lookserve import contracts
from lookserve.client.core import TritonClient
from tinymodels import projection_embedder, write_model

pytestmark = pytest.mark.triton


def test_serve_cli_serves_until_sigint_and_keeps_the_key_out_of_output_when_run(tmp_path: Path) -> None:
    config = replace(contracts.embedder_config(dim=8, crop_size=16), warmup=())
    write_model(tmp_path / "repo", config, lambda p: projection_embedder(p, size=16, dim=8))
    key_file = tmp_path / "key"
    log_file = tmp_path / "triton.log"
    env = {**os.environ, "LOOKSERVE_REPOSITORY_KEY": "cli-test-key-123"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lookserve.cli", "serve", "-r", str(tmp_path / "repo"), "--grpc-port", "0",
         "-m", "embedder", "--key-file", str(key_file), "--log-file", str(log_file), "--exit-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if "ready" in line:
                break
        url = re.search(r"grpc (\S+)", "".join(output)).group(1)
        with TritonClient(url, repository_key=key_file.read_text()) as client:
            result = client.infer("embedder", {"crops": np.zeros((1, 16, 16, 3), np.uint8)})
            assert result.outputs["embedding"].shape == (1, 8)
            assert [m["name"] for m in client.repository_index()] == ["embedder"]
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        output.append(rest)
    assert process.returncode == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "cli-test-key-123" not in "".join(output)
    assert "cli-test-key-123" not in log_file.read_text()


def _serve(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lookserve.cli", "serve", "-r", str(tmp_path / "repo"), "-m", "embedder",
         "--exit-timeout", "5", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(_tmpdir(tmp_path)), **(env or {})},
    )


def _tmpdir(tmp_path: Path) -> Path:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return tmp_path / "tmp"


def _until_ready(process: subprocess.Popen) -> str:
    output = []
    for line in process.stdout:
        output.append(line)
        if "written to" in line or "error:" in line:
            break
    return "".join(output)


def _embedder_repo(tmp_path: Path) -> Path:
    config = replace(contracts.embedder_config(dim=8, crop_size=16), warmup=())
    write_model(tmp_path / "repo", config, lambda p: projection_embedder(p, size=16, dim=8))
    return tmp_path / "repo"


def test_serve_cli_refuses_naming_the_port_and_keeps_the_live_servers_key_when_the_port_is_in_use(
    tmp_path: Path, triton_factory
) -> None:
    first = triton_factory(_embedder_repo(tmp_path), models=["embedder"])
    key_file = tmp_path / "first.key"
    key_file.write_text(first.repository_key)
    out = subprocess.run(
        [sys.executable, "-m", "lookserve.cli", "serve", "-r", str(tmp_path / "repo"), "-m", "embedder",
         "--grpc-port", str(first.grpc_port), "--key-file", str(key_file)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "TMPDIR": str(_tmpdir(tmp_path))},
    )
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert f"gRPC port 127.0.0.1:{first.grpc_port} is already in use" in out.stderr
    assert "ready" not in out.stdout and "written" not in out.stdout
    assert key_file.read_text() == first.repository_key
    assert list(_tmpdir(tmp_path).iterdir()) == []  # no work dir left behind either


def test_serve_cli_refuses_a_key_file_held_by_a_running_server_and_models_cli_finds_the_key_by_address(
    tmp_path: Path,
) -> None:
    _embedder_repo(tmp_path)
    first = _serve(tmp_path, "--grpc-port", "0")
    try:
        text = _until_ready(first)
        url = re.search(r"grpc (\S+)", text).group(1)
        key_file = tmp_path / ".lookserve" / f"127.0.0.1-{url.rsplit(':', 1)[1]}.key"  # the per-address default
        assert f"repository key written to {key_file.relative_to(tmp_path)}" in text
        key = key_file.read_text()
        second = subprocess.run(
            [sys.executable, "-m", "lookserve.cli", "serve", "-r", str(tmp_path / "repo"), "--grpc-port", "0",
             "--key-file", str(key_file)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
        assert second.returncode == 2, (second.stdout, second.stderr)
        assert "belongs to a running lookserve serve" in second.stderr
        assert key_file.read_text() == key
        listed = subprocess.run([sys.executable, "-m", "lookserve.cli", "models", "list", "-r", str(tmp_path / "repo"),
                                 "--url", url], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert "loaded [1]" in listed.stdout
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 0


def test_serve_cli_removes_its_temp_work_dir_when_stopped_cleanly(tmp_path: Path) -> None:
    _embedder_repo(tmp_path)
    process = _serve(tmp_path, "--grpc-port", "0", "--key-file", str(tmp_path / "k"))
    try:
        text = _until_ready(process)
        assert re.search(r"log \S*/lookserve-triton-", text), text
        assert len(list(_tmpdir(tmp_path).glob("lookserve-triton-*"))) == 1
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 0
    assert list(_tmpdir(tmp_path).glob("lookserve-triton-*")) == []
