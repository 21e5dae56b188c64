"""pipelines.jobs without a cluster: the job's entrypoint, runtime environment and metadata, warnings about paths the
cluster will not have, exit statuses from Ray's own JobDetails, the token, the local head's record.
(tests/integration/test_jobs.py runs it all against a real Ray head.)"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from ray.job_submission import JobDetails

from pipelines import jobs
from pipelines.jobs import LocalHead

REPO = Path(__file__).resolve().parents[2]


def details(status: str, exit_code: int | None = None, message: str | None = None) -> JobDetails:
    return JobDetails(type="SUBMISSION", submission_id="job-1", status=status, entrypoint="python -m pipelines.cli",
                      message=message, start_time=1_000, end_time=3_500, driver_exit_code=exit_code,
                      metadata={"command": "fusionline eval --data d"})


def test_a_leading_fusionline_runs_the_uploaded_cli_with_the_clusters_python() -> None:
    assert jobs.entrypoint(["fusionline", "rescore", "factory", "--out", "/shared/a b"]) == \
        "python -m pipelines.cli rescore factory --out '/shared/a b'"
    assert jobs.entrypoint(["python", "-c", "print('x')"]) == "python -c 'print('\"'\"'x'\"'\"')'"
    with pytest.raises(ValueError, match="no command"):
        jobs.entrypoint([])


def test_flag_value_and_path_warnings() -> None:
    assert jobs.flag_value(["fusionline", "rescore", "--out", "/o"], "--out") == "/o"
    assert jobs.flag_value(["fusionline", "rescore", "--out=/o"], "--out") == "/o"
    assert jobs.flag_value(["fusionline", "rescore", "--output", "/o"], "--out") is None
    command = ["fusionline", "rescore", "factory", "--archive", "data/factory-holdout",
               "--archive=tests/data/recordings/factory-mini", "--out", "runs/rescore"]
    warnings = jobs.path_warnings(command, uploaded=True)
    assert len(warnings) == 2  # the relative --out, the input under data/ (tests/data is uploaded)
    assert "--out runs/rescore is relative" in warnings[0]
    assert warnings[1].startswith("data/factory-holdout: data/ is not uploaded")
    assert len(jobs.path_warnings(command[:-2] + ["--out=runs/rescore"], uploaded=True)) == 2  # --out=DIR alike
    assert jobs.path_warnings(command[:-2] + ["--out", "/shared/out"], uploaded=False) == []


def test_runtime_env_uploads_the_checkout_without_data_and_reads_requirement_files(tmp_path: Path) -> None:
    env = jobs.runtime_env()
    assert env == {"working_dir": str(REPO), "excludes": jobs.WORKING_DIR_EXCLUDES}
    assert {"/data/", "/runs/", ".git/", ".venv"} <= set(env["excludes"])
    assert jobs.runtime_env(None) == {}
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# a comment\n--index-url https://example.invalid\npyarrow==26.0.1\n    # via x\n\n")
    env = jobs.runtime_env(None, [str(requirements), "tqdm"], {"HF_HUB_OFFLINE": "1"})
    assert env == {"pip": ["pyarrow==26.0.1", "tqdm"], "env_vars": {"HF_HUB_OFFLINE": "1"}}
    locked = jobs.runtime_env(None, [str(REPO / "requirements.lock")])["pip"]
    assert "ray==2.60.0" in locked and not [p for p in locked if p.startswith(("#", "-"))]


def test_submission_ids_name_the_command() -> None:
    stamp = r"\d{8}-\d{6}-[0-9a-f]{4}"
    assert re.fullmatch(rf"fusionline-rescore-factory-{stamp}", jobs.submission_id(["fusionline", "rescore",
                                                                                   "factory", "--out", "o"]))
    assert re.fullmatch(rf"fusionline-eval-{stamp}", jobs.submission_id(["fusionline", "eval", "--data", "d"]))
    assert re.fullmatch(rf"fusionline-python-{stamp}", jobs.submission_id(["/usr/bin/python", "-c", "1"]))


def test_exit_status_and_outcome_from_the_jobs_end() -> None:
    assert jobs.exit_status(details("SUCCEEDED", 0)) == 0
    assert jobs.exit_status(details("FAILED", 2)) == 2  # the command's own status, as run here
    assert jobs.exit_status(details("FAILED", -9)) == 137  # killed by signal 9
    assert jobs.exit_status(details("FAILED", None, "runtime_env setup failed: no such package")) == 1
    assert jobs.exit_status(details("STOPPED", None, "Job was intentionally stopped.")) == 1
    assert jobs.outcome(details("SUCCEEDED", 0, "Job finished successfully.")) == \
        "job job-1 SUCCEEDED after 2.5 s"
    assert jobs.outcome(details("FAILED", 2, "Job entrypoint command failed ... last available logs")) == \
        "job job-1 FAILED after 2.5 s: its command exited with status 2"  # the logs were shown: not repeated
    assert jobs.outcome(details("FAILED", None, "runtime_env setup failed: no such package")) == \
        "job job-1 FAILED after 2.5 s: runtime_env setup failed: no such package"


def test_format_jobs_shows_the_command_as_typed() -> None:
    table = jobs.format_jobs([details("RUNNING").model_copy(update={"end_time": None})], now_ms=11_000)
    header, row = table.splitlines()
    assert header.split() == ["ID", "STATUS", "STARTED", "(UTC)", "TOOK", "COMMAND"]
    assert row.split() == ["job-1", "RUNNING", "1970-01-01", "00:00:01", "10", "s", "fusionline", "eval", "--data",
                           "d"]
    assert jobs.format_jobs([]) == "no jobs submitted yet"


def test_auth_token_as_ray_looks_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert jobs.auth_token({}) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert jobs.auth_token({}) == "from-home"
    (tmp_path / "token").write_text("from-path")
    assert jobs.auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}) == "from-path"
    assert jobs.auth_token({"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}) == \
        "from-env"


def test_a_recorded_head_counts_only_while_its_own_process_runs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert jobs.head_state_path() == tmp_path / "fusionline" / "ray-head.json"
    assert LocalHead.load() is None  # none recorded
    gone = subprocess.Popen(["true"])
    gone.wait()
    LocalHead("http://127.0.0.1:1", gone.pid, "/tmp/fusionline-ray-x").save()
    assert LocalHead.load() is None  # its process has ended
    LocalHead("http://127.0.0.1:1", os.getpid(), "/tmp/fusionline-ray-x").save()
    assert LocalHead.load() is None  # a live pid, but not a `ray start` of that temporary directory
    monkeypatch.delenv(jobs.ADDRESS_ENV, raising=False)
    with pytest.raises(jobs.NoJobsServer, match="give --address"):  # no address, no head
        jobs.job_client()
