"""The medical line's page of the dashboard (:mod:`apps.dashboard`): lung-nodule decision support, drawn from the
audit store.

One run of the line at a time (newest first in the picker): headline metrics, the study list, and for the selected
study the CT slices with the finding circled, the finding, its modality weights, the record summary and the five
most similar past cases; then the quarantine. Helpers live in :mod:`apps.medical_data`; the run's rows load as the
factory page's do (:func:`apps.common.open_run`).

Privacy: the CT images and the record summary are patient data. They are shown only when the dashboard runs with
a password (``fusionline dashboard --password-env VAR``) and the viewer has typed it; otherwise the page shows the
findings, weights and similar cases by pseudonymous id only. No name, patient id or birth date is ever shown.
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from apps import data
from apps.common import fmt, line_page, open_run, render_quarantine, section, show_unreadable
from apps import medical_data as md
from connectors.dicom import read_ct_series
from connectors.fhir import read_fhir
from connectors.records import InputError
from pipelines.lines.medical.similar import CaseIndex

#: The line this page shows (its runs' ``line`` in the audit store).
LINE = "medical"

DISCLAIMER = ("**Decision support for a radiologist, not a diagnosis.** Each finding is the model's suggestion "
              "from the CT series and the clinical record; a radiologist reads the study and decides. Flagged "
              "studies are queued for a radiologist's review.")
UNLOCK_NOTE = ("**CT images and clinical records are hidden:** they are patient data, shown only when the "
               "dashboard runs with a password and you have typed it. Start it with `fusionline dashboard "
               "--password-env VAR` (the password in the environment variable `VAR`).")
MODALITY_TITLES = {"ct": "CT series", "record": "FHIR record", "note": "clinical note"}


@st.cache_resource(max_entries=4, show_spinner=False)
def load_series(folder: str, item_id: str, version: float) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A series' lung-windowed slices (``(slices, rows, cols)`` uint8, shared: read only) and its spacing (mm);
    ``version`` (the folder's modification time) is the cache key."""
    series = read_ct_series(folder, item_id)
    return md.lung_window(series.volume), series.spacing_mm


@st.cache_resource(max_entries=2, show_spinner=False)
def load_index(folder: str, version: float) -> CaseIndex:
    """The similar-cases index; ``version`` (its file's modification time) is the cache key, as the line adds
    cases while it runs."""
    return CaseIndex.load(folder)


def patient_data_shown() -> bool:
    """True once the viewer typed the dashboard's password (:func:`apps.dashboard.authenticated`); without a
    password option the dashboard never marks the session, so patient data stays hidden."""
    return st.session_state.get("authenticated") is True


def fmt_pct(value: float | None) -> str:
    return fmt(None if value is None else 100 * value, "{:.0f} %")


def study_label(finding: md.Finding) -> str:
    size = f" {finding.diameter_mm:.0f} mm" if finding.diameter_mm is not None else ""
    return f"{finding.item_id} · {finding.label}{size}" + (" · flagged" if finding.flagged else "")


def render_metrics(stats: data.RunStats, studies: list[md.Finding]) -> None:
    card = {"border": True, "height": "stretch"}
    cols = st.columns(5)
    cols[0].metric("Studies", f"{stats.parts:,}", help="Studies decided in this run (quarantined ones not "
                                                       "included).", **card)
    cols[1].metric("Nodules found", f"{sum(f.nodule for f in studies):,}", help="Studies with a nodule finding.",
                   **card)
    cols[2].metric("Flagged for review", f"{stats.rejected:,}", help="Studies the line queued for a "
                                                                     "radiologist's review.", **card)
    cols[3].metric("Quarantined", f"{stats.quarantined:,}", help="Studies that could not be read; see the "
                                                                 "quarantine table.", **card)
    cols[4].metric("Latency p50", fmt(stats.latency_p50_ms, "{:,.0f} ms"),
                   help="Median ingest-to-decision latency of a study.", **card)


