"""Query helpers for the dashboards: pure functions over the SQLite audit store.

The store is opened read-only (a typo'd path never creates a database) and read with the schema that
``connectors.audit`` writes and declares (:data:`~connectors.audit.RUN_START`, :data:`~connectors.audit.DECISION`
with its JSON columns, :data:`~connectors.audit.QUARANTINE`). Loaders return pandas DataFrames; the other helpers aggregate those frames into the
small tables and numbers the page draws, so no chart ever ships one point per part to the browser.

Keys read from a decision's ``extra``, for the rejected-parts gallery: ``image_path`` (frame file), ``defect_box``
(``[x, y, w, h]``, normalised 0..1), and ``machine``, ``machine_confidence`` and ``unobserved``, from which
:func:`reject_reason` tells why the part was rejected with the predictor's own rule.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from connectors.audit import DECISION, QUARANTINE, RUN_START
from model.config import InspectorConfig, rejected_tasks

#: A run without a ``finished`` time and no new decision for this long is shown as stalled, not live.
STALE_AFTER_S = 120.0

#: The factory model's tasks: ``label`` is the primary task's class, the others' are in ``extra``.
FACTORY = InspectorConfig()
#: What the page calls each task that can reject a part.
TASK_TITLES = {"defect": "defect", "machine": "machine sound"}

#: A run's rows as the page loads them: every stored column but the run id.
DECISION_COLUMNS = [c for c in DECISION.columns if c != "run_id"]
QUARANTINE_COLUMNS = [c for c in QUARANTINE.columns if c != "run_id"]


class AuditUnavailable(RuntimeError):
    """The audit store cannot be read (missing file, not a SQLite database); the message says which."""


@dataclass(frozen=True)
class RunStats:
    """Headline numbers of one run. Rates are fractions; ``None`` where undefined (too few decisions)."""

    parts: int
    rejected: int
    reject_rate: float | None
    throughput: float | None  # parts per second over the decision timestamps
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    quarantined: int


def _connect(db: str | Path) -> sqlite3.Connection:
    path = Path(db).expanduser().resolve()
    if not path.is_file():
        raise AuditUnavailable(f"no audit database at {path}")
    try:
        return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise AuditUnavailable(f"cannot open audit database {path}: {exc}") from None


def _read(db: str | Path, sql: str, params: tuple = ()) -> pd.DataFrame:
    with closing(_connect(db)) as conn:
        try:
            return pd.read_sql_query(sql, conn, params=params)
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
            if "no such table" in str(exc):
                return pd.DataFrame()
            raise AuditUnavailable(f"cannot read audit database {db}: {exc}") from None


def list_runs(db: str | Path) -> pd.DataFrame:
    """Runs newest first: ``run_id, line, started, finished, parts, last_ts, status``.

    ``status`` is ``live``, ``stalled`` or ``finished`` (:func:`run_status`). Empty frame when the store has no
    runs (or no tables yet).
    """
    runs = _read(
        db,
        "SELECT r.run_id, r.line, r.started, r.finished, COUNT(d.item_id) AS parts, MAX(d.ts) AS last_ts "
        f"FROM {RUN_START.table} r LEFT JOIN {DECISION.table} d ON d.run_id = r.run_id GROUP BY r.run_id "
        "ORDER BY r.started DESC",
    )
    if runs.empty:
        return runs
    runs["status"] = [run_status(row.finished, row.started, row.last_ts) for row in runs.itertuples()]
    return runs


def run_status(finished: float | None, started: float, last_ts: float | None, now: float | None = None) -> str:
    """``finished`` when the run recorded its end, ``live`` while decisions keep arriving, else ``stalled``."""
    if finished is not None and not pd.isna(finished):
        return "finished"
    last = started if last_ts is None or pd.isna(last_ts) else max(started, last_ts)
    return "live" if (now or time.time()) - last < STALE_AFTER_S else "stalled"


@dataclass(frozen=True)
class RunState:
    """How far a run has got: row counts, last decision time and live/stalled/finished status."""

    parts: int
    quarantined: int
    last_ts: float | None
    status: str

    @property
    def version(self) -> tuple[int, int, float | None]:
        """Changes whenever a decision or quarantined item is added: a cache key for the run's rows."""
        return self.parts, self.quarantined, self.last_ts


