"""Triton's entry for the 'thumbnails' model: the implementation is lookserve.server.pipelines.thumbnails (see its docstring)."""
from lookserve.server.pipelines.thumbnails import TritonPythonModel  # noqa: F401