def render_studies(studies: list[md.Finding]) -> None:
    table = md.study_table(studies)
    st.dataframe(
        table.assign(probability=100 * table["probability"], malignancy_risk=100 * table["malignancy_risk"]),
        hide_index=True, width="stretch",
        column_config={
            "item_id": "Study (pseudonymous id)", "finding": "Finding",
            "probability": st.column_config.NumberColumn("Nodule probability", format="%.0f %%"),
            "diameter_mm": st.column_config.NumberColumn("Diameter", format="%.1f mm"),
            "malignancy_risk": st.column_config.NumberColumn("Malignancy risk", format="%.0f %%"),
            "flagged": st.column_config.CheckboxColumn("Flagged for review"),
        },
    )


def render_finding(finding: md.Finding) -> None:
    st.markdown(f"**{finding.label.capitalize()}** · study `{finding.item_id}` &nbsp; "
                + (":orange-badge[:material/flag: Flagged for review]" if finding.flagged
                   else ":gray-badge[Not flagged]"))
    where = "—" if finding.center_vox is None else ", ".join(str(v) for v in finding.center_vox)
    cols = st.columns(2)
    cols[0].metric("Nodule probability", fmt_pct(finding.probability), border=True)
    cols[1].metric("Diameter", fmt(finding.diameter_mm, "{:.1f} mm"), border=True)
    cols = st.columns(2)
    cols[0].metric("Malignancy risk", fmt_pct(finding.malignancy_risk), border=True)
    cols[1].metric("Centre (slice, row, col)", where, border=True,
                   help="Where the nodule's centre lies in the series: slice index (feet to head), row, column.")


