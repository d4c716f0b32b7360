"""``write_catalog`` writes vectors through the one writer (``save_vectors``): the same bytes as
``np.save``, the same manifest records and manifest checksum as hashing every file afterwards."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from test_catalog_index import _build

from lookserve.client.catalog.store import (
    CHECKSUM_FIELD,
    file_checksums,
    manifest_checksum,
    save_vectors,
    vectors_file,
)
from lookserve.errors import CatalogError


def test_write_catalog_records_np_save_bytes_and_an_unchanged_manifest_checksum_when_built_on_seeded_data(tmp_path: Path) -> None:
    out, records, vectors = _build(tmp_path, np.random.default_rng(7), build_threads=1)
    manifest = json.loads((out / "manifest.json").read_text())
    for category in ("tops", "bags"):
        rows = [i for i, r in enumerate(records) if r.category == category]
        buf = io.BytesIO()
        np.save(buf, np.asarray(vectors, np.float32)[rows])  # what the catalog's vectors file always held
        name = vectors_file(category)
        assert (out / name).read_bytes() == buf.getvalue()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "bytes": len(buf.getvalue())}
    # the manifest as it was written before the one writer (every file hashed after writing) has the same checksum
    rehashed = {**manifest, "files": {k: v for k, v in file_checksums(out).items() if k != "manifest.json"}}
    assert rehashed["files"] == manifest["files"]
    assert manifest_checksum(rehashed) == manifest[CHECKSUM_FIELD] == manifest_checksum(manifest)


def test_save_vectors_of_blocks_writes_np_save_bytes_of_their_concatenation_and_their_checksum(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    stored = rng.normal(size=(50, 8)).astype(np.float32)
    np.save(tmp_path / "stored.npy", stored)
    mapped = np.load(tmp_path / "stored.npy", mmap_mode="r")  # an update's stored rows: a read-only memory map
    new = rng.normal(size=(7, 8)).astype(np.float32)
    record = save_vectors(tmp_path / "out.npy", mapped, np.zeros((0, 8), np.float32), new)
    buf = io.BytesIO()
    np.save(buf, np.concatenate([stored, new]))
    assert (tmp_path / "out.npy").read_bytes() == buf.getvalue()
    assert record == {"sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "bytes": len(buf.getvalue())}


def test_save_vectors_refuses_blocks_of_different_widths(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="share dtype and row shape"):
        save_vectors(tmp_path / "out.npy", np.zeros((2, 8), np.float32), np.zeros((2, 4), np.float32))
