"""lookserve: fashion visual search served by NVIDIA Triton over gRPC.

The top-level folders of the repository are the sub-packages of this one namespace:

* ``lookserve.server``   (server/)    Triton launcher and the python-based ``onnxruntime`` backend
* ``lookserve.client``   (client/)    tritonclient wrapper, shop-the-look and thumbnail chains, catalog
* ``lookserve.export``   (export/)    tf2onnx export behind a parity gate
* ``lookserve.training`` (training/)  Keras 3 models and their training
* ``lookserve.data``     (data/)      street2shop-format generator, loader, downloader
* ``lookserve.bench``    (bench/)     load generator and reports
"""

__version__ = "0.1.0"
