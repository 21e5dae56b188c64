"""The bad-input corpus (tests/data/bad, see its README): every file and event is refused with an error that
names the item and the reason, the process goes on, and replayed items land in the audit store's quarantine
with their payloads copied aside. Ray is not needed: the replica's decode path runs in-process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from connectors import dicom, fhir, recording
from connectors.audit import AuditStore
from connectors.camera import CameraSource
from connectors.records import InputError, Quarantined, Sample
from connectors.recording import Manifest, Replayer
from pipelines.line import to_decision
from pipelines.replicas import Inference, ModelReplica

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = DATA / "bad"
MODEL = DATA / "models" / "factory-v2"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


GOOD_CONTROLS = ("images/good.png", "audio/good.wav", "fhir/good.json", "fhir/good-bundle.json", "dicom/good-series")


def cases(via: str) -> list[dict]:
    return [e for e in EXPECTED if e["via"] == via]


@pytest.fixture(scope="module")
def replica() -> ModelReplica:
    return ModelReplica(str(MODEL), cache_size=0)


def test_corpus_is_small_and_listed_in_its_readme() -> None:
    files = [p for p in CORPUS.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    readme = (CORPUS / "README.md").read_text()
    assert all(f"`{e['case']}`" in readme for e in EXPECTED)
    listed = {e["case"] for e in EXPECTED if not e["case"].startswith("events.jsonl")} | set(GOOD_CONTROLS)
    payloads = {str(p.relative_to(CORPUS)) for p in files if p.parent != CORPUS}
    assert {p.rsplit("/", 1)[0] if p.count("/") > 1 else p for p in payloads} == listed  # a series by its folder


def test_replayed_corpus_is_quarantined_with_reasons_and_payloads(tmp_path: Path, replica: ModelReplica) -> None:
    items = list(Replayer(CORPUS))
    outcomes = [i for i in items if isinstance(i, Quarantined)]
    outcomes += replica.infer([i for i in items if isinstance(i, Sample)])  # the decode stage, as on a line
    store = AuditStore(tmp_path / "audit.db")
    run = store.start_run("bad-corpus", {})
    decided = []
    for outcome in outcomes:  # as run_line audits them
        if isinstance(outcome, Inference):
            decided.append(outcome.item_id)
            store.record_decision(run, to_decision(outcome, 0.0, "factory", "bad-corpus"))
        else:
            store.record_quarantine(run, outcome)
    rows = {q["item_id"]: q for q in store.quarantined(run)}

    expected = cases("replay")
    assert decided == [e["item_id"] for e in expected if e["reason"] is None]  # the line goes on
    assert sorted(rows) == sorted(e["item_id"] for e in expected if e["reason"] is not None)
    for e in expected:
        if e["reason"] is None:
            continue
        row = rows[e["item_id"]]
        assert e["reason"] in row["reason"], (e, row["reason"])
        folder = Path(row["folder"])
        assert folder.parent == store.quarantine_dir / run, folder  # an item id never steers the folder
        assert f"item: {e['item_id']}" in (folder / "reason.txt").read_text()
        if not e["case"].startswith("events.jsonl"):  # a payload file: copied aside, byte for byte
            assert (folder / Path(e["case"]).name).read_bytes() == (CORPUS / e["case"]).read_bytes()
    assert not any(p.name == "passwd" for p in store.quarantine_dir.rglob("*")), "a file outside was copied"
    assert store.verify().ok
    store.close()


@pytest.mark.parametrize("case", cases("dicom"), ids=lambda e: e["case"])
def test_dicom_corpus(case: dict) -> None:
    path = CORPUS / case["case"]
    with pytest.raises(InputError) as err:
        dicom.read_ct_series(path, case["item_id"])
    assert err.value.item_id == case["item_id"] and case["reason"] in err.value.reason
    assert any(p.name in err.value.reason for p in (path.iterdir() if path.is_dir() else [path]))  # the file named


@pytest.mark.parametrize("case", cases("video"), ids=lambda e: e["case"])
def test_video_corpus(case: dict) -> None:
    items = list(CameraSource(CORPUS / case["case"], prefix=case["item_id"]))
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["Sample"] * (len(items) - 1) + ["Quarantined"]  # the whole frames before the damage
    assert case["reason"] in items[-1].reason and case["case"] in items[-1].reason


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space (and must never be read whole)."""
    with path.open("wb") as f:
        f.truncate(size)
    return path


