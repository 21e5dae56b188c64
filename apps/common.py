"""What every line's page shares: the run picker with its live refresh, cached run loading, formatting, section
headers and the quarantine table. A line's page (:data:`apps.dashboard.PAGES`) supplies its title, the word for
its items and the body of one run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st

from apps import data

STATUS_BADGE = {"live": ":green-badge[:material/sensors: Live]", "finished": ":gray-badge[Finished]",
                "stalled": ":orange-badge[:material/warning: Stalled]"}


@st.cache_data(max_entries=16, show_spinner=False)
def load_run(db: str, run_id: str, version: tuple) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's decisions and quarantined items; ``version`` (:attr:`data.RunState.version`) is the cache key."""
    return data.load_decisions(db, run_id), data.load_quarantine(db, run_id)


def utc(ts: float | None) -> str:
    if ts is None or pd.isna(ts):
        return "—"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S")


def fmt(value: float | None, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def section(title: str, caption: str) -> None:
    st.subheader(title, divider="gray")
    st.caption(caption)


def render_quarantine(quarantine: pd.DataFrame) -> None:
    if quarantine.empty:
        st.caption("Nothing quarantined.")
        return
    st.dataframe(
        quarantine.assign(ts=[clock(t) for t in quarantine["ts"]])[["item_id", "stage", "reason", "ts", "folder"]],
        hide_index=True,
        column_config={"item_id": "Item", "stage": "Stage", "reason": "Reason", "ts": "At (UTC)",
                       "folder": "Payload folder"},
    )


def show_unreadable(exc: data.AuditUnavailable) -> None:
    """Say on the page that the audit store cannot be read, and why."""
    st.error(f"**Cannot read the audit store.** {exc}", icon=":material/error:")


def open_run(db: str, run: pd.Series, last: str = "decision",
             show_line: bool = False) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Start the body of one run (a fragment that reruns until the run finishes): read its state, rerun the app once
    it has just finished (which stops the refresh), load its rows and draw its heading: status, run id (and its line
    with ``show_line``), models, start and the time of the last ``last`` (``decision``, ``answer``).

    Returns the run's decisions and quarantined items, or None after saying that the audit store cannot be read.
    """
    try:
        state = data.run_state(db, run.run_id)
    except data.AuditUnavailable as exc:  # the store was removed or replaced under a running page
        show_unreadable(exc)
        return None
    if state.status == "finished" != run.status:  # it just finished: rerun the app, which stops the refresh
        st.rerun()
    decisions, quarantine = load_run(db, run.run_id, state.version)
    models = ", ".join(f"`{m}`" for m in sorted(decisions["model_version"].dropna().unique())) or "—"
    line = f" · line **{run.line}**" if show_line else ""
    st.markdown(f"{STATUS_BADGE[state.status]} &nbsp; run `{run.run_id}`{line} · model {models} · started "
                f"{utc(run.started)} · last {last} {utc(state.last_ts)}")
    return decisions, quarantine


def line_page(db: str, refresh_s: float, line: str, title: str, items: str,
              render_run: Callable[[str, pd.Series], None], banner: Callable[[], None] | None = None) -> None:
    """A line's page: its title, a picker over the line's runs (newest first) and ``render_run(db, run)`` for the
    chosen one, rerun every ``refresh_s`` seconds until the run finishes (0: never). ``items`` names what the line
    decides (``parts``, ``studies``); ``banner`` draws what the page says under its title."""
    head, picker = st.columns([3, 2], vertical_alignment="bottom")
    head.title(title)
    if banner is not None:
        banner()
    if not Path(db).is_file():
        st.info(f"**No audit database at `{db}` yet.** Run the {line} line to record decisions, or point the "
                "dashboard at an existing store with `-- --db PATH` (or `FUSIONLINE_AUDIT_DB`).",
                icon=":material/info:")
        return
    try:
        runs = data.list_runs(db)
    except data.AuditUnavailable as exc:
        show_unreadable(exc)
        return
    runs = runs[runs["line"] == line] if not runs.empty else runs
    if runs.empty:
        st.info(f"**No runs recorded yet** in `{db}`. This page fills in as soon as the {line} line records its "
                "first run.", icon=":material/info:")
        return
    labels = {r.run_id: f"{r.run_id} · {r.parts:,} {items} · {r.status}" for r in runs.itertuples()}
    run_id = picker.selectbox("Run", list(labels), format_func=labels.get,
                              help="Newest first; the latest is shown by default.")
    run = runs.set_index("run_id", drop=False).loc[run_id]
    refresh = refresh_s if run.status != "finished" and refresh_s > 0 else None
    note = f" · refreshing every {refresh:g} s until the run finishes" if refresh else ""
    st.caption(f"Audit store `{db}`{note}")
    st.fragment(render_run, run_every=refresh)(db, run)
