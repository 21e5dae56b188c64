"""The HTTP endpoint on a real Ray Serve: real HTTP requests to ``fusionline serve``'s application on a free port.

The factory line's items come from ``tests/data/recordings/factory-mini``; the decisions must equal what a
:class:`~pipelines.replicas.ModelReplica` (the streaming line's replica) decides for the same items in this process.
The medical line's case is case 0 of the medical line test's studies (seed 41; a case depends on the seed and its
index only), whose finding must match that test's golden file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from connectors.mqtt import free_port
from connectors.recording import Replayer
from connectors.records import Sample, decision_id
from pipelines.lines.medical.synth import synth_medical
from pipelines.replicas import Inference, ModelReplica
from tests.integration.test_medical_line import COMPARED, GOLDEN, SEED

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
FACTORY_MODEL = DATA / "models" / "factory-v2"
FACTORY_MINI = DATA / "recordings" / "factory-mini"
MEDICAL_MODEL = DATA / "models" / "medical-v3"
ITEMS = 6


@pytest.fixture(scope="module")
def endpoint(ray_cluster) -> Iterator[str]:
    """The factory and medical lines served on a free loopback port (one replica each, batches of up to 4); Serve
    shut down after."""
    from ray import serve

    from pipelines.serve import APP_NAME, Serving, lines_app, start_http

    port = free_port()
    start_http("127.0.0.1", port)
    try:
        models = {"factory": FACTORY_MODEL, "medical": MEDICAL_MODEL}
        serve.run(lines_app(models, Serving(max_batch=4, batch_wait_s=0.05)), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def parts() -> list[Sample]:
    samples = list(Replayer(FACTORY_MINI, limit=ITEMS))
    assert all(isinstance(s, Sample) for s in samples)
    return samples  # type: ignore[return-value]


def upload(base: str, sample: Sample, **replace: tuple[str, bytes, str]) -> requests.Response:
    """POST the sample's frame and sound (or the ``replace`` parts) as multipart."""
    files = {"image": ("part.png", sample.frame.encoded, "image/png"),
             "audio": ("part.wav", sample.audio.encoded, "audio/wav"), **replace}
    return requests.post(f"{base}/v1/factory/decide", files=files, data={"item_id": sample.item_id}, timeout=120)


def close(got: Any, want: Any) -> bool:
    """``got`` (parsed JSON) equals ``want``, floats within 1e-5 (a batch of another size may round differently)."""
    if isinstance(want, float):
        return abs(got - want) <= 1e-5
    if isinstance(want, (list, tuple)):
        return len(got) == len(want) and all(map(close, got, want))
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(close(got[k], want[k]) for k in want)
    return got == want


def test_decisions_over_http_equal_the_streaming_replicas_decisions(endpoint: str, parts: list[Sample]) -> None:
    replica = ModelReplica(str(FACTORY_MODEL), cache_size=0, line="factory")
    direct = {o.item_id: o for o in replica.infer(parts) if isinstance(o, Inference)}
    assert len(direct) == ITEMS
    with ThreadPoolExecutor(ITEMS) as pool:  # concurrent callers, so the deployment batches them
        answers = list(pool.map(lambda s: upload(endpoint, s), parts))
    for sample, answer in zip(parts, answers, strict=True):
        assert answer.status_code == 200, answer.text
        got, want = answer.json(), direct[sample.item_id]
        assert got["item_id"] == sample.item_id
        assert got["decision_id"] == decision_id("factory", "http", 0, sample.item_id)
        assert (got["label"], got["reject"], got["model_version"], got["input_digest"]) == (
            want.prediction.label, want.prediction.reject, want.prediction.model_version, want.input_digest)
        assert close(got["confidence"], want.prediction.confidence)
        assert close(got["modality_weights"], want.prediction.modality_weights)
        assert close(got["extra"], want.prediction.extra)  # no provenance: an upload has no source file
        assert got["cached"] is False and got["latency_ms"] > 0
    again = upload(endpoint, parts[0]).json()
    assert again["cached"] is True and again["label"] == direct[parts[0].item_id].prediction.label


