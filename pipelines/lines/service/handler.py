"""The service line's :class:`~pipelines.handler.Handler`: a ticket's photo and voice message (and typed text) ->
transcript -> fault and device -> repair guide -> safety check -> an answer, or an escalation to a human.

For each ticket's first message:

1. **decode** (:func:`decode`): the photo (:meth:`connectors.records.Frame.decode`), the voice message
   (:func:`connectors.audio.decode_speech`: mono 16 kHz, loudness-normalised; empty, silent, clipped, NaN,
   truncated, absurd-rate or not-audio input is refused with its reason and the ticket quarantined) and the typed
   text, PII scrubbed (:func:`~pipelines.lines.service.safety.scrub_pii`) before anything reads it;
2. **hear** (:func:`hear`): pocketsphinx with the knowledge base's grammar
   (:class:`~pipelines.lines.service.speech.Recognizer`), the transcript scrubbed too;
3. **decide** (:func:`ticket_tensors` -> :class:`~model.service_model.ServiceFaultModel`): fault and device through
   the router;
4. **guide** (:meth:`~pipelines.lines.service.knowledge.KnowledgeBase.search`, restricted to the decided device
   and fault) and **safety** (:meth:`~pipelines.lines.service.safety.SafetyFilter.check` of the complaint and the
   guide's answer with the guide's hazards);
5. **answer or escalate**: a fault confidence below ``escalate_below``, or a safety verdict ``escalate`` or
   ``block``, sends the ticket to the human queue (``reject`` is True: a person must act).

A follow-up message (``<ticket>.f<N>``, typed text only) is answered from the ticket's dialog state
(:class:`~pipelines.lines.service.dialog.TicketDialog`): the guide of its device and fault, searched with the
follow-up's words, through the same safety check.

One inference path: training (:mod:`~pipelines.lines.service.train`), evaluation
(:mod:`~pipelines.lines.service.evaluate`) and the line all go :func:`decode` -> :func:`hear` ->
:func:`ticket_tensors` -> the model.

Example:
    >>> handler = ServiceHandler.from_pretrained("tests/data/models/service-v2")
    >>> handler.infer(samples)      # ServiceAnswer or Quarantined per sample, in order
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from connectors.records import InputError, Quarantined, Sample
from model.service_config import SERVICE_MODALITIES, ServiceConfig
from model.service_model import ServiceFaultModel, ServiceOutput, photo_batch, photo_tokens
from model.router import check_modalities
from model.text import NOTE_DIM, embed_notes
from pipelines.lines.service import FOLLOW_UP_MARK, ticket_of

#: Where a handler keeps the tickets' dialog state unless told otherwise.
DEFAULT_DIALOG_DB = Path("runs/service-dialog.db")


@dataclass
class DecodedTicket:
    """A ticket's first message as a replica decodes it (personal data already scrubbed from the words).

    Attributes:
        item_id: the ticket.
        photo: ``(H, W, 3)`` uint8 BGR, or None when the ticket has no photo.
        speech: ``(samples,)`` float32 mono at ``rate`` Hz, or None when it has no voice message.
        typed: the typed text, scrubbed, or None.
        transcript: what the recogniser heard, scrubbed ("" until :meth:`ServiceHandler.hear`, or no speech).
        asr_mode / asr_confidence: how the recogniser decoded it (``grammar``, ``keywords``, ``general``).
    """

    item_id: str
    photo: np.ndarray | None
    speech: np.ndarray | None
    rate: int
    typed: str | None
    transcript: str = ""
    asr_mode: str = ""
    asr_confidence: float = 0.0


@dataclass
class TicketTensors:
    """Model inputs of ``B`` tickets.

    Attributes:
        photo: ``(B, photo_tokens, photo_dim)`` frozen photo-encoder tokens (zeros where absent).
        voice / text: ``(B, 384)`` sentence embeddings of the transcript and the typed text (zeros where absent).
        present: ``(B, 3)`` bool, columns :data:`~model.service_config.SERVICE_MODALITIES`.
    """

    photo: torch.Tensor
    voice: torch.Tensor
    text: torch.Tensor
    present: torch.Tensor

    def __len__(self) -> int:
        return self.present.shape[0]

    def select(self, index: torch.Tensor | Sequence[int]) -> TicketTensors:
        """The tickets at ``index``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return TicketTensors(self.photo[index], self.voice[index], self.text[index], self.present[index])

    @staticmethod
    def concat(parts: Sequence[TicketTensors]) -> TicketTensors:
        """The tickets of ``parts``, in order."""
        return TicketTensors(*(torch.cat([getattr(p, name) for p in parts]) for name in
                               ("photo", "voice", "text", "present")))


