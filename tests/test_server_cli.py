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
