"""The medical page's helpers (apps/medical_data.py) against real parts: DICOM series written with the CT writer and
read back with the DICOM reader, FHIR Bundles, a faiss similar-cases index and an audit store. Expectations are
computed independently (numpy cosine, hand-worked ages, the fixture's own numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from apps import data
from apps import medical_data as md
from connectors.audit import AuditStore
from connectors.ct_writer import CTPatient, CTStudy, encode_ct_series
from connectors.dicom import read_ct_series
from connectors.fhir import parse_fhir, read_fhir
from connectors.records import Decision, Quarantined
from pipelines.lines.medical.similar import CaseIndex

SLICES, SIDE = 12, 96
PIXEL_MM, SLICE_MM = 3.5, 4.0
EMBEDDING_DIM = 8
#: What must never reach the page: the patient's name, hospital id and birth date (in the DICOM and the record).
PHI = ("Quimby", "Ada", "MRN-77123", "1961-07-01", "19610701")


@dataclass
class Study:
    """One decided study of the fixture: its finding as the line recorded it, and its files."""

    item_id: str
    nodule: tuple[int, int, int] | None  # center_vox
    diameter_mm: float | None
    probability: float
    malignancy_risk: float | None
    flagged: bool
    weights: dict[str, float]
    record: dict | None  # the FHIR Bundle, None: the study came without one


@dataclass
class MedicalFixture:
    db: Path
    run_id: str
    recording: Path
    index_dir: Path
    studies: list[Study]
    decisions: list[Decision]
    quarantined: list[Quarantined]
    embeddings: dict[str, np.ndarray]  # every indexed case
    index_findings: dict[str, dict]


def chest_phantom(nodule: tuple[int, int, int] | None, diameter_mm: float | None, seed: int) -> np.ndarray:
    """``(SLICES, SIDE, SIDE)`` int16 HU: air, a soft-tissue body, two lungs, and a solid nodule (a sphere in mm)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIDE, 0:SIDE].astype(float)
    body = ((rows - 48) / 40) ** 2 + ((cols - 48) / 46) ** 2 <= 1
    lungs = (((rows - 46) / 30) ** 2 + ((np.abs(cols - 48) - 21) / 16) ** 2) <= 1
    plane = np.where(body, 40.0, -1000.0)
    plane[lungs] = -860.0
    hu = np.repeat(plane[None], SLICES, axis=0) + rng.normal(0, 12, (SLICES, SIDE, SIDE))
    if nodule is not None:
        z, y, x = np.mgrid[0:SLICES, 0:SIDE, 0:SIDE].astype(float)
        k, r, c = nodule
        inside = ((z - k) * SLICE_MM) ** 2 + ((y - r) * PIXEL_MM) ** 2 + ((x - c) * PIXEL_MM) ** 2
        hu[inside <= (diameter_mm / 2) ** 2] = 30.0
    return np.clip(np.round(hu), -1024, 3000).astype(np.int16)


