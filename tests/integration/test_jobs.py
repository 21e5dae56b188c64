"""``fusionline submit`` and ``fusionline jobs`` against a real Ray head, and the dashboard's jobs page over it.

The head is ``ray start --head --block`` started by this module (:meth:`LocalHead.start`: free ports, a temporary
directory of its own, 2 CPUs, token authentication) and stopped by its own process id (never ``ray stop``); the
tests reach it by its address with ``RAY_AUTH_MODE=token``, as a user of a token-authenticated cluster does. The
done-criterion of issue 17: a rescore submitted as a job, waited for, its Parquet rows checked against the labels.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from connectors.audit import AuditStore
from connectors.recording import read_labels
from pipelines import jobs
from pipelines.cli import main
from pipelines.jobs import LocalHead
from tests.unit.test_audit import decision

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECORDING = REPO / "tests" / "data" / "recordings" / "factory-mini"
GOLDEN = REPO / "tests" / "data" / "golden" / "factory-mini-decisions.jsonl"
APP = REPO / "apps" / "dashboard.py"


def processes_of(head: LocalHead) -> list[psutil.Process]:
    """The live processes of ``head``: its ``ray start`` and every Ray process naming its temporary directory."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(head.temp_dir in part for part in cmdline):
            found.append(process)
    return found


def until(condition: Callable[[], bool], what: str, limit_s: float = 180.0) -> None:
    """Wait for ``condition``; a guard against hanging (fails naming ``what``), not a measure of speed."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {limit_s:.0f} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def head() -> Iterator[LocalHead]:
    """A real Ray head of this module's own, its jobs server on a free port; stopped by its pid, then checked gone."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")
        env.delenv(jobs.ADDRESS_ENV, raising=False)
        head = LocalHead.start(jobs_port=0, num_cpus=2)
        try:
            yield head
        finally:
            head.stop()
            left = processes_of(head)
            shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert not left, f"processes of the stopped head still running: {[p.info['cmdline'][:2] for p in left]}"


@dataclass(frozen=True)
class Submitted:
    """A ``fusionline submit`` run as its own process: exit status, output, the job's id and its --out."""

    returncode: int
    stdout: str
    stderr: str
    job_id: str
    out: Path


@pytest.fixture(scope="module")
def rescore_job(head: LocalHead, tmp_path_factory: pytest.TempPathFactory) -> Submitted:
    """factory-mini rescored by factory-v2 (the model of the golden decisions) in a Ray job: 24 parts in 3 shards on 2
    replicas."""
    out = tmp_path_factory.mktemp("rescore-job") / "out"
    job_id = "rescore-factory-mini"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "submit", "--address", head.address, "--submission-id", job_id, "--",
         "fusionline", "rescore", "factory", "--archive", str(RECORDING), "--out", str(out), "--model",
         str(REPO / "tests" / "data" / "models" / "factory-v2"), "--replicas", "2", "--shard-size", "8",
         "--batch-size", "8"],
        cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=540)
    return Submitted(done.returncode, done.stdout, done.stderr, job_id, out)


def audit_db(path: Path) -> Path:
    """A real audit store: one finished run of 4 decisions."""
    store = AuditStore(path)
    run = store.start_run("factory", {})
    for i in range(4):
        store.record_decision(run, decision(i, "scratch" if i == 2 else "good"))
    store.finish_run(run, {"parts": 4})
    store.close()
    return path


