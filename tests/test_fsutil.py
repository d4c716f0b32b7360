"""lookserve.fsutil: atomic writes (fsync, same-folder temp file, cleanup on failure), checksums."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from lookserve import fsutil
from lookserve.fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
    sha256_files,
)


def test_atomic_write_bytes_replaces_content_and_leaves_no_temp_file_when_it_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.bin"  # the missing folder is made
    atomic_write_bytes(path, b"old")
    assert atomic_write_bytes(path, b"new") == path
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]


def test_atomic_write_keeps_old_file_and_removes_temp_when_replace_fails(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")

    def broken_replace(src, dst):
        assert Path(src).parent == path.parent  # the temp file is in the destination's folder
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_atomic_write_removes_temp_when_interrupted_while_writing(tmp_path: Path, monkeypatch) -> None:
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(fsutil.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "f", b"x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_fsyncs_file_before_replacing_when_it_writes(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    monkeypatch.setattr(fsutil.os, "replace", replace)
    atomic_write_bytes(tmp_path / "f", b"x")
    assert events == ["file", "replace", "dir"]


def test_atomic_write_sets_mode_when_given_and_plain_file_mode_otherwise(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "plain", b"x")
    atomic_write_bytes(tmp_path / "secret", b"x", mode=0o600)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


def test_atomic_write_json_round_trips_with_final_newline_when_keys_sorted(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
    text = path.read_text()
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"b": 1, "a": [1, 2]}


def test_sha256_file_equals_hashlib_when_file_spans_several_chunks(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=4096) == hashlib.sha256(data).hexdigest()


def test_sha256_file_of_an_empty_file_is_the_empty_digest(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    assert sha256_file(tmp_path / "e") == hashlib.sha256(b"").hexdigest()


def test_sha256_files_hashes_every_file_once_with_its_size_in_parallel_threads(tmp_path: Path) -> None:
    blobs = {tmp_path / f"f{i}": os.urandom(1000 * i + 1) for i in range(6)}
    for path, data in blobs.items():
        path.write_bytes(data)
    got = sha256_files([*blobs, tmp_path / "f1"], threads=3)  # a path named twice is hashed once
    assert got == {p: (hashlib.sha256(d).hexdigest(), len(d)) for p, d in blobs.items()}
    assert sha256_files(blobs, threads=1) == got


def test_atomic_output_keeps_suffixes_and_renames_onto_path_when_the_writer_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "model.weights.h5"
    target.write_bytes(b"old")
    with fsutil.atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".weights.h5") and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing visible before the block ends
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.weights.h5"]
    assert target.stat().st_mode & 0o777 == fsutil._DEFAULT_MODE


def test_atomic_output_leaves_path_untouched_and_no_temp_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer broke"), fsutil.atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer broke")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
