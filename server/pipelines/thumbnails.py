"""Triton model ``thumbnails``: one product's view images (encoded bytes, any count) → the
index of the best view, every view's score, the footwear type and its probabilities, and the
JSON ``lookserve thumbnails`` writes per product.

Each request runs :class:`lookserve.client.thumbnails.ThumbnailPipeline` — the client chain —
over :class:`~lookserve.server.pipelines.bls.BlsClient`: decoding and resizing here, all views
in one ``view_classifier`` request. A broken view fails its request with the client's message.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from lookserve import errors
from lookserve.client.thumbnails import ThumbnailPipeline
from lookserve.server.pipelines.bls import BlsClient
from lookserve.server.pipelines.look import error_of

log = logging.getLogger(__name__)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.repository = Path(args["model_repository"]).parent
        self.client = BlsClient(self.repository)
        self.pipeline: ThumbnailPipeline | None = None
        self.config = json.loads(args["model_config"])

    def _one(self, request):
        try:
            if self.pipeline is None:
                self.pipeline = ThumbnailPipeline(self.client)
            views = [bytes(v) for v in pb_utils.get_input_tensor_by_name(request, "images").as_numpy().reshape(-1)]
            r = self.pipeline.run("product", views)
            best = next(i for i, v in enumerate(r.views) if v.image == r.thumbnail)
            outputs = {
                "thumbnails_json": np.array([r.to_json().encode()], dtype=np.object_),
                "best_view_index": np.array([best], np.int32),
                "view_scores": np.array([v.best_view for v in r.views], np.float32),
                "footwear_type": np.array([r.footwear_type.encode()], dtype=np.object_),
                "type_probs": np.array(list(r.type_probs.values()), np.float32),
            }
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, v) for n, v in outputs.items()])
        except Exception as e:  # noqa: BLE001 - the request's error
            if not isinstance(e, errors.LookserveError):
                log.exception("thumbnails request failed")
            return pb_utils.InferenceResponse(error=error_of(e))

    def execute(self, requests):
        return [self._one(r) for r in requests]
