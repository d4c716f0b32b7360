"""The catalog backend interface: the hnswlib directory implements it; addresses pick the backend."""

from __future__ import annotations

import functools
import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest

from lookserve.client.catalog import (
    Catalog,
    CatalogBackend,
    EmbedderInfo,
    IndexParams,
    PhotoRecord,
    catalog_dir_name,
    catalog_path,
    open_catalog,
    set_current,
    write_catalog,
)
from lookserve.errors import CatalogError, ConfigError

EMB = EmbedderInfo("embedder", "3", "ab" * 32)


def _write(out: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    records = [PhotoRecord(100 + i, "tops" if i < 30 else "bags", f"images/{i}.jpg", None, f"p{i}") for i in range(40)]
    vectors = rng.normal(size=(len(records), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_catalog(out, records, vectors, EMB, IndexParams(M=8, ef_construction=40, tune_sample=30))
    return out


def _protocol_members() -> list[str]:
    return sorted(name for name, value in vars(CatalogBackend).items()
                  if not name.startswith("_") and (callable(value) or isinstance(value, property)))


def test_directory_catalog_satisfies_backend_protocol_when_opened(tmp_path: Path) -> None:
    catalog = Catalog.open(_write(tmp_path / "c"))
    assert isinstance(catalog, CatalogBackend)
    assert set(_protocol_members()) >= {"address", "categories", "describe", "embedder", "search", "version"}
    for name in _protocol_members():
        want = getattr(CatalogBackend, name)
        got = getattr(Catalog, name)
        if isinstance(want, property):
            assert isinstance(got, property | functools.cached_property), f"Catalog.{name} is not a property"
        else:
            assert list(inspect.signature(got).parameters) == list(inspect.signature(want).parameters), name
    assert catalog.address == str(tmp_path / "c")
    assert catalog.categories == frozenset({"tops", "bags"})
    assert catalog.embedder == EMB
    (row,) = catalog.search("bags", catalog.vectors("bags")[:1], k=3)
    assert row[0].category == "bags" and row[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_catalog_version_is_equal_for_a_copy_and_differs_when_content_changes(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", seed=0)
    shutil.copytree(a, tmp_path / "copy")
    b = _write(tmp_path / "b", seed=1)
    va, vcopy, vb = (Catalog.open(p).version for p in (a, tmp_path / "copy", b))
    assert va == vcopy
    assert va != vb
    assert len(va) == 64 and int(va, 16) >= 0


def test_catalog_describe_names_address_version_and_embedder_when_called(tmp_path: Path) -> None:
    catalog = Catalog.open(_write(tmp_path / "c"))
    info = catalog.describe()
    assert info["path"] == catalog.address and info["version"] == catalog.version
    assert info["embedder"] == {"name": "embedder", "version": "3", "model_sha256": "ab" * 32}
    assert info["counts"] == {"photos": 40, "products": 40, "categories": 2}


@pytest.mark.parametrize("form", ["str", "path", "file-url"])
def test_open_catalog_opens_a_directory_when_given_as_path_or_file_url(tmp_path: Path, form: str) -> None:
    out = _write(tmp_path / "c")
    address = {"str": str(out), "path": out, "file-url": f"file://{out}"}[form]
    catalog = open_catalog(address)
    assert isinstance(catalog, Catalog) and catalog.path == out


def test_open_catalog_follows_current_pointer_when_given_a_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _write(root / catalog_dir_name(1), seed=0)
    second = _write(root / catalog_dir_name(2), seed=1)
    set_current(root, catalog_dir_name(2))
    assert open_catalog(root).path == second


@pytest.mark.parametrize("address", ["s3://bucket/catalog", "GS://bucket/alias"])
def test_open_catalog_refuses_naming_the_scheme_when_scheme_is_unsupported(address: str) -> None:
    with pytest.raises(ConfigError) as e:
        open_catalog(address)
    scheme = address.split("://")[0].lower()
    assert f"scheme {scheme!r} is not supported" in str(e.value) and address in str(e.value)


@pytest.mark.parametrize("address", ["milvus://127.0.0.1:19530/products", "MILVUS://host/alias"])
def test_catalog_path_refuses_naming_milvus_when_a_directory_is_needed(address: str) -> None:
    with pytest.raises(ConfigError, match="catalog on a Milvus server, not a directory"):
        catalog_path(address)  # open_catalog opens it (tests/test_catalog_milvus.py)


def test_open_catalog_refuses_when_file_url_names_no_directory() -> None:
    with pytest.raises(ConfigError, match="names no directory"):
        open_catalog("file://")


def test_open_catalog_raises_catalog_error_when_directory_is_not_a_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="manifest.json is missing"):
        open_catalog(tmp_path)
