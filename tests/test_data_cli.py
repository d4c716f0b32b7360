"""``lookserve data ...`` end to end on a tiny data set, and the CLI's lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from lookserve.cli import app


def test_data_cli_generates_inspects_and_previews_when_preset_is_tiny(tmp_path):
    runner = CliRunner()
    out = tmp_path / "d"
    r = runner.invoke(app, ["data", "synth", "--out", str(out), "--seed", "3", "--preset", "tiny", "--street", "6", "--shoes", "2"])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"]["street_photos"] == 6 and info["counts"]["shoes"] == 2 and info["seed"] == 3
    r = runner.invoke(app, ["data", "info", "--data", str(out)])
    assert r.exit_code == 0 and "pairs" in r.output
    r = runner.invoke(app, ["data", "preview", "--data", str(out), "--out", str(tmp_path / "p"), "--n", "2"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == ["footwear.png", "shop.png", "street.png"]


def test_data_cli_exits_2_with_the_problem_when_data_is_not_a_dataset(tmp_path):
    r = CliRunner().invoke(app, ["data", "info", "--data", str(tmp_path)])
    assert r.exit_code == 2 and "photos.txt is missing" in r.output
    assert r.stderr.startswith("error: ") and r.stdout == ""  # plain text on stderr


def test_data_synth_refuses_a_non_empty_folder_naming_the_cli_flag_when_overwrite_is_not_given(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("x")
    r = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--preset", "tiny"])
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    assert r.stderr == f"error: {tmp_path / 'd'} exists and is not empty; pass --overwrite to replace it\n"
    assert "overwrite=True" not in r.output
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.txt"]


def test_data_cli_imports_nothing_heavy_when_loaded():
    code = ("import sys, lookserve.data.cli; "
            "heavy = [m for m in ('tensorflow', 'onnxruntime', 'pycocotools') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
