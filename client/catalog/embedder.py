"""The embedder, as the catalog sees it: what built a catalog (:class:`EmbedderInfo`, bound into
its manifest), what embeds shop photos (:class:`Embedder`; :class:`TritonEmbedder` for the
served model) and the checksum of a served model file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lookserve import contracts
from lookserve.client.core import image_input
from lookserve.errors import CatalogError
from lookserve.fsutil import sha256_file


@dataclass(frozen=True)
class EmbedderInfo:
    """The embedder a catalog is bound to: queries must come from this name, version and model file."""

    name: str
    version: str
    model_sha256: str | None = None  # of <repository>/<name>/<version>/model.onnx when known


class Embedder(Protocol):
    name: str
    input_size: int

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, str]:
        """``[B, S, S, 3]`` uint8 → (``[B, dim]`` float32 L2-normalised, version that answered)."""


class TritonEmbedder:
    """The served embedder through a (thread-safe) :class:`~lookserve.client.core.TritonClient`."""

    def __init__(self, client, name: str = contracts.EMBEDDER, version: str = "") -> None:
        self.client, self.name, self.version = client, name, version
        meta = client.model_metadata(name, version)
        crops = image_input(meta, "served model", error=CatalogError)
        self.input_name, self.input_size = crops.name, crops.size
        self.output_name = meta.outputs[0].name

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, str]:
        result = self.client.infer(self.name, {self.input_name: crops}, outputs=[self.output_name], version=self.version)
        return np.asarray(result.outputs[self.output_name], dtype=np.float32), result.model_version


def model_file_sha256(repository: str | os.PathLike | None, name: str, version: str) -> str | None:
    """sha256 of ``<repository>/<name>/<version>/model.onnx`` (None without a repository)."""
    if repository is None:
        return None
    path = Path(repository) / name / str(version) / "model.onnx"
    if not path.is_file():
        raise CatalogError(f"model file {path} not found; is {repository} the served model repository?")
    return sha256_file(path)