@dataclass
class ServiceAnswer:
    """The line's answer to one message (an :class:`~pipelines.handler.Answer`): ``label`` the fault,
    ``reject`` True when the ticket goes to a human, ``extra`` the transcript, guide, answer text and safety
    verdict (scrubbed text only)."""

    label: str
    confidence: float
    reject: bool
    modality_weights: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    model_version: str = ""


class ServiceHandler:
    """A :class:`~model.service_model.ServiceFaultModel` with the recogniser, knowledge base, safety filter and
    dialog state behind a replica.

    Args:
        model: the fault model.
        dialog_db: the SQLite file of the tickets' dialog state (:data:`DEFAULT_DIALOG_DB` by default; the line
            puts it beside its audit store, ``handler_options`` of :class:`~pipelines.replicas.ReplicaPool`).
    """

    model_type = ServiceFaultModel.model_type
    payloads = ("image", "audio", "note")

    def __init__(self, model: ServiceFaultModel, dialog_db: str | Path = DEFAULT_DIALOG_DB,
                 acoustic: str | Path | None = None):
        from pipelines.lines.service.knowledge import KnowledgeBase
        from pipelines.lines.service.safety import SafetyFilter

        self.model = model.eval()
        self.config: ServiceConfig = model.config
        self.model_version = self.config.version
        self.device = str(next(model.parameters()).device)
        self.knowledge = KnowledgeBase.load()
        self.recognizer = recognizer(self.knowledge, acoustic)
        self.safety = SafetyFilter()
        self.dialog_db = Path(dialog_db)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | None = None, runtime: str = "eager",
                        dialog_db: str | Path = DEFAULT_DIALOG_DB) -> ServiceHandler:
        """The model in ``model_dir`` on ``device`` (None: cuda when present), with the adapted acoustic model
        of its ``acoustic/`` folder when it has one; PyTorch (``eager``) only."""
        if runtime != "eager":
            raise ValueError(f"runtime {runtime!r}: the service line runs eager only")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(ServiceFaultModel.from_pretrained(model_dir, map_location=device), dialog_db,
                   acoustic_model(model_dir))

    def warm_up(self) -> None:
        """Load the photo encoder, MiniLM and the recogniser: one grey photo and half a second of quiet hiss."""
        hiss = np.random.default_rng(0).normal(0, 0.01, 8000).astype(np.float32)
        ticket = DecodedTicket("warm-up", np.full((64, 64, 3), 128, np.uint8), hiss, 16000, "warm-up")
        self.hear([ticket])
        self.predict(ticket_tensors([ticket], self.config))

    def infer(self, samples: Sequence[Sample]) -> list[ServiceAnswer | Quarantined]:
        """Answer every sample in order: tickets in one batch through the model, then follow-ups from the dialog
        state (a follow-up may follow its ticket in the same batch)."""
        decoded = [decode(sample) for sample in samples]
        tickets = [d for d in decoded if isinstance(d, DecodedTicket)]
        answers: dict[str, ServiceAnswer] = {}
        if tickets:
            self.hear(tickets)
            tensors = ticket_tensors(tickets, self.config)
            for ticket, answer in zip(tickets, self.answers(tickets, tensors, self.predict(tensors)), strict=True):
                answers[ticket.item_id] = answer
        out: list[ServiceAnswer | Quarantined] = []
        for sample, d in zip(samples, decoded, strict=True):
            if isinstance(d, Quarantined):
                out.append(d)
            elif isinstance(d, DecodedTicket):
                out.append(answers[d.item_id])
            else:
                out.append(self.follow_up(sample, d))
        return out

    def provenance(self, sample: Sample) -> dict[str, str]:
        """``{"image_path", "audio_path"}`` where the photo and voice message came from (paths only)."""
        paths = {"image_path": sample.frame.source if sample.frame is not None else "",
                 "audio_path": sample.audio.source if sample.audio is not None else ""}
        return {key: path for key, path in paths.items() if path}

    def hear(self, tickets: Sequence[DecodedTicket]) -> None:
        """Transcribe each ticket's voice message in place (:func:`hear`)."""
        hear(tickets, self.recognizer)

    @torch.no_grad()
    def predict(self, tickets: TicketTensors, absent: Collection[str] = ()) -> ServiceOutput:
        """The model's raw outputs; ``absent`` modalities are masked for every ticket (the ablations)."""
        check_modalities(absent, SERVICE_MODALITIES)
        keep = torch.tensor([m not in absent for m in SERVICE_MODALITIES])
        device = self.device
        inputs = {"photo": tickets.photo.to(device), "voice": tickets.voice.to(device),
                  "text": tickets.text.to(device)}
        return self.model(inputs, (tickets.present & keep).to(device))

    def answers(self, tickets: Sequence[DecodedTicket], tensors: TicketTensors,
                out: ServiceOutput) -> list[ServiceAnswer]:
        """The model's outputs for ``tickets`` -> guide, safety, answer or escalation, and the dialog opened."""
        faults = torch.softmax(out.fault_logits.float(), 1).cpu().numpy()
        devices = torch.softmax(out.device_logits.float(), 1).cpu().numpy()
        weights = out.modality_weights.cpu().numpy()
        cfg = self.config
        answers = []
        for i, ticket in enumerate(tickets):
            fault, device = cfg.faults[int(faults[i].argmax())], cfg.devices[int(devices[i].argmax())]
            confidence = float(faults[i].max())
            words = " ".join(t for t in (ticket.transcript, ticket.typed) if t)
            guide = self.guide(words, device, fault)
            unsure = confidence < cfg.escalate_below
            reply = self.reply(words, guide, unsure, "the model is unsure of the fault "
                               f"({confidence:.2f} < {cfg.escalate_below:.2f})")
            self.remember(ticket.item_id, ticket.item_id, words, reply, device=device, fault=fault)
            answers.append(ServiceAnswer(
                label=fault, confidence=confidence, reject=reply["escalated"],
                modality_weights={m: round(float(w), 4) for m, w in zip(SERVICE_MODALITIES, weights[i], strict=True)},
                extra={"ticket": ticket.item_id, "kind": "ticket", "fault": fault, "device": device,
                       "device_confidence": round(float(devices[i].max()), 4),
                       "fault_probabilities": {f: round(float(p), 4) for f, p in zip(cfg.faults, faults[i],
                                                                                      strict=True)},
                       "transcript": ticket.transcript, "asr_mode": ticket.asr_mode,
                       "asr_confidence": round(ticket.asr_confidence, 4), "typed": ticket.typed or "", **reply},
                model_version=self.model_version,
            ))
        return answers

    def follow_up(self, sample: Sample, text: str) -> ServiceAnswer | Quarantined:
        """A follow-up message of a ticket the dialog knows: the guide of the ticket's device and fault searched
        with the message, through the safety check; a ticket a person took keeps its follow-ups with that person.
        Quarantined when the ticket is unknown."""
        from pipelines.lines.service.dialog import TicketDialog

        ticket = ticket_of(sample.item_id)
        state = TicketDialog(self.dialog_db, ticket).state
        if "fault" not in state:
            return Quarantined(sample.item_id, sample.seq, f"follow-up of ticket {ticket}, which this line has not "
                               "answered", "decode")
        guide = self.guide(text, state["device"], state["fault"])
        reply = self.reply(text, guide, bool(state.get("escalated")), "a person already has the ticket")
        self.remember(ticket, sample.item_id, text, reply)
        return ServiceAnswer(
            label=state["fault"], confidence=1.0, reject=reply["escalated"], modality_weights={"text": 1.0},
            extra={"ticket": ticket, "kind": "followup", "fault": state["fault"], "device": state["device"],
                   "typed": text, "transcript": "", **reply},
            model_version=self.model_version,
        )

    def remember(self, ticket: str, item_id: str, words: str, reply: dict[str, Any], **facts: Any) -> None:
        """Store the customer's message and the desk's reply in the ticket's dialog (once per message, replays
        too) and what the desk now knows of the ticket."""
        from pipelines.lines.service.dialog import TicketDialog

        dialog = TicketDialog(self.dialog_db, ticket)
        dialog.add("customer", words, message_id=item_id)
        answer = reply["answer"] or "passed to a person: " + "; ".join(reply["escalation_reasons"])
        dialog.add("desk", answer, message_id=f"{item_id}/reply")
        escalated = reply["escalated"] or bool(dialog.state.get("escalated"))
        dialog.remember(guide=reply["guide"], escalated=escalated, **facts)

    def guide(self, words: str, device: str, fault: str) -> Any:
        """The knowledge base's guide for ``device`` and ``fault``, ranked by ``words`` (the fault's guide for any
        device when the base has none for this one)."""
        for filters in ({"device": device, "fault": fault}, {"fault": fault}):
            found = self.knowledge.search(words or fault.replace("_", " "), k=1, **filters)
            if found:
                return found[0][0]
        raise LookupError(f"the knowledge base has no guide for fault {fault!r}")

    def reply(self, question: str, guide: Any, unsure: bool, unsure_reason: str) -> dict[str, Any]:
        """The guide's answer through the safety filter: the answer text (None when a human takes over), whether
        the message escalates, and why."""
        verdict = self.safety.check(question, guide.answer(), set(guide.hazards))
        reasons = ([unsure_reason] if unsure else []) + list(verdict.reasons)
        escalated = unsure or not verdict.delivers
        return {"guide": guide.key, "guide_title": guide.title, "hazards": sorted(guide.hazards),
                "safety": verdict.action, "safety_reasons": list(verdict.reasons),
                "unsafe_score": round(float(verdict.unsafe_score), 4),
                "answer": None if escalated else verdict.message(guide.answer()),
                "escalated": escalated, "escalation_reasons": reasons}


