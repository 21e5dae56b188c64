"""The audit store's hash chain: intact trails verify, every kind of edit behind the store's back is named."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from connectors.audit import AuditConflict, AuditStore, verify
from connectors.records import Decision, Quarantined
from pipelines.cli import main


def decision(i: int, label: str = "good") -> Decision:
    return Decision(item_id=f"part-{i:04d}", seq=i, label=label, confidence=0.5 + i / 100, reject=label != "good",
                    modality_weights={"image": 0.7, "audio": 0.3}, model_version="v1", latency_ms=10.0 + i,
                    input_digest=f"{i:064x}", acks={"plc": "ok"}, ts=1000.0 + i)


@pytest.fixture
def store(tmp_path: Path):
    """A finished run of 6 decisions and 1 quarantined item, then a second, unfinished run with 2 decisions."""
    s = AuditStore(tmp_path / "audit.db")
    run = s.start_run("factory", {"replicas": 2})
    for i in range(3):
        s.record_decision(run, decision(i))
    payload = tmp_path / "corrupt.png"
    payload.write_bytes(b"\x89PNG garbage")
    s.record_quarantine(run, Quarantined("part-0003", 3, "frame is not a decodable image", "decode",
                                         [str(payload)], ts=1003.0))
    for i in range(4, 7):
        s.record_decision(run, decision(i, "scratch" if i == 5 else "good"))
    s.finish_run(run, {"parts": 6})
    live = s.start_run("factory", {})
    for i in range(2):
        s.record_decision(live, decision(i))
    yield s
    s.close()


def raw(store: AuditStore, sql: str, params: tuple = ()) -> None:
    """An edit made behind the store's back, as anyone with the file and the sqlite3 shell could."""
    with sqlite3.connect(store.path) as conn:
        conn.execute(sql, params)


def test_untouched_trail_verifies(store: AuditStore) -> None:
    report = store.verify()
    assert report.ok and report.entries == 1 + 6 + 1 + 1 + 1 + 2
    assert len(report.head) == 64 and "intact" in str(report)
    assert verify(store.path) == report  # the read-only path agrees


@pytest.mark.parametrize("column, value", [("label", "good"), ("confidence", 0.99), ("reject", 0)])
def test_modified_decision_is_named(store: AuditStore, column: str, value: object) -> None:
    raw(store, f"UPDATE decisions SET {column} = ? WHERE item_id = 'part-0005' AND seq = 5", (value,))
    broken = store.verify().broken
    assert broken is not None and (broken.table, broken.item_id) == ("decisions", "part-0005")
    first_run = store.query("SELECT run_id FROM runs ORDER BY start_pos")[0][0]
    assert "modified" in broken.reason and broken.run_id == first_run


def test_modified_quarantine_reason_and_run_summary_are_named(store: AuditStore) -> None:
    raw(store, "UPDATE quarantine SET reason = 'fine'")
    assert store.verify().broken.item_id == "part-0003"
    raw(store, "UPDATE quarantine SET reason = 'frame is not a decodable image'")
    assert store.verify().ok  # put back exactly: the chain holds again
    raw(store, "UPDATE runs SET summary = '{\"parts\": 5}' WHERE finished IS NOT NULL")
    broken = store.verify().broken
    assert (broken.table, broken.kind) == ("runs", "run_finish")


def test_deleted_row_is_named(store: AuditStore) -> None:
    raw(store, "DELETE FROM decisions WHERE item_id = 'part-0002' AND seq = 2 AND ts = 1002.0")
    broken = store.verify().broken
    assert broken.item_id == "part-0003" and "deleted" in broken.reason  # the entry after the gap


def test_deleted_last_rows_are_caught_by_the_head(store: AuditStore) -> None:
    last_run = store.query("SELECT run_id FROM runs ORDER BY start_pos DESC")[0][0]
    raw(store, "DELETE FROM decisions WHERE run_id = ? AND item_id = 'part-0001'", (last_run,))
    broken = store.verify().broken
    assert broken.item_id == "part-0000" and broken.run_id == last_run and "last entries were deleted" in broken.reason


def test_reordered_rows_are_named(store: AuditStore) -> None:
    raw(store, "UPDATE decisions SET chain_pos = CASE seq WHEN 4 THEN 7 ELSE 6 END "
               "WHERE seq IN (4, 5) AND ts IN (1004.0, 1005.0)")
    broken = store.verify().broken
    assert broken.table == "decisions" and broken.item_id in ("part-0004", "part-0005")
    assert "modified or moved" in broken.reason


