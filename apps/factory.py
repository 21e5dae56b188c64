"""The factory defect-inspection line's page of the dashboard (:mod:`apps.dashboard`), drawn from the audit store.

One run of the line at a time (newest first in the picker): headline metrics, decisions by class, throughput and
latency over time, the last rejected parts with their frames and why they were rejected, modality weights,
controller acknowledgements and the quarantine. Until the run finishes, the body refreshes itself. All queries
live in :mod:`apps.data`.
"""

from __future__ import annotations

from collections.abc import Callable

import altair as alt
import pandas as pd
import streamlit as st

from apps import data
from apps.common import clock, fmt, line_page, open_run, render_quarantine, section

#: The line this page shows (its runs' ``line`` in the audit store).
LINE = "factory"

PASS_COLOR, REJECT_COLOR, P99_COLOR = "#4e79a7", "#e15759", "#f28e2b"
GALLERY_COLUMNS = 4
LEGEND = alt.Legend(title=None)  # right of the plot: the Streamlit theme pads top legends heavily


def render_metrics(stats: data.RunStats, tl: pd.DataFrame) -> None:
    """Six headline cards, each with a sparkline over the run's time buckets where one makes sense."""
    spark = len(tl) > 1
    trend = {
        "parts": tl["parts"].cumsum(),
        "rate": tl["parts_per_s"],
        "reject": 100 * tl["rejected"] / tl["parts"].where(tl["parts"] > 0),
        "p50": tl["latency_p50_ms"],
        "p99": tl["latency_p99_ms"],
    }
    trend = {k: v.dropna().tolist() if spark else None for k, v in trend.items()}
    card = {"border": True, "height": "stretch"}
    reject_pct = None if stats.reject_rate is None else 100 * stats.reject_rate
    cols = st.columns(6)
    cols[0].metric("Parts inspected", f"{stats.parts:,}", chart_data=trend["parts"], chart_type="area",
                   help="Decisions recorded for this run (quarantined items not included).", **card)
    cols[1].metric("Throughput", fmt(stats.throughput, "{:.1f} parts/s"), chart_data=trend["rate"],
                   chart_type="area", help="(parts − 1) / time from the first to the last decision.", **card)
    cols[2].metric("Reject rate", fmt(reject_pct, "{:.1f} %"), delta=f"{stats.rejected:,} rejected",
                   delta_color="off", delta_arrow="off", chart_data=trend["reject"],
                   help="Rejected parts / parts inspected.", **card)
    cols[3].metric("Latency p50", fmt(stats.latency_p50_ms, "{:.1f} ms"), chart_data=trend["p50"],
                   help="Median ingest-to-decision latency.", **card)
    cols[4].metric("Latency p99", fmt(stats.latency_p99_ms, "{:.1f} ms"), chart_data=trend["p99"],
                   help="99th percentile ingest-to-decision latency.", **card)
    cols[5].metric("Quarantined", f"{stats.quarantined:,}", delta="items set aside", delta_color="off",
                   delta_arrow="off", help="Items that could not be processed; see the quarantine table.", **card)


def outcome_color() -> alt.Color:
    return alt.Color("outcome:N", scale=alt.Scale(domain=["rejected", "passed"], range=[REJECT_COLOR, PASS_COLOR]),
                     legend=LEGEND)


def class_chart(classes: pd.DataFrame) -> alt.Chart:
    long = classes.assign(passed=classes["parts"] - classes["rejected"]).melt(
        id_vars=["label", "parts"], value_vars=["rejected", "passed"], var_name="outcome", value_name="count")
    long["pct"] = 100 * long["count"] / classes["parts"].sum()
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("label:N", sort=list(classes["label"]), title=None),
        x=alt.X("pct:Q", stack=True, title="% of parts inspected"),
        color=outcome_color(),
        tooltip=["label", "outcome", "count", alt.Tooltip("pct:Q", format=".1f", title="% of parts")],
    ).properties(height=alt.Step(30))


def throughput_chart(tl: pd.DataFrame) -> alt.Chart:
    width = tl["t_end_s"] - tl["t_s"]
    long = tl.assign(passed=(tl["parts"] - tl["rejected"]) / width, rejected=tl["rejected"] / width).melt(
        id_vars=["t_s", "t_end_s"], value_vars=["rejected", "passed"], var_name="outcome", value_name="rate")
    return alt.Chart(long).mark_bar(binSpacing=2).encode(
        x=alt.X("t_s:Q", bin="binned", title="time into run (s)"), x2="t_end_s:Q",
        y=alt.Y("rate:Q", stack=True, title="parts / s"),
        color=outcome_color(),
        tooltip=[alt.Tooltip("t_s:Q", format=".1f", title="from (s)"), alt.Tooltip("t_end_s:Q", format=".1f",
                 title="to (s)"), "outcome", alt.Tooltip("rate:Q", format=".2f", title="parts/s")],
    ).properties(height=240)


