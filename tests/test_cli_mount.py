"""The one `lookserve` console script mounts every package's commands, merging shared groups."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from lookserve.cli import app


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_group_holds_training_and_chain_evaluations_when_both_packages_define_eval() -> None:
    text = _help("eval")
    for command in ("detector", "embedder", "views", "look", "thumbnails"):
        assert f" {command} " in text, command


def test_top_level_lists_every_job_when_help_is_asked() -> None:
    text = _help()
    for command in ("serve", "demo", "look", "thumbnails", "data", "train", "eval", "export", "catalog",
                    "models", "bench"):
        assert f" {command} " in text, command


def test_console_script_imports_no_tensorflow_or_onnxruntime_when_mounting_every_command() -> None:
    code = ("import sys, lookserve.cli, lookserve.demo; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
