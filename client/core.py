"""lookserve's client core: a ``tritonclient.grpc`` wrapper, sync and asyncio.

Both flavours share one code path (:class:`_Core`): request building, the retry schedule, the
mapping of every gRPC error to :mod:`lookserve.errors` by ``grpc.StatusCode`` (never by message
text), the diagnosis of ``UNAVAILABLE`` (down? model not ready? restricted protocol without the
key?) and the contract check. Only the calls that touch the network differ.

    with TritonClient("127.0.0.1:8001") as client:
        client.wait_ready(deadline_s=30)
        client.check_contract(contracts.embedder_config())
        result = client.infer("embedder", {"crops": crops})
        result.outputs["embedding"], result.model_version

Several replicas: ``TritonClient("127.0.0.1:8001,127.0.0.1:8011")`` (or ``"dns:///triton:8001"``)
opens one gRPC channel over all of them with gRPC's own ``round_robin`` balancing and its retry
policy on UNAVAILABLE (another replica within the deadline), see :func:`channel_args`; calls every
replica must get (repository load and unload, statistics, contract checks) go to each in turn
(:func:`each_replica`, :meth:`ClientOptions.for_each_endpoint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from lookserve import contracts, errors
from lookserve.keys import KEY_ENVVAR, RESTRICTED_HEADER
from lookserve.modelconfig import ModelConfig, triton_dtype

log = logging.getLogger(__name__)

_STATUS_TO_ERROR: dict[grpc.StatusCode, type[errors.ServerError]] = {
    grpc.StatusCode.UNAVAILABLE: errors.ServerUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: errors.ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: errors.ModelNotReady,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.INTERNAL: errors.InternalServerError,
    grpc.StatusCode.UNKNOWN: errors.InternalServerError,
    grpc.StatusCode.DATA_LOSS: errors.InternalServerError,
    grpc.StatusCode.CANCELLED: errors.ServerUnavailable,
    grpc.StatusCode.ABORTED: errors.ServerUnavailable,
    grpc.StatusCode.UNIMPLEMENTED: errors.ServerError,
    grpc.StatusCode.ALREADY_EXISTS: errors.ServerError,
}

_ADVICE: dict[type[errors.ServerError], str] = {
    errors.ServerUnavailable: "is tritonserver running at that address? (lookserve serve)",
    errors.DeadlineExceeded: "the server is overloaded or the deadline too short (--timeout)",
    errors.ModelNotFound: "load it first (lookserve models list / promote) or check the name and version",
    errors.InvalidRequest: "the request does not match the model's inputs (see its metadata)",
    errors.PermissionDenied: f"this call needs the repository key ({KEY_ENVVAR} or --key-file)",
    errors.InternalServerError: "see the server log",
}


def status_code(error: BaseException) -> grpc.StatusCode | None:
    """The ``grpc.StatusCode`` behind a tritonclient or gRPC error, or None."""
    for candidate in (error, error.__cause__, error.__context__):
        if isinstance(candidate, grpc.RpcError) and hasattr(candidate, "code"):
            code = candidate.code()
            if isinstance(code, grpc.StatusCode):
                return code
    if isinstance(error, InferenceServerException) and error.status():
        # tritonclient keeps the code as str(grpc.StatusCode.X); turn it back into the enum.
        name = str(error.status()).removeprefix("StatusCode.")
        return grpc.StatusCode.__members__.get(name)
    return None


def map_error(error: BaseException, what: str) -> errors.ServerError:
    """A lookserve exception for a gRPC failure of ``what`` (to be raised ``from error``)."""
    code = status_code(error)
    cls = _STATUS_TO_ERROR.get(code, errors.ServerError) if code is not None else errors.ServerError
    detail = error.message() if isinstance(error, InferenceServerException) else str(error)
    advice = _ADVICE.get(cls)
    message = f"{what} failed ({code.name if code else 'no status'}): {detail}"
    return cls(f"{message}; {advice}" if advice else message)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retry with exponential backoff and full jitter, only on UNAVAILABLE."""

    attempts: int = 3
    base_s: float = 0.05
    max_s: float = 1.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_s, self.base_s * (2**attempt)))


#: The prefix of a DNS name that stands for every replica behind it (gRPC's naming scheme).
DNS_SCHEME = "dns:///"


