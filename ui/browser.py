"""Load the running page in a real headless Chromium and keep what it showed.

Debian's ``chromium`` (``apt-get install chromium``) is driven over the DevTools protocol by
Playwright (``pip install playwright``; its own browser download is not needed: the system
binary is passed as ``executable_path``). Chromium's ``--screenshot``/``--dump-dom`` flags are
no use here: a Streamlit page fills in over a websocket after the load event, and those flags
capture the empty shell.

    python -m lookserve.ui.browser "http://127.0.0.1:8501/?sample=3.jpg" ui/results/look.png --wait "sim "
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lookserve.errors import ConfigError, LookserveError
from lookserve.fsutil import atomic_output
from lookserve.logs import setup_logging

log = logging.getLogger(__name__)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: what Streamlit puts in the DOM for st.error and for an uncaught exception
ERROR_SELECTOR = '[data-testid="stAlertContentError"], [data-testid="stException"]'


def find_chromium() -> str | None:
    """The system Chromium (``$CHROMIUM``, else the first of :data:`CHROMIUM_NAMES` on PATH)."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass(frozen=True)
class PageCapture:
    url: str
    screenshot: Path
    dom: str  # the document's HTML after the wait
    text: str  # document.body.innerText
    errors: tuple[str, ...]  # the text of every error box on the page
    seconds: float


def capture(
    url: str,
    screenshot: str | os.PathLike,
    wait_for: Sequence[str] = (),
    timeout_s: float = 60.0,
    window: tuple[int, int] = (1400, 1000),
    full_page: bool = True,
    chromium: str | None = None,
) -> PageCapture:
    """Open ``url`` in headless Chromium, wait until the page has finished running (Streamlit's
    status widget gone) and shows every text of ``wait_for`` (or an error box), then save a
    screenshot (written atomically) and return the DOM, the visible text and the error boxes."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise ConfigError("driving Chromium needs playwright (pip install playwright)") from e
    chromium = chromium or find_chromium()
    if chromium is None:
        raise ConfigError("no Chromium binary found (apt-get install chromium, or set $CHROMIUM)")
    screenshot = Path(screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    deadline_ms = timeout_s * 1e3
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except PlaywrightError as e:
            raise LookserveError(f"cannot start {chromium}: {e}") from e
        try:
            page = browser.new_page(viewport={"width": window[0], "height": window[1]})
            page.goto(url, wait_until="load", timeout=deadline_ms)
            page.wait_for_selector('[data-testid="stApp"]', timeout=deadline_ms)
            _wait_finished(page, wait_for, deadline_ms)
            page.wait_for_timeout(500)  # let images decode and the layout settle
            if full_page:
                # Streamlit scrolls inside its main section, not the document: grow the window to it.
                height = page.evaluate(_CONTENT_HEIGHT)
                if height > window[1]:
                    page.set_viewport_size({"width": window[0], "height": min(int(height) + 40, 12000)})
                    page.wait_for_timeout(500)
            with atomic_output(screenshot) as tmp:
                page.screenshot(path=str(tmp), full_page=full_page)
            dom = page.content()
            text = page.evaluate("document.body.innerText")
            boxes = tuple(page.locator(ERROR_SELECTOR).all_inner_texts())
        except PlaywrightError as e:
            raise LookserveError(f"loading {url} failed: {e}") from e
        finally:
            browser.close()
    seconds = time.perf_counter() - t0
    log.info("captured %s in %.1f s → %s", url, seconds, screenshot)
    return PageCapture(url, screenshot, dom, text, boxes, seconds)


_CONTENT_HEIGHT = """() => {
    const main = document.querySelector('[data-testid="stMain"]') || document.querySelector('section.main');
    const block = document.querySelector('[data-testid="stMainBlockContainer"]');
    return Math.max(main ? main.scrollHeight : 0, block ? block.scrollHeight + block.offsetTop : 0,
                    document.documentElement.scrollHeight);
}"""


def _wait_finished(page, wait_for: Sequence[str], deadline_ms: float) -> None:
    """Wait until every text of ``wait_for`` (or an error box) is on the page, and no script
    run is in progress."""

    texts = json.dumps(list(wait_for))
    page.wait_for_function(
        f"""() => {{
            const body = document.body ? document.body.innerText : "";
            const error = document.querySelector('{ERROR_SELECTOR}');
            const wanted = {texts}.every(t => body.includes(t));
            const running = document.querySelector('[data-testid="stStatusWidget"]')
                && document.querySelector('[data-testid="stStatusWidget"]').innerText.includes("Running");
            const spinner = document.querySelector('[data-testid="stSpinner"]');
            return (wanted || error) && !running && !spinner;
        }}""",
        timeout=deadline_ms,
        polling=250,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lookserve.ui.browser", description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("screenshot", type=Path)
    parser.add_argument("--wait", action="append", default=[], help="Text the page must show (repeatable).")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)

    setup_logging(1)
    try:
        shot = capture(args.url, args.screenshot, args.wait, args.timeout, (args.width, args.height))
    except LookserveError as e:
        log.error("%s", e)
        return 2
    for box in shot.errors:
        log.error("the page shows an error: %s", box)
    log.info("%s: %d characters of DOM, %d error box(es), %.1f s", shot.screenshot, len(shot.dom), len(shot.errors),
             shot.seconds)
    return 1 if shot.errors else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
