"""The running page in a real headless Chromium: ``lookserve ui`` against a real Triton (tiny
models), a query picked through the URL, a screenshot whose content is checked."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_ui_app import BROKEN_PHOTO, LOOK_PHOTO, expected_look, ui_served  # noqa: F401  (ui_served is a fixture)

from lookserve.client.core import TritonClient
from lookserve.client.thumbnails import ThumbnailPipeline
from lookserve.server.launcher import free_port
from lookserve.ui.browser import capture, find_chromium
from lookserve.ui.logic import _palette

pytestmark = [
    pytest.mark.triton,
    pytest.mark.slow,
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium binary (apt-get install chromium; make install does it as root)"),
]

WINDOW = (1280, 900)


@pytest.fixture(scope="module")
def page(ui_served, tmp_path_factory):  # noqa: F811
    """``lookserve ui`` on a free 127.0.0.1 port (the real command, which execs streamlit run)."""
    port = free_port()
    log = tmp_path_factory.mktemp("page") / "streamlit.log"
    cmd = [str(Path(sys.executable).with_name("lookserve")), "ui", "--catalog", str(ui_served["catalog"]),
           "--samples", str(ui_served["samples"]), "--url", ui_served["url"], "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "LOOKSERVE_URL": ""})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"lookserve ui did not come up on {base}:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _near(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(rgb.astype(int) - np.array(colour)).max(axis=-1) <= tol).sum())


def test_browser_shows_matches_and_no_error_when_sample_given_in_url(ui_served, page, tmp_path) -> None:  # noqa: F811
    want = expected_look(ui_served, ui_served["samples"] / "street" / LOOK_PHOTO)
    captions = [f"#{r + 1} · product {m.product_id} · sim {m.similarity:.3f}"
                for item in want.items for r, m in enumerate(item.matches)]
    shot = capture(f"{page}/?sample={LOOK_PHOTO}", tmp_path / "look.png", wait_for=captions[:1], window=WINDOW)
    assert shot.errors == ()
    for caption in captions:  # every match the chain found, in the DOM as Chromium rendered it
        assert caption in shot.text
        assert html.escape(caption, quote=False) in shot.dom
    assert len(re.findall(r'data-testid="stImage"', shot.dom)) == 1 + len(captions)
    for item in want.items:
        assert f"{item.detection.category} · detector score {item.detection.score:.2f}" in shot.text
    assert "detector v1 · embedder v1" in shot.text

    png = np.asarray(Image.open(shot.screenshot).convert("RGB"))
    assert png.shape[1] == WINDOW[0] and png.shape[0] >= WINDOW[1]  # grown to the whole page
    assert png.std() > 20  # not a blank page
    assert (png.min(axis=-1) < 200).mean() > 0.05  # a good part of it is not white
    # the annotated photo: each item's box in its colour (render's palette, as the page reports it)

    for n in range(len(want.items)):
        colour = tuple(int(round(c * 255)) for c in _palette()[n])
        assert _near(png, colour) > 50, f"no box of item {n + 1} in colour {colour}"


def test_browser_shows_thumbnail_and_type_when_product_given_in_url(ui_served, page, tmp_path) -> None:  # noqa: F811
    views = sorted((ui_served["samples"] / "footwear" / "shoe01").iterdir())
    with TritonClient(ui_served["url"]) as client:
        want = ThumbnailPipeline(client).run("shoe01", views)
    caption = f"thumbnail of shoe01: {Path(want.thumbnail).name} (best view {want.best_view:.3f})"
    shot = capture(f"{page}/?mode=thumbnails&product=shoe01", tmp_path / "thumbs.png", wait_for=[caption],
                   window=WINDOW)
    assert shot.errors == ()
    assert want.footwear_type in shot.text
    ranked = sorted(want.views, key=lambda v: -v.best_view)
    positions = [shot.text.index(f"#{r + 1} {Path(v.image).name} · best view {v.best_view:.3f}") for r, v in enumerate(ranked)]
    assert positions == sorted(positions)  # shown in rank order
    png = np.asarray(Image.open(shot.screenshot).convert("RGB"))
    assert png.std() > 20


def test_browser_shows_error_box_when_sample_is_a_broken_image(ui_served, page, tmp_path) -> None:  # noqa: F811
    """The error path as a person sees it, and proof that the error-box check above can fail."""
    shot = capture(f"{page}/?sample={BROKEN_PHOTO}", tmp_path / "broken.png", wait_for=["Bad input"], window=WINDOW)
    assert len(shot.errors) == 1
    assert shot.errors[0].startswith("Bad input:")
    assert BROKEN_PHOTO in shot.errors[0] and "truncated" in shot.errors[0]
    assert "Traceback" not in shot.text