def _check_endpoint(url: str) -> str | None:
    """What is wrong with one ``host:port`` address, or None."""
    host, sep, port = url.rpartition(":")
    if "://" in url:
        return f"it has a scheme ({url.split('://', 1)[0]}://); gRPC wants host:port, e.g. 127.0.0.1:8001"
    if "/" in url:
        return "it has a path; gRPC wants host:port, e.g. 127.0.0.1:8001"
    if not sep or not host:
        return "it is not host:port, e.g. 127.0.0.1:8001"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"its port {port!r} is not a number from 1 to 65535"
    return None


def check_url(url: str) -> str:
    """Refuse a gRPC address that is not ``host:port``, a list ``host:port,host:port,...`` of
    replicas (IP addresses or localhost), or a DNS name of replicas ``dns:///host:port``.

    Raises :class:`~lookserve.errors.InvalidInputError` at once, before any connection attempt,
    naming the bad entry of a list: ``http://host:port`` or ``host`` alone would otherwise only fail
    after a deadline.
    """
    if url.startswith(DNS_SCHEME):
        problem = _check_endpoint(url.removeprefix(DNS_SCHEME))
        if problem:
            raise errors.InvalidInputError(f"server address {url!r} is malformed: after {DNS_SCHEME} {problem}")
        return url
    entries = url.split(",")
    if len(entries) == 1:
        problem = _check_endpoint(url)
        if problem:
            raise errors.InvalidInputError(f"server address {url!r} is malformed: {problem}")
        return url
    for i, entry in enumerate(entries, 1):
        problem = _check_endpoint(entry.strip()) if entry.strip() else "it is empty"
        if problem is None and _ip_family(entry.strip()) is None:
            problem = (f"its host is a name; a list takes IP addresses (or localhost): give each address, "
                       f"or one DNS name of all replicas as {DNS_SCHEME}host:port")
        if problem:
            raise errors.InvalidInputError(
                f"server address list {url!r}: entry {i} of {len(entries)} ({entry!r}) is malformed: {problem}")
    families = {_ip_family(e.strip()) for e in entries}
    if len(families) > 1:
        raise errors.InvalidInputError(f"server address list {url!r} mixes IPv4 and IPv6 addresses; gRPC takes one family")
    return url



def _ip_family(endpoint: str) -> str | None:
    """``ipv4`` or ``ipv6`` for an ``IP:port`` (localhost counts as 127.0.0.1), else None."""
    host = endpoint.rpartition(":")[0]
    if host == "localhost":
        return "ipv4"
    try:
        return f"ipv{ipaddress.ip_address(host.strip('[]')).version}"
    except ValueError:
        return None


def endpoints(url: str) -> tuple[str, ...]:
    """The replicas of a checked address: each ``host:port`` of a list; the addresses a
    ``dns:///host:port`` resolves to now (one ``ip:port`` each, for calls every replica must get)."""
    if url.startswith(DNS_SCHEME):
        host, _, port = url.removeprefix(DNS_SCHEME).rpartition(":")
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise errors.ServerUnavailable(f"the name of {url!r} does not resolve: {e.strerror}") from e
        found = dict.fromkeys(f"[{i[4][0]}]:{port}" if i[0] == socket.AF_INET6 else f"{i[4][0]}:{port}" for i in infos)
        return tuple(found)
    return tuple(e.strip() for e in url.split(","))


def grpc_target(url: str) -> str:
    """The gRPC target of a checked address, as gRPC's naming doc writes it: ``host:port`` as it
    is, a list as ``ipv4:a:p1,b:p2`` (``ipv6:[a]:p1,...``), ``dns:///host:port`` as it is."""
    if url.startswith(DNS_SCHEME) or "," not in url:
        return url
    parts = [e.strip() for e in url.split(",")]
    family = _ip_family(parts[0])
    return f"{family}:" + ",".join(p.replace("localhost:", "127.0.0.1:", 1) for p in parts)


#: Triton's gRPC service, the one the retry policy of :func:`channel_args` is for.
_TRITON_SERVICE = "inference.GRPCInferenceService"
#: Unary gRPC messages as large as tritonclient allows by default (it drops its defaults when
#: given channel_args, so lookserve passes them again).
_MAX_MESSAGE = 2**31 - 1


