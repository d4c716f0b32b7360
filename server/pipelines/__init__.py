"""Triton python-backend models that run lookserve's client chains inside the server (BLS).

* :mod:`~lookserve.server.pipelines.look` — ``look``: one encoded photo → the ``lookserve look``
  JSON and typed tensors, calling ``detector`` and ``embedder`` through BLS;
* :mod:`~lookserve.server.pipelines.thumbnails` — ``thumbnails``: one product's view images →
  best view and footwear type, calling ``view_classifier``;
* :mod:`~lookserve.server.pipelines.repository` — what those models read of the model
  repository (metadata from ``config.pbtxt``, versions on disk, the catalog), free of Triton;
* :mod:`~lookserve.server.pipelines.bls` — :class:`~lookserve.server.pipelines.bls.BlsClient`,
  the :class:`~lookserve.client.core.TritonClient` surface the chains use, over BLS.

Only ``bls``, ``look`` and ``thumbnails`` import ``triton_python_backend_utils`` (present inside
Triton's python stub only); the repository entries ``model_repository/<name>/1/model.py`` are
two-line shims that import these modules.
"""
