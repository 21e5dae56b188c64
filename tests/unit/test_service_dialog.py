"""Ticket dialog state across follow-ups in a real SQLite file: scrubbed text only (checked on the file's bytes with
marker strings), retried messages stored once, long tickets cut to a word budget sensibly."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.lines.service.dialog import TicketDialog

MARKERS = ("Zyxwanda", "Qorvath", "07700 900461", "zyx.qorvath@example.org", "17 Quillbury Road")


def _file_bytes(db: Path) -> bytes:
    """The database and its write-ahead log as stored on disk."""
    return b"".join(path.read_bytes() for path in db.parent.glob(db.name + "*"))


def test_follow_ups_and_state_persist_across_instances_and_personal_data_never_reaches_the_file(tmp_path) -> None:
    db = tmp_path / "dialog.db"
    first = TicketDialog(db, "ticket-1")
    first.add("customer", "Hi, my name is Zyxwanda Qorvath, my kettle leaks. Call me on 07700 900461.", "m1")
    first.add("desk", "Unplug the base and let it dry for a day.", "a1")
    first.remember(device="kettle", fault="leaking_seal", notes=["customer zyx.qorvath@example.org"])
    again = TicketDialog(db, "ticket-1")  # another replica, the same file
    again.add("customer", "Still dripping. I live at 17 Quillbury Road, write to zyx.qorvath@example.org", "m2")
    again.remember(escalated=False)

    assert [(m.seq, m.role, m.message_id) for m in first.messages] == [
        (0, "customer", "m1"), (1, "desk", "a1"), (2, "customer", "m2")]
    assert first.messages[0].text == "Hi, my name is [NAME], my kettle leaks. Call me on [PHONE]."
    assert first.messages[2].text == "Still dripping. I live at [ADDRESS]"  # an address cue takes the sentence
    assert again.state == {"device": "kettle", "fault": "leaking_seal", "notes": ["customer [EMAIL]"],
                           "escalated": False}
    stored = _file_bytes(db)
    assert b"[PHONE]" in stored and b"Still dripping" in stored  # the file does hold the ticket
    for marker in MARKERS:
        assert marker.encode() not in stored, marker
    assert TicketDialog(db, "ticket-2").messages == [] and TicketDialog(db, "ticket-2").state == {}


def test_a_retried_message_is_stored_once_and_bad_roles_are_refused(tmp_path) -> None:
    dialog = TicketDialog(tmp_path / "dialog.db", "ticket-7")
    stored = dialog.add("customer", "my heater sparks", "m1")
    assert dialog.add("customer", "my heater sparks", "m1") == stored
    dialog.add("customer", "no id: always new")
    dialog.add("customer", "no id: always new")
    assert [m.seq for m in dialog.messages] == [0, 1, 2]
    with pytest.raises(ValueError, match="ticket-7: role 'robot'"):
        dialog.add("robot", "hello")
    with pytest.raises(ValueError, match="ticket id"):
        TicketDialog(tmp_path / "dialog.db", "")


def test_context_keeps_the_first_and_newest_messages_within_the_word_budget(tmp_path) -> None:
    dialog = TicketDialog(tmp_path / "dialog.db", "ticket-long")
    dialog.add("customer", "my gas boiler drips water underneath")
    for k in range(1, 9):
        dialog.add("customer", f"follow up {k} " + " ".join(["still the same"] * 3))
        dialog.add("desk", f"answer {k}")
    dialog.add("customer", "now the pressure gauge shows zero")

    assert dialog.context(max_words=1000).count("follow up") == 8 and "answer" not in dialog.context(1000)
    short = dialog.context(max_words=40).splitlines()
    assert short[0] == "my gas boiler drips water underneath"
    assert short[1] == "[... 6 messages left out ...]"
    assert short[2:] == [f"follow up {k} " + "still the same still the same still the same" for k in (7, 8)] + [
        "now the pressure gauge shows zero"]
    assert sum(len(line.split()) for line in short if not line.startswith("[...")) <= 40
    assert dialog.context(max_words=3) == "[... 9 messages left out ...]\nnow the pressure"
    assert "answer 8" in dialog.context(max_words=1000, roles=("customer", "desk"))
    assert TicketDialog(tmp_path / "dialog.db", "empty").context() == ""
