"""The PACS end of the medical line against a real Orthanc (Debian's, from the ``orthanc`` fixture): studies sent by
C-STORE are picked up as samples with their record and note, SR and SEG go back into the same study once, the
FHIR report lands on disk, and an Orthanc that is not there is named by host:port."""

from __future__ import annotations

import io
import json
import time
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pytest

from connectors.ct_writer import CTPatient, CTStudy, encode_ct_series
from connectors.mqtt import free_port
from connectors.pacs import PacsClient, PacsSource, PacsWriter, RecordingEHR
from connectors.recording import Manifest, RecordingWriter
from connectors.records import Decision, Quarantined, Sample
from connectors.sinks import ControllerUnavailable

pytestmark = pytest.mark.integration

KEY = b"integration-test-pseudonym-key!!"
PATIENT = {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1961-07-01"}
RECORD = {"resourceType": "Bundle", "type": "collection", "timestamp": "2024-03-05T09:30:00Z",
          "entry": [{"resource": PATIENT}]}
CASES = {  # case id -> (its record, its note); case-c's record is not a usable Bundle
    "case-a": (RECORD, "Former smoker, 30 pack-years; weight loss."),
    "case-b": (RECORD, None),
    "case-c": ({"resourceType": "Bundle"}, None),
}


def case_volume(k: int) -> np.ndarray:
    """``(6, 24, 24)`` HU: lung-like air with a bright block that tells the cases apart."""
    hu = np.full((6, 24, 24), -850, np.int16)
    hu[2:4, 4 + k : 8 + k, 6:10] = 40
    return hu


@pytest.fixture(scope="module")
def picked(orthanc, tmp_path_factory) -> SimpleNamespace:
    """Three studies written as a recording, sent to Orthanc by C-STORE, and what a PacsSource made of them."""
    root = tmp_path_factory.mktemp("pacs")
    recording = root / "recording"
    with RecordingWriter(recording, Manifest(line="medical")) as rec:
        for k, (case_id, (record, note)) in enumerate(CASES.items()):
            patient = CTPatient(f"Doe^Case{k}", f"FL-00004{k}", date(1961, 7, 1), "F")
            study = CTStudy.from_seed([case_id, "test_pacs"], datetime(2024, 3, 5, 9, 30))
            rec.add(case_id, float(k), record=record, note=note,
                    ct=encode_ct_series(case_volume(k), 1.5, 2.5, patient, study))
    client = orthanc.client()
    since = client.last_change()
    assert client.store_recording(recording) == 3 * 6
    ehr = RecordingEHR(recording)
    source = PacsSource(client, root / "spool", key=KEY, ehr=ehr, limit=3, idle_s=20, poll_s=0.2, since=since)
    items = list(source)
    case_of = ehr.item_ids(KEY)
    return SimpleNamespace(client=client, root=root, items={case_of[item.item_id]: item for item in items},
                           checkpoint=source.checkpoint)


def test_source_yields_each_study_with_its_series_record_and_note(picked):
    assert set(picked.items) == set(CASES)
    for k, case_id in enumerate(("case-a", "case-b")):
        sample = picked.items[case_id]
        assert isinstance(sample, Sample) and sample.item_id.startswith("case-") and case_id not in sample.item_id
        decoded = sample.ct.decode()
        assert decoded.volume.shape == (6, 24, 24)
        np.testing.assert_array_equal(decoded.volume, case_volume(k).astype(np.float32))
        assert Path(sample.ct.source) == picked.root / "spool" / sample.item_id
        assert sample.record is not None and sample.record.item_id == sample.item_id
    assert picked.items["case-a"].note.text == CASES["case-a"][1]
    assert picked.items["case-b"].note is None


def test_unusable_record_quarantines_the_study_without_phi(picked):
    bad = picked.items["case-c"]
    assert isinstance(bad, Quarantined) and bad.stage == "source"
    assert "FHIR record" in bad.reason and "Bundle" in bad.reason and "type" in bad.reason
    assert "FL-0000" not in bad.reason and "Doe" not in bad.reason


def test_writer_stores_sr_and_seg_in_the_study_once_and_writes_the_fhir_report(picked, tmp_path):
    client: PacsClient = picked.client
    sample = picked.items["case-a"]
    decision = Decision(sample.item_id, 0, "present", 0.91, True, {"ct": 0.7, "record": 0.2, "note": 0.1}, "0.3.1",
                        120.0, sample.digest(), decision_id="d0000000000000a1",
                        extra={"nodule": "present", "nodule_probability": 0.91, "center_vox": [2, 9, 7],
                               "diameter_mm": 6.0, "malignancy_risk": 0.35, "ct_path": sample.ct.source})
    with PacsWriter(client, tmp_path / "reports", key=KEY) as writer:
        assert writer.send(decision) == "ok"
        (study,) = [found["ID"] for found in client.lookup(sample.ct.study_uid) if found["Type"] == "Study"]
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in client.get(f"/studies/{study}/series"))
        assert modalities == ["CT", "SEG", "SR"]
        instances, after_first = client.get("/statistics")["CountInstances"], client.last_change()

        assert writer.send(decision) == "ok"  # a resend (the outbox retries): nothing new is stored
        assert client.get("/statistics")["CountInstances"] == instances
        assert [c["ChangeType"] for c in client.changes(after_first)["Changes"]
                if c["ChangeType"] in ("NewInstance", "NewSeries")] == []

    (sr_series,) = [s for s in client.get(f"/studies/{study}/series") if s["MainDicomTags"]["Modality"] == "SR"]
    sr = hd.sr.srread(io.BytesIO(client.request(f"/instances/{sr_series['Instances'][0]}/file")))
    (group,) = sr.content.get_planar_roi_measurement_groups()
    assert {m.name.meaning: m.value for m in group.get_measurements()}["Diameter"] == 6.0
    bundle = json.loads((tmp_path / "reports" / f"{sample.item_id}.json").read_text())
    report = bundle["entry"][0]["resource"]
    assert report["conclusion"].startswith("Decision support, not a diagnosis")
    assert report["subject"]["reference"].startswith("Patient/patient-") and "FL-0000" not in json.dumps(bundle)