def latency_hist_chart(hist: pd.DataFrame, stats: data.RunStats) -> alt.LayerChart:
    bars = alt.Chart(hist).mark_bar(color=PASS_COLOR, opacity=0.9).encode(
        x=alt.X("lo_ms:Q", bin="binned", title="latency (ms)"), x2="hi_ms:Q",
        y=alt.Y("parts:Q", title="parts"),
        tooltip=[alt.Tooltip("lo_ms:Q", format=".1f", title="from (ms)"),
                 alt.Tooltip("hi_ms:Q", format=".1f", title="to (ms)"), "parts"],
    )
    marks = pd.DataFrame({"ms": [stats.latency_p50_ms, stats.latency_p99_ms], "name": ["p50", "p99"]})
    rules = alt.Chart(marks).mark_rule(strokeDash=[5, 3], strokeWidth=2).encode(
        x="ms:Q", color=alt.Color("name:N", scale=alt.Scale(domain=["p50", "p99"], range=["#59a14f", P99_COLOR]),
                                  legend=LEGEND))
    text = rules.mark_text(align="center", dy=-4, baseline="bottom", fontWeight="bold").encode(
        text=alt.Text("ms:Q", format=".1f"), y=alt.value(0))  # above the plot, clear of the bars
    return (bars + rules + text).properties(height=240)


def latency_time_chart(tl: pd.DataFrame) -> alt.Chart:
    mid = tl.assign(t_s=(tl["t_s"] + tl["t_end_s"]) / 2)  # each bucket's percentiles at its middle
    long = mid.melt(id_vars=["t_s"], value_vars=["latency_p50_ms", "latency_p99_ms"], var_name="q",
                    value_name="ms")
    long["q"] = long["q"].map({"latency_p50_ms": "p50", "latency_p99_ms": "p99"})
    return alt.Chart(long.dropna()).mark_line(point=alt.OverlayMarkDef(size=18), interpolate="monotone").encode(
        x=alt.X("t_s:Q", title="time into run (s)"),
        y=alt.Y("ms:Q", title="latency (ms)"),
        color=alt.Color("q:N", scale=alt.Scale(domain=["p50", "p99"], range=["#59a14f", P99_COLOR]),
                        legend=LEGEND),
        tooltip=[alt.Tooltip("t_s:Q", format=".1f", title="t (s)"), "q", alt.Tooltip("ms:Q", format=".1f")],
    ).properties(height=240)


def modality_chart(weights: pd.DataFrame) -> alt.Chart:
    order = ["all parts"] + sorted(set(weights["label"]) - {"all parts"})
    return alt.Chart(weights).mark_bar().encode(
        y=alt.Y("label:N", sort=order, title=None),
        x=alt.X("weight:Q", stack="normalize", title="mean router weight", axis=alt.Axis(format="%")),
        color=alt.Color("modality:N", scale=alt.Scale(scheme="tableau10"), legend=LEGEND),
        tooltip=["label", "modality", alt.Tooltip("weight:Q", format=".1%")],
    ).properties(height=alt.Step(30))


def render_gallery(rejects: pd.DataFrame) -> None:
    if rejects.empty:
        st.caption("No rejected parts in this run.")
        return
    frames = [data.annotate_defect(p.image_path, p.defect_box) for p in rejects.itertuples()]
    shape = next((f.shape for f in frames if f is not None), (270, 360))
    for start in range(0, len(rejects), GALLERY_COLUMNS):
        cols = st.columns(GALLERY_COLUMNS)
        for col, part, frame in zip(cols, rejects.iloc[start:].itertuples(), frames[start:]):
            with col.container(border=True):
                st.image(data.placeholder_frame("no frame recorded", *shape[:2]) if frame is None else frame,
                         width="stretch")
                st.markdown(f"**{part.label}** · {part.confidence:.0%} confidence · `{part.item_id}`")
                st.markdown(f":red[Rejected for {part.reason or 'a reason not recorded'}]")