def test_swapped_sequence_numbers_are_named(store: AuditStore) -> None:
    raw(store, "UPDATE decisions SET seq = CASE seq WHEN 1 THEN 2 ELSE 1 END WHERE seq IN (1, 2) AND ts < 1003")
    assert store.verify().broken.item_id == "part-0001"


def test_row_inserted_by_hand_is_named(store: AuditStore) -> None:
    raw(store, "INSERT INTO decisions (run_id, item_id, seq, label) VALUES ('r', 'forged', 9, 'good')")
    broken = store.verify().broken
    assert broken.item_id == "forged" and "not in the hash chain" in broken.reason


def test_same_decision_twice_is_a_no_op_a_different_one_is_refused(store: AuditStore) -> None:
    run = store.start_run("factory", {})
    before = store.verify().entries
    assert store.record_decision(run, decision(1)) is True
    assert store.record_decision(run, decision(1)) is False
    with pytest.raises(AuditConflict, match="part-0001.*different acks, label"):
        store.record_decision(run, replace(decision(1), label="dent", acks={"plc": "timeout"}))
    assert store.verify().ok and store.verify().entries == before + 1
    assert [d["label"] for d in store.decisions(run)] == ["good"]


def test_same_quarantine_twice_is_a_no_op_and_a_second_finish_is_refused(store: AuditStore) -> None:
    run = store.start_run("factory", {})
    q = Quarantined("x", 0, "audio clip is empty (0 bytes)", "decode", ts=5.0)
    assert store.record_quarantine(run, q) == store.record_quarantine(run, q)
    store.finish_run(run, {})
    with pytest.raises(AuditConflict, match="run_finish"):
        store.finish_run(run, {})
    assert len(store.quarantined(run)) == 1 and store.verify().ok


def test_item_ids_cannot_steer_the_quarantine_folder(store: AuditStore) -> None:
    run = store.start_run("factory", {})
    for item_id in ("..", ".", "", "../../etc", ".hidden"):
        folder = store.record_quarantine(run, Quarantined(item_id, 0, "bad", "source", ts=1.0))
        assert folder.parent == store.quarantine_dir / run and not folder.name.startswith(".")


def test_nan_values_chain_like_sqlite_stores_them(store: AuditStore) -> None:
    run = store.start_run("factory", {})
    store.record_decision(run, replace(decision(1), latency_ms=float("nan"), confidence=float("inf")))
    assert store.verify().ok


def test_a_store_from_before_the_chain_is_upgraded_and_reported(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript("""
            CREATE TABLE runs (run_id TEXT PRIMARY KEY, line TEXT, started REAL, finished REAL, config TEXT,
                               summary TEXT);
            CREATE TABLE decisions (run_id TEXT, item_id TEXT, seq INTEGER, ts REAL, label TEXT, confidence REAL,
                reject INTEGER, modality_weights TEXT, extra TEXT, model_version TEXT, latency_ms REAL,
                input_digest TEXT, acks TEXT, PRIMARY KEY (run_id, item_id));
            INSERT INTO runs VALUES ('old', 'factory', 1.0, 2.0, '{}', '{}');""")
    store = AuditStore(db)
    run = store.start_run("factory", {})
    store.record_decision(run, decision(0))
    report = store.verify()
    assert not report.ok and report.broken.run_id == "old" and "before the chain existed" in report.broken.reason
    store.close()


def test_cli_exit_codes(store: AuditStore, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["audit", "verify", "--db", str(store.path)]) == 0
    assert "intact" in capsys.readouterr().out
    raw(store, "UPDATE decisions SET label = 'good' WHERE seq = 5 AND ts = 1005.0")
    assert main(["audit", "verify", "--db", str(store.path)]) == 1
    err = capsys.readouterr().err
    assert "TAMPERED" in err and "part-0005" in err and "decisions" in err
    assert main(["audit", "verify", "--db", str(tmp_path / "absent.db")]) == 2
    assert "no audit database" in capsys.readouterr().err and not (tmp_path / "absent.db").exists()
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    assert main(["audit", "verify", "--db", str(tmp_path / "junk.db")]) == 2
    assert "not a readable audit store" in capsys.readouterr().err
