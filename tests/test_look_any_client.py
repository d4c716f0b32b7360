"""``look`` from any client: plain ``tritonclient.grpc``, the raw KServe v2 gRPC stubs (the block
the README shows, run from the README), and the grpcurl request body the README shows — each in
a process that never imports lookserve — answer what the client chain answers.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_look_chain import street_photo
from test_look_server import PHOTOS, _png, _without_timings, served  # noqa: F401 - served is this module's fixture

from lookserve.bench.look_server import perf_analyzer_look
from lookserve.bench.perf_analyzer import locate
from lookserve.client.catalog import open_for_client
from lookserve.client.core import TritonClient
from lookserve.client.look import LookConfig, LookPipeline
from lookserve.errors import ConfigError

pytestmark = pytest.mark.triton

README = Path(__file__).resolve().parent.parent / "README.md"

#: appended to every script: the client really did without lookserve
_NO_LOOKSERVE = textwrap.dedent("""
    import sys as _sys
    assert not [m for m in _sys.modules if m == "lookserve" or m.startswith("lookserve.")], "lookserve was imported"
""")


def _readme_block(marker: str, language: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- {re.escape(marker)} -->\s*```{language}\n(.*?)```", text, re.DOTALL)
    assert m, f"README has no ```{language} block after <!-- {marker} -->"
    return m.group(1)


def _run(script: str, *args: str, tmp_path: Path) -> str:
    path = tmp_path / "client_script.py"
    path.write_text(script + _NO_LOOKSERVE)
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _chain_doc(served, data: bytes, k: int) -> dict:  # noqa: F811 - the fixture's value
    with TritonClient(served["server"].grpc_url) as client:
        pipe = LookPipeline(client, open_for_client(served["catalog"], client, served["repo"]), LookConfig(k=k))
        return json.loads(pipe.run(data).to_json())


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "street.png"
    path.write_bytes(_png(street_photo(PHOTOS[0], seed=0)))
    return path


def test_look_answers_the_client_chains_json_when_called_with_the_readme_raw_stub_block(served, photo, tmp_path) -> None:  # noqa: F811
    out = _run(_readme_block("look-raw-stub", "python"), served["server"].grpc_url, str(photo), tmp_path=tmp_path)
    got = json.loads(out)
    want = _chain_doc(served, photo.read_bytes(), k=3)
    assert _without_timings(got) == _without_timings(want)
    assert len(got["items"]) == 3 and all(len(i["matches"]) == 3 for i in got["items"])


def test_look_answers_when_sent_the_readme_grpcurl_body(served, photo, tmp_path) -> None:  # noqa: F811
    body = _readme_block("look-grpcurl-body", "json").replace("$PHOTO_BASE64", base64.b64encode(photo.read_bytes()).decode())
    script = textwrap.dedent("""
        import json, struct, sys
        import grpc
        from google.protobuf import json_format
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        url, body = sys.argv[1], sys.argv[2]
        request = json_format.Parse(open(body).read(), service_pb2.ModelInferRequest())  # what grpcurl does with -d
        with grpc.insecure_channel(url) as channel:
            response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        names = [o.name for o in response.outputs]
        raw = response.raw_output_contents[names.index("look_json")]
        (size,) = struct.unpack_from("<I", raw)
        ids = response.raw_output_contents[names.index("match_product_id")]
        print(json.dumps({"doc": json.loads(raw[4:4 + size]), "ids": list(struct.unpack(f"<{len(ids) // 8}q", ids)),
                          "shape": list(response.outputs[names.index("match_product_id")].shape)}))
    """)
    (tmp_path / "request.json").write_text(body)
    got = json.loads(_run(script, served["server"].grpc_url, str(tmp_path / "request.json"), tmp_path=tmp_path))
    want = _chain_doc(served, photo.read_bytes(), k=3)
    assert _without_timings(got["doc"]) == _without_timings(want)
    assert got["shape"] == [1, 3, 3]
    assert got["ids"] == [m["product_id"] for i in want["items"] for m in i["matches"]]


def test_look_answers_typed_tensors_when_called_with_plain_tritonclient(served, photo, tmp_path) -> None:  # noqa: F811
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        import tritonclient.grpc as grpcclient

        url, photo = sys.argv[1], sys.argv[2]
        client = grpcclient.InferenceServerClient(url)
        image = grpcclient.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[open(photo, "rb").read()]], dtype=np.object_))
        k = grpcclient.InferInput("k", [1, 1], "INT32")
        k.set_data_from_numpy(np.array([[4]], dtype=np.int32))
        r = client.infer("look", [image, k])
        print(json.dumps({"doc": json.loads(r.as_numpy("look_json")[0, 0]),
                          "categories": [c.decode() for c in r.as_numpy("item_category")[0]],
                          "scores": r.as_numpy("item_score")[0].tolist(),
                          "ids": r.as_numpy("match_product_id")[0].tolist(),
                          "sims": r.as_numpy("match_similarity")[0].tolist()}))
    """)
    got = json.loads(_run(script, served["server"].grpc_url, str(photo), tmp_path=tmp_path))
    want = _chain_doc(served, photo.read_bytes(), k=4)
    assert _without_timings(got["doc"]) == _without_timings(want)
    assert got["categories"] == [i["category"] for i in want["items"]]
    assert got["scores"] == pytest.approx([i["score"] for i in want["items"]], abs=1e-6)
    assert got["ids"] == [[m["product_id"] for m in i["matches"]] for i in want["items"]]
    np.testing.assert_allclose(got["sims"], [[m["similarity"] for m in i["matches"]] for i in want["items"]], atol=1e-6)


def test_perf_analyzer_drives_look_with_real_photos_when_given_input_data(served, tmp_path) -> None:  # noqa: F811
    try:
        locate()
    except ConfigError as e:
        pytest.skip(f"perf_analyzer is not installed: {e}")
    photos = []
    for seed, slots in enumerate(PHOTOS):
        photos.append(tmp_path / f"street-{seed}.png")
        photos[-1].write_bytes(_png(street_photo(slots, seed=seed)))
    with TritonClient(served["server"].grpc_url) as client:
        before = client.statistics("look")["model_stats"][0]["inference_stats"]
        rows = perf_analyzer_look(served["server"].grpc_url, photos, tmp_path, concurrencies=(2,), request_count=8)
        after = client.statistics("look")["model_stats"][0]["inference_stats"]
    ok = int(after["success"].get("count", 0)) - int(before["success"].get("count", 0))
    failed = int(after["fail"].get("count", 0)) - int(before["fail"].get("count", 0))
    assert ok >= 8 and failed == 0, (ok, failed)  # real photos decoded and answered, none refused
    assert float(rows[0]["Inferences/Second"]) > 0
