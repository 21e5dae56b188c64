"""Evaluate a saved service fault model on a labelled (held-out) service recording through the line's own path
(:func:`~pipelines.lines.service.handler.decode` -> :func:`~pipelines.lines.service.handler.hear` ->
:func:`~pipelines.lines.service.handler.ticket_tensors` -> :class:`~pipelines.lines.service.handler.ServiceHandler`).

A ticket the line would set aside (a photo or voice message that does not decode) is counted as quarantined with its
reason, and not scored. Follow-ups are not scored here (the integration test replays them).

Metrics:

- ``ablation``: fault accuracy (and macro-F1) with the router given only some modalities, the others masked for
  every ticket: ``photo_only`` (transcript and typed text masked), ``voice_only`` (photo and typed text masked),
  ``fused`` (all); device accuracy of the fused model;
- ``slices``: fused fault accuracy on tickets whose photo hides the fault, whose complaint names no fault, both;
- ``escalation``: the share of tickets the line sends to a human (unsure or the safety filter's verdict) and the
  fault accuracy of the escalated and of the answered tickets; the same for the model's confidence alone
  (``unsure``: below ``escalate_below``; ``sure``);
- ``asr``: word error rate of the transcripts against the spoken complaints (what the model heard), and the
  recogniser's modes.

:func:`evaluate_safety` scores the safety filter on a labelled set of questions and answers it never trained on
(:data:`SAFETY_HELD_OUT` by default): the share of unsafe answers stopped (blocked or escalated; the target is all of
them), the share of safe ones handled as they should be (sent, with their warning where there is one; escalated when
the work is on gas; the target is at least 95 %), and every miss and false stop by name.

Example:
    >>> metrics = evaluate_service("runs/service-model", "data/service-holdout", out="runs/eval/service")
    >>> print(format_report(metrics))
    >>> print(format_safety_report(evaluate_safety()))
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from connectors.recording import read_labels
from pipelines.lines.service.handler import DecodedTicket, ServiceHandler, acoustic_model
from pipelines.lines.service.safety import (DEFAULT_TRAINING_SET, SafetyExample, SafetyFilter, SafetyVerdict,
                                            load_safety_set)
from pipelines.lines.service.train import load_tickets

#: The held-out safety set: questions and answers written apart from the filter's training set, never trained on.
SAFETY_HELD_OUT = Path(__file__).resolve().parents[3] / "tests" / "data" / "service" / "safety_heldout.yaml"
#: Modalities masked for each ablation (presence mask), by name.
ABLATIONS: dict[str, tuple[str, ...]] = {"photo_only": ("voice", "text"), "voice_only": ("photo", "text"),
                                         "fused": ()}


def evaluate_service(model_dir: str | Path, data_dir: str | Path, out: str | Path | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Score the model in ``model_dir`` on the recording ``data_dir``; write ``metrics.json`` to ``out`` if given."""
    from sklearn.metrics import f1_score

    from pipelines.lines.service.speech import word_error_rate

    with tempfile.TemporaryDirectory(prefix="service-eval-") as scratch:
        handler = ServiceHandler.from_pretrained(model_dir, dialog_db=Path(scratch) / "dialog.db")
        config = handler.config
        tickets = load_tickets(data_dir, config, acoustic_model(model_dir), progress=progress)
        labels = read_labels(data_dir)
        truth = np.array([config.faults.index(labels[i]["fault"]) for i in tickets.item_ids])
        device_truth = np.array([config.devices.index(labels[i]["device"]) for i in tickets.item_ids])
        ablation = {}
        for name, absent in ABLATIONS.items():
            out_ = handler.predict(tickets.tensors, absent)
            predicted = out_.fault_logits.argmax(dim=1).cpu().numpy()
            ablation[name] = {"fault_accuracy": float((predicted == truth).mean()),
                              "fault_macro_f1": float(f1_score(truth, predicted, average="macro"))}
        fused = handler.predict(tickets.tensors)
        right = fused.fault_logits.argmax(dim=1).cpu().numpy() == truth
        ablation["fused"]["device_accuracy"] = float(
            (fused.device_logits.argmax(dim=1).cpu().numpy() == device_truth).mean())
        decoded = [DecodedTicket(i, None, None, 0, None, transcript=t) for i, t in
                   zip(tickets.item_ids, tickets.transcripts, strict=True)]
        replies = handler.answers(decoded, tickets.tensors, fused)
        escalated = np.array([a.reject for a in replies])
        unsure = np.array([a.confidence < config.escalate_below for a in replies])
    rows = [labels[i] for i in tickets.item_ids]
    hidden = np.array([not r["photo_shows_fault"] for r in rows])
    vague = np.array([not r["complaint_names_fault"] for r in rows])
    metrics: dict[str, Any] = {
        "model": str(model_dir), "data": str(data_dir), "model_version": handler.model_version,
        "tickets": len(tickets.item_ids), "quarantined": tickets.quarantined,
        "ablation": ablation,
        "slices": {name: _share(right, mask) for name, mask in
                   (("photo_hides_fault", hidden & ~vague), ("complaint_vague", vague & ~hidden),
                    ("both", hidden & vague), ("neither", ~hidden & ~vague))},
        "escalation": {"share": float(escalated.mean()), "escalated": _share(right, escalated),
                       "answered": _share(right, ~escalated), "unsure_share": float(unsure.mean()),
                       "unsure": _share(right, unsure), "sure": _share(right, ~unsure)},
        "asr": {"wer": float(np.mean([word_error_rate(r["complaint"], t) for r, t in
                                      zip(rows, tickets.transcripts, strict=True)])),
                "modes": {m: tickets.asr_modes.count(m) for m in sorted(set(tickets.asr_modes))}},
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _share(right: np.ndarray, mask: np.ndarray) -> dict[str, float | int]:
    """``{"tickets": n, "fault_accuracy": share right}`` over the tickets in ``mask`` (NaN when none)."""
    n = int(mask.sum())
    return {"tickets": n, "fault_accuracy": float(right[mask].mean()) if n else float("nan")}


def format_report(metrics: dict[str, Any]) -> str:
    """The metrics as a table."""
    a = metrics["ablation"]
    rows = [("tickets", f"{metrics['tickets']} scored, {len(metrics['quarantined'])} quarantined")]
    rows += [(f"fault accuracy, {name.replace('_', ' ')}",
              f"{a[name]['fault_accuracy']:.2%} (macro-F1 {a[name]['fault_macro_f1']:.3f})") for name in ABLATIONS]
    rows.append(("device accuracy, fused", f"{a['fused']['device_accuracy']:.2%}"))
    rows += [(f"  fused where {name.replace('_', ' ')}", f"{s['fault_accuracy']:.2%} of {s['tickets']}")
             for name, s in metrics["slices"].items()]
    e = metrics["escalation"]
    rows += [("escalated to a human", f"{e['share']:.2%}"),
             ("  fault accuracy escalated / answered",
              f"{e['escalated']['fault_accuracy']:.2%} of {e['escalated']['tickets']} / "
              f"{e['answered']['fault_accuracy']:.2%} of {e['answered']['tickets']}"),
             ("  model unsure / sure (fault accuracy)",
              f"{e['unsure_share']:.2%}: {e['unsure']['fault_accuracy']:.2%} of {e['unsure']['tickets']} / "
              f"{e['sure']['fault_accuracy']:.2%} of {e['sure']['tickets']}"),
             ("transcript WER", f"{metrics['asr']['wer']:.2%} ({', '.join(f'{k} {v}' for k, v in metrics['asr']['modes'].items())})")]
    width = max(len(k) for k, _ in rows)
    line = "─" * (width + 50)
    return "\n".join([line, *(f"{k:<{width}}  {v}" for k, v in rows), line])


def evaluate_safety(held_out: str | Path = SAFETY_HELD_OUT, training_set: str | Path = DEFAULT_TRAINING_SET,
                    out: str | Path | None = None) -> dict[str, Any]:
    """Score the safety filter trained on ``training_set`` on the labelled exchanges of ``held_out``; write
    ``safety-metrics.json`` to ``out`` if given. ValueError naming the exchange when one is in both sets."""
    examples = load_safety_set(held_out)
    training = load_safety_set(training_set)
    seen = {(e.question, e.answer) for e in training}
    for example in examples:
        if (example.question, example.answer) in seen:
            raise ValueError(f"{held_out}: {example.question!r} is also in the training set {training_set}")
    safety = SafetyFilter(training_set=training_set)
    verdicts = [safety.check(e.question, e.answer, e.hazards) for e in examples]
    unsafe = [v for e, v in zip(examples, verdicts, strict=True) if e.unsafe]
    safe = [(e, v) for e, v in zip(examples, verdicts, strict=True) if not e.unsafe]
    handled = [v.action == "escalate" if "gas" in e.hazards else v.delivers for e, v in safe]
    gas = [v for e, v in safe if "gas" in e.hazards]

    def named(example: SafetyExample, verdict: SafetyVerdict) -> dict[str, Any]:
        return {"question": example.question, "answer": example.answer, "action": verdict.action,
                "unsafe_score": round(verdict.unsafe_score, 3), "reasons": verdict.reasons}

    stopped = [not v.delivers for v in unsafe]
    metrics: dict[str, Any] = {
        "held_out": str(held_out), "training_set": str(training_set), "training_items": len(training),
        "threshold": safety.threshold,
        "unsafe": {"items": len(unsafe), "stopped": sum(stopped), "share": sum(stopped) / max(len(unsafe), 1),
                   "blocked": sum(v.action == "block" for v in unsafe),
                   "escalated": sum(v.action == "escalate" for v in unsafe)},
        "safe": {"items": len(safe), "handled": sum(handled), "share": sum(handled) / max(len(safe), 1),
                 "gas": len(gas), "gas_escalated": sum(v.action == "escalate" for v in gas),
                 "gas_sent": sum(v.delivers for v in gas)},
        "missed": [named(e, v) for e, v in zip(examples, verdicts, strict=True) if e.unsafe and v.delivers],
        "false_stops": [named(e, v) for (e, v), ok in zip(safe, handled, strict=True) if not ok],
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "safety-metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def format_safety_report(metrics: dict[str, Any]) -> str:
    """The safety metrics as a table, then each miss and false stop."""
    u, s = metrics["unsafe"], metrics["safe"]
    rows = [("held-out set", metrics["held_out"]),
            ("trained on", f"{metrics['training_items']} exchanges, threshold {metrics['threshold']:.3f}"),
            ("unsafe stopped", f"{u['stopped']}/{u['items']} ({u['share']:.1%}): {u['blocked']} blocked, "
                               f"{u['escalated']} escalated"),
            ("safe handled", f"{s['handled']}/{s['items']} ({s['share']:.1%}): sent, or escalated when on gas "
                             f"({s['gas_escalated']}/{s['gas']}; {s['gas_sent']} gas answers sent)")]
    width = max(len(k) for k, _ in rows)
    line = "─" * (width + 50)
    lines = [line, *(f"{k:<{width}}  {v}" for k, v in rows), line]
    for title, items in (("missed (sent though unsafe)", metrics["missed"]),
                         ("false stops (safe, not handled as it should be)", metrics["false_stops"])):
        if items:
            lines.append(f"{title}:")
            lines += [f"  {i['action']} {i['unsafe_score']:.2f}  {i['question']!r} -> {i['answer']!r}" for i in items]
    return "\n".join(lines)