def test_bad_uploads_are_refused_with_the_item_and_the_reason_and_the_service_goes_on(endpoint: str,
                                                                                      parts: list[Sample]) -> None:
    sample = parts[1]
    not_an_image = upload(endpoint, sample, image=("part.png", b"these bytes are no PNG", "image/png"))
    assert not_an_image.status_code == 422
    assert not_an_image.json()["item_id"] == sample.item_id and not_an_image.json()["stage"] == "decode"
    assert "not a decodable image" in not_an_image.json()["reason"]

    truncated = upload(endpoint, sample, audio=("part.wav", sample.audio.encoded[:2000], "audio/wav"))
    assert truncated.status_code == 422 and truncated.json()["stage"] == "decode"
    assert truncated.json()["reason"].startswith("WAV truncated: header announces 16000 frames")

    wrong_part = upload(endpoint, sample, record=("record.json", b"{}", "application/json"))
    assert wrong_part.status_code == 422 and wrong_part.json() == {
        "item_id": sample.item_id, "stage": "upload",
        "reason": "unexpected part 'record': the factory line takes image, audio"}

    nothing = requests.post(f"{endpoint}/v1/factory/decide", data={"item_id": "empty-1"}, timeout=60)
    assert nothing.status_code == 422
    assert nothing.json()["reason"] == "no frame and no sound: nothing the factory inspector reads"

    assert upload(endpoint, sample).status_code == 200


def test_the_api_describes_the_line_route_and_its_parts(endpoint: str) -> None:
    spec = requests.get(f"{endpoint}/openapi.json", timeout=30).json()
    route = spec["paths"]["/v1/factory/decide"]["post"]
    form = route["requestBody"]["content"]["multipart/form-data"]
    assert set(form["schema"]["properties"]) == {"item_id", "image", "audio"}
    assert form["encoding"]["image"]["contentType"] == "image/png, image/jpeg"
    medical = spec["paths"]["/v1/medical/decide"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(medical["properties"]) == {"item_id", "ct", "record", "note"}
    assert medical["properties"]["ct"]["type"] == "array"
    assert route["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/DecisionOut")
    assert route["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/Refusal")
    served = requests.get(f"{endpoint}/v1/lines", timeout=30).json()
    assert [(s["line"], s["route"], list(s["payloads"])) for s in served] == [
        ("factory", "/v1/factory/decide", ["image", "audio"]),
        ("medical", "/v1/medical/decide", ["ct", "record", "note"])]
    assert requests.get(f"{endpoint}/healthz", timeout=30).json() == {
        "status": "ok", "model_versions": {s["line"]: s["model_version"] for s in served}}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """Case 0 of the medical line test's studies: 32 slices of 128×128, its FHIR record and note."""
    studies = synth_medical(tmp_path_factory.mktemp("medical") / "studies", 1, SEED, size=128, slices=32, workers=1,
                            progress=False)
    return next(iter(Replayer(studies)))  # type: ignore[return-value]


def upload_case(base: str, case: Sample, slices: list[tuple[str, bytes]] | None = None,
                record: bytes | None = None) -> requests.Response:
    """POST the case's series (or ``slices``: (file name, bytes)), record (or ``record``) and note as multipart."""
    slices = slices or [(Path(f).name, Path(f).read_bytes()) for f in case.ct.files]
    files = [("ct", (name, data, "application/dicom")) for name, data in slices]
    files.append(("record", ("record.json", record or Path(case.record.source).read_bytes(), "application/fhir+json")))
    return requests.post(f"{base}/v1/medical/decide", files=files,
                         data={"item_id": case.item_id, "note": case.note.text}, timeout=300)


def test_a_study_and_its_record_over_http_get_the_lines_finding(endpoint: str, case: Sample) -> None:
    answer = upload_case(endpoint, case)
    assert answer.status_code == 200, answer.text
    finding = answer.json()
    assert finding["item_id"] == case.item_id and set(finding["modality_weights"]) == {"ct", "record", "note"}
    golden = json.loads(GOLDEN.read_text())[case.item_id]
    for key, digits in COMPARED.items():
        got = finding["extra"][key]
        assert got == golden[key] if digits is None or got is None else abs(got - golden[key]) <= 2 * 10 ** -digits, key


def test_a_broken_slice_or_record_is_refused_naming_the_file_or_the_field(endpoint: str, case: Sample) -> None:
    slices = [(Path(f).name, Path(f).read_bytes()) for f in case.ct.files]
    name, data = slices[5]
    slices[5] = (name, data[:2000])
    broken = upload_case(endpoint, case, slices=slices)
    assert broken.status_code == 422 and broken.json()["stage"] == "decode"
    assert broken.json()["item_id"] == case.item_id and name in broken.json()["reason"]

    bad_record = upload_case(endpoint, case, record=b'{"resourceType": "Bundle", "type": "collection", "entry": 7}')
    assert bad_record.status_code == 422 and bad_record.json()["stage"] == "upload"
    assert bad_record.json()["reason"].startswith("FHIR record: ")
