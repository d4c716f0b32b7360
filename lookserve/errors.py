"""The lookserve exception hierarchy.

Every error a user can meet derives from :class:`LookserveError`. Errors that come from Triton
are mapped from their ``grpc.StatusCode`` (never from message text) in
:mod:`lookserve.client.core` and raised ``from`` the original gRPC error.
"""

from __future__ import annotations


class LookserveError(Exception):
    """Base class of every lookserve error."""


# --- configuration and input -------------------------------------------------------------
class ConfigError(LookserveError):
    """A configuration (model config, CLI option, manifest) is invalid."""


class InvalidInputError(LookserveError, ValueError):
    """Input data (an image, a JSON file, a tensor) is malformed; the message names the problem."""


class DataError(LookserveError):
    """A data set on disk is missing, malformed or inconsistent."""


# --- server side -------------------------------------------------------------------------
class ServerError(LookserveError):
    """Triton answered with an error, or could not be reached."""


class ServerStartError(ServerError):
    """tritonserver could not be started or did not become ready in time."""


class ServerUnavailable(ServerError):
    """The server cannot be reached (gRPC UNAVAILABLE): it is down, restarting or unreachable."""


class DeadlineExceeded(ServerError):
    """The request did not complete within its deadline (gRPC DEADLINE_EXCEEDED)."""


class ModelNotFound(ServerError):
    """The model (or version) is not in the repository or not loaded."""


class ModelNotReady(ServerError):
    """The model exists but is not ready to serve (loading, unloading or failed)."""


class InvalidRequest(ServerError):
    """Triton refused the request: wrong input name, dtype or shape (gRPC INVALID_ARGUMENT)."""


class PermissionDenied(ServerError):
    """A restricted protocol was called without the right key (gRPC UNAVAILABLE/PERMISSION_DENIED/UNAUTHENTICATED)."""


class ResourceExhausted(ServerError):
    """The server is overloaded or the message is too large (gRPC RESOURCE_EXHAUSTED)."""


class InternalServerError(ServerError):
    """The model failed while executing (gRPC INTERNAL or UNKNOWN)."""


class ContractMismatch(ServerError):
    """The served model's inputs/outputs differ from what the caller expects."""


# --- catalog and export ------------------------------------------------------------------
class CatalogError(LookserveError):
    """A catalog index is missing, corrupt or unusable."""


class CatalogIntegrityError(CatalogError):
    """A catalog file does not match the checksum its manifest records."""


class CatalogVersionMismatch(CatalogError):
    """The catalog was built with another embedder version than the one served."""


class CatalogUnavailable(CatalogError):
    """The catalog's service (a Milvus server) cannot be reached or did not answer in time."""


class ExportError(LookserveError):
    """Turning a trained model into an ONNX model failed."""


class ParityError(ExportError):
    """The exported ONNX model's outputs diverge from the source framework's."""


class PublishError(LookserveError):
    """A new model version was refused before or while it was published."""
