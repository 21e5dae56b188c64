"""The service desk's page in real Streamlit (AppTest): a run of answered, escalated and blocked messages and a
quarantined voice message, as the service handler records them in the audit store."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from connectors.audit import AuditStore
from connectors.records import Decision, Quarantined
from tests.integration.test_dashboard import APP

pytestmark = pytest.mark.integration


def message(item_id: str, label: str, reject: bool, photo: str = "", **extra) -> Decision:
    extra = {"ticket": item_id.split(".")[0], "kind": "followup" if ".f" in item_id else "ticket",
             "device": "kettle", "hazards": ["mains"], "guide_title": "Kettle with a burnt connector",
             "unsafe_score": 0.1, "escalated": reject, "escalation_reasons": [], "answer": None,
             **({"image_path": photo} if photo else {}), **extra}
    return Decision(item_id, 0, label, 0.9, reject, {"photo": 0.6, "voice": 0.4, "text": 0.0}, "service-fault-1.0",
                    120.0, "digest", extra=extra, decision_id=f"id-{item_id}")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    photo = tmp_path / "T1.png"
    cv2.imwrite(str(photo), np.full((64, 64, 3), 90, np.uint8))
    store = AuditStore(tmp_path / "audit.db")
    run_id = store.start_run("service", {"recording": str(tmp_path)})
    store.record_decision(run_id, message("T1", "burnt_connector", False, str(photo), safety="warn",
                                          transcript="the plug of my kettle has melted", asr_mode="grammar",
                                          typed="My name is [NAME], phone [PHONE]",
                                          answer="Before you start: switch off at the wall.\n\n1. Unplug it."))
    store.record_decision(run_id, message("T1.f1", "burnt_connector", True, safety="block",
                                          typed="can i bypass the safety cut out",
                                          escalation_reasons=["defeating a safety device"]))
    store.record_decision(run_id, message("T2", "leaking_seal", True, safety="escalate", device="gas_boiler",
                                          escalation_reasons=["gas: a professional's job"]))
    store.record_quarantine(run_id, Quarantined("bad-nan", 3, "voice message holds NaN samples", "decode"))
    store.finish_run(run_id, {"items": 4})
    return tmp_path / "audit.db"


def test_the_service_page_shows_tickets_answers_escalations_and_blocks(db: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSIONLINE_AUDIT_DB", str(db))
    monkeypatch.setattr(sys, "argv", ["dashboard.py"])
    at = AppTest.from_file(APP, default_timeout=30).run()
    [page] = [h for h, p in at._registered_pages.items() if p.get("url_pathname") == "service"]
    at._page_hash = page  # AppTest.switch_page finds file pages only; the dashboard's are callables
    at.run()
    assert not at.exception
    assert at.title[0].value == "Service desk"
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Messages"], metrics["Answered"], metrics["Escalated"], metrics["Blocked"],
            metrics["Quarantined"]) == ("3", "1", "1", "1", "1")
    text = "\n".join([str(e.value) for kind in ("markdown", "caption", "warning") for e in at.get(kind)]
                     + [e.value.to_string() for e in at.dataframe])
    assert "the plug of my kettle has melted" in text and "[PHONE]" in text
    assert "Before you start: switch off at the wall." in text
    assert "defeating a safety device" in text and "gas: a professional's job" in text
    assert "voice message holds NaN samples" in text
    [photo] = at.image  # the first message's photo
    assert photo.proto.imgs[0].caption == "The customer's photo"