def bundle(gender: str, smoking: str, pack_years: float | None, conditions: list[str]) -> dict:
    """A FHIR R4 Bundle with the record codes of the medical line, and PHI that the page must never show."""
    entries = [
        {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:hospital", "value": "MRN-77123"}],
         "name": [{"family": "Quimby", "given": ["Ada"]}], "gender": gender, "birthDate": "1961-07-01"},
        {"resourceType": "Observation", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
         "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": smoking}]}},
    ]
    if pack_years is not None:
        entries.append({"resourceType": "Observation", "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8664-5"}]},
                        "valueQuantity": {"value": pack_years, "unit": "{pack-years}"}})
    entries += [{"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]}} for code in conditions]
    return {"resourceType": "Bundle", "type": "collection", "timestamp": "2024-03-05T09:30:00Z",
            "entry": [{"resource": e} for e in entries]}


STUDIES = [  # decision order; the page lists the flagged ones first
    Study("case-8c1f", None, None, 0.04, None, False, {"ct": 0.58, "record": 0.27, "note": 0.15},
          bundle("male", "266919005", None, [])),
    Study("case-2a7e", (5, 40, 30), 18.0, 0.94, 0.62, True, {"ct": 0.71, "record": 0.19, "note": 0.10},
          bundle("female", "8517006", 30.0, ["13645005", "427359005"])),
    Study("case-5d03", (7, 58, 66), 8.0, 0.71, 0.12, True, {"ct": 0.80, "record": 0.20}, None),
]


def build_medical_audit(root: Path, seed: int = 3) -> MedicalFixture:
    """A finished medical run over three real studies (DICOM written with the CT writer, FHIR Bundles), a
    similar-cases index of past cases plus the run's own, and one quarantined study."""
    rng = np.random.default_rng(seed)
    recording, index_dir = root / "recording", root / "cases"
    index = CaseIndex(EMBEDDING_DIM)
    embeddings, index_findings = {}, {}
    for i in range(6):  # past cases, confirmed
        finding = ({"nodule": "present", "diameter_mm": 6.0 + 3 * i, "malignancy": "malignant" if i % 2 else
                    "benign"} if i % 3 else {"nodule": "absent"})
        embeddings[f"past-{i:02d}"] = rng.normal(size=EMBEDDING_DIM)
        index_findings[f"past-{i:02d}"] = {"source": "confirmed", **finding}
    store = AuditStore(root / "audit.db")
    config = {"model_dir": "models/medical-v3", "recording": str(recording), "audit_db": str(store.path),
              "cases_index": str(index_dir)}  # fields of the line's MedicalLineConfig, as compose() records it
    run_id = store.start_run("medical", config)
    t = time.time() - 20.0
    decisions = []
    for seq, s in enumerate(STUDIES):
        ct = recording / "ct" / s.item_id
        ct.mkdir(parents=True)
        study = CTStudy.from_seed([seed, s.item_id], study_datetime=datetime(2024, 3, 5, 9, 30))
        patient = CTPatient("Quimby^Ada", "MRN-77123", date(1961, 7, 1), "F")
        for k, dcm in enumerate(encode_ct_series(chest_phantom(s.nodule, s.diameter_mm, seq), PIXEL_MM, SLICE_MM,
                                                 patient, study)):
            (ct / f"{k:04d}.dcm").write_bytes(dcm)
        record_path = None
        if s.record is not None:
            record_path = recording / "records" / f"{s.item_id}.json"
            record_path.parent.mkdir(exist_ok=True)
            record_path.write_text(json.dumps(s.record))
        embedding = rng.normal(size=EMBEDDING_DIM)
        embeddings[s.item_id] = embedding
        extra = {"nodule": "present" if s.nodule else "absent", "nodule_probability": s.probability,
                 "center_vox": list(s.nodule) if s.nodule else None, "diameter_mm": s.diameter_mm,
                 "malignancy_risk": s.malignancy_risk, "case_embedding": embedding.round(6).tolist(),
                 # a relative folder, as a recording's events name it (the page finds it under the recording)
                 "ct_path": str(ct) if seq else f"ct/{s.item_id}",
                 "record_path": str(record_path) if record_path else None}
        t += 1.5
        decisions.append(Decision(
            item_id=s.item_id, seq=seq, label="nodule" if s.nodule else "no nodule",
            confidence=s.probability if s.nodule else 1 - s.probability, reject=s.flagged,
            modality_weights=s.weights, model_version="medical-v3", latency_ms=600.0 + 250 * seq,
            input_digest=f"{seq:064x}", extra=extra, ts=t))
        index_findings[s.item_id] = {"source": "model", "nodule": extra["nodule"],
                                     **({"diameter_mm": s.diameter_mm, "malignancy_risk": s.malignancy_risk}
                                        if s.nodule else {})}
    for item_id, embedding in embeddings.items():
        index.add(item_id, embedding.round(6).tolist(), index_findings[item_id])
    index.save(index_dir)
    for d in decisions:
        store.record_decision(run_id, d)
    quarantined = [Quarantined("case-9b44", 3, "CT series: 0003.dcm: not a DICOM file", "decode", ts=t + 0.5)]
    for q in quarantined:
        store.record_quarantine(run_id, q)
    store.finish_run(run_id, {"studies": len(decisions)})
    store.close()
    return MedicalFixture(root / "audit.db", run_id, recording, index_dir, STUDIES, decisions, quarantined,
                          embeddings, index_findings)


def expected_similar(fx: MedicalFixture, item_id: str, k: int = 5) -> list[tuple[str, float]]:
    """Top-``k`` cosine neighbours of ``item_id`` among the indexed cases, itself left out (numpy, not faiss)."""
    unit = {i: e / np.linalg.norm(e) for i, e in fx.embeddings.items()}
    scores = sorted(((float(unit[i] @ unit[item_id]), i) for i in unit if i != item_id), reverse=True)
    return [(i, s) for s, i in scores[:k]]


def study(item_id: str) -> Study:
    return next(s for s in STUDIES if s.item_id == item_id)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> MedicalFixture:
    return build_medical_audit(tmp_path_factory.mktemp("medical"))


@pytest.fixture(scope="module")
def studies(fx: MedicalFixture) -> list[md.Finding]:
    return md.findings(data.load_decisions(fx.db, fx.run_id))


def test_findings_list_flagged_studies_first_with_the_recorded_numbers(studies: list[md.Finding]) -> None:
    assert [f.item_id for f in studies] == ["case-2a7e", "case-5d03", "case-8c1f"]
    table = md.study_table(studies)
    assert list(table.columns) == md.STUDY_COLUMNS
    for f, row in zip(studies, table.itertuples()):
        s = study(f.item_id)
        assert (row.finding, row.probability, row.flagged) == ("nodule" if s.nodule else "no nodule",
                                                               s.probability, s.flagged)
        assert f.center_vox == s.nodule and f.nodule == (s.nodule is not None)
        assert f.modality_weights == s.weights and len(f.case_embedding) == EMBEDDING_DIM
    absent = studies[-1]
    assert absent.diameter_mm is None and absent.malignancy_risk is None and absent.center_vox is None
    assert (studies[0].diameter_mm, studies[0].malignancy_risk) == (18.0, 0.62)


def test_run_config_names_the_index_and_paths_resolve_under_the_recording(fx: MedicalFixture,
                                                                         studies: list[md.Finding]) -> None:
    config = md.run_config(fx.db, fx.run_id)
    assert config["cases_index"] == str(fx.index_dir) and config["recording"] == str(fx.recording)
    relative = next(f for f in studies if f.item_id == "case-8c1f")
    assert relative.ct_path == "ct/case-8c1f"
    assert md.resolve(relative.ct_path, config) == fx.recording / "ct" / "case-8c1f"
    assert md.resolve(relative.ct_path, {}) is None  # nowhere without the recording: the page says it is gone
    assert md.resolve(None, config) is None and md.resolve("ct/moved-away", config) is None
    assert md.run_config(fx.db, "no-such-run") == {}


def test_lung_window_maps_the_window_onto_grey() -> None:
    hu = np.array([[[-2000.0, -1350.0, -600.0, 150.0, 1000.0]]])
    assert md.lung_window(hu).tolist() == [[[0, 0, 127, 255, 255]]]


def ring_pixels(image: np.ndarray) -> np.ndarray:
    """Row, column of the pixels painted in the finding's colour (the grey CT has equal channels)."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return np.argwhere((r - b > 120) & (g - b > 60))


def test_the_finding_is_circled_on_the_slices_it_spans(fx: MedicalFixture, studies: list[md.Finding]) -> None:
    finding = studies[0]  # 18 mm at slice 5, row 40, column 30
    series = read_ct_series(fx.recording / "ct" / finding.item_id, finding.item_id)
    windowed = md.lung_window(series.volume)
    assert series.spacing_mm == pytest.approx((SLICE_MM, PIXEL_MM, PIXEL_MM))
    spanned = [k for k in range(SLICES) if abs(k - 5) * SLICE_MM <= 9.0]
    assert list(md.finding_slices(finding, SLICE_MM, SLICES)) == spanned == [3, 4, 5, 6, 7]
    assert md.start_slice(finding, SLICES) == 5 and md.start_slice(studies[-1], SLICES) == SLICES // 2
    scale = md.DISPLAY_SIDE / SIDE
    counts = []
    for k in range(SLICES):
        image = md.draw_slice(windowed, k, series.spacing_mm, finding)
        assert image.shape == (md.DISPLAY_SIDE, md.DISPLAY_SIDE, 3) and image.dtype == np.uint8
        ring = ring_pixels(image)
        counts.append(len(ring))
        if k in spanned:
            center = ring.mean(axis=0)
            assert center == pytest.approx(((40 + 0.5) * scale, (30 + 0.5) * scale), abs=2)
            radius = np.hypot(*(ring - center).T).mean()
            assert 9.0 / PIXEL_MM * scale < radius < 9.0 / PIXEL_MM * scale + 12  # the diameter, just outside
        else:  # the slice as it is: grey, the lung window of the DICOM's HU
            assert len(ring) == 0
            assert np.array_equal(image[..., 0], image[..., 2])
    assert counts[5] > counts[4] > 0  # thicker on the centre slice
    plain = md.draw_slice(windowed, 5, series.spacing_mm, studies[-1])  # no nodule: never a circle
    assert len(ring_pixels(plain)) == 0
    assert plain[round(40.5 * scale), round(30.5 * scale), 0] > plain[round(40.5 * scale), round(60 * scale), 0]


def test_record_summary_says_age_sex_smoking_and_conditions_without_phi(fx: MedicalFixture) -> None:
    record = read_fhir(fx.recording / "records" / "case-2a7e.json", "case-2a7e")
    summary = md.record_summary(record)
    assert summary == {"Age": "62 years", "Sex": "female", "Smoking": "former smoker", "Pack-years": "30",
                       "Conditions": "COPD, known lung nodule"}  # born 1961-07-01, studied 2024-03-05
    other = md.record_summary(read_fhir(fx.recording / "records" / "case-8c1f.json", "case-8c1f"))
    assert other == {"Age": "62 years", "Sex": "male", "Smoking": "never smoker", "Pack-years": "0",
                     "Conditions": "none recorded"}  # a never smoker without the Observation has smoked 0
    assert md.record_summary(parse_fhir(json.dumps({"resourceType": "Patient"}), "case-0000")) == {
        "Age": "not recorded", "Sex": "not recorded", "Smoking": "not recorded", "Pack-years": "not recorded",
        "Conditions": "none recorded"}
    assert not any(phi in json.dumps([summary, other]) for phi in PHI)


def test_similar_cases_are_the_nearest_by_cosine_with_their_findings(fx: MedicalFixture,
                                                                    studies: list[md.Finding]) -> None:
    index = CaseIndex.load(fx.index_dir)
    for finding in studies:
        similar = md.similar_cases(index, finding)
        expected = expected_similar(fx, finding.item_id)
        assert list(similar["item_id"]) == [i for i, _ in expected]
        assert similar["similarity"].tolist() == pytest.approx([s for _, s in expected], abs=1e-5)
        for row in similar.itertuples():
            truth = fx.index_findings[row.item_id]
            assert (row.nodule, row.source) == (truth["nodule"], truth["source"])
            risk = truth.get("malignancy_risk")
            malignancy = None if pd.isna(row.malignancy) else row.malignancy
            assert malignancy == truth.get("malignancy", None if risk is None else f"risk {risk:.0%}")
    with pytest.raises(ValueError, match="case-2a7e: the decision carries no case embedding"):
        md.similar_cases(index, md.Finding(**{**studies[0].__dict__, "case_embedding": None}))
    with pytest.raises(ValueError, match="the index holds 8"):
        md.similar_cases(index, md.Finding(**{**studies[0].__dict__, "case_embedding": [1.0, 2.0]}))


def test_the_medical_page_imports_no_torch() -> None:
    """The dashboard process stays small: the medical page reads DICOM, FHIR and the faiss index without torch."""
    probe = "import sys, apps.medical_data, apps.medical; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
