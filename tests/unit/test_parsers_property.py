"""Property-based: whatever bytes arrive, the event-line, FHIR and DICOM parsers answer with a result or an
:class:`InputError` (a :class:`Quarantined` for event lines), never with any other exception."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from connectors.dicom import read_ct_series
from connectors.fhir import RECORD_FEATURES, clinical_features, parse_fhir
from connectors.records import ClinicalRecord, CTSeries, InputError, Quarantined, Sample
from connectors.recording import MAX_RECORDING_S, Manifest, Replayer

EXAMPLES = settings(max_examples=1000, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CT_SMALL = Path(get_testdata_file("CT_small.dcm")).read_bytes()

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=8)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


# --- recording event lines -------------------------------------------------------------------------------

PAYLOADS = ["frames/a.png", "audio/a.wav", "records/a.json", "../outside", "/etc/passwd", "frames", "missing.png"]
event_values = json_values | st.sampled_from(PAYLOADS)
events = st.dictionaries(st.sampled_from(["t", "item_id", "image", "audio", "record", "note", "seq"]),
                         event_values, max_size=6)
event_lines = (st.binary(max_size=200)
               | events.map(lambda e: json.dumps(e).encode())
               | st.builds(lambda e, cut: json.dumps(e).encode()[:cut], events, st.integers(0, 200)))


@pytest.fixture(scope="module")
def rec(workdir: Path) -> Path:
    root = workdir / "rec"
    for rel, data in (("frames/a.png", b"\x89PNG\r\n\x1a\n"), ("audio/a.wav", b"RIFF"),
                      ("records/a.json", b'{"resourceType": "Patient"}')):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    Manifest(line="factory").write(root)
    return root


@EXAMPLES
@given(lines=st.lists(event_lines, min_size=1, max_size=2))
def test_event_lines_never_crash_the_replayer(rec: Path, lines: list[bytes]) -> None:
    (rec / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    for item in Replayer(rec):
        assert isinstance(item, (Sample, Quarantined))
        if isinstance(item, Quarantined):
            assert item.reason.startswith("events.jsonl line ") and item.item_id


event_times = (st.floats() | st.floats(0, 10) | st.integers(-(10**400), 10**400) | st.integers(0, 10)
               | st.just(MAX_RECORDING_S) | st.none() | st.text(max_size=3))


@settings(EXAMPLES, max_examples=300)
@given(times=st.lists(event_times, min_size=1, max_size=6))
def test_event_times_replay_in_order_or_are_quarantined(rec: Path, times: list[object]) -> None:
    """Replayed (fast, but paced) times are finite, within a year and never go back; every other time is
    quarantined, and pacing never fails."""
    events = [{"item_id": f"p{i}", "image": "frames/a.png", **({} if t is None else {"t": t})}
              for i, t in enumerate(times)]
    (rec / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    last, expected = 0.0, []
    for i, t in enumerate(times):
        if isinstance(t, (int, float)) and last <= t <= MAX_RECORDING_S:  # False for NaN, inf
            last = float(t)
            expected.append((f"p{i}", last))
    items = list(Replayer(rec, speed=1e12))
    assert [(i.item_id, i.ts) for i in items if isinstance(i, Sample)] == expected
    assert all(i.reason.startswith("events.jsonl line ") for i in items if isinstance(i, Quarantined))


# --- FHIR --------------------------------------------------------------------------------------------------

GOOD_BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": [
    {"resource": {"resourceType": "Patient", "id": "p1"}},
    {"resource": {"resourceType": "Observation", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                  "valueQuantity": {"value": 72, "unit": "/min"}}},
    {"resource": {"resourceType": "Condition", "code": {"text": "hypertension"},
                  "subject": {"reference": "Patient/p1"}}},
]}


def mutate(doc: object, path: list[int], value: object) -> object:
    """``doc`` with the node reached by ``path`` (indices into keys/items, wrapping) replaced by ``value``."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    if isinstance(doc, dict):
        key = list(doc)[path[0] % len(doc)]
        return {**doc, key: mutate(doc[key], path[1:], value)}
    i = path[0] % len(doc)
    return [*doc[:i], mutate(doc[i], path[1:], value), *doc[i + 1:]]


fhir_documents = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.builds(lambda kind, body: json.dumps({"resourceType": kind, **body}).encode(),
                st.sampled_from(["Bundle", "Patient", "Observation", "Condition", "Encounter"]),
                st.dictionaries(st.sampled_from(["type", "entry", "status", "code", "valueQuantity", "id"]),
                                json_values, max_size=4))
    | st.builds(lambda path, value: json.dumps(mutate(GOOD_BUNDLE, path, value)).encode(),
                st.lists(st.integers(0, 10), max_size=6), json_values)
    | st.builds(lambda cut: json.dumps(GOOD_BUNDLE).encode()[:cut], st.integers(0, 400))
)


@EXAMPLES
@given(data=fhir_documents)
def test_fhir_parser_answers_a_record_or_input_error(data: bytes) -> None:
    try:
        record = parse_fhir(data, "case-1")
    except InputError as exc:
        assert exc.item_id == "case-1" and exc.reason.startswith("FHIR record: ")
    else:
        assert isinstance(record, ClinicalRecord) and record.resource["resourceType"] in (
            "Bundle", "Patient", "Observation", "Condition")
        features = clinical_features(record)  # a record that parsed gives the encoder its numbers
        assert tuple(features) == RECORD_FEATURES and all(math.isfinite(v) for v in features.values())


def test_the_unmutated_bundle_parses() -> None:  # else the mutations above would test refusals only
    assert parse_fhir(json.dumps(GOOD_BUNDLE).encode(), "case-1").observations == {"http://loinc.org|8867-4": 72.0}


# --- DICOM -------------------------------------------------------------------------------------------------

def corrupt(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for at, byte in edits:
        out[at % len(out)] = byte
    return bytes(out[:cut] if cut is not None else out)


header_edits = st.lists(st.tuples(st.integers(0, 1600), st.integers(0, 255)), min_size=1, max_size=8)
anywhere_edits = st.lists(st.tuples(st.integers(0, len(CT_SMALL) - 1), st.integers(0, 255)), max_size=8)
dicom_files = (
    st.builds(corrupt, st.just(CT_SMALL), header_edits, st.none() | st.integers(0, len(CT_SMALL)))
    | st.builds(corrupt, st.just(CT_SMALL), anywhere_edits, st.none() | st.integers(0, len(CT_SMALL)))
    | st.binary(max_size=400).map(lambda b: b"\0" * 128 + b"DICM" + b)
    | st.binary(max_size=400)
)


@EXAMPLES
@given(data=dicom_files)
def test_dicom_reader_answers_a_series_or_input_error(workdir: Path, data: bytes) -> None:
    path = workdir / "slice.dcm"
    path.write_bytes(data)
    try:
        ct = read_ct_series(path, "case-2")
    except InputError as exc:
        assert exc.item_id == "case-2" and exc.reason
    else:
        assert isinstance(ct, CTSeries) and ct.volume.ndim == 3 and ct.volume.dtype.name == "float32"
