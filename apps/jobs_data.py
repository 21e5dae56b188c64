"""Helpers for the dashboard's jobs page (:mod:`apps.jobs`): the Ray jobs server's submitted jobs as a table, a
running job's progress from its log, a finished rescore's results from the ``summary.json`` in its ``--out``.

The jobs come from Ray's Jobs API through :mod:`pipelines.jobs` (the client, its address and token); Ray is imported
only when the page asks for jobs, so the other pages do not pay for it. ``fusionline submit`` keeps the command as
typed (``command``) and its ``--out`` (``out``) in each job's metadata.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines import jobs

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

#: The statuses after which a job does not change.
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

#: A tqdm progress bar as it lands in a log: ``rescore factory:  60%|██████    | 3/5 [00:02<00:01, 1.2shard/s]``.
PROGRESS_BAR = re.compile(r"(?:^|[\r\n])([^\r\n|]*?):\s*\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)")

JOB_COLUMNS = ["job_id", "status", "command", "started", "ended", "took_s", "exit_code", "message", "out"]


def load_jobs(client: JobSubmissionClient, now_s: float) -> pd.DataFrame:
    """The submitted jobs, newest first (:data:`JOB_COLUMNS`; times in seconds since the epoch, ``took_s`` up to
    ``now_s`` for a job still running)."""
    rows = []
    for job in reversed(jobs.list_jobs(client)):
        started = job.start_time / 1000 if job.start_time else None
        ended = job.end_time / 1000 if job.end_time else None
        metadata = job.metadata or {}
        rows.append({"job_id": job.submission_id, "status": str(job.status),
                     "command": metadata.get("command", job.entrypoint), "started": started, "ended": ended,
                     "took_s": (ended or now_s) - started if started else None, "exit_code": job.driver_exit_code,
                     "message": job.message, "out": metadata.get("out")})
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def progress(log: str) -> tuple[str, int, int] | None:
    """The last progress bar the log shows: ``(what, done, total)``; None when it shows none."""
    bars = PROGRESS_BAR.findall(log)
    if not bars:
        return None
    what, done, total = bars[-1]
    return what.strip(), int(done), int(total)


def read_summary(out: str | None) -> tuple[dict[str, Any] | None, str]:
    """The ``summary.json`` a job wrote into its ``--out``, and a note on why there is none (empty when there is).

    Only an absolute ``out`` is read: a relative one is inside the job's working directory on the cluster."""
    if not out:
        return None, "the job names no --out"
    if not Path(out).is_absolute():
        return None, f"`{out}` is relative to the job's working directory on the cluster, not readable here"
    path = Path(out) / "summary.json"
    try:
        return json.loads(path.read_text()), ""
    except FileNotFoundError:
        return None, f"no `{path}` (yet)"
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"cannot read `{path}`: {exc}"


def summary_metrics(summary: dict[str, Any]) -> dict[str, str]:
    """A rescore summary's headline figures as the page prints them: items, decided, quarantined, accuracy per
    labelled task, throughput, shards."""
    run = summary.get("run", {})
    metrics = {"Items": f"{summary['items']:,}", "Decided": f"{summary['decided']:,}",
               "Quarantined": f"{summary['quarantined']:,}"}
    for task, scored in summary.get("accuracy", {}).items():
        metrics[f"Accuracy ({task})"] = f"{100 * scored['accuracy']:.1f} %"
    if run.get("items_per_s"):
        metrics["Throughput"] = f"{run['items_per_s']:.1f} items/s"
    if "shards" in summary:
        metrics["Shards"] = f"{summary['shards']} ({run.get('shards_skipped', 0)} skipped)"
    return metrics


def log_tail(log: str, lines: int) -> str:
    """The last ``lines`` lines of ``log``, each progress bar's redraws (carriage returns) reduced to the latest."""
    kept = [line.rsplit("\r", 1)[-1] for line in log.rstrip("\n").split("\n")]
    return "\n".join(kept[-lines:])
