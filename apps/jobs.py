"""The dashboard's jobs page (:mod:`apps.dashboard`): the jobs ``fusionline submit`` sent to a Ray cluster, running
and finished, from Ray's Jobs API.

A table of the jobs (newest first: status, command, start, duration), then for the chosen job its status and how it
ended, its progress while it runs (the last progress bar in its log: a rescore's shards), a rescore's results (the
``summary.json`` in its ``--out``: items, decided, quarantined, accuracy where labels exist, items/s) and the tail of
its log. The page refreshes every ``--refresh`` seconds while a job is pending or running.

The jobs server is ``--ray-address`` (``fusionline dashboard --ray-address http://HEAD:8265``), else
``$FUSIONLINE_RAY_ADDRESS``, else the local head ``fusionline submit`` started; without any, the page says how to
name one. Helpers live in :mod:`apps.jobs_data`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from apps import jobs_data as jd
from apps.common import section, utc
from pipelines import jobs

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

TITLE = "Ray jobs"
STATUS_BADGE = {"PENDING": ":blue-badge[Pending]", "RUNNING": ":green-badge[:material/sync: Running]",
                "SUCCEEDED": ":gray-badge[Succeeded]", "FAILED": ":red-badge[:material/error: Failed]",
                "STOPPED": ":orange-badge[Stopped]"}
LOG_LINES = 40


@st.cache_resource(max_entries=4, show_spinner=False)
def client_for(address: str | None) -> JobSubmissionClient:
    """One jobs-server client per address for the app's life (Ray's import and the server check happen once)."""
    return jobs.job_client(address)


def page(address: str | None, refresh_s: float) -> None:
    st.title(TITLE)
    try:
        client = client_for(address)
    except jobs.NoJobsServer:
        st.info("**No Ray jobs server to show.** Start the dashboard with `fusionline dashboard --ray-address "
                f"http://HEAD:{jobs.JOBS_PORT}` (or set `{jobs.ADDRESS_ENV}`), or submit a job with `fusionline "
                "submit -- COMMAND`, which starts a local Ray head this page then finds.", icon=":material/info:")
        return
    except ConnectionError as exc:
        st.error(f"**Cannot reach the Ray jobs server.** {exc}", icon=":material/error:")
        return
    live = not load(client)["status"].isin(jd.TERMINAL).all()
    refresh = refresh_s if live and refresh_s > 0 else None
    note = f" · refreshing every {refresh:g} s while a job runs" if refresh else ""
    st.caption(f"Jobs server `{client.get_address()}`{note}")
    st.fragment(render_jobs, run_every=refresh)(client)


def load(client: JobSubmissionClient) -> pd.DataFrame:
    return jd.load_jobs(client, time.time())


def render_jobs(client: JobSubmissionClient) -> None:
    """The jobs table and the chosen job; reruns on its own (a fragment) while a job runs."""
    try:
        table = load(client)
    except (ConnectionError, RuntimeError) as exc:  # the cluster went away under an open page
        st.error(f"**Cannot list the jobs.** {exc}", icon=":material/error:")
        return
    if table.empty:
        st.info("**No jobs submitted yet.** `fusionline submit -- fusionline rescore LINE --archive DIR --out DIR` "
                "sends one.", icon=":material/info:")
        return
    st.dataframe(
        table.assign(started=[utc(t) for t in table["started"]])[["job_id", "status", "command", "started", "took_s"]],
        hide_index=True,
        column_config={"job_id": "Job", "status": "Status", "command": "Command", "started": "Started",
                       "took_s": st.column_config.NumberColumn("Took", format="%.0f s")},
    )
    job_id = st.selectbox("Job", list(table["job_id"]), help="Newest first; the latest is shown by default.")
    render_job(client, table.set_index("job_id", drop=False).loc[job_id])


def render_job(client: JobSubmissionClient, job: pd.Series) -> None:
    section(f"{job.job_id}", job.command)
    st.markdown(f"{STATUS_BADGE.get(job.status, job.status)} · started {utc(job.started)}"
                + (f" · ended {utc(job.ended)}" if job.ended is not None and pd.notna(job.ended) else ""))
    if job.status == "FAILED":
        ending = (f"its command exited with status {int(job.exit_code)}" if pd.notna(job.exit_code)
                  else job.message)
        st.error(f"**Failed:** {ending}", icon=":material/error:")
    elif job.status == "STOPPED":
        st.warning(f"**Stopped:** {job.message}", icon=":material/stop_circle:")
    log = client.get_job_logs(job.job_id)
    bar = jd.progress(log)
    if bar is not None and job.status not in jd.TERMINAL:
        what, done, total = bar
        st.progress(done / total if total else 0.0, text=f"{what}: {done} / {total}")
    out = job.out if pd.notna(job.out) else None
    summary, why_not = jd.read_summary(out)
    if summary is not None:
        cols = st.columns(len(metrics := jd.summary_metrics(summary)))
        for col, (label, value) in zip(cols, metrics.items(), strict=True):
            col.metric(label, value, border=True)
        classes = summary.get("classes", {})
        if classes:
            st.dataframe(pd.DataFrame({"decision": list(classes), "items": list(classes.values())}),
                         hide_index=True, column_config={"decision": "Decision", "items": "Items"})
        st.caption(f"From `{out}/summary.json` · rows in `{summary.get('rows', out)}`")
    elif out:
        st.caption(f"Results: {why_not}.")
    st.caption(f"Log (last {LOG_LINES} lines)")
    st.code(jd.log_tail(log, LOG_LINES) or "(empty)", language=None)