def weights_chart(weights: dict[str, float]) -> alt.LayerChart:
    frame = pd.DataFrame({"modality": [MODALITY_TITLES.get(m, m) for m in weights], "weight": list(weights.values())})
    bars = alt.Chart(frame).mark_bar().encode(
        y=alt.Y("modality:N", sort=list(frame["modality"]), title=None),
        x=alt.X("weight:Q", title="router weight", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("modality:N", scale=alt.Scale(scheme="tableau10"), legend=None),
        tooltip=["modality", alt.Tooltip("weight:Q", format=".1%")],
    )
    text = bars.mark_text(align="left", dx=4).encode(text=alt.Text("weight:Q", format=".0%"))
    return (bars + text).properties(height=alt.Step(32))


def render_scroller(finding: md.Finding, config: dict, run_id: str) -> None:
    """The slice scroller: one slice in a lung window, the finding circled on the slices it spans."""
    folder = md.resolve(finding.ct_path, config)
    if folder is None or not folder.is_dir():
        st.warning(f"**The CT series is gone:** no folder at `{finding.ct_path}` (the recording was moved or "
                   "deleted). The finding below is as the line recorded it.", icon=":material/folder_off:")
        return
    try:
        windowed, spacing = load_series(str(folder), finding.item_id, folder.stat().st_mtime)
    except InputError as exc:
        st.warning(f"**The CT series cannot be read:** {exc}", icon=":material/broken_image:")
        return
    n = len(windowed)
    span = md.finding_slices(finding, spacing[0], n)
    k = md.start_slice(finding, n)
    if n > 1:
        k = st.slider("Slice", 0, n - 1, value=k, key=f"slice:{run_id}:{finding.item_id}",
                      help="Slices feet to head; the finding is circled on the slices it spans.")
    where = f"finding on slices {span.start}–{span.stop - 1}" if span else "no finding drawn"
    st.image(md.draw_slice(windowed, k, spacing, finding), width="stretch",
             caption=f"Slice {k} of {n} (0–{n - 1}) · lung window · {where}")


def render_record(finding: md.Finding, config: dict) -> None:
    path = md.resolve(finding.record_path, config)
    if path is None:
        st.caption("No clinical record for this study." if not finding.record_path else
                   f"The record is gone: no file at `{finding.record_path}` (moved or deleted).")
        return
    try:
        summary = md.record_summary(read_fhir(path, finding.item_id))
    except InputError as exc:
        st.warning(f"**The record cannot be read:** {exc}", icon=":material/error:")
        return
    st.markdown("\n".join(f"- **{key}:** {value}" for key, value in summary.items()))


def render_similar(finding: md.Finding, config: dict) -> None:
    folder = config.get("cases_index")
    if not folder:
        st.caption("This run kept no similar-cases index.")
        return
    index_file = Path(folder) / "cases.faiss"
    if not index_file.is_file():
        st.warning(f"**The similar-cases index is gone:** nothing at `{folder}` (moved or deleted).",
                   icon=":material/folder_off:")
        return
    try:
        similar = md.similar_cases(load_index(folder, index_file.stat().st_mtime), finding)
    except (ValueError, RuntimeError, OSError) as exc:  # faiss raises RuntimeError on a damaged file
        st.warning(f"**No similar cases:** {exc}", icon=":material/error:")
        return
    if similar.empty:
        st.caption("The index holds no other case yet.")
        return
    st.dataframe(
        similar.assign(similarity=100 * similar["similarity"]), hide_index=True, width="stretch",
        column_config={
            "item_id": "Case (pseudonymous id)",
            "similarity": st.column_config.ProgressColumn("Similarity", format="%.0f %%", min_value=0,
                                                          max_value=100),
            "nodule": "Nodule", "diameter_mm": st.column_config.NumberColumn("Diameter", format="%.1f mm"),
            "malignancy": "Malignancy", "source": "Finding from",
        },
    )


def render_study(finding: md.Finding, config: dict, run_id: str) -> None:
    shown = patient_data_shown()
    left, right = st.columns([3, 2], gap="large")
    with left:
        section("CT series", "Scroll the slices; the finding is circled at its predicted centre and "
                                     "diameter on the slices it spans.")
        if shown:
            render_scroller(finding, config, run_id)
        else:
            st.info(UNLOCK_NOTE, icon=":material/lock:")
    with right:
        section("Finding", "The model's answer for this study.")
        render_finding(finding)
        section("Modality weights", "How much each input drove this finding (router attention).")
        if finding.modality_weights:
            st.altair_chart(weights_chart(finding.modality_weights), width="stretch")
        else:
            st.caption("No modality weights recorded.")
        section("Clinical record", "Age at the study, sex, smoking and conditions; no name, id or "
                                           "birth date.")
        if shown:
            render_record(finding, config)
        else:
            st.caption(":material/lock: Hidden: patient data (see the note on unlocking).")
    section("Similar cases", "The five past cases nearest this one by the model's case embedding, with "
                                     "their findings (confirmed, or as the model made them).")
    render_similar(finding, config)


def render_run(db: str, run: pd.Series) -> None:
    """The body for one run; reruns on its own (a fragment) until the run finishes."""
    try:
        config = md.run_config(db, run.run_id)
    except data.AuditUnavailable as exc:
        show_unreadable(exc)
        return
    if (loaded := open_run(db, run)) is None:
        return
    decisions, quarantine = loaded
    studies = md.findings(decisions)
    render_metrics(data.run_stats(decisions, quarantine), studies)
    if studies:
        section("Studies", "Flagged studies first; ids are pseudonymous.")
        render_studies(studies)
        by_id = {f.item_id: f for f in studies}
        item_id = st.selectbox("Study", list(by_id), format_func=lambda i: study_label(by_id[i]),
                               key=f"study:{run.run_id}")
        render_study(by_id[item_id], config, run.run_id)
    else:
        st.info("No decisions recorded for this run yet.")
    section("Quarantine", "Studies that could not be processed, with the stage and reason.")
    render_quarantine(quarantine)


def page(db: str, refresh_s: float) -> None:
    """The page: the medical line's runs, and the chosen run's body (:func:`apps.common.line_page`)."""
    line_page(db, refresh_s, LINE, "Lung-nodule decision support", "studies", render_run,
              banner=lambda: st.info(DISCLAIMER, icon=":material/medical_information:"))
