"""deploy/k8s: every manifest parses, and every field that must agree with lookserve's own code
does — the launcher's flags, the model names, the ports, the repository key's name and Secret,
the KServe v2 health paths, the image, the autoscaler's metric, the catalog address. No server
and no cluster: the expected values come from the code (imported, never re-typed here)."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import tritonclient.http as httpclient
import yaml

from lookserve import contracts
from lookserve.client.core import DNS_SCHEME, check_url
from lookserve.cliutil import DEFAULT_URL, URL_ENVVAR
from lookserve.keys import KEY_ENVVAR, RESTRICTED_HEADER, RESTRICTED_KEY_NAME
from lookserve.modelconfig import ModelConfig
from lookserve.server.launcher import RESTRICTED_PROTOCOLS, ServerOptions, TritonServer

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
REPOSITORY = ROOT / "model_repository"
MODELS = (contracts.DETECTOR, contracts.EMBEDDER, contracts.VIEW_CLASSIFIER, contracts.LOOK, contracts.THUMBNAILS)
ONNX_MODELS = (contracts.DETECTOR, contracts.EMBEDDER, contracts.VIEW_CLASSIFIER)
KEY_REF = f"$({KEY_ENVVAR})"  # Kubernetes expands $(VAR) in args from the container's env

# Flags where a pod must differ from `lookserve serve` (each one's reason is in triton-deployment.yaml).
POD_DIFFERS = {"--grpc-address": "0.0.0.0", "--allow-http": "true", "--allow-metrics": "true"}
LAUNCHER_ONLY = {"--backend-directory"}  # the NGC image has its own backends
POD_ONLY = {"--model-config-name", "--http-address", "--http-port", "--http-restricted-api", "--metrics-address",
            "--metrics-port", "--grpc-max-connection-age", "--grpc-max-connection-age-grace"}
HELM_VALUES = {"milvus-values.yaml", "prometheus-adapter-values.yaml"}  # values files, not objects


def _load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]


def _object(kind: str, name: str) -> dict:
    found = [d for f in sorted(K8S.glob("*.yaml")) if f.name not in HELM_VALUES for d in _load(f.name)
             if d.get("kind") == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in {K8S}, found {len(found)}"
    return found[0]


def _flags(args: list[str]) -> dict[str, list[str]]:
    """``--name=value`` (or ``--name``) arguments as {name: [values in order]}."""
    out: dict[str, list[str]] = {}
    for arg in args:
        assert arg.startswith("--"), f"argument {arg!r} is not a --flag"
        name, _, value = arg.partition("=")
        out.setdefault(name, []).append(value)
    return out


@pytest.fixture(scope="module")
def deployment() -> dict:
    return _object("Deployment", "triton")


@pytest.fixture(scope="module")
def container(deployment: dict) -> dict:
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tritonserver"]
    return c


@pytest.fixture(scope="module")
def pod_flags(container: dict) -> dict[str, list[str]]:
    assert container["command"] == ["tritonserver"]
    return _flags(container["args"])


@pytest.fixture(scope="module")
def ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


@pytest.fixture(scope="module")
def namespace() -> str:
    return _load("kustomization.yaml")[0]["namespace"]


@pytest.fixture
def launcher_flags(tmp_path: Path, pod_flags: dict[str, list[str]]) -> dict[str, list[str]]:
    """What ``lookserve serve`` passes Triton for the same models and key (server/launcher.py)."""
    options = ServerOptions(model_repository=REPOSITORY, load_models=MODELS, repository_key=KEY_REF,
                            work_dir=tmp_path / "work")
    return _flags(TritonServer(options).command()[1:])


def test_manifests_parse_as_kubernetes_objects_in_one_namespace_when_loaded(namespace: str) -> None:
    files = sorted(p.name for p in K8S.glob("*.yaml"))
    resources = _load("kustomization.yaml")[0]["resources"]
    assert sorted(resources) == sorted(set(files) - HELM_VALUES - {"kustomization.yaml"}), \
        "every manifest is listed in kustomization.yaml, and every listed file exists"
    for name in files:
        docs = _load(name)
        assert docs, f"{name} is empty"
        if name in HELM_VALUES or name == "kustomization.yaml":
            continue
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{name}: not a Kubernetes object: {sorted(doc)}"
            expected = doc["metadata"]["name"] if doc["kind"] == "Namespace" else doc["metadata"].get("namespace")
            assert expected == namespace, f"{name}: {doc['kind']} {doc['metadata']['name']} is not in {namespace}"


def test_triton_args_are_the_launchers_flags_when_compared_flag_by_flag(
        pod_flags: dict[str, list[str]], launcher_flags: dict[str, list[str]], container: dict) -> None:
    missing = set(launcher_flags) - set(pod_flags) - LAUNCHER_ONLY
    assert not missing, f"lookserve serve passes {sorted(missing)}; the pod does not (add them, or say why not here)"
    extra = set(pod_flags) - set(launcher_flags) - POD_ONLY
    assert not extra, f"the pod passes {sorted(extra)}, which lookserve serve does not"
    for flag in sorted(set(launcher_flags) & set(pod_flags)):
        if flag in POD_DIFFERS:
            assert pod_flags[flag] == [POD_DIFFERS[flag]], f"{flag}: {pod_flags[flag]}"
        elif flag == "--model-repository":
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model-repository"]
            assert pod_flags[flag] == [mount["mountPath"]]
        elif flag == "--load-model":
            assert sorted(pod_flags[flag]) == sorted(launcher_flags[flag])
        else:
            assert pod_flags[flag] == launcher_flags[flag], f"{flag}: pod {pod_flags[flag]} vs launcher {launcher_flags[flag]}"


def test_triton_loads_every_lookserve_model_from_the_repository_when_started(pod_flags: dict[str, list[str]]) -> None:
    assert sorted(pod_flags["--load-model"]) == sorted(MODELS)
    assert pod_flags["--model-control-mode"] == ["explicit"] and pod_flags["--strict-readiness"] == ["true"]
    for model in MODELS:
        assert ModelConfig.read(REPOSITORY / model / "config.pbtxt").name == model
    (variant,) = pod_flags["--model-config-name"]
    for model in ONNX_MODELS:  # the GPU variant exists and asks for the GPU
        config = ModelConfig.read(REPOSITORY / model / "configs" / f"{variant}.pbtxt")
        assert config.name == model and {g.kind for g in config.instance_groups} == {"KIND_GPU"}


def test_repository_key_comes_from_the_secret_and_guards_grpc_and_http_when_restricted(
        pod_flags: dict[str, list[str]], container: dict) -> None:
    (env,) = [e for e in container["env"] if e["name"] == KEY_ENVVAR]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "lookserve-repository-key", "key": "key"}
    (grpc_rule,) = pod_flags["--grpc-restricted-protocol"]
    assert grpc_rule == f"{','.join(RESTRICTED_PROTOCOLS)}:{RESTRICTED_KEY_NAME}={KEY_REF}"
    (http_rule,) = pod_flags["--http-restricted-api"]
    apis, _, key = http_rule.partition(":")
    assert key == f"{RESTRICTED_KEY_NAME}={KEY_REF}"
    assert set(RESTRICTED_PROTOCOLS) | {"inference", "model-config", "statistics", "metadata"} <= set(apis.split(","))
    assert "health" not in apis.split(","), "the kubelet's probes carry no key"
    assert RESTRICTED_HEADER in (K8S / "README.md").read_text()


def test_ports_agree_across_args_container_services_and_the_client_default_when_read(
        pod_flags: dict[str, list[str]], ports: dict[str, int], deployment: dict, namespace: str) -> None:
    grpc_default = {f.name: f.default for f in ServerOptions.__dataclass_fields__.values()}["grpc_port"]
    assert ports["grpc"] == grpc_default == int(DEFAULT_URL.rpartition(":")[2])
    assert pod_flags["--grpc-port"] == [str(ports["grpc"])]
    assert pod_flags["--http-port"] == [str(ports["http"])] and pod_flags["--metrics-port"] == [str(ports["metrics"])]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    grpc_service = _object("Service", "triton")["spec"]
    assert grpc_service["clusterIP"] == "None", "headless: one DNS address per ready pod for gRPC round_robin"
    assert grpc_service["selector"].items() <= labels.items()
    (port,) = grpc_service["ports"]
    assert (port["port"], port["targetPort"]) == (ports["grpc"], "grpc")
    metrics_service = _object("Service", "triton-metrics")["spec"]
    assert metrics_service["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in metrics_service["ports"]] == [(ports["metrics"], "metrics")]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]

    exposed = re.search(r"^EXPOSE (.+)$", (ROOT / "deploy" / "ngc" / "Dockerfile").read_text(), re.M).group(1).split()
    assert {str(ports["grpc"]), str(ports["metrics"])} <= set(exposed)

    client = _object("ConfigMap", "lookserve-client")["data"]
    url = client[URL_ENVVAR]
    assert check_url(url) == url
    assert url == f"{DNS_SCHEME}triton.{namespace}.svc.cluster.local:{ports['grpc']}"


def test_probes_ask_the_health_paths_tritonclient_asks_when_checking_a_server(container: dict, ports: dict[str, int]) -> None:
    asked: list[str] = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.server_address[1]}", network_timeout=5)
        assert client.is_server_live() and client.is_server_ready()
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    live, ready = asked
    assert container["livenessProbe"]["httpGet"]["path"] == live
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == ready, probe
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", ports["http"]), probe


def test_each_replica_gets_a_gpu_and_enough_time_to_drain_when_stopped(container: dict, deployment: dict,
                                                                       pod_flags: dict[str, list[str]]) -> None:
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    pod = deployment["spec"]["template"]["spec"]
    (exit_timeout,) = pod_flags["--exit-timeout-secs"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(exit_timeout) + int(sleep[1])
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_model_repository_is_a_readonlymany_claim_mounted_read_only_when_deployed(deployment: dict, container: dict) -> None:
    claim = _object("PersistentVolumeClaim", "model-repository")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "model-repository"]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model-repository"]
    assert mount["readOnly"] is True


def test_image_is_the_ngc_dockerfiles_build_when_tagged(container: dict) -> None:
    triton = re.search(r"^ARG TRITON=(\S+)$", (ROOT / "deploy" / "ngc" / "Dockerfile").read_text(), re.M).group(1)
    name, _, tag = container["image"].rpartition(":")
    (image,) = _load("kustomization.yaml")[0]["images"]
    assert tag == triton == image["newTag"] and image["name"] == name


def test_autoscaler_scales_the_deployment_on_tritons_queue_time_when_metric_served(deployment: dict) -> None:
    hpa = _object("HorizontalPodAutoscaler", "triton")["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["minReplicas"] >= 2
    (metric,) = hpa["metrics"]
    (rule,) = _load("prometheus-adapter-values.yaml")[0]["rules"]["custom"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert re.match(rule["name"]["matches"], "nv_inference_queue_duration_us")
    assert rule["seriesQuery"].startswith("nv_inference_queue_duration_us{")
    assert "rate(nv_inference_queue_duration_us{" in rule["metricsQuery"]
    assert "rate(nv_inference_request_success{" in rule["metricsQuery"]


def test_catalog_address_names_the_milvus_service_of_the_helm_values_when_parsed(namespace: str) -> None:
    pymilvus = pytest.importorskip("pymilvus", reason="the Milvus catalog's address parser needs the [milvus] extra")
    from lookserve.client.catalog.milvus import TOKEN_ENV, parse_address

    values = _load("milvus-values.yaml")[0]
    address = parse_address(_object("ConfigMap", "lookserve-client")["data"]["catalog"])
    assert address.host == f"{values['fullnameOverride']}.{namespace}.svc"
    assert address.port == values["service"]["port"] and not address.tls and address.name
    assert TOKEN_ENV in (K8S / "milvus-values.yaml").read_text(), "the values name the token's variable"
    server_line = values["image"]["all"]["tag"].removeprefix("v").split(".")[:2]
    assert server_line == pymilvus.__version__.split(".")[:2], "the chart's Milvus is the client's server line"
