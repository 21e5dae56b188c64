"""The bad-input corpus (tests/data/bad, see its README): every file and event is refused with an error that
names the item and the reason, the process goes on, and replayed items land in the audit store's quarantine
with their payloads copied aside. Ray is not needed: the replica's decode path runs in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors import dicom, fhir, recording
from connectors.audit import AuditStore
from connectors.camera import CameraSource
from connectors.records import InputError, Quarantined, Sample
from connectors.recording import Replayer
from pipelines.replicas import Inference, ModelReplica

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = DATA / "bad"
MODEL = DATA / "models" / "factory-v1"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


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
    listed = {e["case"] for e in EXPECTED} | {"images/good.png", "audio/good.wav", "fhir/good.json"}
    payloads = {str(p.relative_to(CORPUS)) for p in files if p.parent != CORPUS}
    assert {p for p in payloads if not p.startswith("dicom/mismatched-series/")} <= listed


def test_replayed_corpus_is_quarantined_with_reasons_and_payloads(tmp_path: Path, replica: ModelReplica) -> None:
    items = list(Replayer(CORPUS))
    outcomes = [i for i in items if isinstance(i, Quarantined)]
    outcomes += replica.infer([i for i in items if isinstance(i, Sample)])  # the decode stage, as on a line
    store = AuditStore(tmp_path / "audit.db")
    run = store.start_run("bad-corpus", {})
    decided = []
    for outcome in outcomes:
        if isinstance(outcome, Inference):
            decided.append(outcome.item_id)
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
    with pytest.raises(InputError) as err:
        dicom.read_ct_series(CORPUS / case["case"], case["item_id"])
    assert err.value.item_id == case["item_id"] and case["reason"] in err.value.reason
    assert Path(case["case"]).name in str(err.value) or case["case"].endswith("series")


@pytest.mark.parametrize("case", cases("video"), ids=lambda e: e["case"])
def test_video_corpus(case: dict) -> None:
    [item] = list(CameraSource(CORPUS / case["case"], prefix=case["item_id"]))
    assert isinstance(item, Quarantined) and case["reason"] in item.reason and case["case"] in item.reason


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
    with pytest.raises(InputError, match=f"case-9: big.dcm: {dicom.MAX_FILE_BYTES + 1} bytes exceeds"):
        dicom.read_ct_series(sparse(tmp_path / "big.dcm", dicom.MAX_FILE_BYTES + 1), "case-9")
