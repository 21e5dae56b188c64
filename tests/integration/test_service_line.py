"""The service line end to end on real parts: recorded tickets (``tests/data/recordings/service-tickets``: photos,
spoken complaints, typed contact details, follow-ups, bad voice messages) replayed through Ray replicas hosting the
shipped model with the real recogniser (pocketsphinx), knowledge base (MiniLM + faiss), safety filter and dialog
store; answers compared with a golden file; bad audio quarantined with its reason; no personal data in any store or
log; the audit chain intact.

Regenerate the golden file after a deliberate model, knowledge-base or recording change with
``pytest --update-golden``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from connectors.audit import verify
from connectors.recording import read_labels
from pipelines.line import run_line
from pipelines.lines.service.compose import ServiceLineConfig, compose, score

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL = DATA / "models" / "service-v2"
TICKETS = DATA / "recordings" / "service-tickets"
GOLDEN = DATA / "golden" / "service-answers.json"
#: What an answer is compared on, and to how many decimals (None: exactly).
COMPARED = {"label": None, "device": None, "escalated": None, "safety": None, "guide": None, "transcript": None,
            "confidence": 3}
#: Bad voice messages and why each must be quarantined (the reason contains the words).
QUARANTINED = {"bad-empty": "empty", "bad-not-audio": "not decodable", "bad-truncated": "truncated",
               "bad-nan": "NaN", "bad-rate": "sample rate", "bad-silent": "silent",
               "T99999.f1": "has not answered"}


@pytest.fixture(scope="module")
def run(ray_cluster, tmp_path_factory: pytest.TempPathFactory):
    """The recorded tickets replayed once through the line: the report, the folder of its stores, the recording, and
    every log line the driver wrote meanwhile (the replicas' go to the Ray session's log files)."""
    runs = tmp_path_factory.mktemp("service")
    recording = shutil.copytree(TICKETS, runs / "tickets")
    cfg = ServiceLineConfig(model_dir=str(MODEL), recording=str(recording), audit_db=str(runs / "audit.db"))
    logged = Collected(logging.DEBUG)
    logging.getLogger().addHandler(logged)
    line = compose(cfg)
    try:
        report = run_line(line)
    finally:
        line.replicas.shutdown()
        logging.getLogger().removeHandler(logged)
    session_logs = Path(ray_cluster.address_info["session_dir"]) / "logs"
    return report, runs, recording, logged.lines + [p.read_text(errors="replace") for p in session_logs.rglob("*")
                                                      if p.is_file() and p.suffix in (".out", ".err", ".log")]


class Collected(logging.Handler):
    """Every record's message, as the handler saw it."""

    def __init__(self, level: int):
        super().__init__(level)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def answers(decisions) -> dict[str, dict]:
    """The compared part of each answer, by message id."""
    out = {}
    for d in decisions:
        found = {"label": d.label, "confidence": round(d.confidence, 3), **d.extra}
        out[d.item_id] = {key: found.get(key) for key in COMPARED}
    return out


def test_recorded_tickets_are_answered_as_the_golden_file_says(run, request: pytest.FixtureRequest) -> None:
    report, *_ = run
    found = answers(report.decisions)
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert set(found) == set(golden)
    for item, answer in found.items():
        for key, digits in COMPARED.items():
            if digits is None:
                assert answer[key] == golden[item][key], (item, key)
            else:
                assert answer[key] == pytest.approx(golden[item][key], abs=2 * 10**-digits), (item, key)


def test_every_message_is_answered_escalated_or_quarantined_with_its_reason(run) -> None:
    report, _, recording, _ = run
    events = (recording / "events.jsonl").read_text().splitlines()
    assert len(report.decisions) + len(report.quarantined) == len(events)
    reasons = {q.item_id: q.reason for q in report.quarantined}
    assert set(reasons) == set(QUARANTINED)
    for item, words in QUARANTINED.items():
        assert words in reasons[item], (item, reasons[item])
    assert all(q.stage == "decode" for q in report.quarantined)
    for d in report.decisions:  # an answer goes out only where no person takes the message
        assert (d.extra["answer"] is None) == d.reject, d.item_id
        if d.extra["answer"] is not None and set(d.extra["hazards"]) - {"gas"}:
            assert d.extra["safety"] == "warn" and d.extra["answer"].lower().count("before you start") == 1, d.item_id


def test_follow_ups_keep_their_ticket(run) -> None:
    report, _, recording, _ = run
    by_id = {d.item_id: d for d in report.decisions}
    follow_ups = [d for d in report.decisions if d.extra["kind"] == "followup"]
    assert len(follow_ups) == 4  # and the orphan follow-up, quarantined
    for d in follow_ups:
        first = by_id[d.extra["ticket"]]
        assert (d.label, d.extra["device"]) == (first.label, first.extra["device"])
        assert d.reject or not first.reject  # a ticket a person took keeps its follow-ups with that person
    assert score(report, recording)["scored"] == 8


def test_unsafe_follow_ups_are_stopped(run) -> None:
    report, _, recording, _ = run
    labels = read_labels(recording)
    by_id = {d.item_id: d for d in report.decisions}
    unsafe = [i for i, label in labels.items() if label.get("unsafe")]
    assert len(unsafe) == 2
    assert [(i, by_id[i].extra["safety"]) for i in unsafe if not by_id[i].reject] == []
    assert score(report, recording)["unsafe_stopped"] == 1.0


def test_no_personal_data_reaches_a_store_or_a_log(run) -> None:
    report, runs, recording, logged = run
    typed = [json.loads(line).get("note", "") for line in (recording / "events.jsonl").read_text().splitlines()]
    markers = set()
    for text in typed:
        if match := re.search(r"My name is (\w+) (\w+), phone ([\d ]+), (\d+ [A-Za-z ]+), email (\S+)\.", text):
            markers |= {match[1], match[2], match[3].strip(), match[4], match[5]}
    assert len(markers) >= 5, "the recording should carry contact details to scrub"
    stores = [p for p in runs.iterdir() if p.is_file() and p.suffix in (".db", ".db-wal", ".jsonl", ".json")]
    assert {p.name for p in stores} >= {"audit.db", "service-dialog.db", "service-queue.db", "service-outbox.db"}
    for store in stores:
        content = store.read_bytes().decode("utf-8", "replace")
        assert not [m for m in markers if m in content], store.name
    assert not [m for m in markers if any(m in text for text in logged)]
    assert any("[PHONE]" in d.extra["typed"] for d in report.decisions)
    assert verify(runs / "audit.db").ok
