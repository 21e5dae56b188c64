"""The service-desk line: each support ticket's photo of the broken device and the customer's voice message (and
typed text, when there is some) -> the device and its fault, the repair guide for them from the knowledge base,
a safety check, and an answer -- or an escalation to a human when the model is unsure or the safety filter says
so. Follow-up messages of a ticket are answered with the ticket's dialog state.

- :mod:`~pipelines.lines.service.synth` -- labelled synthetic tickets: device photos with a rendered fault,
  complaints spoken by ``espeak-ng`` (:func:`~pipelines.lines.service.speech.speak`), follow-ups
- :mod:`~pipelines.lines.service.speech` -- speech recognition (pocketsphinx, domain grammar)
- :mod:`~pipelines.lines.service.knowledge` / :mod:`~pipelines.lines.service.safety` /
  :mod:`~pipelines.lines.service.dialog` -- repair guides (Markdown + MiniLM + faiss), the safety filter and PII
  scrubbing, the ticket's dialog state
- :mod:`~pipelines.lines.service.handler` -- what a model replica hosts: photo + speech -> transcript -> fault ->
  guide -> safety -> answer or escalation
- :mod:`~pipelines.lines.service.train` / :mod:`~pipelines.lines.service.evaluate` -- training and the held-out
  fault accuracy with the photo-only / voice-only / fused ablation
- :mod:`~pipelines.lines.service.compose` / :mod:`~pipelines.lines.service.cli` -- the line's graph and
  ``fusionline synth|train|eval|run|demo service``

A service recording (``docs/recording-format.md``), one event per message::

    frames/<ticket>.png        the customer's photo of the device (a ticket's first message)
    audio/<ticket>.wav         the customer's voice message (a ticket's first message)
    events.jsonl               {"t", "item_id": "<ticket>", "image", "audio", "note": typed text (optional)}
                               {"t", "item_id": "<ticket>.f<N>", "note": follow-up message N of the ticket}
    labels.jsonl               {"item_id", "ticket", "kind": "ticket" | "followup", "device", "fault",
                                "complaint": the words spoken, "photo_shows_fault": bool,
                                "complaint_names_fault": bool, "voice", "speed", "noise_db",
                                "unsafe": bool (follow-ups: a question the line must not answer)}

A follow-up's item id is its ticket's id, a dot, ``f`` and its number (:func:`ticket_of`); the labels are kept
apart from the inputs, as in every recording. The manifest's ``classes`` are ``{"fault": FAULTS, "device":
DEVICES}``.
"""

from __future__ import annotations

#: Fault categories, in the model's class order.
FAULTS: tuple[str, ...] = ("burnt_connector", "cracked_casing", "leaking_seal", "corroded_contact")

#: Devices the desk services and the hazards of working on each (``mains``, ``gas``, ``pressure``, ``battery``).
DEVICE_HAZARDS: dict[str, frozenset[str]] = {
    "kettle": frozenset({"mains"}),
    "space_heater": frozenset({"mains"}),
    "gas_boiler": frozenset({"gas", "pressure"}),
    "pressure_washer": frozenset({"pressure", "mains"}),
    "ebike_battery": frozenset({"battery"}),
}

#: Devices, in the model's class order.
DEVICES: tuple[str, ...] = tuple(DEVICE_HAZARDS)

#: What separates a follow-up's number from its ticket's id: ``T0007.f2`` is follow-up 2 of ticket ``T0007``.
FOLLOW_UP_MARK = ".f"


def ticket_of(item_id: str) -> str:
    """The ticket an item belongs to: ``T0007.f2`` -> ``T0007``; a ticket's first message is the ticket itself."""
    head, mark, number = item_id.rpartition(FOLLOW_UP_MARK)
    return head if mark and number.isdigit() else item_id


def follow_up_id(ticket: str, number: int) -> str:
    """The item id of follow-up ``number`` (from 1) of ``ticket``."""
    return f"{ticket}{FOLLOW_UP_MARK}{number}"
