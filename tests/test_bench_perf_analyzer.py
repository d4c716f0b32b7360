"""perf_analyzer as a load engine of ``lookserve bench model`` (bench/perf_analyzer.py)."""

from __future__ import annotations

import base64
import json
import struct
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookserve import contracts, errors
from lookserve.bench import perf_analyzer as pa
from lookserve.bench.load import LoadSpec, markdown
from lookserve.bench.look_server import perf_analyzer_look
from lookserve.cli import app
from lookserve.client.core import TritonClient
from tinymodels import projection_embedder, write_model

# Captured from perf_analyzer 2.41.0 (-f FILE --verbose-csv) against the exported embedder.
CLOSED_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency,request/response,response wait\n"
    "4,263.2,52,2686,3172,95,8798,356,5,13670,21290,24250,32330,15164,60,15100\n"
)
RATE_CSV = (
    "Request Rate,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency,request/response,response wait\n"
    "50,37.971,56,1482,1344,88,5104,325,4,6763,14522,17068,20267,8406,60,8300\n"
)
STDOUT = """Request concurrency: 4
  Client:
    Request count: 953
    Throughput: 263.2 infer/sec
  Server:
    Inference count: 953
    Execution count: 439
    Successful request count: 953
"""


def test_parse_csv_gives_milliseconds_and_the_level_when_closed_or_rate_csv() -> None:
    (row,) = pa.parse_csv(CLOSED_CSV)
    assert row["level"] == 4 and row["inferences_per_s"] == pytest.approx(263.2)
    assert row["p99_ms"] == pytest.approx(32.33) and row["queue_ms"] == pytest.approx(3.172)
    assert row["mean_ms"] == pytest.approx(15.164)
    (rate,) = pa.parse_csv(RATE_CSV)
    assert rate["level"] == 50 and rate["p50_ms"] == pytest.approx(6.763)


def test_parse_csv_raises_invalid_input_when_not_a_perf_analyzer_csv() -> None:
    with pytest.raises(errors.InvalidInputError, match="not a perf_analyzer CSV"):
        pa.parse_csv("a,b\n1,2\n")
    with pytest.raises(errors.InvalidInputError, match="no rows"):
        pa.parse_csv(CLOSED_CSV.splitlines()[0] + "\n")


def test_to_point_reads_like_a_lookserve_point_when_given_a_row_and_counts() -> None:
    point = pa.to_point(pa.parse_csv(CLOSED_CSV)[0], pa.parse_counts(STDOUT), "embedder", batch_size=1, elapsed_s=3.0)
    assert point["requests"] == 953 and point["throughput_rps"] == pytest.approx(263.2)
    assert point["breakdown"]["client_network_ms"] == pytest.approx((52 + 2686 + 5) / 1000)
    assert point["breakdown"]["compute_ms"] == pytest.approx((95 + 8798 + 356) / 1000)
    assert point["triton"]["embedder"]["mean_batch"] == pytest.approx(953 / 439)
    spec = LoadSpec(levels=(4,), duration_s=3.0)
    text = markdown(pa.report([point], "embedder", spec, 1, "127.0.0.1:1"))
    assert "| 4 | 953 | 263.2 |" in text and "embedder: 2.17" in text


def test_command_uses_the_same_load_point_when_closed_or_poisson(tmp_path: Path) -> None:
    fake = pa.PerfAnalyzer(tmp_path / "perf_analyzer", {})
    closed = pa.command(fake, "embedder", "127.0.0.1:8001", "closed", 4, 1000, batch_size=2)
    assert closed[closed.index("--concurrency-range") + 1] == "4:4" and closed[closed.index("-b") + 1] == "2"
    assert closed[closed.index("--measurement-interval") + 1] == "1000"
    assert closed[closed.index("--max-trials") + 1] == str(pa.WINDOWS)
    poisson = pa.command(fake, "embedder", "127.0.0.1:8001", "poisson", 50, 1000)
    assert poisson[poisson.index("--request-rate-range") + 1] == "50:50"
    assert poisson[poisson.index("--request-distribution") + 1] == "poisson"


def test_locate_raises_config_error_naming_make_install_when_binary_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(pa.ENV_BINARY, str(tmp_path / "nope"))
    with pytest.raises(errors.ConfigError, match="make install"):
        pa.locate()


def test_install_binary_extracts_only_perf_analyzer_executable_when_given_a_tritonclient_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "tritonclient-2.41.0-py3-none-manylinux1_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tritonclient-2.41.0.data/data/bin/perf_analyzer", b"\x7fELF binary")
        z.writestr("tritonclient-2.41.0.data/data/bin/perf_client", b"other")
        z.writestr("tritonclient/__init__.py", b"")
    assert pa.main(["install", str(tmp_path), str(tmp_path / "bin")]) == 0
    target = tmp_path / "bin" / "perf_analyzer"
    assert target.read_bytes() == b"\x7fELF binary" and target.stat().st_mode & 0o111
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["perf_analyzer"]
    empty = tmp_path / "other" / "tritonclient-9-py3-none-manylinux1_x86_64.whl"
    empty.parent.mkdir()
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("tritonclient/__init__.py", b"")
    with pytest.raises(errors.ConfigError, match="no data/bin/perf_analyzer"):
        pa.install_binary(empty, tmp_path / "bin2")


