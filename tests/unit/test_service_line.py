"""The service line's parts that need neither speech nor the knowledge base: the data contract, the ticket drawing
and photo rendering, the fault model, modality dropout, the human queue and the page's helpers."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from apps import service_data as sd
from connectors.records import Decision
from model.service_config import SERVICE_MODALITIES, ServiceConfig
from model.service_model import ServiceFaultModel
from pipelines.lines.service import DEVICES, FAULTS, follow_up_id, ticket_of
from pipelines.lines.service.compose import HumanQueue
from pipelines.lines.service.synth import (
    FAULT_SITES,
    TRAIN_PHRASINGS,
    TRAIN_VAGUE,
    VAGUE,
    VOICES,
    draw_ticket,
    guide_phrases,
    render_photo,
)
from pipelines.lines.service.train import drop_modalities


def test_a_follow_up_names_its_ticket() -> None:
    assert ticket_of(follow_up_id("T00007", 2)) == "T00007"
    assert ticket_of("T00007") == "T00007"
    assert ticket_of("report.final") == "report.final"  # a dot alone does not make a follow-up


def test_held_out_tickets_are_worded_and_voiced_as_no_training_ticket() -> None:
    train = [draw_ticket(0, i, "train") for i in range(300)]
    held = [draw_ticket(0, i, "held-out") for i in range(300)]
    assert {t.voice for t in train} <= set(VOICES["train"]) and {t.voice for t in held} <= set(VOICES["held-out"])
    assert not set(VOICES["train"]) & set(VOICES["held-out"])
    for ticket, held_out in [(t, False) for t in train] + [(t, True) for t in held]:
        name, phrases = guide_phrases()[ticket.device, ticket.fault]  # the knowledge base's words for it
        if ticket.complaint_names_fault:
            assert ticket.complaint in (phrases[TRAIN_PHRASINGS:] if held_out else phrases[:TRAIN_PHRASINGS])
        else:
            vague = VAGUE[TRAIN_VAGUE:] if held_out else VAGUE[:TRAIN_VAGUE]
            assert ticket.complaint in [v.format(device=name) for v in vague]
    assert draw_ticket(3, 17) == draw_ticket(3, 17)
    assert {t.fault for t in train} == set(FAULTS) and {t.device for t in train} == set(DEVICES)
    # photo and words hide the fault independently, so the two together tell it far more often than either
    assert 0.1 < np.mean([not t.photo_shows_fault for t in train]) < 0.3
    assert 0.1 < np.mean([not t.complaint_names_fault for t in train]) < 0.3


@pytest.mark.parametrize("fault", FAULTS)
def test_the_photo_shows_the_fault_at_its_site_unless_it_is_hidden(fault: str) -> None:
    spec = dataclasses.replace(draw_ticket(1, 0), device="kettle", fault=fault, photo_shows_fault=True)
    shown, hidden = render_photo(spec), render_photo(dataclasses.replace(spec, photo_shows_fault=False))
    assert shown.shape == (224, 224, 3) and shown.dtype == np.uint8
    changed = np.abs(shown.astype(int) - hidden.astype(int)).max(axis=2) > 40
    assert changed.sum() > 30, f"{fault}: only {changed.sum()} pixels show it"
    assert FAULT_SITES["kettle"][fault]
    assert np.array_equal(hidden, render_photo(dataclasses.replace(spec, photo_shows_fault=False)))


def _model() -> ServiceFaultModel:
    torch.manual_seed(0)
    return ServiceFaultModel(ServiceConfig(faults=list(FAULTS), devices=list(DEVICES), d_model=32)).eval()


def test_the_fault_model_fuses_what_is_present_and_round_trips(tmp_path: Path) -> None:
    model = _model()
    cfg = model.config
    inputs = {"photo": torch.randn(3, cfg.photo_tokens, cfg.photo_dim), "voice": torch.randn(3, 384),
              "text": torch.randn(3, 384)}
    present = torch.tensor([[True, True, False], [False, True, False], [True, False, True]])
    out = model(inputs, present)
    assert out.fault_logits.shape == (3, len(FAULTS)) and out.device_logits.shape == (3, len(DEVICES))
    assert torch.allclose(out.modality_weights.sum(dim=1), torch.ones(3), atol=1e-5)
    assert (out.modality_weights[~present] == 0).all()
    voice_only = model({"voice": inputs["voice"]})
    assert torch.allclose(voice_only.fault_logits[1], out.fault_logits[1], atol=1e-5)  # masked = left out
    loaded = ServiceFaultModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert torch.equal(loaded(inputs, present).fault_logits, out.fault_logits)
    assert "router.proj.photo.weight" in dict(loaded.named_parameters())
    assert not any("backbone" in name for name in loaded.state_dict())  # the frozen encoder ships in its package
    with pytest.raises(ValueError, match="unknown modalities"):
        model({"sound": inputs["voice"]})


def test_modality_dropout_keeps_one_modality_and_adds_none() -> None:
    gen = torch.Generator().manual_seed(0)
    present = torch.rand(2000, len(SERVICE_MODALITIES), generator=gen) < 0.6
    present[present.sum(dim=1) == 0, 0] = True
    kept = drop_modalities(present, 0.7, gen)
    assert kept.any(dim=1).all() and not (kept & ~present).any()
    assert 0.2 < (kept.sum() / present.sum()).item() < 0.6


def _decision(item_id: str, reject: bool, **extra) -> Decision:
    return Decision(item_id, 0, "burnt_connector", 0.4, reject, {"photo": 1.0}, "v", 1.0, "digest",
                    extra={"ticket": ticket_of(item_id), **extra}, decision_id=f"id-{item_id}")


def test_the_human_queue_takes_each_escalated_message_once(tmp_path: Path) -> None:
    queue = HumanQueue(tmp_path / "queue.db")
    with queue:
        for d in (_decision("T1", True, escalation_reasons=["unsure"]), _decision("T2", False),
                  _decision("T1", True, escalation_reasons=["unsure"])):
            assert queue.send(d) == "ok"
    rows = sqlite3.connect(tmp_path / "queue.db").execute("SELECT item_id, reasons, taken FROM escalations").fetchall()
    assert rows == [("T1", '["unsure"]', 0)]


def test_the_page_tells_answered_escalated_and_blocked_messages_apart() -> None:
    decisions = pd.DataFrame([
        {"item_id": "T1", "label": "leaking_seal", "confidence": 0.9, "reject": False,
         "extra": {"ticket": "T1", "kind": "ticket", "safety": "warn", "escalated": False, "transcript": "it leaks"}},
        {"item_id": "T1.f1", "label": "leaking_seal", "confidence": 1.0, "reject": True,
         "extra": {"ticket": "T1", "kind": "followup", "safety": "block", "escalated": True,
                   "escalation_reasons": ["unsafe question"], "typed": "can i bypass it"}},
        {"item_id": "T2", "label": "cracked_casing", "confidence": 0.4, "reject": True,
         "extra": {"ticket": "T2", "kind": "ticket", "safety": "pass", "escalated": True,
                   "escalation_reasons": ["unsure"]}},
    ])
    assert sd.status_counts(decisions) == {"answered": 1, "escalated": 1, "blocked": 1}
    table = sd.ticket_table(decisions)
    assert list(table.columns) == sd.TICKET_COLUMNS
    assert list(table["status"]) == ["answered", "blocked", "escalated"]
    assert list(table["transcript"]) == ["it leaks", "can i bypass it", ""]
    assert sd.escalations(decisions).to_dict("records") == [
        {"item_id": "T1.f1", "status": "blocked", "reasons": "unsafe question"},
        {"item_id": "T2", "status": "escalated", "reasons": "unsure"}]


def test_uninformative_photos_and_complaints_are_resampled_within_their_device_only() -> None:
    from pipelines.lines.service.handler import TicketTensors
    from pipelines.lines.service.train import TicketSet, resampled, uninformative_pools

    rows = [("kettle", False, True), ("kettle", False, False), ("kettle", True, True), ("heater", False, True),
            ("heater", False, True), ("kettle", False, True)]
    labels = {f"T{i}": {"device": d, "photo_shows_fault": shows, "complaint_names_fault": names}
              for i, (d, shows, names) in enumerate(rows)}
    n = len(rows)
    tensors = TicketTensors(torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 6, 4).clone(),
                            torch.arange(n, dtype=torch.float32).view(n, 1).expand(n, 384).clone(),
                            torch.zeros(n, 384), torch.ones(n, 3, dtype=torch.bool))
    tickets = TicketSet([f"T{i}" for i in range(n)], tensors, [""] * n, ["grammar"] * n, {})
    train = torch.tensor([0, 1, 2, 3, 4])  # T5 is held back for validation: never drawn
    pools = uninformative_pools(tickets, labels, train)
    assert set(pools) == {("photo", 0), ("photo", 1), ("photo", 3), ("photo", 4), ("voice", 1)}
    gen = torch.Generator().manual_seed(0)
    drawn: dict[int, set[int]] = {i: set() for i in range(n)}
    for _ in range(200):
        x = resampled(tensors, torch.arange(n), pools, gen)
        for i in range(n):
            drawn[i].add(int(x.photo[i, 0, 0]))
        assert int(x.voice[1, 0]) == 1 and torch.equal(x.voice[[0, 2, 3, 4, 5]], tensors.voice[[0, 2, 3, 4, 5]])
    assert drawn == {0: {0, 1}, 1: {0, 1}, 2: {2}, 3: {3, 4}, 4: {3, 4}, 5: {5}}
    assert torch.equal(tensors.photo[:, 0, 0], torch.arange(n, dtype=torch.float32))  # the cache is left as it was