def test_submit_follows_the_job_and_exits_with_its_status(head: LocalHead, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    db = audit_db(tmp_path / "audit.db")
    command = ["submit", "--address", head.address, "--", "fusionline", "audit", "verify", "--db", str(db)]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "python -m pipelines.cli audit verify" in out  # the entrypoint the job ran
    assert "audit trail intact" in out  # the job's own output, followed as it ran
    assert "SUCCEEDED" in out

    with sqlite3.connect(db) as conn:  # an edit behind the store's back: the job's command exits 1
        conn.execute("UPDATE decisions SET label = 'good' WHERE item_id = 'part-0002'")
    assert main(command) == 1
    captured = capsys.readouterr()
    assert "audit trail TAMPERED" in captured.out and "part-0002" in captured.out
    assert "FAILED" in captured.err and "its command exited with status 1" in captured.err


def test_jobs_list_logs_and_stop(head: LocalHead, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = "sleeper"
    script = "print('waiting to be stopped', flush=True); import time; time.sleep(600)"
    assert main(["submit", "--address", head.address, "--no-wait", "--submission-id", job_id, "--",
                 "python", "-c", script]) == 0
    assert f"submitted job {job_id}" in capsys.readouterr().out
    client = jobs.job_client(head.address)
    until(lambda: "waiting to be stopped" in client.get_job_logs(job_id), "the job's first line")

    assert main(["jobs", "list", "--address", head.address]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith(job_id)]
    assert row.split()[1] == "RUNNING" and "time.sleep(600)" in row  # its command as typed

    assert main(["jobs", "logs", job_id, "--address", head.address]) == 0
    assert "waiting to be stopped" in capsys.readouterr().out

    assert main(["jobs", "stop", job_id, "--address", head.address]) == 0
    assert f"job {job_id} STOPPED" in capsys.readouterr().out
    assert jobs.job_info(client, job_id).status == "STOPPED"
    assert main(["jobs", "stop", job_id, "--address", head.address]) == 1  # nothing left to stop
    assert "nothing to stop" in capsys.readouterr().out

    assert main(["jobs", "logs", "no-such-job", "--address", head.address]) == 2
    assert "job no-such-job" in capsys.readouterr().err


def test_rescore_job_writes_one_row_per_item_checked_against_the_labels(rescore_job: Submitted) -> None:
    assert rescore_job.returncode == 0, rescore_job.stderr[-3000:]
    assert f"job {rescore_job.job_id} SUCCEEDED" in rescore_job.stdout
    assert "python -m pipelines.cli rescore factory" in rescore_job.stdout
    assert "(one per item)" in rescore_job.stdout  # the rescore's summary table, from the job's log

    rows = [row for path in sorted((rescore_job.out / "shards").glob("*.parquet"))
            for row in pq.read_table(path).to_pylist()]
    labels = read_labels(RECORDING)
    assert sorted(row["item_id"] for row in rows) == sorted(labels)  # one row per labelled item, none missing
    assert all(row["decision"] != "quarantined" for row in rows)
    answers = {row["item_id"]: (row["decision"], json.loads(row["extra"])["machine"]) for row in rows}
    correct = {task: sum(answers[item][k] == truth[task] for item, truth in labels.items())
               for k, task in enumerate(("defect", "machine"))}
    summary = json.loads((rescore_job.out / "summary.json").read_text())
    assert summary["items"] == len(labels) == 24
    assert {task: summary["accuracy"][task]["accuracy"] for task in correct} == \
           {task: n / len(labels) for task, n in correct.items()}
    assert correct["machine"] / len(labels) >= 0.9 and correct["defect"] / len(labels) >= 0.6  # a trained model
    # the same decisions as the streaming line gives these parts (tests/integration/test_factory_line.py)
    golden = {g["item_id"]: (g["label"], g["machine"]) for g in map(json.loads, GOLDEN.read_text().splitlines())}
    assert answers == golden


def open_jobs_page(at: AppTest) -> AppTest:
    """AppTest.switch_page finds file pages only; the dashboard's pages are callables, registered by url path."""
    [page_hash] = [h for h, page in at._registered_pages.items() if page.get("url_pathname") == "jobs"]
    at._page_hash = page_hash
    return at.run()


def test_jobs_page_shows_progress_and_rescore_results(head: LocalHead, rescore_job: Submitted, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert rescore_job.returncode == 0, rescore_job.stderr[-3000:]
    job_id = "progress-demo"
    script = ("import time; from tqdm import tqdm; bar = tqdm(total=4, desc='demo shards'); bar.update(1); "
              "bar.refresh(); time.sleep(600)")
    client = jobs.job_client(head.address)
    jobs.submit(client, ["python", "-c", script], jobs.runtime_env(None), job_id)
    until(lambda: "1/4" in client.get_job_logs(job_id), "the job's progress bar")
    try:
        monkeypatch.setenv("FUSIONLINE_AUDIT_DB", str(tmp_path / "absent.db"))
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setattr(sys, "argv", ["dashboard.py", "--ray-address", head.address])
        at = open_jobs_page(AppTest.from_file(APP, default_timeout=60).run())
        assert not at.exception
        assert at.title[0].value == "Ray jobs"
        assert "refreshing every" in " ".join(c.value for c in at.caption)  # a job runs
        table = at.dataframe[0].value
        assert list(table["job_id"][:2]) == [job_id, rescore_job.job_id]  # newest first
        assert dict(zip(table["job_id"], table["status"], strict=True))[rescore_job.job_id] == "SUCCEEDED"
        assert at.selectbox[0].value == job_id  # the newest, running: its progress from its log
        [bar] = at.get("progress")
        assert bar.proto.text == "demo shards: 1 / 4" and bar.proto.value == 25

        at.selectbox[0].select(rescore_job.job_id).run()
        assert not at.exception
        summary = json.loads((rescore_job.out / "summary.json").read_text())
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Items"] == "24" and metrics["Quarantined"] == "0"
        assert metrics["Accuracy (defect)"] == f"{100 * summary['accuracy']['defect']['accuracy']:.1f} %"
        assert metrics["Shards"] == "3 (0 skipped)"
        assert not at.get("progress")  # finished: no progress bar
        assert "rescore factory" in at.code[0].value  # the log's tail
    finally:
        client.stop_job(job_id)
        jobs.wait(client, job_id)


def test_jobs_page_without_a_jobs_server_says_how_to_name_one(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no local head recorded
    monkeypatch.delenv(jobs.ADDRESS_ENV, raising=False)
    monkeypatch.setenv("FUSIONLINE_AUDIT_DB", str(tmp_path / "absent.db"))
    monkeypatch.setattr(sys, "argv", ["dashboard.py"])
    at = open_jobs_page(AppTest.from_file(APP, default_timeout=60).run())
    assert not at.exception
    [info] = at.info
    assert "No Ray jobs server to show" in info.value and "--ray-address" in info.value


@pytest.mark.slow
def test_submit_without_address_starts_a_local_head_that_jobs_down_stops(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the head's record: this test's own
    monkeypatch.delenv(jobs.ADDRESS_ENV, raising=False)
    db = audit_db(tmp_path / "audit.db")
    try:
        assert main(["submit", "--head-port", "0", "--", "fusionline", "audit", "verify", "--db", str(db)]) == 0
        out = capsys.readouterr().out
        head = LocalHead.load()
        assert head is not None and head.running()
        assert f"started a local Ray head (pid {head.pid})" in out and head.address in out
        assert "fusionline jobs down" in out and "audit trail intact" in out
        assert main(["jobs", "list"]) == 0  # no address: the recorded head
        assert "fusionline audit verify" in capsys.readouterr().out
    finally:
        recorded = LocalHead.load()
        down = main(["jobs", "down"])
    assert down == 0 and recorded is not None
    assert not recorded.running() and not processes_of(recorded)
    assert not jobs.head_state_path().exists()
    assert main(["jobs", "down"]) == 1  # nothing left to stop
    shutil.rmtree(recorded.temp_dir, ignore_errors=True)
