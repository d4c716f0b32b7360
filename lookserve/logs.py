"""Logging set-up for the CLI: ``-v`` maps to levels; TensorFlow's and gRPC's logs quieted."""

from __future__ import annotations

import logging
import os

from rich.logging import RichHandler


def setup_logging(verbosity: int = 0) -> None:
    """0 → WARNING, 1 (-v) → INFO, 2+ (-vv) → DEBUG."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = RichHandler(show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level, format="%(name)s: %(message)s", handlers=[handler], force=True)
    quiet_third_party()


def quiet_third_party() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in ("tensorflow", "absl", "tf2onnx", "h5py", "matplotlib", "PIL", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
