"""What the pipeline models read of the model repository, free of Triton (testable anywhere).

The python backend has no metadata call for other models, so a pipeline learns the tensors of
``detector``/``embedder``/``view_classifier`` from their ``config.pbtxt`` (the file Triton
loaded) and the latest version from the version folders on disk; the catalog's embedder
version is always asked for explicitly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lookserve import contracts, errors
from lookserve.client.catalog import (
    MANIFEST,
    Catalog,
    CatalogRef,
    catalog_path,
    follow_catalog,
    is_milvus_address,
)
from lookserve.client.catalog.root import CURRENT
from lookserve.client.core import ModelMetadata, TensorMeta
from lookserve.errors import CatalogError, ConfigError
from lookserve.modelconfig import ModelConfig

log = logging.getLogger(__name__)


def read_config(repository: Path, name: str) -> ModelConfig:
    return ModelConfig.read(Path(repository) / name / "config.pbtxt")


def metadata_from_config(config: ModelConfig) -> ModelMetadata:
    """The :class:`~lookserve.client.core.ModelMetadata` Triton would report for ``config``."""

    def meta(t) -> TensorMeta:
        shape = (-1, *t.dims) if config.max_batch_size > 0 else tuple(t.dims)
        return TensorMeta(t.name, "BYTES" if t.dtype == "STRING" else t.dtype, shape)

    return ModelMetadata(config.name, (), tuple(meta(t) for t in config.inputs), tuple(meta(t) for t in config.outputs))


def versions_on_disk(repository: Path, name: str) -> list[int]:
    """The numeric version folders of ``<repository>/<name>``, ascending."""
    try:
        entries = os.listdir(Path(repository) / name)
    except OSError:
        return []
    return sorted(int(e) for e in entries if e.isdigit() and (Path(repository) / name / e).is_dir())


def latest_version(repository: Path, name: str) -> str:
    """The version Triton's default policy (latest 1) serves: the highest folder on disk."""
    found = versions_on_disk(repository, name)
    if not found:
        raise errors.ModelNotFound(f"{name!r} has no version folder in {repository}")
    return str(found[-1])


def error_from_message(what: str, message: str) -> errors.ServerError:
    """The lookserve error for a BLS failure message (Triton's wording of a missing or unloaded
    model/version), so the chains retry or report exactly as over gRPC."""
    low = message.lower()
    if "unknown model" in low or "not found" in low:
        return errors.ModelNotFound(f"{what} failed: {message}")
    if "not ready" in low or "unavailable" in low:
        return errors.ModelNotReady(f"{what} failed: {message}")
    if "unexpected" in low or "shape" in low or "datatype" in low:
        return errors.InvalidRequest(f"{what} failed: {message}")
    return errors.InternalServerError(f"{what} failed: {message}")


def open_catalog_ref(address: str, repository: Path, interval_s: float = 0.5) -> CatalogRef:
    """The catalog a pipeline searches: a catalog directory (fixed), or a catalog root whose
    ``current`` pointer is followed (a :class:`CatalogWatcher`). A relative address is relative
    to the model repository. A missing or damaged catalog is a :class:`CatalogError` naming it.
    A ``milvus://HOST:PORT/ALIAS`` address follows the alias (a ``MilvusCatalogRef``)."""
    if not address:
        raise ConfigError("the look model needs the 'catalog' parameter (a catalog directory or a catalog root)")
    if is_milvus_address(address):
        return follow_catalog(address, interval_s=interval_s)
    path = catalog_path(address)
    if not path.is_absolute():
        path = Path(repository) / path
    if not (path / MANIFEST).is_file() and not (path / CURRENT).is_symlink():
        raise CatalogError(f"catalog {path} (parameter 'catalog' = {address!r}) is not a catalog directory "
                           f"({MANIFEST} is missing) nor a catalog root (no {CURRENT} pointer)")
    return follow_catalog(path, interval_s=interval_s)


def check_embedder_on_disk(repository: Path, catalog: Catalog) -> None:
    """Refuse a catalog whose embedder version the repository does not hold."""
    e = catalog.embedder
    have = versions_on_disk(repository, e.name)
    if str(e.version).isdigit() and int(e.version) in have:
        return
    raise errors.CatalogVersionMismatch(
        f"the catalog {catalog.path} was built with {e.name} version {e.version}, but the model repository "
        f"{repository} holds versions {have or 'none'} of {e.name}: export that version or rebuild the catalog"
    )


#: ``<repository>/<model>/1/model.py``: Triton's entry, importing the committed implementation
SHIM = '''"""Triton's entry for the {name!r} model: the implementation is {module} (see its docstring)."""
from {module} import TritonPythonModel  # noqa: F401
'''

PIPELINE_MODULES = {"look": "lookserve.server.pipelines.look", "thumbnails": "lookserve.server.pipelines.thumbnails"}


def write_pipeline_models(repository: Path, catalog: str | None = None, catalog_poll_s: float = 0.5,
                          max_batch_size: int = 8) -> list[Path]:
    """Write ``look`` and ``thumbnails`` into ``repository``: ``config.pbtxt`` from the typed
    configs (:func:`lookserve.contracts.look_config`, :func:`~lookserve.contracts.thumbnails_config`)
    and the ``1/model.py`` shim. Returns the model folders."""

    look_kwargs = {"catalog_poll_s": catalog_poll_s, "max_batch_size": max_batch_size}
    if catalog is not None:
        look_kwargs["catalog"] = str(catalog)
    written = []
    for config in (contracts.look_config(**look_kwargs), contracts.thumbnails_config()):
        model_dir = Path(repository) / config.name
        config.write(model_dir / "config.pbtxt")
        shim = model_dir / "1" / "model.py"
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(SHIM.format(name=config.name, module=PIPELINE_MODULES[config.name]))
        written.append(model_dir)
    return written


def load_look(admin, repository: Path | None, catalog: Path) -> None:
    """Load ``look`` through ``admin`` (a client holding the repository key) on ``catalog``, given
    in the load request's config so the repository's files are not rewritten; the pipeline
    models' entries are written only where ``repository`` (when given) has none."""
    if repository is not None and not (Path(repository) / contracts.LOOK / "1" / "model.py").is_file():
        write_pipeline_models(Path(repository))
    admin.load_model(contracts.LOOK, config=contracts.look_config(catalog=str(Path(catalog).resolve())))