def run_state(db: str | Path, run_id: str) -> RunState:
    """The current :class:`RunState` of ``run_id``, from a few indexed look-ups (cheap enough to poll)."""
    row = _read(
        db,
        "SELECT r.started, r.finished, "
        f"(SELECT COUNT(*) FROM {DECISION.table} WHERE run_id = r.run_id) AS parts, "
        f"(SELECT MAX(ts) FROM {DECISION.table} WHERE run_id = r.run_id) AS last_ts, "
        f"(SELECT COUNT(*) FROM {QUARANTINE.table} WHERE run_id = r.run_id) AS quarantined "
        f"FROM {RUN_START.table} r WHERE r.run_id = ?",
        (run_id,),
    )
    if row.empty:
        raise AuditUnavailable(f"run {run_id} is not in the audit database {db}")
    r = row.iloc[0]
    last_ts = None if pd.isna(r["last_ts"]) else float(r["last_ts"])
    status = run_status(r["finished"], r["started"], last_ts)
    return RunState(int(r["parts"]), int(r["quarantined"]), last_ts, status)


def load_decisions(db: str | Path, run_id: str) -> pd.DataFrame:
    """A run's decisions in ``seq`` order; ``reject`` as bool, JSON columns parsed into dicts."""
    sql = f"SELECT {', '.join(DECISION_COLUMNS)} FROM {DECISION.table} WHERE run_id = ? ORDER BY seq"
    df = _read(db, sql, (run_id,)).reindex(columns=DECISION_COLUMNS)
    df["reject"] = df["reject"].astype(bool)
    for key in DECISION.json_columns:
        df[key] = [json.loads(v) if v else {} for v in df[key]]
    return df


def load_quarantine(db: str | Path, run_id: str) -> pd.DataFrame:
    """A run's quarantined items in ``seq`` order: ``item_id, seq, ts, stage, reason, folder``."""
    sql = f"SELECT {', '.join(QUARANTINE_COLUMNS)} FROM {QUARANTINE.table} WHERE run_id = ? ORDER BY seq"
    return _read(db, sql, (run_id,)).reindex(columns=QUARANTINE_COLUMNS)


def run_stats(decisions: pd.DataFrame, quarantine: pd.DataFrame) -> RunStats:
    """Headline numbers. Throughput is ``(n - 1) / (last ts - first ts)``: n decisions span n - 1 intervals."""
    n = len(decisions)
    rejected = int(decisions["reject"].sum()) if n else 0
    span = float(decisions["ts"].max() - decisions["ts"].min()) if n else 0.0
    lat = decisions["latency_ms"].to_numpy(dtype=float)
    return RunStats(
        parts=n,
        rejected=rejected,
        reject_rate=rejected / n if n else None,
        throughput=(n - 1) / span if n > 1 and span > 0 else None,
        latency_p50_ms=float(np.percentile(lat, 50)) if n else None,
        latency_p99_ms=float(np.percentile(lat, 99)) if n else None,
        quarantined=len(quarantine),
    )


def run_labels(db: str | Path, run_id: str) -> dict[str, dict[str, Any]]:
    """The ground truth of a replayed run: the labels of the recording named in its configuration (empty for a
    camera run or a recording without labels)."""
    from connectors.recording import read_labels

    config = _read(db, f"SELECT config FROM {RUN_START.table} WHERE run_id = ?", (run_id,))
    recording = json.loads(config["config"].iloc[0] or "{}").get("recording") if len(config) else None
    if not recording or not (Path(recording) / "labels.jsonl").is_file():
        return {}
    return read_labels(recording)


