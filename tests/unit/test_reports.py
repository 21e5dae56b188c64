"""The medical line's outputs for hospital software: DICOM SR (TID 1500) and SEG of a nodule, built with highdicom
from a small synthetic CT series, re-read with highdicom and checked with Debian's dciodvfy; the FHIR
DiagnosticReport; keyed pseudonyms."""

from __future__ import annotations

import io
import json
import os
import random
import stat
import subprocess
from datetime import date, datetime, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from pydicom.uid import Comprehensive3DSRStorage

from connectors.ct_writer import CTPatient, CTStudy, encode_ct_series
from connectors.dicom_reports import (
    DISCLAIMER,
    NoduleFinding,
    nodule_seg,
    nodule_sr,
    order_along_normal,
    sphere_mask,
    to_bytes,
)
from connectors.fhir_reports import nodule_report
from connectors.privacy import KEY_ENV, load_key, pseudonym

PATIENT = CTPatient("Doe^Jane", "FL-000042", date(1961, 7, 1), "F")
FINDING = NoduleFinding(present=True, probability=0.93, center_vox=(5, 12, 20), diameter_mm=7.0, malignancy_risk=0.41)
ISSUED = datetime(2024, 3, 5, 10, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def series() -> list[pydicom.Dataset]:
    """A 10-slice 32x32 CT series (1.5 mm pixels, 2.5 mm slices), in reverse file order (as a PACS may send it)."""
    hu = np.full((10, 32, 32), -850, np.int16)
    study = CTStudy.from_seed([7, "reports"], datetime(2024, 3, 5, 9, 30))
    files = encode_ct_series(hu, pixel_spacing_mm=1.5, slice_spacing_mm=2.5, patient=PATIENT, study=study)
    return [pydicom.dcmread(io.BytesIO(data)) for data in reversed(files)]


def dciodvfy_errors(path: Path) -> list[str]:
    """dicom3tools' IOD check of one file: its ``Error`` lines (warnings are fine)."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_dciodvfy_reports_an_incomplete_sr_as_an_error(series, tmp_path):
    """The check below is not vacuous: an SR without its Modality and content tree is an error for dciodvfy."""
    broken = nodule_sr(series, FINDING, uid_seed="broken")
    del broken.Modality, broken.ContentSequence
    broken.save_as(tmp_path / "broken.dcm")
    assert any("Modality" in line for line in dciodvfy_errors(tmp_path / "broken.dcm"))


def test_sr_is_a_valid_tid1500_report_of_the_finding(series, tmp_path):
    path = tmp_path / "sr.dcm"
    nodule_sr(series, FINDING, uid_seed="decision-1", algorithm_version="0.3.1", content_datetime=ISSUED).save_as(path)
    assert dciodvfy_errors(path) == []

    sr = hd.sr.srread(path)
    assert sr.SOPClassUID == Comprehensive3DSRStorage and sr.CompletionFlag == "COMPLETE"
    assert DISCLAIMER in sr.SeriesDescription
    assert sr.StudyInstanceUID == series[0].StudyInstanceUID and sr.PatientID == series[0].PatientID
    (group,) = sr.content.get_planar_roi_measurement_groups()
    measured = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
    assert measured == {"Probability": (0.93, "1"), "Diameter": (7.0, "mm"), "Probability of cancer": (0.41, "1")}
    assert [(q.name.meaning, q.value.meaning) for q in group.get_qualitative_evaluations()] == [("Nodule", "Present")]
    algorithm = {item.name.meaning: item.value for item in hd.sr.utils.find_content_items(
        group[0], name=None, value_type=hd.sr.ValueTypeValues.TEXT) if item.name.meaning.startswith("Algorithm")}
    assert algorithm == {"Algorithm Name": "fusionline", "Algorithm Version": "0.3.1"}
    centre_slice = order_along_normal(series)[5]
    assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POINT
    assert group.roi.value.tolist() == [[20.5, 12.5]]  # (column, row) of the voxel centre
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        centre_slice.SOPInstanceUID


def test_seg_is_a_sphere_of_the_diameter_at_the_centre(series, tmp_path):
    path = tmp_path / "seg.dcm"
    nodule_seg(series, FINDING, uid_seed="decision-1", algorithm_version="0.3.1").save_as(path)
    assert dciodvfy_errors(path) == []

    seg = hd.seg.segread(path)
    assert DISCLAIMER in seg.SeriesDescription and DISCLAIMER in seg.ContentDescription
    (segment,) = seg.SegmentSequence
    assert (segment.SegmentLabel, segment.SegmentAlgorithmType) == ("Nodule", "AUTOMATIC")
    ordered = order_along_normal(series)
    mask = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in ordered], segment_numbers=[1])[..., 0]
    assert mask.shape == (10, 32, 32)
    k, r, c = np.nonzero(mask)
    # voxel centres within 3.5 mm of the centre: 3.5 / 2.5 mm slices -> slices 4..6, 3.5 / 1.5 mm -> +-2 pixels
    assert (k.min(), k.max(), r.min(), r.max(), c.min(), c.max()) == (4, 6, 10, 14, 18, 22)
    volume_mm3 = mask.sum() * 1.5 * 1.5 * 2.5
    assert abs(volume_mm3 - np.pi / 6 * 7.0**3) / (np.pi / 6 * 7.0**3) < 0.25


def test_seg_takes_a_given_mask_and_refuses_a_wrong_one(series):
    mask = np.zeros((10, 32, 32), bool)
    mask[2, 3:5, 3:5] = True
    seg = nodule_seg(series, FINDING, uid_seed="decision-1", mask=mask)
    assert int(seg.NumberOfFrames) == 1
    with pytest.raises(ValueError, match="mask must be bool"):
        nodule_seg(series, FINDING, uid_seed="decision-1", mask=mask[:5])
    with pytest.raises(ValueError, match="empty"):
        nodule_seg(series, FINDING, uid_seed="decision-1", mask=np.zeros_like(mask))


def test_absent_finding_gives_an_sr_without_region_and_no_seg(series, tmp_path):
    absent = NoduleFinding(present=False, probability=0.04)
    path = tmp_path / "sr.dcm"
    nodule_sr(series, absent, uid_seed="decision-2").save_as(path)
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    assert [q.value.meaning for q in group.get_qualitative_evaluations()] == ["Absent"]
    with pytest.raises(ValueError, match="no centre and diameter"):
        nodule_seg(series, absent, uid_seed="decision-2")


def test_uids_derive_from_the_seed_and_the_input_order_does_not_matter(series):
    shuffled = list(series)
    random.Random(3).shuffle(shuffled)
    first, again = nodule_sr(series, FINDING, "decision-1"), nodule_sr(shuffled, FINDING, "decision-1")
    other = nodule_sr(series, FINDING, "decision-9")
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID and first.SeriesInstanceUID != other.SeriesInstanceUID
    assert len(first.SOPInstanceUID) <= 64 and first.SOPInstanceUID.startswith("2.25.")
    assert nodule_seg(shuffled, FINDING, "decision-1").SOPInstanceUID == nodule_seg(series, FINDING,
                                                                                     "decision-1").SOPInstanceUID
    assert pydicom.dcmread(io.BytesIO(to_bytes(first))).SOPInstanceUID == first.SOPInstanceUID


def test_sphere_always_holds_its_centre(series):
    tiny = sphere_mask(order_along_normal(series), (0, 0, 0), 0.1)
    assert tiny.sum() == 1 and tiny[0, 0, 0]
    with pytest.raises(ValueError, match="outside the series"):
        sphere_mask(order_along_normal(series), (10, 0, 0), 5.0)


def test_finding_from_decision_extra():
    extra = {"nodule": "present", "nodule_probability": 0.8, "center_vox": [3, 4, 5], "diameter_mm": 9.5,
             "malignancy_risk": None, "ct_path": "/spool/case-1"}
    assert NoduleFinding.from_extra(extra) == NoduleFinding(True, 0.8, (3, 4, 5), 9.5, None)
    with pytest.raises(ValueError, match="nodule_probability"):
        NoduleFinding.from_extra({"nodule": "absent"})
    with pytest.raises(ValueError, match="not a probability"):
        NoduleFinding.from_extra({**extra, "nodule_probability": 1.7})
    with pytest.raises(ValueError, match="center_vox"):
        NoduleFinding.from_extra({**extra, "center_vox": [3, -1, 5]})


def test_fhir_report_validates_and_says_it_is_decision_support():
    subject = "Patient/" + pseudonym("FL-000042", b"k" * 32, "patient")
    bundle = nodule_report(FINDING, subject, report_id="0123456789abcdef", issued=ISSUED,
                           algorithm_version="0.3.1", study_uid="1.2.826.0.1.3680043.2.1125.1")
    Bundle.model_validate(bundle)  # raises on anything that is not FHIR R4
    resources = {entry["resource"]["id"]: entry["resource"] for entry in bundle["entry"]}
    report = resources["0123456789abcdef"]
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert report["conclusion"].startswith("Decision support, not a diagnosis")
    assert {ref["reference"] for ref in report["result"]} == {e["fullUrl"] for e in bundle["entry"][1:]}
    diameter = resources["0123456789abcdef-diameter"]["valueQuantity"]
    assert diameter == {"value": 7.0, "unit": "mm", "system": "http://unitsofmeasure.org", "code": "mm"}
    assert resources["0123456789abcdef-malignancy-risk"]["valueQuantity"]["value"] == 0.41
    assert [c["valueInteger"] for c in resources["0123456789abcdef-location"]["component"]] == [5, 12, 20]
    text = json.dumps(bundle)
    assert "FL-000042" not in text and "Doe" not in text
    assert all(res["subject"] == {"reference": subject} for res in resources.values())
    assert nodule_report(FINDING, subject, "0123456789abcdef", ISSUED, "0.3.1",
                         "1.2.826.0.1.3680043.2.1125.1") == bundle


def test_fhir_report_of_an_absent_nodule_and_refused_subjects():
    bundle = nodule_report(NoduleFinding(False, 0.04), "Patient/case-0123", "r1", ISSUED)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["DiagnosticReport", "Observation"]
    assert "No lung nodule found" in bundle["entry"][0]["resource"]["conclusion"]
    for subject in ("FL-000042", "Patient/Doe Jane", "Patient/"):
        with pytest.raises(ValueError, match="pseudonymous reference"):
            nodule_report(FINDING, subject, "r1", ISSUED)
    with pytest.raises(ValueError, match="timezone"):
        nodule_report(FINDING, "Patient/case-0123", "r1", datetime(2024, 3, 5))


def test_pseudonym_is_stable_keyed_and_short():
    key, other_key = b"a" * 32, b"b" * 32
    one = pseudonym("1.2.840.113619.2.55.3.604688119", key)
    assert one == pseudonym("1.2.840.113619.2.55.3.604688119", key)
    assert one.startswith("case-") and len(one) == len("case-") + 16 and int(one[5:], 16) >= 0
    assert one != pseudonym("1.2.840.113619.2.55.3.604688119", other_key)
    assert one != pseudonym("1.2.840.113619.2.55.3.604688120", key)
    assert pseudonym("x", key, prefix="patient").startswith("patient-")
    with pytest.raises(ValueError, match="fewer than 16"):
        pseudonym("x", b"short")


def test_load_key_from_env_or_a_private_file_made_once(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = tmp_path / "runs" / "pseudonym.key"
    key = load_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    monkeypatch.setenv(KEY_ENV, "00" * 16 + "ff" * 16)
    assert load_key(path) == bytes(16) + b"\xff" * 16
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ValueError, match=KEY_ENV):
        load_key(path)
    monkeypatch.delenv(KEY_ENV)
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="readable by others"):
        load_key(path)
