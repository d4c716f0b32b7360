"""``lookserve catalog info`` after an update that removed products: live photos counted, deleted apart."""

from __future__ import annotations

import re
from pathlib import Path

from test_catalog_update import _root
from typer.testing import CliRunner

from lookserve.cli import app
from lookserve.client.catalog import update_catalog


def _rows(output: str) -> dict[str, list[str]]:
    """The category table's rows: {category: [cells after the name]}."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
        if len(cells) == 7 and cells[1].isdigit():
            rows[cells[0]] = cells[1:]
    return rows


def test_catalog_info_counts_live_photos_and_shows_deleted_apart_when_products_were_removed(tmp_path: Path) -> None:
    root, _ = _root(tmp_path)  # tops: 150 products × 2 photos; bags: 40 × 1
    result = update_catalog(root, remove=[0, 1, 2, 1000])  # 2 % of the labels: marked deleted, no rebuild
    assert result.rebuilt == ()
    res = CliRunner().invoke(app, ["catalog", "info", str(root)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "333 photos of 186 products in 2 categories; 7 deleted photos still in the indexes" in res.output
    rows = _rows(res.output)
    # photos, deleted, products
    assert rows["tops"][:3] == ["294", "6", "147"] and rows["bags"][:3] == ["39", "1", "39"]