#: The class this line's replicas host (:func:`pipelines.lines.handler_class`).
Handler = ServiceHandler


#: The general model's commonest words the line's grammar knows beside the knowledge base's (with an adapted model).
COMMON_WORDS = 3000


def recognizer(knowledge: Any, acoustic: str | Path | None = None) -> Any:
    """The speech recogniser of the line: the knowledge base's complaint phrases as its grammar, its vocabulary as
    keywords. With an ``acoustic`` model adapted to the line's voices (:func:`acoustic_model`), the grammar also
    learns from the guides' sentences and knows the :data:`COMMON_WORDS` commonest English words, for phrasings no
    guide lists, and a domain reading is weighed against the general model's by path score alone; with the stock
    model that wider grammar was measured to lose more words than it finds (``docs/service.md``)."""
    from pipelines.lines.service.speech import Recognizer

    if acoustic is None:
        return Recognizer(knowledge.phrases(), knowledge.vocabulary())
    return Recognizer(knowledge.phrases(), knowledge.vocabulary(), knowledge.sentences(), COMMON_WORDS, acoustic,
                      min_coverage=0.0)


def acoustic_model(model_dir: str | Path) -> Path | None:
    """The adapted acoustic model saved with the fault model in ``model_dir`` (its ``acoustic/`` folder, from
    ``fusionline fit service``), or None when it has none (the recogniser then runs the stock model)."""
    folder = Path(model_dir) / "acoustic"
    return folder if folder.is_dir() else None


