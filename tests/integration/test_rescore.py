"""``fusionline rescore``: recorded archives re-scored on Ray Data actors hosting the line's handler, one Parquet row
per item, resumed shard by shard after a kill, a model change refused unless the stale shards are to be rescored.

Real Ray (the session's 2-CPU cluster, which the killed command joins too), real Parquet files, the shipped model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from connectors.recording import Manifest, RecordingWriter, Replayer, read_labels
from connectors.records import Quarantined, Sample
from pipelines.replicas import ModelReplica
from pipelines.rescore import QUARANTINED, model_digest, rescore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
RECORDING = DATA / "recordings" / "factory-mini"
CORPUS = DATA / "bad"
MODEL = DATA / "models" / "factory-v2"


def rows_of(out: Path) -> list[dict]:
    """Every row in ``out``'s shard files, in (recording, seq) order."""
    rows = [row for path in sorted((out / "shards").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    return sorted(rows, key=lambda row: (row["recording"], row["seq"]))


def shard_files(out: Path) -> dict[str, tuple[int, int]]:
    """Shard file name -> (inode, mtime in ns): a file written again changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "shards").glob("*.parquet")}


@pytest.fixture(scope="module")
def mini_run(ray_cluster, tmp_path_factory) -> tuple[Path, dict]:
    """factory-mini rescored by the shipped model: 24 parts in 5 shards on 2 replicas."""
    out = tmp_path_factory.mktemp("rescore") / "mini"
    return out, rescore("factory", [RECORDING], MODEL, out, replicas=2, shard_size=5, batch_size=4)


def test_one_row_per_item_as_a_replica_decides_it(mini_run) -> None:
    out, summary = mini_run
    rows = rows_of(out)
    samples = list(Replayer(RECORDING))
    assert [(row["seq"], row["item_id"]) for row in rows] == [(s.seq, s.item_id) for s in samples]

    direct = ModelReplica(str(MODEL), cache_size=0, line="factory").infer(samples)  # in-process, one batch
    for row, outcome in zip(rows, direct, strict=True):
        answer = outcome.prediction
        assert row["decision"] == answer.label and row["reject"] == answer.reject
        assert row["confidence"] == pytest.approx(answer.confidence, abs=1e-5)
        assert json.loads(row["extra"])["machine"] == answer.extra["machine"]
        assert row["input_digest"] == outcome.input_digest
        assert (row["model_version"], row["model_digest"]) == (answer.model_version, model_digest(MODEL))

    labels = read_labels(RECORDING)
    defect = sum(o.prediction.label == labels[o.item_id]["defect"] for o in direct) / len(direct)
    machine = sum(o.prediction.extra["machine"] == labels[o.item_id]["machine"] for o in direct) / len(direct)
    assert summary["accuracy"] == {"defect": {"scored": 24, "accuracy": defect},
                                   "machine": {"scored": 24, "accuracy": machine}}
    assert (summary["items"], summary["decided"], summary["quarantined"]) == (24, 24, 0)
    assert summary["classes"] == {label: sum(r["decision"] == label for r in rows) for label in summary["classes"]}
    assert summary["run"]["shards_scored"] == summary["shards"] == 5 and summary["run"]["items"] == 24
    assert json.loads((out / "summary.json").read_text()) == summary


def test_a_finished_rescore_run_again_skips_every_shard(mini_run, tmp_path: Path) -> None:
    """Run again on the same recording, moved to another folder: nothing is scored or written again."""
    out = tmp_path / "mini"
    shutil.copytree(mini_run[0], out)
    moved = shutil.copytree(RECORDING, tmp_path / "elsewhere" / RECORDING.name)
    before = shard_files(out)
    summary = rescore("factory", [moved], MODEL, out, replicas=2, shard_size=5)
    assert summary["run"]["shards_skipped"] == 5 and summary["run"]["shards_scored"] == 0
    assert summary["run"]["items"] == 0 and summary["items"] == 24
    assert summary["accuracy"] == mini_run[1]["accuracy"] and summary["archives"] == [str(moved)]
    assert shard_files(out) == before


def test_a_model_change_is_refused_then_rescored_on_request(mini_run, tmp_path: Path) -> None:
    out = tmp_path / "mini"
    shutil.copytree(mini_run[0], out)
    retrained = tmp_path / "factory-v2-retrained"
    shutil.copytree(MODEL, retrained)
    config = json.loads((retrained / "config.json").read_text())
    (retrained / "config.json").write_text(json.dumps({**config, "version": "factory-inspector-2.1"}, indent=2))

    before = shard_files(out)
    with pytest.raises(ValueError, match=r"5 of 5 shards .* another model \(factory-inspector-2.0 \[") as refused:
        rescore("factory", [RECORDING], retrained, out, shard_size=5)
    assert "--rescore-stale" in str(refused.value) and model_digest(retrained) in str(refused.value)
    assert shard_files(out) == before  # nothing touched

    summary = rescore("factory", [RECORDING], retrained, out, replicas=1, shard_size=5, rescore_stale=True)
    assert summary["run"]["shards_rescored_stale"] == summary["run"]["shards_scored"] == 5
    rows = rows_of(out)
    assert [row["seq"] for row in rows] == list(range(24))
    assert {(row["model_version"], row["model_digest"]) for row in rows} == {
        ("factory-inspector-2.1", model_digest(retrained))}
    assert summary["model_version"] == ["factory-inspector-2.1"]


def test_another_plan_in_the_output_folder_is_refused(mini_run, tmp_path: Path) -> None:
    out = tmp_path / "mini"
    shutil.copytree(mini_run[0], out)
    with pytest.raises(ValueError, match="5 shard file.* of another plan .*another shard size"):
        rescore("factory", [RECORDING], MODEL, out, shard_size=6)


def test_every_bad_event_gets_a_quarantined_row_with_its_reason(ray_cluster, tmp_path: Path) -> None:
    """The bad-input corpus (tests/data/bad): one row per event, quarantined with the reason a replica gives."""
    summary = rescore("factory", [CORPUS], MODEL, tmp_path / "bad", replicas=1, shard_size=16)
    items = list(Replayer(CORPUS))
    decoded = iter(ModelReplica(str(MODEL), cache_size=0, line="factory").infer(
        [item for item in items if isinstance(item, Sample)]))
    outcomes = [item if isinstance(item, Quarantined) else next(decoded) for item in items]
    reasons = [outcome.reason if isinstance(outcome, Quarantined) else None for outcome in outcomes]
    rows = rows_of(tmp_path / "bad")
    assert [(row["seq"], row["item_id"], row["reason"]) for row in rows] == [
        (outcome.seq, outcome.item_id, reason) for outcome, reason in zip(outcomes, reasons, strict=True)]
    assert all((row["decision"] == QUARANTINED) == (row["reason"] is not None) for row in rows)
    assert {row["model_version"] for row in rows} == {"factory-inspector-2.0"}
    assert summary["quarantined"] == sum(reason is not None for reason in reasons) > 30
    assert summary["decided"] == reasons.count(None) >= 1 and summary["accuracy"] == {}


@pytest.fixture(scope="module")
def factory_240(tmp_path_factory) -> Path:
    """factory-mini's 24 parts ten times over (new item ids, same payloads and labels): 240 parts."""
    root = tmp_path_factory.mktemp("archive") / "factory-240"
    manifest = Manifest.read(RECORDING)
    labels = read_labels(RECORDING)
    samples = [s for s in Replayer(RECORDING) if isinstance(s, Sample)]
    with RecordingWriter(root, Manifest(line="factory", fps=manifest.fps, modalities=manifest.modalities,
                                        classes=manifest.classes), image_format="jpg") as writer:
        for lap in range(10):
            for s in samples:
                writer.add(f"{s.item_id}-{lap}", t=lap * 1.0 + s.ts, image=s.frame.encoded, audio=s.audio.encoded,
                           labels=labels[s.item_id])
    return root


@pytest.mark.timeout(900)  # a guard against a hung command, not a measurement
def test_a_killed_rescore_restarted_redoes_no_finished_shard(ray_cluster, factory_240: Path, tmp_path: Path) -> None:
    """The command, killed (SIGKILL) once two shard files exist and restarted, ends with exactly one row per item;
    the shards written before the kill are counted as skipped and their files are not written again. The first run
    joins the cluster by --address, the second by RAY_ADDRESS, as inside a Ray job."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipelines.cli", "rescore", "factory", "--archive", str(factory_240),
               "--out", str(out), "--shard-size", "4", "--replicas", "1"]
    address = ray_cluster.address_info["address"]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    log = tmp_path / "first.log"
    with log.open("w") as stderr:
        first = subprocess.Popen([*command, "--address", address], cwd=REPO, env=env, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        while len(list((out / "shards").glob("*.parquet"))) < 2:
            assert first.poll() is None, f"rescore ended before the kill: {log.read_text()[-2000:]}"
            time.sleep(0.02)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the command and what it started, nothing else
        first.wait()
    finished = shard_files(out)
    assert 2 <= len(finished) < 60, "the kill came after the last shard: nothing to resume"

    again = subprocess.run(command, cwd=REPO, env=env | {"RAY_ADDRESS": address}, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["shards_skipped"] == len(finished)
    assert summary["run"]["shards_scored"] == 60 - len(finished)
    assert {name: shard_files(out)[name] for name in finished} == finished  # not written again
    rows = rows_of(out)
    assert [(row["seq"], row["item_id"]) for row in rows] == [(s.seq, s.item_id) for s in Replayer(factory_240)]
    assert summary["items"] == summary["decided"] == 240
    assert not list((out / "shards").glob("*.tmp"))
    assert "skipped (done earlier)" in again.stdout
