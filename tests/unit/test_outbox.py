"""The durable outbox and the stable decision ids (SQLite only, no peers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.outbox import Outbox
from connectors.records import Decision, decision_id


def decision(seq: int, source: str = "recording:abc") -> Decision:
    item_id = f"part-{seq:06d}"
    return Decision(item_id=item_id, seq=seq, label="scratch" if seq % 3 else "good", confidence=0.5 + seq / 1000,
                    reject=bool(seq % 3), modality_weights={"image": 0.6, "audio": 0.4}, model_version="t",
                    latency_ms=1.0, input_digest="0" * 64, extra={"machine": "normal"},
                    decision_id=decision_id("factory", source, seq, item_id))


def test_decision_ids_are_stable_and_distinct() -> None:
    assert decision_id("factory", "recording:abc", 3, "part-3") == decision_id("factory", "recording:abc", 3, "part-3")
    variants = {decision_id(*args) for args in [("factory", "recording:abc", 3, "part-3"),
                                                ("pharma", "recording:abc", 3, "part-3"),
                                                ("factory", "recording:abd", 3, "part-3"),
                                                ("factory", "recording:abc", 27, "part-3"),  # the next loop
                                                ("factory", "recording:abc", 3, "part-4")]}
    assert len(variants) == 5 and all(len(v) == 16 and int(v, 16) >= 0 for v in variants)


def test_pending_decisions_survive_a_restart_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    sent = [decision(i) for i in range(10)]
    assert [box.put("plc", d) for d in sent] == [None] * 10
    for d in sent[:4]:
        box.ack("plc", d.decision_id, "ok")
    box.close()  # the process ends with six decisions not acked

    again = Outbox(tmp_path / "outbox.db")
    pending = again.pending("plc")
    assert [d.item_id for d in pending] == [d.item_id for d in sent[4:]]
    assert pending[0] == sent[4]  # every field comes back, acks empty
    assert again.count_pending("plc") == 6 and again.count_pending("mqtt") == 0


def test_a_decision_is_queued_once_and_never_pending_after_its_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    d = decision(1)
    assert box.put("plc", d) is None and box.put("plc", d) is None  # a replay while pending: still one row
    assert len(box.pending("plc")) == 1
    box.ack("plc", d.decision_id, "ok")
    assert box.put("plc", d) == "ok"  # a replay after the ack: the stored ack, nothing queued
    assert box.pending("plc") == []
    assert box.put("mqtt", d) is None  # each controller has its own queue


def test_a_decision_without_an_id_is_refused(tmp_path: Path) -> None:
    d = decision(1)
    d.decision_id = ""
    with pytest.raises(ValueError, match="part-000001"):
        Outbox(tmp_path / "outbox.db").put("plc", d)


def test_one_put_queues_a_decision_for_every_controller_in_one_transaction(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    d = decision(2)
    assert box.put_all(["plc", "mqtt"], d) == {"plc": None, "mqtt": None}
    assert box.pending("plc") == [d] and box.pending("mqtt") == [d]
    box.ack("plc", d.decision_id, "ok")
    assert box.put_all(["plc", "mqtt"], d) == {"plc": "ok", "mqtt": None}  # a replay: the stored acks
    assert box.count_pending("mqtt") == 1
    box.close()