def hear(tickets: Sequence[DecodedTicket], recognizer: Any) -> None:
    """Transcribe each ticket's voice message with ``recognizer`` (:func:`recognizer`), in place and scrubbed."""
    from pipelines.lines.service.safety import scrub_pii

    for ticket in tickets:
        if ticket.speech is not None:
            heard = recognizer.transcribe(ticket.speech, ticket.rate)
            ticket.transcript = scrub_pii(heard.text)
            ticket.asr_mode, ticket.asr_confidence = heard.mode, float(heard.confidence)


def decode(sample: Sample) -> DecodedTicket | str | Quarantined:
    """A sample as a replica decodes it: a ticket's first message (:class:`DecodedTicket`), a follow-up's scrubbed
    text (``str``), or its :class:`Quarantined` record (stage ``decode``): a photo or voice message that does not
    decode (the whole ticket is set aside, never decided on what is left of it), a first message with neither a
    photo nor a voice message, a follow-up without text."""
    from pipelines.lines.service.safety import scrub_pii

    typed = scrub_pii(sample.note.text) if sample.note is not None and sample.note.text.strip() else None
    if ticket_of(sample.item_id) != sample.item_id and sample.frame is None and sample.audio is None:
        if typed is None:
            return Quarantined(sample.item_id, sample.seq, "follow-up message without text", "decode", [])
        return typed
    if sample.frame is None and sample.audio is None:
        return Quarantined(sample.item_id, sample.seq, "ticket without a photo or a voice message (a follow-up's id "
                           f"is <ticket>{FOLLOW_UP_MARK}<N>)", "decode", [])
    try:
        photo = sample.frame.decode() if sample.frame is not None else None
        speech, rate = (None, 0) if sample.audio is None else _speech(sample)
    except InputError as exc:
        sources = [p.source for p in (sample.frame, sample.audio) if p is not None and p.source]
        return Quarantined(sample.item_id, sample.seq, exc.reason, "decode", sources)
    return DecodedTicket(sample.item_id, photo, speech, rate, typed)


