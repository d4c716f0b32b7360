"""Triton's entry for the 'look' model: the implementation is lookserve.server.pipelines.look (see its docstring)."""
from lookserve.server.pipelines.look import TritonPythonModel  # noqa: F401