def render_cascade(paths: pd.DataFrame) -> None:
    """Who decided: the cascade's small model or, escalated, the big one; with accuracy when the run had labels."""
    if paths.empty:
        return
    section("Cascade", "Parts the small model decided with enough calibrated confidence, and parts escalated to "
                       "the big model; accuracy where the replayed recording has labels.")
    st.dataframe(paths, hide_index=True, width="stretch", column_config={
        "share": st.column_config.NumberColumn("share", format="percent"),
        "mean_small_confidence": st.column_config.NumberColumn("small model's confidence", format="%.3f"),
        "reject_rate": st.column_config.NumberColumn("reject rate", format="percent"),
        "accuracy": st.column_config.NumberColumn("accuracy", format="percent"),
    })


def render_controllers(acks: pd.DataFrame) -> None:
    if acks.empty:
        st.caption("No controller acknowledgements recorded.")
        return
    cols = st.columns(len(acks))
    for col, row in zip(cols, acks.itertuples()):
        col.metric(f"{row.controller.upper()} acks", f"{row.ok:,} / {row.ok + row.failed:,} ok",
                   delta=f"{row.failed:,} failed" if row.failed else "all ok",
                   delta_color="red" if row.failed else "green", delta_arrow="off", border=True)
    st.dataframe(
        acks.assign(ok_rate=100 * acks["ok_rate"], last_ts=[clock(t) for t in acks["last_ts"]]), hide_index=True,
        column_config={
            "controller": "Controller", "ok": "OK", "failed": "Failed", "missing": "No ack",
            "ok_rate": st.column_config.NumberColumn("OK rate", format="%.1f %%"),
            "last_ack": "Last ack", "last_item": "Last item", "last_ts": "Last ack (UTC)",
        },
    )


def timeline(buckets: pd.DataFrame, chart: Callable[[pd.DataFrame], alt.Chart]) -> None:
    """``chart`` of the time buckets, or a note when the run has too few decisions for a timeline."""
    if buckets.empty:
        st.caption("Not enough decisions for a timeline.")
    else:
        st.altair_chart(chart(buckets), width="stretch")


def render_run(db: str, run: pd.Series) -> None:
    """The body for one run; reruns on its own (a fragment) until the run finishes."""
    if (loaded := open_run(db, run, show_line=True)) is None:
        return
    decisions, quarantine = loaded
    stats = data.run_stats(decisions, quarantine)
    tl = data.timeline(decisions)
    render_metrics(stats, tl)
    if decisions.empty:
        st.info("No decisions recorded for this run yet.")
    else:
        left, right = st.columns(2, gap="large")
        with left:
            section("Decisions by class", "Share of inspected parts per decided class, split by reject outcome.")
            st.altair_chart(class_chart(data.class_breakdown(decisions)), width="stretch")
        with right:
            section("Throughput over time", "Decisions per second in equal time buckets across the run.")
            timeline(tl, throughput_chart)
        section("Last rejected parts", "Newest first, with the decided class and confidence and why the part was "
                                       "rejected (its defect, the machine's sound, or both); the red box marks the "
                                       "detected defect.")
        render_gallery(data.recent_rejects(decisions, limit=2 * GALLERY_COLUMNS))
        left, right = st.columns(2, gap="large")
        with left:
            section("Latency distribution", "Ingest-to-decision latency of every part; dashed lines mark p50 "
                                            "and p99.")
            st.altair_chart(latency_hist_chart(data.latency_histogram(decisions), stats), width="stretch")
        with right:
            section("Latency over time", "p50 and p99 latency per time bucket.")
            timeline(tl, latency_time_chart)
    left, right = st.columns(2, gap="large")
    with left:
        weights = data.modality_weights(decisions)
        section("Modality weights", "Mean router attention per modality: which input drove the decisions, overall "
                                    "and per decided class.")
        if weights.empty:
            st.caption("No modality weights recorded.")
        else:
            st.altair_chart(modality_chart(weights), width="stretch")
    with right:
        section("Controllers", "Acknowledgements from each downstream controller (PLC reject gate, MQTT, ...).")
        render_controllers(data.ack_status(decisions))
    render_cascade(data.cascade_breakdown(decisions, data.run_labels(db, run.run_id)))
    section("Quarantine", "Items that could not be processed, with the stage and reason; payloads are kept in the "
                          "folder shown.")
    render_quarantine(quarantine)


def page(db: str, refresh_s: float) -> None:
    """The page: the factory line's runs, and the chosen run's body (:func:`apps.common.line_page`)."""
    line_page(db, refresh_s, LINE, "Defect inspection line", "parts", render_run)