def _speech(sample: Sample) -> tuple[np.ndarray, int]:
    from connectors.audio import decode_speech

    clip = sample.audio
    if clip.encoded is None:
        raise InputError(sample.item_id, "voice message arrived decoded; the line takes encoded audio only")
    return decode_speech(sample.item_id, clip.encoded)


def ticket_tensors(tickets: Sequence[DecodedTicket], config: ServiceConfig) -> TicketTensors:
    """Stack the model inputs of decoded (and heard) tickets: photo tokens, transcript and typed-text embeddings."""
    b = len(tickets)
    photo = torch.zeros(b, config.photo_tokens, config.photo_dim)
    with_photo = [i for i, t in enumerate(tickets) if t.photo is not None]
    if with_photo:
        photo[with_photo] = photo_tokens(photo_batch([tickets[i].photo for i in with_photo], config), config).cpu()
    voice, text = (_embedded([getattr(t, name) for t in tickets]) for name in ("transcript", "typed"))
    present = torch.tensor([[t.photo is not None, bool(t.transcript), bool(t.typed)] for t in tickets],
                           dtype=torch.bool).reshape(b, len(SERVICE_MODALITIES))
    return TicketTensors(photo, voice, text, present)


def _embedded(texts: Sequence[str | None]) -> torch.Tensor:
    """``(N, 384)`` MiniLM embeddings, zeros where there is no text."""
    out = np.zeros((len(texts), NOTE_DIM), np.float32)
    written = [i for i, t in enumerate(texts) if t]
    if written:
        out[written] = embed_notes([texts[i] for i in written])
    return torch.from_numpy(out)
