"""apps.jobs_data: a running job's progress read from real tqdm output, a rescore's summary.json found (or why
not), its headline figures, a log's tail with progress-bar redraws reduced to the latest."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tqdm import tqdm

from apps import jobs_data as jd


def tqdm_output(done: int, total: int, desc: str) -> str:
    """What tqdm writes to a log file (not a terminal) while ``done`` of ``total`` are done."""
    out = io.StringIO()
    bar = tqdm(total=total, desc=desc, file=out, mininterval=0)
    for _ in range(done):
        bar.update(1)
    return out.getvalue()


def test_progress_is_the_last_bar_in_the_log() -> None:
    log = ("Running entrypoint for job x\n" + tqdm_output(24, 24, "decode factory-mini") + "\n"
           + tqdm_output(3, 5, "rescore factory") + "2026-12-06 08:49:09 INFO streaming_executor.py -- Starting\n")
    assert jd.progress(log) == ("rescore factory", 3, 5)
    assert jd.progress("no bar here\n") is None


def test_read_summary_only_where_this_machine_can_read_it(tmp_path: Path) -> None:
    assert jd.read_summary(None) == (None, "the job names no --out")
    summary, why = jd.read_summary("runs/rescore")
    assert summary is None and "relative to the job's working directory" in why
    summary, why = jd.read_summary(str(tmp_path))
    assert summary is None and why.startswith("no `") and "summary.json" in why
    (tmp_path / "summary.json").write_text("{not json")
    assert jd.read_summary(str(tmp_path))[1].startswith("cannot read")
    written = {"items": 24, "decided": 23, "quarantined": 1, "accuracy": {"defect": {"scored": 23, "accuracy": 0.75}},
               "shards": 3, "run": {"items_per_s": 4.26, "shards_skipped": 1}}
    (tmp_path / "summary.json").write_text(json.dumps(written))
    assert jd.read_summary(str(tmp_path)) == (written, "")
    assert jd.summary_metrics(written) == {"Items": "24", "Decided": "23", "Quarantined": "1",
                                           "Accuracy (defect)": "75.0 %", "Throughput": "4.3 items/s",
                                           "Shards": "3 (1 skipped)"}


def test_log_tail_keeps_each_bars_latest_redraw() -> None:
    bar = tqdm_output(2, 2, "work")
    log = "first\n" + bar + "\nlast\n"
    assert bar.count("\r") == 3  # drawn at 0/2, 1/2 and 2/2
    assert jd.log_tail(log, 2).splitlines() == [bar.rsplit("\r", 1)[-1], "last"]
    assert jd.log_tail(log, 2).startswith("work: 100%|")
    assert "\r" not in jd.log_tail(log, 10)
