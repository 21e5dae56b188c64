"""The medical line end to end on real parts: a synthesised recording's studies sent by C-STORE to a real Orthanc,
picked up by the line, decided by Ray replicas hosting the shipped model, SR and SEG stored back into each study,
FHIR reports written, cases added to the faiss index, everything audited under pseudonyms; and the same studies
replayed offline from the recording, with bad input quarantined. Findings are compared with a golden file.

Regenerate the golden file after a deliberate model or synthesiser change with ``pytest --update-golden``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from connectors.audit import AuditStore
from connectors.pacs import RecordingEHR
from pipelines.line import run_line
from pipelines.lines.medical.compose import MedicalLineConfig, compose, pseudonym_key
from pipelines.lines.medical.similar import CaseIndex
from pipelines.lines.medical.synth import synth_medical

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL = DATA / "models" / "medical-v3"
GOLDEN = DATA / "golden" / "medical-findings.json"
CASES, SEED = 4, 41
#: What a finding is compared on, and to how many decimals (the golden file keeps the rounded values).
COMPARED = {"nodule": None, "center_vox": None, "diameter_mm": 1, "malignancy_risk": 3, "nodule_probability": 3}


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small studies (128×128, 32 slices: the model resamples to its own grid) with records and notes."""
    return synth_medical(tmp_path_factory.mktemp("medical") / "studies", CASES, SEED, size=128, slices=32,
                         workers=1, progress=False)


@pytest.fixture
def pseudonym_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSIONLINE_PSEUDONYM_KEY", "test-key-of-the-medical-line-0123456789")


def findings(decisions, item_ids: dict[str, str] | None = None) -> dict[str, dict]:
    """The compared part of each decision's finding, by the recording's case id."""
    out = {}
    for d in decisions:
        case = (item_ids or {}).get(d.item_id, d.item_id)
        out[case] = {k: d.extra.get(k) if digits is None or d.extra.get(k) is None else round(d.extra[k], digits)
                     for k, digits in COMPARED.items()}
    return out


def check_golden(found: dict[str, dict], update: bool) -> None:
    if update:
        GOLDEN.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert set(found) == set(golden)
    for case, finding in found.items():
        for key, digits in COMPARED.items():
            if digits is None or finding[key] is None or golden[case][key] is None:
                assert finding[key] == golden[case][key], (case, key)
            else:
                assert finding[key] == pytest.approx(golden[case][key], abs=2 * 10 ** -digits), (case, key)


def test_studies_from_orthanc_get_sr_and_seg_back_and_match_golden(ray_cluster, orthanc, studies, pseudonym_env,
                                                                   tmp_path, request) -> None:
    client = orthanc.client()
    assert client.store_recording(studies) == CASES * 32
    cfg = MedicalLineConfig(model_dir=str(MODEL), pacs=orthanc.dicom_address, pacs_http_port=orthanc.http_port,
                            ehr=str(studies), audit_db=str(tmp_path / "audit.db"), cases_index=str(tmp_path / "cases"),
                            limit=CASES, idle_s=20.0)
    line = compose(cfg)
    report = run_line(line)
    line.replicas.shutdown()
    item_ids = RecordingEHR(studies).item_ids(pseudonym_key(cfg))
    assert not report.quarantined and len(report.decisions) == CASES
    assert {d.acks.get("pacs") for d in report.decisions} == {"ok"}
    for d in report.decisions:
        assert d.item_id in item_ids and d.item_id.startswith("case-")  # a keyed pseudonym, not the case id
        assert d.extra["case_embedding"] and set(d.modality_weights) == {"ct", "record", "note"}
        study = client.lookup(_study_uid(studies, item_ids[d.item_id]))[0]["ID"]
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in client.get(f"/studies/{study}/series"))
        assert modalities == (["CT", "SEG", "SR"] if d.extra["nodule"] == "present" else ["CT", "SR"])
        assert (Path(cfg.audit_db).parent / "fhir-reports" / f"{d.item_id}.json").is_file()
    check_golden(findings(report.decisions, item_ids), request.config.getoption("--update-golden"))
    assert len(CaseIndex.load(tmp_path / "cases")) == CASES
    # no patient data in the audit trail: neither names nor patient ids of the records
    audit = Path(cfg.audit_db).read_bytes()
    for record in (studies / "records").iterdir():
        patient = next(e["resource"] for e in json.loads(record.read_text())["entry"]
                       if e["resource"]["resourceType"] == "Patient")
        for secret in [patient["identifier"][0]["value"], patient["name"][0]["family"]]:
            assert secret.encode() not in audit


def _study_uid(recording: Path, case_id: str) -> str:
    import pydicom

    first = sorted((recording / "ct" / case_id).iterdir())[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def test_replayed_recording_decides_the_same_and_quarantines_bad_studies(ray_cluster, studies, tmp_path,
                                                                        request) -> None:
    rec = tmp_path / "studies"
    shutil.copytree(studies, rec)
    first = sorted((rec / "ct").iterdir())[0]
    broken = rec / "ct" / "bad-truncated"
    shutil.copytree(first, broken)
    victim = sorted(broken.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:2000])
    (rec / "records" / "bad-record.json").write_text('{"resourceType": "Bundle", "type": "collection", "entry": 7}')
    with (rec / "events.jsonl").open("a") as events:
        events.write(json.dumps({"t": 99.0, "item_id": "bad-truncated", "ct": "ct/bad-truncated"}) + "\n")
        events.write(json.dumps({"t": 99.5, "item_id": "bad-record", "ct": f"ct/{first.name}",
                                 "record": "records/bad-record.json"}) + "\n")
    cfg = MedicalLineConfig(model_dir=str(MODEL), recording=str(rec), audit_db=str(tmp_path / "audit.db"))
    line = compose(cfg)
    report = run_line(line)
    line.replicas.shutdown()
    reasons = {q.item_id: q.reason for q in report.quarantined}
    assert set(reasons) == {"bad-truncated", "bad-record"}
    assert victim.name in reasons["bad-truncated"] and "FHIR" in reasons["bad-record"]
    assert [d.item_id for d in report.decisions] == sorted(p.name for p in (studies / "ct").iterdir())
    check_golden(findings(report.decisions), update=False)  # the PACS run and the replay decide alike
    for d in report.decisions:  # where the dashboard finds the slices and the record (paths, never contents)
        assert d.extra["ct_path"] == str(rec / "ct" / d.item_id)
        assert d.extra["record_path"] == str(rec / "records" / f"{d.item_id}.json")
    stored = AuditStore(cfg.audit_db)
    assert {q["item_id"] for q in stored.quarantined(report.run_id)} == {"bad-truncated", "bad-record"}
    stored.close()
