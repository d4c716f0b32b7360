"""Triton model ``look``: shop the look in one call.

Input ``image`` is the encoded photo as sent (JPEG, PNG, WebP: decoding, EXIF orientation and
colour modes happen here with :func:`lookserve.images.decode_image`, the client's code), plus
optional ``source`` (the name the JSON records), ``k``, ``min_score``, ``categories``,
``filter`` and ``gate`` (the pose gate: off, person, full-shot; needs ``pose_detector`` and
``pose_landmarks`` in the repository), and ``masks`` (False: the JSON without the 28×28 masks, as ``lookserve look
--no-masks`` writes it). Each request runs :class:`lookserve.client.look.LookPipeline` — the chain
``lookserve look`` runs — over :class:`~lookserve.server.pipelines.bls.BlsClient`; the
requests of one dynamic batch run on threads at once, so their detector and embedder calls
meet in those models' dynamic batchers. A request that fails (a corrupt photo, a bad knob)
gets its own error, ``<ErrorClass>: <message>`` as the client chain would raise it; the other
requests of the batch are answered.

Parameters (``config.pbtxt``): ``catalog`` — a catalog directory, or a catalog root whose
``current`` pointer is followed (``catalog_poll_s``); relative to the model repository. Every
embedder request is pinned to the catalog's embedder version; a catalog that is missing, or
whose embedder version the repository does not hold, fails the load with its reason.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from lookserve import errors
from lookserve.client.look import LookConfig, LookPipeline
from lookserve.client.look_remote import config_for_request, error_text, look_tensors
from lookserve.server.pipelines.bls import BlsClient
from lookserve.server.pipelines.repository import check_embedder_on_disk, open_catalog_ref

log = logging.getLogger(__name__)

DECODE_NAME = "image bytes"  # how lookserve.images.decode_image names a photo given as bytes


def _param(config: dict, key: str, default: str = "") -> str:
    value = config.get("parameters", {}).get(key)
    if value is None:
        return default
    return value.get("string_value", default) if isinstance(value, dict) else str(value)


def error_of(e: Exception):
    """The TritonError for a request that failed with ``e``: the client chain's message, INVALID_ARG for bad input."""
    invalid = isinstance(e, errors.InvalidInputError | errors.ConfigError)
    text = error_text(e) if isinstance(e, errors.LookserveError) else f"InternalServerError: {type(e).__name__}: {e}"
    try:
        code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
        return pb_utils.TritonError(text, code)
    except (AttributeError, TypeError):  # an older python backend: message only
        return pb_utils.TritonError(text)


def _optional(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.repository = Path(args["model_repository"]).parent
        address = _param(config, "catalog")
        try:
            self.catalog = open_catalog_ref(address, self.repository, float(_param(config, "catalog_poll_s", "0.5")))
            check_embedder_on_disk(self.repository, self.catalog.get())
        except errors.LookserveError as e:
            raise pb_utils.TritonModelException(f"{self.name}: {e}") from e
        self.client = BlsClient(self.repository)
        self.base = LookConfig()
        self._pipelines: dict[LookConfig, LookPipeline] = {}
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=max(1, int(config.get("max_batch_size", 1))),
                                       thread_name_prefix="look")
        log.info("look: catalog %s (embedder %s v%s)", self.catalog.get().path, self.catalog.get().embedder.name,
                 self.catalog.get().embedder.version)

    def _pipeline(self, config: LookConfig) -> LookPipeline:
        with self._lock:
            pipe = self._pipelines.get(config)
            if pipe is None:
                if len(self._pipelines) > 64:  # knobs vary per request: keep the cache bounded
                    self._pipelines.clear()
                pipe = self._pipelines[config] = LookPipeline(self.client, self.catalog, config)
            return pipe

    def _one(self, request):
        try:
            image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            if image.size != 1:
                raise errors.InvalidInputError(
                    f"look takes one photo per request (image shape {list(image.shape)}); send concurrent "
                    "requests instead: the server batches them")
            k = _optional(request, "k")
            min_score = _optional(request, "min_score")
            categories = _optional(request, "categories")
            catalog_filter = _optional(request, "filter")
            gate = _optional(request, "gate")
            source = _optional(request, "source")
            masks = _optional(request, "masks")
            config = config_for_request(
                self.base,
                k=None if k is None else int(k.reshape(-1)[0]),
                min_score=None if min_score is None else float(min_score.reshape(-1)[0]),
                categories=() if categories is None else tuple(_text(c) for c in categories.reshape(-1)),
                catalog_filter=None if catalog_filter is None else _text(catalog_filter.reshape(-1)[0]),
                gate=None if gate is None else _text(gate.reshape(-1)[0]),
            )
            name = None if source is None else _text(source.reshape(-1)[0])
            try:
                result = self._pipeline(config).run(bytes(image.reshape(-1)[0]))
            except errors.InvalidInputError as e:  # name the photo as the client chain does for a file
                if name is None or DECODE_NAME not in str(e):
                    raise
                raise type(e)(str(e).replace(DECODE_NAME, name, 1)) from e
            if name is not None:
                result = replace(result, source=name)
            include_masks = True if masks is None else bool(masks.reshape(-1)[0])
            doc = result.to_json(include_masks, indent=None)  # compact on the wire; same document
            tensors = {"look_json": np.array([doc.encode()], dtype=np.object_),
                       **look_tensors(result, config.k)}
            return pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(v[None])) for n, v in tensors.items()])
        except Exception as e:  # noqa: BLE001 - every failure is this request's error, never the batch's
            if not isinstance(e, errors.LookserveError):
                log.exception("look request failed")
            return pb_utils.InferenceResponse(error=error_of(e))

    def execute(self, requests):
        return list(self.pool.map(self._one, requests))

    def finalize(self) -> None:
        self.pool.shutdown(wait=True)