def test_absent_finding_stores_an_sr_only_and_a_decided_study_is_not_picked_again(picked, tmp_path):
    client: PacsClient = picked.client
    sample = picked.items["case-b"]
    decision = Decision(sample.item_id, 1, "absent", 0.97, False, {"ct": 1.0}, "0.3.1", 80.0, sample.digest(),
                        decision_id="d0000000000000b2",
                        extra={"nodule": "absent", "nodule_probability": 0.03, "center_vox": None,
                               "diameter_mm": None, "malignancy_risk": None, "ct_path": sample.ct.source})
    assert PacsWriter(client, tmp_path, key=KEY).send(decision) == "ok"
    (study,) = [found["ID"] for found in client.lookup(sample.ct.study_uid) if found["Type"] == "Study"]
    assert sorted(s["MainDicomTags"]["Modality"] for s in client.get(f"/studies/{study}/series")) == ["CT", "SR"]
    # the SR makes the study stable again; a source reading the change log from there passes it over
    wait_for_change(client, picked.checkpoint, "StableStudy", study)
    again = PacsSource(client, tmp_path / "spool", key=KEY, idle_s=0.3, poll_s=0.1, since=picked.checkpoint)
    assert [item.item_id for item in again] == []


def wait_for_change(client: PacsClient, since: int, change_type: str, resource_id: str, timeout_s: float = 15.0):
    """Wait until Orthanc's change log, after ``since``, holds ``change_type`` of ``resource_id``."""
    deadline = time.monotonic() + timeout_s
    while not any(c["ChangeType"] == change_type and c["ID"] == resource_id
                  for c in client.changes(since, limit=1000)["Changes"]):
        assert time.monotonic() < deadline, f"no {change_type} of {resource_id} within {timeout_s} s"
        time.sleep(0.1)


def test_writer_answers_an_error_for_a_decision_it_cannot_write(picked, tmp_path):
    decision = Decision("case-0000", 9, "present", 0.9, True, {}, "0.3.1", 1.0, "", decision_id="d00000000000000c",
                        extra={"nodule": "present", "nodule_probability": 0.9})
    instances = picked.client.get("/statistics")["CountInstances"]
    ack = PacsWriter(picked.client, tmp_path, key=KEY).send(decision)
    assert ack.startswith("error: case-0000") and "ct_path" in ack
    assert picked.client.get("/statistics")["CountInstances"] == instances


def test_unreachable_orthanc_is_named_by_host_and_port(tmp_path):
    http_port, dicom_port = free_port(), free_port()
    client = PacsClient("127.0.0.1", dicom_port, http_port, timeout_s=1.0)
    with pytest.raises(ControllerUnavailable, match=f"127.0.0.1:{http_port}"):
        next(iter(PacsSource(client, tmp_path, key=KEY)))
    with pytest.raises(ControllerUnavailable, match=f"127.0.0.1:{http_port}"):
        PacsWriter(client, tmp_path, key=KEY).open()
    with pytest.raises(ControllerUnavailable, match=f"127.0.0.1:{dicom_port}"):
        client.store([encode_ct_series(case_volume(0)[:1], 1.5, 2.5, CTPatient("Doe^X", "X", date(1961, 7, 1), "F"),
                                       CTStudy.from_seed(["x"], datetime(2024, 3, 5)))[0]])
