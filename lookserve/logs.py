"""Logging set-up for the CLI: ``-v`` maps to levels; TensorFlow's and gRPC's logs quieted."""

from __future__ import annotations

import logging
import os


def setup_logging(verbosity: int = 0) -> None:
    """0 → WARNING, 1 (-v) → INFO, 2+ (-vv) → DEBUG."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(name)s: %(message)s"
    except ImportError:  # pragma: no cover - rich is a core dependency
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    quiet_third_party()


def quiet_third_party() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in ("tensorflow", "absl", "tf2onnx", "h5py", "matplotlib", "PIL", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