@pytest.mark.triton
def test_cli_bench_model_engine_both_reports_both_engines_and_their_ratio_when_served(tmp_path: Path) -> None:
    """The installed perf_analyzer (make install) against a private tritonserver: the same load
    points, one report per engine, and perf_analyzer/lookserve ratios."""

    write_model(tmp_path / "repo", contracts.embedder_config(), projection_embedder)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "model", "embedder", "--repository", str(tmp_path / "repo"),
                                      "--levels", "1,2", "--duration", "0.9", "--warmup", "0.3", "--engine", "both",
                                      "--out", str(out), "--stem", "m"])
    assert result.exit_code == 0, result.output
    ours = json.loads((out / "m_lookserve.json").read_text())
    theirs = json.loads((out / "m_perf_analyzer.json").read_text())
    assert [p["level"] for p in ours["points"]] == [p["level"] for p in theirs["points"]] == [1, 2]
    for p in theirs["points"]:
        assert p["requests"] > 10 and p["throughput_rps"] > 0 and p["latency"]["p99_ms"] >= p["latency"]["p50_ms"] > 0
        assert "--concurrency-range" in p["command"]
    engines = json.loads((out / "m_engines.json").read_text())
    assert [r["level"] for r in engines["rows"]] == [1, 2]
    assert all(r["throughput_rps"]["ratio"] > 0 for r in engines["rows"])
    assert "perf_analyzer (B) vs lookserve bench (A)" in (out / "m_engines.md").read_text()


def test_bytes_input_data_serialises_each_element_with_its_length_when_given_photos() -> None:
    data = pa.bytes_input_data([[b"\xff\xd8abc"], [b"x", b"yz"]], "image")
    first, second = (base64.b64decode(d["image"]["b64"]) for d in data["data"])
    assert first == struct.pack("<I", 5) + b"\xff\xd8abc" and data["data"][0]["image"]["shape"] == [1]
    assert second == struct.pack("<I", 1) + b"x" + struct.pack("<I", 2) + b"yz"
    with pytest.raises(errors.InvalidInputError):
        pa.bytes_input_data([[]], "image")


_JPEG_CHECKER = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            element = pb_utils.get_input_tensor_by_name(r, "image").as_numpy().reshape(-1)[0]
            if element[:2] != b"\\xff\\xd8" or element[-2:] != b"\\xff\\xd9":
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("not a whole JPEG")))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("n", np.array([[len(element)]], np.int64))]))
        return out
'''


@pytest.mark.triton
def test_perf_analyzer_sends_whole_jpegs_when_given_the_cli_input_data(tmp_path: Path, triton_factory) -> None:
    """The file ``bench perf-analyzer-data`` writes, sent by perf_analyzer to a python model with the
    look model's input (BYTES [1]) that fails any request whose element is not a whole JPEG."""

    model = tmp_path / "repo" / "look"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(_JPEG_CHECKER)
    (model / "config.pbtxt").write_text('name: "look"\nbackend: "python"\nmax_batch_size: 8\n'
                                        'input { name: "image" data_type: TYPE_STRING dims: 1 }\n'
                                        'output { name: "n" data_type: TYPE_INT64 dims: 1 }\n')
    data = tmp_path / "photos.json"
    result = CliRunner().invoke(app, ["bench", "perf-analyzer-data", str(data), "--n", "3", "--photo-size", "64"])
    assert result.exit_code == 0, result.output
    server = triton_factory(tmp_path / "repo", models=["look"])
    engine = pa.locate()
    words = pa.command(engine, "look", server.grpc_url, "closed", 1, 300) + ["--input-data", str(data),
                                                                            "--shape", "image:1"]
    pa._run(engine, words, timeout_s=60)
    with TritonClient(server.grpc_url) as client:
        stats = client.statistics("look")["model_stats"][0]["inference_stats"]
    assert int(stats["success"]["count"]) > 3 and int(stats.get("fail", {}).get("count", 0)) == 0


@pytest.mark.parametrize("url", ["127.0.0.1:8001,127.0.0.1:8002", "dns:///triton.lookserve.svc:8001"])
def test_perf_analyzer_refuses_naming_url_when_given_several_replicas(tmp_path: Path, url: str) -> None:
    fake = pa.PerfAnalyzer(tmp_path / "perf_analyzer", {})
    with pytest.raises(errors.ConfigError, match="--url .* names several replicas.*one endpoint.*--engine lookserve"):
        pa.command(fake, "embedder", url, "closed", 1, 1000)
    with pytest.raises(errors.ConfigError, match="names several replicas"):  # before the binary or a photo is read
        perf_analyzer_look(url, [tmp_path / "missing.jpg"], tmp_path)
    result = CliRunner().invoke(app, ["bench", "model", "embedder", "--engine", "perf_analyzer", "--url", url])
    assert result.exit_code == 2 and "names several replicas" in result.output, result.output
    assert pa.one_endpoint("127.0.0.1:8001") == "127.0.0.1:8001"