def test_oversized_payloads_are_refused_unread(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "manifest.json").write_text((CORPUS / "manifest.json").read_text())
    sparse(rec / "big.png", recording.MAX_PAYLOAD_BYTES + 1)
    (rec / "events.jsonl").write_text('{"t": 0, "item_id": "big", "image": "big.png"}\n')
    [item] = list(Replayer(rec))
    assert isinstance(item, Quarantined) and item.item_id == "big" and "exceeds" in item.reason

    with pytest.raises(InputError, match="case-9: big.json: FHIR record of .* bytes exceeds"):
        fhir.read_fhir(sparse(tmp_path / "big.json", fhir.MAX_BYTES + 1), "case-9")
    with pytest.raises(InputError, match=f"case-9: big.dcm: DICOM file of {dicom.MAX_FILE_BYTES + 1} bytes exceeds"):
        dicom.read_ct_series(sparse(tmp_path / "big.dcm", dicom.MAX_FILE_BYTES + 1), "case-9")


# --- a medical recording ------------------------------------------------------------------------------------


def medical_case(rec: Path, item_id: str, ct: str = "dicom/good-series", record: str = "fhir/good-bundle.json",
                 t: float = 0.0) -> dict:
    """The event of one case: ``ct`` (a corpus series folder or single file) copied to ``ct/<item_id>/``, ``record``
    to ``records/``."""
    import shutil

    folder = rec / "ct" / item_id
    folder.mkdir(parents=True)
    for path in sorted((CORPUS / ct).iterdir()) if (CORPUS / ct).is_dir() else [CORPUS / ct]:
        shutil.copy(path, folder / path.name)
    (rec / "records").mkdir(exist_ok=True)
    shutil.copy(CORPUS / record, rec / "records" / Path(record).name)
    return {"t": t, "item_id": item_id, "ct": f"ct/{item_id}", "record": f"records/{Path(record).name}",
            "note": "former smoker, 30 pack-years"}


def test_medical_recording_quarantines_bad_series_and_records_and_decodes_the_good(tmp_path: Path) -> None:
    rec = tmp_path / "medical"
    events = [medical_case(rec, "good-case")]
    events += [medical_case(rec, e["item_id"], ct=e["case"]) for e in cases("dicom")]
    events += [medical_case(rec, e["item_id"], record=e["case"]) for e in cases("replay") if "fhir/" in e["case"]]
    events += [{**medical_case(rec, "good-case-2"), "ct": "ct/nowhere"},
               {**medical_case(rec, "good-case-3"), "ct": "../../etc"}]
    Manifest(line="medical", count=len(events), modalities=["ct", "record", "note"]).write(rec)
    (rec / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))

    reasons: dict[str, tuple[str, str]] = {}  # item id -> (stage, reason)
    decoded = []
    for item in Replayer(rec):
        if isinstance(item, Quarantined):
            reasons[item.item_id] = (item.stage, item.reason)
            continue
        try:  # as the medical replica decodes a sample
            ct = item.ct.decode()
        except InputError as exc:
            assert exc.item_id == item.item_id
            reasons[item.item_id] = ("decode", exc.reason)
            continue
        decoded.append(item.item_id)
        assert ct.volume.shape == (3, 16, 16) and ct.spacing_mm == (5.0, 5.0, 5.0)
        assert fhir.clinical_features(item.record)["pack_years"] == 30.0
        assert item.note.text.startswith("former smoker")

    assert decoded == ["good-case"]  # the line goes on past every bad case
    for e in cases("dicom"):
        assert reasons[e["item_id"]][0] == "decode" and e["reason"] in reasons[e["item_id"]][1], e
    for e in cases("replay"):
        if "fhir/" in e["case"]:
            stage, reason = reasons[e["item_id"]]
            assert stage == "source" and e["reason"] in reason and reason.startswith("events.jsonl line "), e
    assert reasons["good-case-2"] == ("source", f"events.jsonl line {len(events) - 1}: CT series folder nowhere is "
                                                "missing")
    assert "escapes the recording" in reasons["good-case-3"][1]
    assert len(reasons) == len(events) - 1


# --- no PHI in logs ----------------------------------------------------------------------------------------

PHI = ["Quixote", "Zebulon", "1931-07-14", "MRN-55512345", "chest pain since tuesday"]