def channel_args(retry: RetryPolicy, attempts: int) -> list[tuple[str, Any]]:
    """gRPC channel options for several replicas: ``round_robin`` over every address of the target
    (a replica whose connection fails is skipped until it reconnects) and gRPC's own retries on
    ``UNAVAILABLE``, which go through the balancer's pick, so to another replica: ``attempts`` in
    all (1: none), with ``retry``'s backoff.

    No ``healthCheckConfig``: Triton (2.51) answers ``grpc.health.v1.Health/Check`` but not
    ``Health/Watch`` (UNIMPLEMENTED), and gRPC's client-side health checking uses Watch, so it would
    take every replica for healthy. A replica that is up without the model answers UNAVAILABLE,
    which the retry policy sends to another replica.
    """
    keepalive = grpcclient.KeepAliveOptions()
    args: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.lb_policy_name", "round_robin"),
        # Reconnect to a replica that went away within a second or two of its return (gRPC's
        # defaults back off from 1 s up to 120 s), so traffic comes back to a restarted one.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.enable_retries", 1),
        # A request is retried only while gRPC still holds it: hold image batches too (default 256 KiB).
        ("grpc.per_rpc_retry_buffer_size", 64 * 2**20),
    ]
    if attempts > 1:
        config = {"methodConfig": [{
            "name": [{"service": _TRITON_SERVICE}],
            "retryPolicy": {
                "maxAttempts": min(5, attempts),  # gRPC caps it at 5
                "initialBackoff": f"{retry.base_s:.3f}s",
                "maxBackoff": f"{retry.max_s:.3f}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]}
        args.append(("grpc.service_config", json.dumps(config)))
    return args


@dataclass(frozen=True)
class ClientOptions:
    url: str = "127.0.0.1:8001"
    repository_key: str | None = None
    timeout_s: float = 30.0  # per-request deadline
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    #: Behind several replicas, gRPC's own attempts of a request that failed UNAVAILABLE before
    #: any answer (each through round_robin's pick: another replica); ``retry`` is lookserve's, on top.
    replica_attempts: int = 3

    def __post_init__(self) -> None:
        check_url(self.url)
        if not 1 <= self.replica_attempts <= 5:
            raise errors.InvalidInputError(f"replica_attempts must be 1 to 5 (gRPC's limit), not {self.replica_attempts}")

    @property
    def replicated(self) -> bool:
        """True for a list of addresses or a DNS name: one balanced channel over the replicas."""
        return "," in self.url or self.url.startswith(DNS_SCHEME)

    def endpoints(self) -> tuple[str, ...]:
        """Each replica's ``host:port`` (see :func:`endpoints`)."""
        return endpoints(self.url)

    def for_each_endpoint(self) -> list[ClientOptions]:
        """These options once per replica: for calls that every replica must get (repository
        load and unload, statistics, metadata checks), one replica at a time."""
        return [replace(self, url=e) for e in self.endpoints()]

    def __repr__(self) -> str:  # never show the key
        key = "***" if self.repository_key else None
        return f"ClientOptions(url={self.url!r}, repository_key={key}, timeout_s={self.timeout_s}, ssl={self.ssl})"


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]


@dataclass(frozen=True)
class ImageInput:
    """A served model's image input: ``[B, S, S, 3]`` of ``datatype`` (UINT8) named ``name``."""

    name: str
    size: int  # S
    datatype: str


def image_input(
    meta: ModelMetadata, role: str = "", error: type[errors.LookserveError] = errors.ContractMismatch
) -> ImageInput:
    """The image input of a served model, from its metadata: the first UINT8 4-D input, square
    (``[B, S, S, 3]``, S ≥ 1). Else ``error``, naming the model (after ``role``: "detector", ...)
    and the inputs it has. The one reader of it for the look, thumbnails and catalog embedders."""
    t = next((t for t in meta.inputs if t.datatype == "UINT8" and len(t.shape) == 4), None)
    if t is None or t.shape[1] != t.shape[2] or t.shape[1] < 1:
        raise error(f"{role + ' ' if role else ''}{meta.name!r} has no UINT8 [B, S, S, 3] input: {meta.inputs}")
    return ImageInput(t.name, int(t.shape[1]), t.datatype)


# How the client words a served model's differences from its contract (contracts.contract_problems);
# a served model may give more outputs than asked for, never need more inputs.
_TENSOR_WORDS = {
    "missing": "{kind} {name!r} missing (served: {served})",
    "dtype": "{kind} {name!r} is {got}, expected {want}",
    "shape": "{kind} {name!r} has shape {got}, expected {want}",
}
_CONTRACT_WORDS = {
    "input": {**_TENSOR_WORDS, "unexpected": "served model needs inputs not expected: {names}"},
    "output": _TENSOR_WORDS,
}

def _merged_statistics(per_replica: Sequence[dict]) -> dict:
    return {"model_stats": [entry for stats in per_replica for entry in stats.get("model_stats", [])]}


@contextlib.contextmanager
def _naming_replica(url: str) -> Iterator[None]:
    """Re-raise a lookserve error from one replica's call with that replica's address in it."""
    try:
        yield
    except errors.LookserveError as e:
        if url in str(e):
            raise
        raise type(e)(f"replica {url}: {e}") from e


class _Core:
    """What the sync and asyncio clients share; everything here is free of network I/O."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self._rng = random.Random()

    @property
    def url(self) -> str:
        return self.options.url

    def _admin_headers(self) -> dict[str, str]:
        return {RESTRICTED_HEADER: self.options.repository_key} if self.options.repository_key else {}

    def _client_kwargs(self) -> dict:
        kwargs = dict(
            url=grpc_target(self.options.url),
            ssl=self.options.ssl,
            root_certificates=self.options.root_certificates,
            private_key=self.options.private_key,
            certificate_chain=self.options.certificate_chain,
        )
        if self.options.replicated:  # one address: tritonclient's own channel options, as always
            kwargs["channel_args"] = channel_args(self.options.retry, self.options.replica_attempts)
        return kwargs

    @staticmethod
    def _inputs(inputs: Mapping[str, np.ndarray], module) -> list:
        built = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            try:
                datatype = triton_dtype(array.dtype)
            except errors.ConfigError as e:
                raise errors.InvalidInputError(f"input {name!r}: {e}") from e
            if datatype == "STRING":  # bytes elements travel as KServe v2 BYTES
                datatype = "BYTES"
            tensor = module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            built.append(tensor)
        return built

    @staticmethod
    def _result(response, output_names: Sequence[str] | None) -> InferResult:
        proto = response.get_response()
        names = output_names or [o.name for o in proto.outputs]
        return InferResult(
            model_name=proto.model_name,
            model_version=proto.model_version,
            outputs={n: response.as_numpy(n) for n in names},
        )

    @staticmethod
    def _metadata(meta: dict) -> ModelMetadata:
        def tensors(items) -> tuple[TensorMeta, ...]:
            return tuple(TensorMeta(t["name"], t["datatype"], tuple(int(d) for d in t["shape"])) for t in items)

        return ModelMetadata(
            name=meta["name"],
            versions=tuple(meta.get("versions", ())),
            inputs=tensors(meta.get("inputs", ())),
            outputs=tensors(meta.get("outputs", ())),
        )

    @staticmethod
    def contract_differences(expected: ModelConfig, meta: ModelMetadata) -> list[str]:
        """Human-readable differences between an expected config and served metadata."""
        problems: list[str] = []
        batch = [-1] if expected.max_batch_size > 0 else []
        for kind, want, have in (
            ("input", expected.inputs, meta.inputs),
            ("output", expected.outputs, meta.outputs),
        ):
            problems += contracts.contract_problems(
                kind, [(t.name, t.dtype, [*batch, *t.dims]) for t in want], [(t.name, t.datatype, list(t.shape)) for t in have],
                _CONTRACT_WORDS[kind], served=", ".join(t.name for t in have) or "none",
            )
        return problems

    def _raise_contract(self, expected: ModelConfig, meta: ModelMetadata, version: str) -> None:
        problems = self.contract_differences(expected, meta)
        if problems:
            raise errors.ContractMismatch(
                f"model {expected.name!r} (version {version or 'latest'}) served at {self.url} does not "
                f"match what lookserve expects: " + "; ".join(problems)
            )

    def _retry_again(self, code: grpc.StatusCode | None, attempt: int, attempts: int, restricted: bool,
                     elapsed_s: float) -> bool:
        """lookserve's own retry, for what gRPC's does not retry (a request it had sent already, one
        address): only UNAVAILABLE, never a restricted call (UNAVAILABLE there means "no key"),
        within the attempts and within the request deadline."""
        return (code == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts and not restricted
                and elapsed_s < self.options.timeout_s)

    def _unreachable(self, error: BaseException) -> errors.ServerUnavailable:
        code = status_code(error)
        return errors.ServerUnavailable(
            f"nothing answers at {self.url} ({code.name if code else 'no status'}: connection refused or no route); "
            "is tritonserver running there? (lookserve serve; --url/-u or LOOKSERVE_URL sets the address)"
        )

    def _not_ready(self, deadline_s: float) -> errors.ServerUnavailable:
        return errors.ServerUnavailable(
            f"server at {self.url} answers but was not ready within {deadline_s:.0f} s (models still loading?); "
            "see the server log"
        )

    def _diagnosis(self, error: BaseException, what: str, live: bool | None, restricted: bool) -> errors.ServerError:
        mapped = map_error(error, what)
        if isinstance(mapped, errors.ServerUnavailable) and live:
            # Triton answers UNAVAILABLE both when it is down and when a restricted protocol is
            # called without its key; a live server tells the two apart.
            if restricted:
                return errors.PermissionDenied(
                    f"{what} was refused: the server at {self.url} restricts this protocol and "
                    f"{'the key sent is wrong' if self.options.repository_key else 'no key was sent'}; "
                    f"pass the repository key ({KEY_ENVVAR} or --key-file)"
                )
            return errors.ModelNotReady(f"{what} failed: the server is up but the model is not ready ({mapped})")
        return mapped


class TritonClient(_Core):
    """Synchronous client. Thread-safe for concurrent ``infer`` calls (one gRPC channel)."""

    def __init__(self, url: str | ClientOptions = "127.0.0.1:8001", **kwargs) -> None:
        super().__init__(url if isinstance(url, ClientOptions) else ClientOptions(url=url, **kwargs))
        self._client = grpcclient.InferenceServerClient(**self._client_kwargs())
        self._replicas: dict[str, TritonClient] = {}  # one per replica address seen: see replica_clients
        self._replicas_lock = threading.Lock()

    def replica_clients(self) -> list[TritonClient]:
        """One client per replica behind this one's address list (resolved now, so a ``dns:///``
        name's current replicas), each made once and kept until :meth:`close` — the calls every
        replica must get (statistics polled by a swap's drain) open no channel each."""
        with self._replicas_lock:
            wanted = self.options.for_each_endpoint()
            for o in wanted:
                if o.url not in self._replicas:
                    self._replicas[o.url] = TritonClient(o)
            return [self._replicas[o.url] for o in wanted]

    # --- plumbing ---------------------------------------------------------------------
    def _call(self, what: str, fn, *, retry: bool = True, restricted: bool = False):
        attempts = self.options.retry.attempts if retry else 1
        start = time.monotonic()
        for attempt in range(attempts):
            try:
                return fn()
            except (InferenceServerException, grpc.RpcError) as e:
                code = status_code(e)
                delay = self.options.retry.delay(attempt, self._rng)
                if self._retry_again(code, attempt, attempts, restricted, time.monotonic() - start + delay):
                    log.debug("%s: UNAVAILABLE, retry %d in %.3f s", what, attempt + 1, delay)
                    time.sleep(delay)
                    continue
                live = self._live_quietly() if code == grpc.StatusCode.UNAVAILABLE else None
                raise self._diagnosis(e, what, live, restricted) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _live_quietly(self) -> bool:
        try:
            return bool(self._client.is_server_live(client_timeout=2.0))
        except (InferenceServerException, grpc.RpcError):
            return False

    # --- health -----------------------------------------------------------------------
    def is_live(self) -> bool:
        return self._live_quietly()

    def wait_ready(self, deadline_s: float = 30.0, connect_grace_s: float = 1.0) -> None:
        """Block until the server is live and ready, or raise ServerUnavailable.

        A server that answers but is not ready yet (models loading) is waited for up to
        ``deadline_s``; an address where nothing answers at all (connection refused, no route)
        fails after ``connect_grace_s``, so a wrong ``--url`` is reported in about a second.
        """
        start = time.monotonic()
        end = start + deadline_s
        last: BaseException | None = None
        answered = False
        while time.monotonic() < end:
            try:
                if self._client.is_server_ready(client_timeout=min(2.0, max(0.1, end - time.monotonic()))):
                    return
                answered = True
            except (InferenceServerException, grpc.RpcError) as e:
                last = e
                if not answered and time.monotonic() - start >= connect_grace_s:
                    raise self._unreachable(e) from e
            time.sleep(0.1)
        raise (self._not_ready(deadline_s) if answered or last is None else self._unreachable(last)) from last

    def wait_model_ready(self, name: str, deadline_s: float = 60.0, version: str = "") -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                if self._client.is_model_ready(name, version, client_timeout=2.0):
                    return
            except (InferenceServerException, grpc.RpcError):
                pass
            time.sleep(0.1)
        raise errors.ModelNotReady(f"model {name!r} version {version or 'latest'} not ready within {deadline_s:.0f} s")

    def is_model_ready(self, name: str, version: str = "") -> bool:
        return bool(self._call(f"readiness of {name}", lambda: self._client.is_model_ready(name, version, client_timeout=self.options.timeout_s)))

    # --- metadata and contracts ---------------------------------------------------------
    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        meta = self._call(
            f"metadata of {name!r}",
            lambda: self._client.get_model_metadata(name, version, as_json=True, client_timeout=self.options.timeout_s),
        )
        return self._metadata(meta)

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        response = self._call(
            f"config of {name!r}",
            lambda: self._client.get_model_config(name, version, client_timeout=self.options.timeout_s),
        )
        assert isinstance(response.config, model_config_pb2.ModelConfig)
        return ModelConfig.from_proto(response.config)

    def check_contract(self, expected: ModelConfig, version: str = "") -> ModelMetadata:
        """Raise ContractMismatch naming every difference. Behind several replicas every one is
        checked (the error names the replica that differs)."""
        if self.options.replicated:
            metas = []
            with each_replica(self) as each:
                for replica in each:
                    with _naming_replica(replica.url):
                        metas.append(replica.check_contract(expected, version))
            return metas[0]
        meta = self.model_metadata(expected.name, version)
        self._raise_contract(expected, meta, version)
        return meta

    # --- inference -------------------------------------------------------------------------
    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        version: str = "",
        timeout_s: float | None = None,
        request_id: str = "",
    ) -> InferResult:
        built = self._inputs(inputs, grpcclient)
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        timeout = timeout_s if timeout_s is not None else self.options.timeout_s
        response = self._call(
            f"inference on {model!r}",
            lambda: self._client.infer(
                model, built, model_version=version, outputs=requested, request_id=request_id, client_timeout=timeout
            ),
        )
        return self._result(response, outputs)

    # --- statistics and repository ----------------------------------------------------------
    def statistics(self, model: str = "", version: str = "") -> dict:
        """Triton's inference statistics; behind several replicas, every replica's entries in one
        ``model_stats`` list (sum them per version; :func:`each_replica` for one replica's)."""
        if self.options.replicated:
            with each_replica(self) as replicas:
                return _merged_statistics([r.statistics(model, version) for r in replicas])
        return self._call(
            "statistics",
            lambda: self._client.get_inference_statistics(model, version, as_json=True, client_timeout=self.options.timeout_s),
        )

    def repository_index(self) -> list[dict]:
        index = self._call(
            "repository index",
            lambda: self._client.get_model_repository_index(
                headers=self._admin_headers(), as_json=True, client_timeout=self.options.timeout_s
            ),
            restricted=True,
        )
        return list(index.get("models", []))

    def load_model(self, name: str, config: ModelConfig | None = None, timeout_s: float = 300.0) -> None:
        """Load (or reload) a model through the repository API; needs the repository key."""
        config_json = None
        if config is not None:
            config_json = json_format.MessageToJson(config.to_proto(), preserving_proto_field_name=True)
        self._call(
            f"loading {name!r}",
            lambda: self._client.load_model(name, headers=self._admin_headers(), config=config_json, client_timeout=timeout_s),
            retry=False,
            restricted=True,
        )

    def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self._call(
            f"unloading {name!r}",
            lambda: self._client.unload_model(
                name, headers=self._admin_headers(), unload_dependents=unload_dependents, client_timeout=self.options.timeout_s
            ),
            retry=False,
            restricted=True,
        )

    def close(self) -> None:
        with self._replicas_lock:
            replicas, self._replicas = list(self._replicas.values()), {}
        for r in replicas:
            r.close()
        self._client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncTritonClient(_Core):
    """The asyncio twin of :class:`TritonClient` (``tritonclient.grpc.aio``)."""

    def __init__(self, url: str | ClientOptions = "127.0.0.1:8001", **kwargs) -> None:
        super().__init__(url if isinstance(url, ClientOptions) else ClientOptions(url=url, **kwargs))
        self._client = grpcaio.InferenceServerClient(**self._client_kwargs())

    async def _call(self, what: str, fn, *, retry: bool = True, restricted: bool = False):
        attempts = self.options.retry.attempts if retry else 1
        start = time.monotonic()
        for attempt in range(attempts):
            try:
                return await fn()
            except (InferenceServerException, grpc.RpcError) as e:
                code = status_code(e)
                delay = self.options.retry.delay(attempt, self._rng)
                if self._retry_again(code, attempt, attempts, restricted, time.monotonic() - start + delay):
                    await asyncio.sleep(delay)
                    continue
                live = await self._live_quietly() if code == grpc.StatusCode.UNAVAILABLE else None
                raise self._diagnosis(e, what, live, restricted) from e
        raise AssertionError("unreachable")  # pragma: no cover

    async def _live_quietly(self) -> bool:
        try:
            return bool(await self._client.is_server_live(client_timeout=2.0))
        except (InferenceServerException, grpc.RpcError):
            return False

    async def wait_ready(self, deadline_s: float = 30.0, connect_grace_s: float = 1.0) -> None:
        """The asyncio twin of :meth:`TritonClient.wait_ready`."""
        start = time.monotonic()
        end = start + deadline_s
        last: BaseException | None = None
        answered = False
        while time.monotonic() < end:
            try:
                if await self._client.is_server_ready(client_timeout=min(2.0, max(0.1, end - time.monotonic()))):
                    return
                answered = True
            except (InferenceServerException, grpc.RpcError) as e:
                last = e
                if not answered and time.monotonic() - start >= connect_grace_s:
                    raise self._unreachable(e) from e
            await asyncio.sleep(0.1)
        raise (self._not_ready(deadline_s) if answered or last is None else self._unreachable(last)) from last

    async def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        meta = await self._call(
            f"metadata of {name!r}",
            lambda: self._client.get_model_metadata(name, version, as_json=True, client_timeout=self.options.timeout_s),
        )
        return self._metadata(meta)

    async def check_contract(self, expected: ModelConfig, version: str = "") -> ModelMetadata:
        if self.options.replicated:  # every replica, as TritonClient.check_contract
            metas = []
            for options in self.options.for_each_endpoint():
                async with AsyncTritonClient(options) as replica:
                    with _naming_replica(replica.url):
                        metas.append(await replica.check_contract(expected, version))
            return metas[0]
        meta = await self.model_metadata(expected.name, version)
        self._raise_contract(expected, meta, version)
        return meta

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        version: str = "",
        timeout_s: float | None = None,
        request_id: str = "",
    ) -> InferResult:
        built = self._inputs(inputs, grpcaio)
        requested = [grpcaio.InferRequestedOutput(n) for n in outputs] if outputs else None
        timeout = timeout_s if timeout_s is not None else self.options.timeout_s
        response = await self._call(
            f"inference on {model!r}",
            lambda: self._client.infer(
                model, built, model_version=version, outputs=requested, request_id=request_id, client_timeout=timeout
            ),
        )
        return self._result(response, outputs)

    async def statistics(self, model: str = "", version: str = "") -> dict:
        if self.options.replicated:  # every replica's entries, as TritonClient.statistics
            stats = []
            for options in self.options.for_each_endpoint():
                async with AsyncTritonClient(options) as replica:
                    stats.append(await replica.statistics(model, version))
            return _merged_statistics(stats)
        return await self._call(
            "statistics",
            lambda: self._client.get_inference_statistics(model, version, as_json=True, client_timeout=self.options.timeout_s),
        )

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncTritonClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


@contextlib.contextmanager
def each_replica(client) -> Iterator[list]:
    """One client per replica behind ``client`` (same options, one address each), for the calls
    every replica must get one at a time (repository load and unload, statistics); ``[client]``
    itself when it has one address. A :class:`TritonClient`'s own are reused
    (:meth:`TritonClient.replica_clients`); others are made for the block and closed on exit."""
    options = getattr(client, "options", None)
    if options is None or not options.replicated:
        yield [client]
        return
    if isinstance(client, TritonClient):
        yield client.replica_clients()
        return
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(TritonClient(o)) for o in client.options.for_each_endpoint()]