def cascade_breakdown(decisions: pd.DataFrame, labels: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Per cascade path (``small``: the small model decided; ``escalated``: the big one did): ``path, parts,
    share, mean_small_confidence, reject_rate`` and ``accuracy`` (of the primary label where ``labels`` know the
    part, else NaN). Empty when the run's model was no cascade."""
    paths = decisions["extra"].map(lambda e: e.get("cascade"))
    if paths.isna().all():
        return pd.DataFrame(columns=["path", "parts", "share", "mean_small_confidence", "reject_rate", "accuracy"])
    rows = []
    for path, group in decisions.groupby(paths):
        truth = [labels.get(i, {}).get("defect") for i in group["item_id"]]
        known = [(label, t) for label, t in zip(group["label"], truth, strict=True) if t is not None]
        rows.append({"path": path, "parts": len(group), "share": len(group) / len(decisions),
                     "mean_small_confidence": float(np.mean([e["small_confidence"] for e in group["extra"]])),
                     "reject_rate": float(group["reject"].mean()),
                     "accuracy": float(np.mean([a == b for a, b in known])) if known else float("nan")})
    return pd.DataFrame(rows)


def class_breakdown(decisions: pd.DataFrame) -> pd.DataFrame:
    """Per label: ``label, parts, rejected, share`` (fraction of all parts), ``reject_rate``, ``mean_confidence``.

    Sorted by ``parts`` descending.
    """
    if decisions.empty:
        return pd.DataFrame(columns=["label", "parts", "rejected", "share", "reject_rate", "mean_confidence"])
    g = decisions.groupby("label").agg(
        parts=("item_id", "size"), rejected=("reject", "sum"), mean_confidence=("confidence", "mean")
    )
    g["rejected"] = g["rejected"].astype(int)
    g["share"] = g["parts"] / len(decisions)
    g["reject_rate"] = g["rejected"] / g["parts"]
    out = g.reset_index().sort_values(["parts", "label"], ascending=[False, True], ignore_index=True)
    return out[["label", "parts", "rejected", "share", "reject_rate", "mean_confidence"]]


def timeline(decisions: pd.DataFrame, buckets: int | None = None) -> pd.DataFrame:
    """The run cut into equal time buckets since the first decision (by default ~10 parts a bucket, 4..60 buckets).

    Columns: ``t_s``, ``t_end_s`` (bucket bounds, seconds into the run), ``parts``, ``rejected``, ``parts_per_s``,
    ``latency_p50_ms``, ``latency_p99_ms`` (NaN for empty buckets).
    """
    cols = ["t_s", "t_end_s", "parts", "rejected", "parts_per_s", "latency_p50_ms", "latency_p99_ms"]
    if len(decisions) < 2:
        return pd.DataFrame(columns=cols)
    t = decisions["ts"].to_numpy(dtype=float) - float(decisions["ts"].min())
    span = float(t.max())
    if span <= 0:
        return pd.DataFrame(columns=cols)
    buckets = buckets or min(60, max(4, len(decisions) // 10))
    width = span / buckets
    idx = np.minimum((t / width).astype(int), buckets - 1)
    frame = pd.DataFrame(
        {"b": idx, "reject": decisions["reject"].to_numpy(), "lat": decisions["latency_ms"].to_numpy(dtype=float)}
    )
    g = frame.groupby("b").agg(
        parts=("reject", "size"), rejected=("reject", "sum"),
        latency_p50_ms=("lat", lambda s: np.percentile(s, 50)),
        latency_p99_ms=("lat", lambda s: np.percentile(s, 99)),
    ).reindex(range(buckets))
    g[["parts", "rejected"]] = g[["parts", "rejected"]].fillna(0).astype(int)
    g["t_s"] = np.arange(buckets) * width
    g["t_end_s"] = g["t_s"] + width
    g["parts_per_s"] = g["parts"] / width
    return g.reset_index(drop=True)[cols]


def latency_histogram(decisions: pd.DataFrame, bins: int = 30) -> pd.DataFrame:
    """Latency histogram: ``lo_ms, hi_ms, parts`` per bin."""
    if decisions.empty:
        return pd.DataFrame(columns=["lo_ms", "hi_ms", "parts"])
    counts, edges = np.histogram(decisions["latency_ms"].to_numpy(dtype=float), bins=bins)
    return pd.DataFrame({"lo_ms": edges[:-1], "hi_ms": edges[1:], "parts": counts})


def modality_weights(decisions: pd.DataFrame) -> pd.DataFrame:
    """Mean router weight per modality, overall and per label: long frame ``label, modality, weight``.

    The overall rows have label ``"all parts"``. A modality absent from a decision counts as weight 0
    (the router masked it), so each row's weights over modalities sum to 1.
    """
    if decisions.empty:
        return pd.DataFrame(columns=["label", "modality", "weight"])
    w = pd.DataFrame(list(decisions["modality_weights"]), index=decisions.index).fillna(0.0)
    if w.empty:
        return pd.DataFrame(columns=["label", "modality", "weight"])
    per_label = w.groupby(decisions["label"]).mean()
    per_label.loc["all parts"] = w.mean()
    per_label.index.name = "label"
    return per_label.reset_index().melt(id_vars="label", var_name="modality", value_name="weight")


def ack_status(decisions: pd.DataFrame) -> pd.DataFrame:
    """Per controller (sink): ``controller, ok, failed, missing, ok_rate, last_ack, last_item, last_ts``.

    An ack is ok when it is exactly ``"ok"`` (case-insensitive); anything else the peer answered is a failure.
    ``missing`` counts decisions with no ack from that controller. ``last_*`` describe its latest ack by ``seq``.
    """
    cols = ["controller", "ok", "failed", "missing", "ok_rate", "last_ack", "last_item", "last_ts"]
    rows = []
    sinks = sorted({name for acks in decisions["acks"] for name in acks}) if not decisions.empty else []
    ordered = decisions.sort_values("seq")
    for sink in sinks:
        acked = [(a[sink], item, ts) for a, item, ts in zip(ordered["acks"], ordered["item_id"], ordered["ts"])
                 if sink in a]
        ok = sum(str(ack).strip().lower() == "ok" for ack, _, _ in acked)
        last_ack, last_item, last_ts = acked[-1]
        rows.append({"controller": sink, "ok": ok, "failed": len(acked) - ok, "missing": len(ordered) - len(acked),
                     "ok_rate": ok / len(acked), "last_ack": str(last_ack), "last_item": last_item,
                     "last_ts": last_ts})
    return pd.DataFrame(rows, columns=cols)


def recent_rejects(decisions: pd.DataFrame, limit: int = 8) -> pd.DataFrame:
    """The last ``limit`` rejected parts, newest first; ``image_path`` and ``defect_box`` lifted from ``extra``,
    ``reason`` from :func:`reject_reason`."""
    rej = decisions[decisions["reject"]].sort_values("seq", ascending=False).head(limit).copy()
    for key in ("image_path", "defect_box"):  # object dtype keeps a missing value None (not a NaN string)
        rej[key] = pd.Series([e.get(key) for e in rej["extra"]], index=rej.index, dtype=object)
    rej["reason"] = [reject_reason(label, extra) for label, extra in zip(rej["label"], rej["extra"])]
    return rej[["item_id", "seq", "ts", "label", "confidence", "latency_ms", "image_path", "defect_box", "reason"]]


def reject_reason(label: str, extra: dict[str, Any]) -> str:
    """Why a part was rejected, from its decision: the tasks the predictor's reject rule
    (:func:`model.config.rejected_tasks`) finds off nominal, e.g. ``"defect (scratch)"``, ``"machine sound
    (bearing_click, 97%)"``, ``"anomaly (1.8× the fitted threshold)"`` (the product's good-only model flagged it),
    joined by ``" and "``; ``""`` when the decision does not say (a record without the machine's answer)."""
    answers = {FACTORY.primary_task: label, **{t: extra[t] for t in FACTORY.nominal if t in extra}}
    reasons = []
    for task in rejected_tasks(answers, FACTORY.nominal, extra.get("unobserved", ())):
        confidence = extra.get(f"{task}_confidence")
        detail = answers[task] if confidence is None else f"{answers[task]}, {confidence:.0%}"
        reasons.append(f"{TASK_TITLES.get(task, task)} ({detail})")
    if extra.get("anomalous"):
        reasons.append(f"anomaly ({extra['anomaly_score']:.1f}× the fitted threshold)")
    return " and ".join(reasons)


def annotate_defect(image_path: str | None, box: Any, max_side: int = 360) -> np.ndarray | None:
    """The frame as RGB uint8, shrunk to ``max_side``, with ``box`` (``[x, y, w, h]`` normalised) drawn in red.

    ``None`` when there is no path or the file is not a readable image; an invalid box is not drawn.
    """
    if not image_path:
        return None
    img = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
    if _valid_box(box):
        x, y, bw, bh = (float(v) for v in box)
        p0 = (int(round(x * w)), int(round(y * h)))
        p1 = (int(round(min(x + bw, 1.0) * w)) - 1, int(round(min(y + bh, 1.0) * h)) - 1)
        thickness = max(2, round(max(h, w) / 120))
        cv2.rectangle(img, p0, p1, (40, 40, 255), thickness, lineType=cv2.LINE_AA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def placeholder_frame(text: str, height: int = 270, width: int = 360) -> np.ndarray:
    """A light grey RGB tile with ``text`` centred: stands in for a frame that was not recorded."""
    img = np.full((height, width, 3), 238, np.uint8)
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, width / 400, max(1, round(width / 180))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    origin = ((width - tw) // 2, (height + th) // 2)
    cv2.putText(img, text, origin, font, scale, (120, 120, 120), thick, cv2.LINE_AA)
    return img


def _valid_box(box: Any) -> bool:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return False
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return False
    return 0.0 <= x < 1.0 and 0.0 <= y < 1.0 and w > 0 and h > 0