def phi_bundle(value: str) -> bytes:
    """A Bundle naming a patient, with one Observation whose value is ``value`` (a JSON literal)."""
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Quixote", "given": ["Zebulon"]}],
               "birthDate": "1931-07-14", "identifier": [{"system": "urn:mrn", "value": "MRN-55512345"}]}
    obs = json.loads((CORPUS / "fhir" / "good.json").read_text())
    obs["valueQuantity"]["value"] = "@value@"
    body = json.dumps({"resourceType": "Bundle", "type": "collection",
                       "entry": [{"resource": patient}, {"resource": obs}]})
    return body.replace('"@value@"', value).encode()


def test_no_phi_or_transcript_reaches_logs_warnings_or_reasons(tmp_path: Path, replica: ModelReplica,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    import shutil
    import warnings

    import pydicom
    from pydicom.config import disable_value_validation
    from pydicom.data import get_testdata_file

    rec = tmp_path / "rec"
    rec.mkdir()
    shutil.copy(CORPUS / "manifest.json", rec)
    for rel in ("images/good.png", "audio/good.wav"):
        (rec / rel).parent.mkdir(exist_ok=True)
        shutil.copy(CORPUS / rel, rec / rel)
    (rec / "records").mkdir()
    (rec / "records" / "good.json").write_bytes(phi_bundle("72"))
    (rec / "records" / "nan.json").write_bytes(phi_bundle("NaN"))
    (rec / "records" / "named-type.json").write_text('{"resourceType": "Zebulon Quixote", "birthDate": "1931-07-14"}')
    note = "patient Zebulon Quixote reports chest pain since tuesday"
    events = [{"item_id": "case-1", "image": "images/good.png", "audio": "audio/good.wav",
               "record": "records/good.json", "note": note},
              {"item_id": "case-2", "record": "records/nan.json", "note": note},
              {"item_id": "case-3", "record": "records/named-type.json"}]
    (rec / "events.jsonl").write_text("".join(json.dumps({"t": 0.0, **e}) + "\n" for e in events))
    ct = tmp_path / "ct"
    ct.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with disable_value_validation():
        ds.PatientName, ds.PatientBirthDate, ds.PatientID = "Quixote^Zebulon", "19310714", "MRN-55512345"
        # as when a damaged length makes an element the reader uses run over the patient's name: pydicom
        # would log the invalid value
        ds.SeriesInstanceUID = "1.2.840.Quixote^Zebulon"
        ds.save_as(ct / "slice.dcm", enforce_file_format=True)
        del ds.PixelData
        ds.save_as(tmp_path / "no-pixels.dcm", enforce_file_format=True)

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(Replayer(rec))
        outcomes = [i for i in items if isinstance(i, Quarantined)]
        outcomes += replica.infer([i for i in items if isinstance(i, Sample)])
        assert dicom.read_ct_series(ct, "case-4").volume.shape == (1, 128, 128)
        with pytest.raises(InputError) as err:
            dicom.read_ct_series(tmp_path / "no-pixels.dcm", "case-5")
        store = AuditStore(tmp_path / "audit.db")
        run = store.start_run("medical", {})
        for q in outcomes:
            if isinstance(q, Quarantined):
                store.record_quarantine(run, q)
    reasons = [q["reason"] for q in store.quarantined(run)]
    assert [q["item_id"] for q in store.quarantined(run)] == ["case-2", "case-3"]
    assert [o.item_id for o in outcomes if isinstance(o, Inference)] == ["case-1"]
    written = [p.read_text() for p in store.quarantine_dir.rglob("reason.txt")]
    said = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught] + reasons + written
    said.append(str(err.value))
    for secret in PHI:
        assert not [s for s in said if secret in s], secret
    # not vacuous: the same capture hears pydicom name the patient when a read is not guarded as dicom.py's is
    with warnings.catch_warnings(record=True) as control:
        warnings.simplefilter("always")
        assert "Quixote" in pydicom.dcmread(ct / "slice.dcm").SeriesInstanceUID
    assert [w for w in control if "Quixote" in str(w.message)]
    assert [r for r in caplog.records if "Quixote" in r.getMessage()]


# --- event times and item ids ------------------------------------------------------------------------------


def write_recording(tmp_path: Path, events: list[dict]) -> Path:
    """A recording of ``events`` (each with the corpus's good frame unless it names a payload)."""
    rec = tmp_path / "rec"
    (rec / "images").mkdir(parents=True)
    (rec / "manifest.json").write_text((CORPUS / "manifest.json").read_text())
    (rec / "images" / "good.png").write_bytes((CORPUS / "images" / "good.png").read_bytes())
    (rec / "events.jsonl").write_text("".join(json.dumps({"image": "images/good.png", **e}) + "\n" for e in events))
    return rec


