"""The service line's page of the dashboard (:mod:`apps.dashboard`): the support desk, drawn from the audit store.

One run of the line at a time (newest first in the picker): how many messages were answered, escalated to a human
and blocked by the safety filter; the ticket list; for the chosen message its photo, transcript, the answer (the
repair guide with its warning) or why a human takes it, and the router's modality weights; the escalations and
safety blocks; then the quarantine (bad photos and audio, with the reason). Helpers live in
:mod:`apps.service_data`. Texts are shown as the line stored them: personal data already scrubbed.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import pandas as pd
import streamlit as st

from apps import data
from apps import service_data as sd
from apps.common import fmt, line_page, open_run, render_quarantine, section

#: The line this page shows (its runs' ``line`` in the audit store).
LINE = "service"

STATUS_BADGES = {"answered": ":green-badge[:material/check: Answered]",
                 "escalated": ":orange-badge[:material/support_agent: Escalated to a human]",
                 "blocked": ":red-badge[:material/block: Blocked by the safety filter]"}


def render_metrics(decisions: pd.DataFrame, stats: data.RunStats) -> None:
    counts = sd.status_counts(decisions)
    card = {"border": True, "height": "stretch"}
    cols = st.columns(5)
    cols[0].metric("Messages", f"{stats.parts:,}", help="First messages and follow-ups answered or escalated.",
                   **card)
    cols[1].metric("Answered", f"{counts['answered']:,}", help="Answered with a repair guide.", **card)
    cols[2].metric("Escalated", f"{counts['escalated']:,}", help="Sent to the human queue: the model was unsure, or "
                                                                 "the safety filter asked for a person.", **card)
    cols[3].metric("Blocked", f"{counts['blocked']:,}", help="Answers the safety filter stopped.", **card)
    cols[4].metric("Quarantined", f"{stats.quarantined:,}", help="Messages whose photo or audio could not be "
                                                                 "used; see the quarantine table.", **card)


def render_message(row: pd.Series) -> None:
    extra = row.extra or {}
    st.markdown(f"{STATUS_BADGES[sd.status(extra)]} &nbsp; `{row.item_id}` · ticket `{extra.get('ticket', '')}`")
    left, right = st.columns([2, 3], gap="large")
    with left:
        path = extra.get("image_path")
        pixels = cv2.imread(path) if path and Path(path).is_file() else None
        if pixels is not None:
            st.image(pixels[:, :, ::-1], caption="The customer's photo", width="stretch")
        else:
            st.caption("No photo with this message." if not path else f"The photo is gone: no file at `{path}`.")
        weights = row.modality_weights or {}
        if weights:
            st.dataframe(pd.DataFrame({"modality": list(weights), "weight": list(weights.values())}),
                         hide_index=True, column_config={"weight": st.column_config.ProgressColumn(
                             "Router weight", format="%.2f", min_value=0.0, max_value=1.0)})
    with right:
        cols = st.columns(3)
        cols[0].metric("Fault", row.label.replace("_", " "), border=True)
        cols[1].metric("Device", str(extra.get("device", "—")).replace("_", " "), border=True)
        cols[2].metric("Confidence", fmt(100 * float(row.confidence), "{:.0f} %"), border=True)
        if extra.get("transcript"):
            st.markdown(f"**Transcript** ({extra.get('asr_mode', '')}): {extra['transcript']}")
        if extra.get("typed"):
            st.markdown(f"**Typed:** {extra['typed']}")
        st.markdown(f"**Guide:** {extra.get('guide_title', '—')} · hazards: "
                    f"{', '.join(extra.get('hazards', [])) or 'none'} · safety: {extra.get('safety', '—')} "
                    f"(unsafe score {extra.get('unsafe_score', 0):.2f})")
        if extra.get("answer"):
            st.markdown(extra["answer"])
        else:
            st.warning("**A person takes this message:** " + "; ".join(extra.get("escalation_reasons", [])),
                       icon=":material/support_agent:")


def render_run(db: str, run: pd.Series) -> None:
    """The body for one run; reruns on its own (a fragment) until the run finishes."""
    if (loaded := open_run(db, run, last="answer")) is None:
        return
    decisions, quarantine = loaded
    render_metrics(decisions, data.run_stats(decisions, quarantine))
    if decisions.empty:
        st.info("No answers recorded for this run yet.")
    else:
        section("Tickets", "Every message in arrival order: first messages (photo + voice) and follow-ups.")
        table = sd.ticket_table(decisions)
        st.dataframe(table.assign(confidence=100 * table["confidence"]), hide_index=True, width="stretch",
                     column_config={"confidence": st.column_config.NumberColumn("Confidence", format="%.0f %%")})
        rows = decisions.set_index("item_id", drop=False)
        item_id = st.selectbox("Message", list(rows.index), key=f"message:{run.run_id}")
        render_message(rows.loc[item_id])
        section("Escalations and safety blocks", "What the human queue holds, and why.")
        escalated = sd.escalations(decisions)
        if escalated.empty:
            st.caption("Nothing escalated.")
        else:
            st.dataframe(escalated, hide_index=True, width="stretch")
    section("Quarantine", "Messages that could not be processed (bad photo or audio), with the stage and reason.")
    render_quarantine(quarantine)


def page(db: str, refresh_s: float) -> None:
    """The page: the service line's runs, and the chosen run's body (:func:`apps.common.line_page`)."""
    line_page(db, refresh_s, LINE, "Service desk", "messages", render_run)
