"""The web page's pieces that need no server: configuration, the streamlit command, samples,
input decoding, messages and tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lookserve import errors
from lookserve.cli import app
from lookserve.data import street2shop
from lookserve.data.synth import SynthConfig, generate
from lookserve.ui import logic
from lookserve.ui.cli import APP_SCRIPT, streamlit_command


def test_ui_config_round_trips_through_environment_when_written_by_to_env(tmp_path: Path) -> None:
    config = logic.UiConfig(url="127.0.0.1:9001", catalog=tmp_path / "cat", samples=tmp_path / "s", timeout_s=12.5)
    back = logic.UiConfig.from_env(config.to_env())
    assert back == logic.UiConfig(url="127.0.0.1:9001", catalog=(tmp_path / "cat").resolve(),
                                  samples=(tmp_path / "s").resolve(), timeout_s=12.5)
    assert logic.UiConfig.from_env({}) == logic.UiConfig()


def test_ui_config_refuses_when_timeout_is_not_a_number() -> None:
    with pytest.raises(errors.ConfigError, match="LOOKSERVE_UI_TIMEOUT='soon' is not a number"):
        logic.UiConfig.from_env({logic.ENV_TIMEOUT: "soon"})
    with pytest.raises(errors.ConfigError, match="positive"):
        logic.UiConfig(timeout_s=0)


def test_streamlit_command_binds_loopback_on_8501_when_defaults_used(tmp_path: Path) -> None:
    config = logic.UiConfig(catalog=tmp_path / "cat")
    argv, env = streamlit_command(config)
    assert argv[1:5] == ["-m", "streamlit", "run", str(APP_SCRIPT)]
    opts = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert opts["--server.address"] == "127.0.0.1"
    assert opts["--server.port"] == "8501"
    assert opts["--server.headless"] == "true"
    assert opts["--browser.gatherUsageStats"] == "false"
    assert opts["--server.maxUploadSize"] == str(logic.MAX_UPLOAD_MB)
    assert logic.UiConfig.from_env(env).catalog == (tmp_path / "cat").resolve()
    assert APP_SCRIPT.is_file()
    with pytest.raises(errors.LookserveError, match="port"):
        streamlit_command(config, port=70000)


def test_ui_cli_refuses_port_out_of_range_when_given_one() -> None:
    result = CliRunner().invoke(app, ["ui", "--port", "0"])
    assert result.exit_code == 2
    assert "--port" in result.output


def _save(path: Path, rng: np.random.Generator, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_find_samples_lists_street_photos_and_products_when_folder_is_plain(tmp_path: Path, rng) -> None:
    for name in ("b.png", "a.jpg"):
        _save(tmp_path / "street" / name, rng)
    (tmp_path / "street" / "notes.txt").write_text("not a photo")
    for view in ("v1.png", "v2.png"):
        _save(tmp_path / "footwear" / "shoe7" / view, rng)
    samples = logic.find_samples(tmp_path)
    assert list(samples.street) == ["a.jpg", "b.png"]
    assert list(samples.footwear) == ["shoe7"]
    assert [p.name for p in samples.footwear["shoe7"]] == ["v1.png", "v2.png"]
    assert samples.notes == ()


def test_find_samples_explains_when_folder_missing_or_empty(tmp_path: Path) -> None:
    assert "does not exist" in logic.find_samples(tmp_path / "nowhere").notes[0]
    assert "no samples folder" in logic.find_samples(None).notes[0]
    notes = logic.find_samples(tmp_path).notes
    assert any("no street photos" in n for n in notes) and any("no footwear products" in n for n in notes)


def test_find_samples_reads_generated_data_set_when_given_street2shop_layout(tmp_path: Path) -> None:
    generate(tmp_path / "data", SynthConfig(n_products=11, n_street=4, n_shoes=2, street_size=96, shop_size=64,
                                            view_size=64), seed=3)
    samples = logic.find_samples(tmp_path / "data")
    street = {p.street_path for p in street2shop.load(tmp_path / "data").pairs}  # photos with a product pair
    assert street and set(samples.street.values()) == street
    assert sorted(samples.street) == sorted(p.name for p in street)
    assert sorted(samples.footwear) == sorted(p.name for p in (tmp_path / "data" / "footwear" / "views").iterdir())
    pairs = street2shop.load(tmp_path / "data").pairs
    assert samples.truth == {name: {p.category: p.product for p in pairs if p.street_path.name == name}
                             for name in samples.street}


def test_item_truth_note_tells_rank_when_photo_product_known() -> None:
    matches = tuple(logic.MatchView(r, pid, 0.9 - r / 10, f"t{pid}", None, "", {}, is_truth=pid == 7)
                    for r, pid in enumerate((5, 7, 9), start=1))
    item = logic.ItemView(1, "tops", 0.9, (0, 0, 1, 1), "#000000", matches, truth=7)
    assert item.truth_note == "the photo's product 7 is #2"
    assert matches[1].caption.endswith("✓ the photo's product") and "✓" not in matches[0].caption
    assert logic.ItemView(1, "tops", 0.9, (0, 0, 1, 1), "#000000", matches, truth=8).truth_note == (
        "the photo's product 8 is not in the top 3")
    assert logic.ItemView(1, "tops", 0.9, (0, 0, 1, 1), "#000000", matches).truth_note == ""


def test_load_input_names_file_and_problem_when_bytes_are_not_an_image() -> None:
    with pytest.raises(errors.InvalidInputError, match=r"'x\.txt' cannot be used: .*not an image"):
        logic.load_input("x.txt", b"hello")
    with pytest.raises(errors.InvalidInputError, match=r"'e\.png' is an empty file"):
        logic.load_input("e.png", b"")


def test_load_input_decodes_path_when_given_a_sample(tmp_path: Path, rng) -> None:
    path = _save(tmp_path / "p.png", rng, size=8)
    inp = logic.load_input("p.png", path)
    assert inp.source == path
    np.testing.assert_array_equal(inp.pixels, np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize(("error", "headline"), [
    (errors.ServerUnavailable("x"), "Triton is not reachable: x"),
    (errors.CatalogVersionMismatch("x"), "The catalog belongs to another embedder version: x"),
    (errors.CatalogIntegrityError("x"), "The catalog is damaged: x"),
    (errors.CatalogError("x"), "The catalog cannot be used: x"),
    (errors.InvalidInputError("x"), "Bad input: x"),
    (errors.ModelNotFound("x"), "A model is not loaded on the server: x"),
    (KeyError("k"), "Unexpected KeyError: 'k'"),
])
def test_explain_leads_with_the_problem_when_given_each_error_kind(error, headline) -> None:
    assert logic.explain(error).startswith(headline)


def test_markdown_table_escapes_pipes_when_cells_hold_them() -> None:
    table = logic.markdown_table([{"stage": "a|b", "ms": "1.0"}, {"stage": "c", "ms": "2.0"}])
    assert table.splitlines() == ["| stage | ms |", "|---|---|", "| a\\|b | 1.0 |", "| c | 2.0 |"]
    assert logic.markdown_table([]) == ""
    assert logic.timings_rows({"detect": 1.234, "total": 2.0}) == [{"stage": "detect", "ms": "1.2"},
                                                                    {"stage": "total", "ms": "2.0"}]


def test_ui_config_refuses_naming_the_address_when_catalog_address_is_bad() -> None:
    with pytest.raises(errors.ConfigError, match="'redis://h:1/shop'.*scheme 'redis' is not supported"):
        logic.UiConfig(catalog="redis://h:1/shop")
    pytest.importorskip("pymilvus", reason="the Milvus client (pip install 'lookserve[milvus]') is not installed")
    with pytest.raises(errors.ConfigError, match="'milvus://h:1/9bad'.*expected milvus://HOST:PORT/NAME"):
        logic.UiConfig(catalog="milvus://h:1/9bad")
    result = CliRunner().invoke(app, ["ui", "--catalog", "redis://h:1/shop"])
    assert result.exit_code == 2 and "scheme 'redis' is not supported" in result.output, result.output
    good = logic.UiConfig(catalog="milvus://127.0.0.1:19530/shop")  # kept as given, through the environment too
    assert logic.UiConfig.from_env(good.to_env()).catalog == "milvus://127.0.0.1:19530/shop"