def test_replay_at_recorded_speed_quarantines_bad_times_and_never_crashes(tmp_path: Path) -> None:
    times = [0.0, 1e300, -1.0, 0.05, 0.01, 10**400, recording.MAX_RECORDING_S + 1, None, 0.1]
    events = [{"item_id": f"p{i}", **({} if t is None else {"t": t})} for i, t in enumerate(times)]
    rec = write_recording(tmp_path, events)
    items = list(Replayer(rec, speed=1.0))  # used to end in OverflowError from time.sleep
    assert [(i.item_id, i.ts) for i in items if isinstance(i, Sample)] == [("p0", 0.0), ("p3", 0.05), ("p8", 0.1)]
    reasons = {i.item_id: i.reason for i in items if isinstance(i, Quarantined)}
    assert reasons == {
        "p1": "events.jsonl line 2: timestamp 1e+300 s outside 0..31536000 s (a recording spans at most a year)",
        "p2": "events.jsonl line 3: timestamp -1.0 s outside 0..31536000 s (a recording spans at most a year)",
        "p4": "events.jsonl line 5: timestamp 0.01 s goes backwards (the previous event played at 0.05 s)",
        "p5": "events.jsonl line 6: timestamp inf is not finite",
        "p6": "events.jsonl line 7: timestamp 31536001.0 s outside 0..31536000 s (a recording spans at most a year)",
        "p7": "events.jsonl line 8: event has no time t",
    }
    assert all(i.stage == "source" for i in items if isinstance(i, Quarantined))


def test_pacing_sleeps_in_slices_time_sleep_can_take(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Asleep(Exception):
        pass

    asked: list[float] = []

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        raise Asleep

    monkeypatch.setattr(recording.time, "sleep", sleep)
    rec = write_recording(tmp_path, [{"t": 1000.0, "item_id": "p0"}])
    with pytest.raises(Asleep):  # 1000 s at a billionth of recorded speed: 1e12 s, beyond time.sleep
        next(iter(Replayer(rec, speed=1e-9)))
    assert asked == [recording.PACE_SLICE_S]


def test_duplicate_item_ids_are_quarantined_and_the_audit_holds_one_entry_each(
        tmp_path: Path, replica: ModelReplica) -> None:
    rec = write_recording(tmp_path, [{"t": 0.0, "item_id": "a"}, {"t": 0.1, "item_id": "b"},
                               {"t": 0.2, "item_id": "a"}, {"t": 0.3, "item_id": "a"}])
    items = list(Replayer(rec, limit=8, loop=True))  # later laps are not duplicates of earlier ones
    assert [(type(i).__name__, i.item_id) for i in items] == [
        ("Sample", "a"), ("Sample", "b"), ("Quarantined", "a"), ("Quarantined", "a"),
        ("Sample", "a~2"), ("Sample", "b~2"), ("Quarantined", "a~2"), ("Quarantined", "a~2")]
    dups = [i for i in items if isinstance(i, Quarantined)]
    assert [q.reason for q in dups[:2]] == [f"events.jsonl line {n}: duplicate item_id, first seen at line 1"
                                            for n in (3, 4)]
    assert dups[0].payload_paths == [str((rec / "images" / "good.png").resolve())]

    store = AuditStore(tmp_path / "audit.db")  # as run_line audits the outcomes: no AuditConflict ends the run
    run = store.start_run("factory", {})
    folders = []
    for outcome in replica.infer([i for i in items if isinstance(i, Sample)]) + dups:
        if isinstance(outcome, Inference):
            store.record_decision(run, to_decision(outcome, 0.0, "factory", "dup-test"))
        else:
            folders.append(store.record_quarantine(run, outcome))
    assert [d["item_id"] for d in store.decisions(run)] == ["a", "b", "a~2", "b~2"]
    assert len(set(folders)) == 4  # each quarantined event keeps its own folder and reason
    for folder, q in zip(folders, dups, strict=True):
        assert f"reason: {q.reason}" in (folder / "reason.txt").read_text() and (folder / "good.png").is_file()
        assert folder == store.record_quarantine(run, q)  # recording it again is still a no-op
    assert store.verify().ok
    store.close()
