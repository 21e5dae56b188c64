"""Pure helpers of the service line's page (:mod:`apps.service`): a run's decisions (``extra`` as the service
handler writes it, :class:`pipelines.lines.service.handler.ServiceAnswer`) as the ticket table, the escalations and
the safety blocks. Every text here was scrubbed of personal data before the line stored it."""

from __future__ import annotations

from typing import Any

import pandas as pd

#: The ticket table's columns, in order.
TICKET_COLUMNS = ["item_id", "ticket", "kind", "device", "fault", "confidence", "status", "safety", "transcript"]


def status(extra: dict[str, Any]) -> str:
    """``answered``, ``escalated`` (a human takes it) or ``blocked`` (the safety filter stopped the answer)."""
    if extra.get("safety") == "block":
        return "blocked"
    return "escalated" if extra.get("escalated") else "answered"


def ticket_table(decisions: pd.DataFrame) -> pd.DataFrame:
    """One row per message (first messages and follow-ups) in ``seq`` order: :data:`TICKET_COLUMNS`."""
    rows = []
    for d in decisions.itertuples():
        extra = d.extra or {}
        rows.append({"item_id": d.item_id, "ticket": extra.get("ticket", d.item_id),
                     "kind": extra.get("kind", "ticket"), "device": extra.get("device", ""), "fault": d.label,
                     "confidence": float(d.confidence), "status": status(extra),
                     "safety": extra.get("safety", ""), "transcript": extra.get("transcript") or extra.get("typed", "")})
    return pd.DataFrame(rows, columns=TICKET_COLUMNS)


def escalations(decisions: pd.DataFrame) -> pd.DataFrame:
    """The messages sent to a human (blocked ones included), with why: ``item_id, status, reasons``."""
    rows = [{"item_id": d.item_id, "status": status(d.extra or {}),
             "reasons": "; ".join((d.extra or {}).get("escalation_reasons", []))}
            for d in decisions.itertuples() if d.reject]
    return pd.DataFrame(rows, columns=["item_id", "status", "reasons"])


def status_counts(decisions: pd.DataFrame) -> dict[str, int]:
    """``{"answered": n, "escalated": n, "blocked": n}`` over the run's messages."""
    counts = {"answered": 0, "escalated": 0, "blocked": 0}
    for extra in decisions["extra"] if len(decisions) else []:
        counts[status(extra or {})] += 1
    return counts
