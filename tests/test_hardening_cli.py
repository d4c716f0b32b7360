"""Bad input at the CLI: each answered with exit code 2 (or 1 for per-item failures) and a
message naming the file and the problem — never a traceback; untrusted text (file names, JSON
values) printed as text, not as rich markup."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from test_thumbnails_chain import SIZE, _views, tiny_view_classifier
from typer.testing import CliRunner

from lookserve import contracts
from lookserve.cli import app
from lookserve.errors import InvalidInputError
from lookserve.images import decode_image
from tinymodels import projection_embedder, write_model


def _cli(*args: str):
    return CliRunner().invoke(app, [*args])


def _data_root(root: Path, pairs_text: str) -> Path:
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "photos.txt").write_text("1,images/1.jpg\n100,images/100.jpg\n")
    (root / "meta" / "json").mkdir(parents=True)
    (root / "meta" / "json" / "retrieval_tops.json").write_text(json.dumps([{"product": 10, "photo": 100}]))
    (root / "meta" / "json" / "train_pairs_tops.json").write_text(pairs_text)
    return root


BB = {"left": 1, "top": 2, "width": 10, "height": 12}


@pytest.mark.parametrize(
    ("pairs_text", "fragment"),
    [
        ("[" * 100_000, "train_pairs_tops.json is not usable JSON: nested too deeply"),
        (json.dumps([{"photo": 1, "product": 10, "bbox": {**BB, "width": float("nan")}}]), "bbox values must be finite"),
        ("[" + "1" * 5000 + "]", "train_pairs_tops.json is not usable JSON"),
        ('[{"photo": 1, "product": 10,', "train_pairs_tops.json is not valid JSON"),
        (json.dumps([{"photo": "[/x]", "product": 10, "bbox": BB}]), "'photo' must be an integer id, got '[/x]'"),
    ],
    ids=["deep-nesting", "nan-bbox", "huge-integer", "truncated", "markup-in-value"],
)
def test_data_info_exits_2_naming_file_and_problem_when_json_is_malformed(tmp_path: Path, pairs_text: str,
                                                                          fragment: str) -> None:
    res = _cli("data", "info", "--data", str(_data_root(tmp_path / "d", pairs_text)))
    assert res.exit_code == 2, (res.output, res.exception)
    assert isinstance(res.exception, SystemExit)  # a clean exit, no traceback
    assert fragment in " ".join(res.output.split())


@pytest.mark.triton
def test_thumbnails_cli_names_the_broken_view_and_keeps_the_other_products_when_one_view_is_corrupt(
    tmp_path: Path, triton_factory, rng
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.view_classifier_config(image_size=SIZE), warmup=()), tiny_view_classifier)
    server = triton_factory(repo, models=["view_classifier"])
    root = _views(tmp_path / "views", rng, products=3)
    broken = sorted((root / "shoe01").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG
    (root / "shoe02" / "huge.png").write_bytes(_encode(Image.new("L", (20_000, 2)), "PNG"))  # over the per-side limit
    out = tmp_path / "out"
    res = _cli("thumbnails", str(root), "--url", server.grpc_url, "--out", str(out))
    assert res.exit_code == 1, res.output
    text = " ".join(res.stderr.split())
    assert f"error: shoe01: {broken}" in text and f"{broken.name} is truncated or corrupt" in text
    assert "huge.png is 20000x2" in text and "decompression bomb" in text
    assert res.stderr.splitlines()[-1] == "error: 2 of 3 products failed"
    rows = json.loads((out / "thumbnails.json").read_text())
    assert [r["product"] for r in rows] == ["shoe00"]  # the intact product is still written
    wrote = " ".join(res.stdout.split())  # every file written is named, the contact sheet too
    assert f"wrote {out / 'thumbnails.csv'}, {out / 'thumbnails.json'}, {out / 'contact_sheet.png'}" in wrote
    assert (out / "contact_sheet.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("fmt", "cut", "fragment"),
    [("PNG", 40, "is truncated or corrupt (it starts like a PNG file)"),
     ("WEBP", 12, "is truncated or corrupt (it starts like a WEBP file)"),
     ("GIF", None, "is a GIF image; the allowed formats are BMP, JPEG, PNG, WEBP"),
     ("TIFF", None, "is a TIFF image; the allowed formats are BMP, JPEG, PNG, WEBP")],
)
def test_decode_names_the_format_when_a_file_is_cut_before_its_header_ends_or_not_allowed(fmt, cut, fragment) -> None:
    data = _encode(Image.new("RGB", (8, 8)), fmt)
    with pytest.raises(InvalidInputError) as caught:
        decode_image(data[:cut] if cut else data)
    assert str(caught.value) == f"image bytes {fragment}"


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("args", "fragment"), [
    (["publish", "embedder", "{bad}"], "is not a valid ONNX model"),
    (["publish", "nosuch", "{bad}"], "no model 'nosuch'"),
    (["history", "embedder", "-r", "{nowhere}"], "does not exist"),
], ids=["bad-onnx", "unknown-model", "missing-repository"])
def test_models_cli_exits_2_naming_the_problem_when_input_is_bad(tmp_path: Path, args: list[str], fragment: str) -> None:
    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.embedder_config(dim=8, crop_size=16), warmup=()),
                lambda p: projection_embedder(p, size=16, dim=8))
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    words = [a.format(bad=tmp_path / "bad.onnx", nowhere=tmp_path / "nowhere") for a in args]
    res = _cli("models", *words, *([] if "-r" in words else ["-r", str(repo)]))
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    assert fragment in " ".join(res.output.split())
    assert sorted(p.name for p in (repo / "embedder").iterdir()) == ["1", "config.pbtxt"]  # nothing written
