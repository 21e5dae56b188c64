"""Batch re-scoring of recorded archives with Ray Data: every item of one or more recordings through a line's
Handler, one Parquet row per item, resumable shard by shard (``fusionline rescore LINE``).

::

    archives ─> plan: shards, each a recording and a run of its events (shard_size)
             ─> skip the shards this model already scored (OUT/shards/<shard id>.parquet)
             ─> ray.data.from_items(shards).map_batches(ShardScorer, ActorPoolStrategy(size=replicas))
                  ShardScorer, one per actor: a ModelReplica (the line's Handler and result cache, as the streaming
                  replicas host them) reads its shard (Replayer(start=...)), decodes and scores it in micro-batches;
                  rows from the streaming line's decisions (pipelines.line.to_decision)
             ─> driver: each shard's rows written atomically (tmp + rename) as OUT/shards/<shard id>.parquet
             ─> OUT/summary.json: items, decided, quarantined, per-class counts, accuracy where labels exist,
                items/s, shards scored / skipped / rescored, the model

Resuming: a shard whose file exists and was scored by this model (:func:`model_digest`: the model folder's
``config.json``, which holds the version, the thresholds and the weights' SHA-256) is skipped and counted as
skipped, so a rescore killed at any point and started again ends with exactly one row per item. Shards another
model scored are refused, naming both models, unless ``rescore_stale``: then this model scores them again. Files in
OUT/shards that are no shard of this plan (other archives, changed recordings, another shard size) are refused
too: an output folder holds one plan, so its rows are one per item.

Every row (:data:`ROW_SCHEMA`) carries the model's version and digest. An item the line cannot use (a bad event, a
payload that does not decode) gets its row too: ``decision`` ``"quarantined"`` and the reason. The actors read the
archives, so every Ray node that hosts one must see them at the same path; the driver alone writes OUT.

Example:
    >>> summary = rescore("factory", ["data/factory-holdout"], "tests/data/models/factory-v2", "runs/rescore")
    >>> print(format_summary(summary))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from connectors.recording import Manifest, Replayer, count_events, read_labels
from connectors.records import Quarantined, Sample, decision_id
from model.pretrained import read_config
from pipelines import lines
from pipelines.line import to_decision
from pipelines.replicas import Inference, ModelReplica, gpu_share
from pipelines.runtime import connect_ray

log = logging.getLogger("fusionline.rescore")

#: ``decision`` of an item the line could not use.
QUARANTINED = "quarantined"

#: One row per item. ``modality_weights`` and ``extra`` (the other heads' outputs, e.g. ``machine``, and where the
#: payloads came from) are JSON text, as in the audit store; ``confidence``, ``reject``, the two JSON columns and
#: (for items quarantined by the source) ``input_digest`` are null when ``decision`` is ``"quarantined"``,
#: ``reason`` and ``stage`` are null otherwise. ``decision_id`` is the streaming line's for the same recording.
ROW_SCHEMA = pa.schema([
    ("recording", pa.string()),
    ("shard", pa.string()),
    ("seq", pa.int64()),
    ("item_id", pa.string()),
    ("decision_id", pa.string()),
    ("decision", pa.string()),
    ("confidence", pa.float64()),
    ("reject", pa.bool_()),
    ("modality_weights", pa.string()),
    ("extra", pa.string()),
    ("reason", pa.string()),
    ("stage", pa.string()),
    ("input_digest", pa.string()),
    ("model_version", pa.string()),
    ("model_digest", pa.string()),
])


@dataclass(frozen=True)
class Shard:
    """Events ``start .. stop - 1`` of a recording: what one actor call scores and one Parquet file holds.

    ``shard_id`` is ``<folder name>.<recording digest>.<start>-<stop>``: the same archive and shard size give the
    same ids in every run, a changed recording other ids.
    """

    shard_id: str
    recording: str
    source_id: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_shards(archives: Sequence[str | Path], line: str, shard_size: int) -> list[Shard]:
    """The shards of ``archives`` (recordings of ``line``), ``shard_size`` events each (the last may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard size {shard_size}: at least 1 event")
    shards: list[Shard] = []
    archive_of: dict[str, str | Path] = {}  # recording identity -> the archive given for it
    for archive in archives:
        root = Path(archive).resolve()
        replayer = Replayer(root)  # reads the manifest: RecordingError when the folder is not a recording
        if replayer.manifest.line != line:
            raise ValueError(f"archive {archive}: a {replayer.manifest.line!r} recording, not one of line {line!r}")
        source_id = replayer.source_id
        if source_id in archive_of:
            raise ValueError(f"archives {archive_of[source_id]} and {archive} hold the same recording ({source_id}): "
                             "every item would be scored twice")
        archive_of[source_id] = archive
        prefix = f"{re.sub(r'[^A-Za-z0-9_-]+', '_', root.name)}.{source_id.split(':', 1)[1]}"
        count = count_events(root)
        for start in range(0, count, shard_size):
            stop = min(start + shard_size, count)
            shards.append(Shard(f"{prefix}.{start:07d}-{stop:07d}", str(root), source_id, start, stop))
    return shards


def model_digest(model_dir: str | Path) -> str:
    """16 hex digits of SHA-256 over the model folder's ``config.json`` (version, thresholds, the weights' SHA-256):
    a retrained or reconfigured model gets another digest."""
    return hashlib.sha256(json.dumps(read_config(model_dir), sort_keys=True).encode()).hexdigest()[:16]


class ShardScorer:
    """Ray Data's callable class: one per actor of the pool, hosting the line's Handler through a
    :class:`~pipelines.replicas.ModelReplica`.

    Called with a batch of shards (a ``pyarrow.Table`` with :class:`Shard`'s columns), it returns their rows
    (:data:`ROW_SCHEMA`), one per event, in ``seq`` order per shard.
    """

    def __init__(self, model_dir: str, line: str, model_digest: str, batch_size: int):
        self.replica = ModelReplica(model_dir, line=line)
        self.line = line
        self.model_digest = model_digest
        self.batch_size = batch_size

    def __call__(self, shards: pa.Table) -> pa.Table:
        rows = [row for shard in shards.to_pylist() for row in self.score(Shard(**shard))]
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)

    def score(self, shard: Shard) -> list[dict[str, Any]]:
        """Replay the shard's events, score the samples ``batch_size`` at a time; one row per event."""
        items = list(Replayer(shard.recording, start=shard.start, limit=shard.size))
        samples = [item for item in items if isinstance(item, Sample)]
        outcomes: dict[int, Inference | Quarantined] = {i.seq: i for i in items if isinstance(i, Quarantined)}
        for at in range(0, len(samples), self.batch_size):
            batch = samples[at:at + self.batch_size]
            outcomes.update(zip((sample.seq for sample in batch), self.replica.infer(batch), strict=True))
        by_seq = {sample.seq: sample for sample in samples}
        return [self.row(shard, outcomes[seq], by_seq.get(seq)) for seq in sorted(outcomes)]

    def row(self, shard: Shard, outcome: Inference | Quarantined, sample: Sample | None) -> dict[str, Any]:
        """The item's row; ``sample`` is None for an event the source could not read."""
        row = {"recording": shard.recording, "shard": shard.shard_id, "seq": outcome.seq, "item_id": outcome.item_id,
               "decision_id": decision_id(self.line, shard.source_id, outcome.seq, outcome.item_id),
               "model_version": self.replica.handler.model_version, "model_digest": self.model_digest}
        if isinstance(outcome, Quarantined):
            return {**row, "decision": QUARANTINED, "reason": outcome.reason, "stage": outcome.stage,
                    "input_digest": sample.digest() if sample is not None else None}
        decision = to_decision(outcome, 0.0, self.line, shard.source_id)  # no ingest-to-decision latency here
        return {**row, "decision": decision.label, "confidence": decision.confidence, "reject": decision.reject,
                "modality_weights": json.dumps(decision.modality_weights),
                "extra": json.dumps(decision.extra, default=str), "input_digest": decision.input_digest}


def rescore(
    line: str,
    archives: Sequence[str | Path],
    model_dir: str | Path,
    out: str | Path,
    replicas: int = 2,
    shard_size: int = 64,
    batch_size: int = 16,
    rescore_stale: bool = False,
    progress: Callable[[int, int], None] | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Score every item of ``archives`` with the model in ``model_dir`` on ``replicas`` Ray Data actors.

    Writes ``out/shards/<shard id>.parquet`` (one row per item) and ``out/summary.json``; resumes what an earlier
    run into ``out`` left (module docstring). Ray is joined (:func:`pipelines.runtime.connect_ray` with ``address``,
    unless this process is connected already) once the archives, the model and ``out`` are checked, and only when
    there is something to score. ``progress(done, planned)`` is called with the shards done so far (skipped ones
    included), first before any is scored. Returns the summary (:func:`summarize`).
    """
    if replicas < 1 or batch_size < 1:
        raise ValueError(f"replicas {replicas}, batch size {batch_size}: at least 1 each")
    served = lines.serving(model_dir)
    if served != line:
        raise ValueError(f"model {model_dir} is a {served!r} model: line {line!r} cannot host it")
    digest = model_digest(model_dir)
    shards = plan_shards(archives, line, shard_size)
    folder = Path(out) / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    todo, stale = resume(folder, shards, digest, model_dir, rescore_stale)
    done = len(shards) - len(todo)
    if progress:
        progress(done, len(shards))
    log.info("rescore line=%s model=%s [%s] shards=%d to_score=%d stale=%d", line, model_dir, digest, len(shards),
             len(todo), stale)
    if todo:
        connect_ray(address)
    began = time.perf_counter()  # items/s from here: the actors' start counts, Ray's own does not
    items = 0
    for shard, rows in score_shards(todo, model_dir, line, digest, replicas, batch_size):
        _replace_atomically(folder / f"{shard.shard_id}.parquet", lambda tmp, rows=rows: pq.write_table(rows, tmp))
        items += rows.num_rows
        done += 1
        if progress:
            progress(done, len(shards))
    wall_s = time.perf_counter() - began
    run = {"items": items, "wall_s": round(wall_s, 3), "items_per_s": round(items / wall_s, 2) if items else None,
           "replicas": replicas, "shard_size": shard_size, "batch_size": batch_size,
           "shards_scored": len(todo), "shards_skipped": len(shards) - len(todo), "shards_rescored_stale": stale}
    summary = summarize(line, shards, folder, model_dir, digest, run)
    _replace_atomically(Path(out) / "summary.json",
                        lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def resume(folder: Path, shards: list[Shard], digest: str, model_dir: str | Path,
           rescore_stale: bool) -> tuple[list[Shard], int]:
    """The shards still to score (not written yet, or stale and ``rescore_stale``) and how many of them are stale.

    Raises ValueError for files of another plan in ``folder``, a shard file that is not one :func:`rescore` wrote,
    and stale shards without ``rescore_stale``.
    """
    for leftover in folder.glob("*.parquet.tmp"):  # a write a kill cut short: its shard is scored again
        leftover.unlink()
    planned = {shard.shard_id for shard in shards}
    foreign = sorted(path.name for path in folder.glob("*.parquet") if path.stem not in planned)
    if foreign:
        raise ValueError(f"{folder} holds {len(foreign)} shard file(s) of another plan (e.g. {foreign[0]}): other "
                         "archives, a changed recording or another shard size; rescore into a new output folder")
    todo: list[Shard] = []
    stale = 0
    stale_models: set[str] = set()
    for shard in shards:
        path = folder / f"{shard.shard_id}.parquet"
        if path.exists():
            models = scored_by(path, shard)
            if {scored_digest for _, scored_digest in models} == {digest}:
                continue  # done earlier by this model: skipped
            stale += 1
            stale_models.update(f"{version} [{d}]" for version, d in models if d != digest)
        todo.append(shard)
    if stale and not rescore_stale:
        raise ValueError(
            f"{stale} of {len(shards)} shards in {folder} were scored by another model "
            f"({', '.join(sorted(stale_models))}); this run's model {model_dir} is [{digest}]: rescore into a new "
            "output folder, or score them again with this model (--rescore-stale)")
    if stale:
        log.warning("%d shards scored by another model (%s) are scored again by %s [%s]", stale,
                    ", ".join(sorted(stale_models)), model_dir, digest)
    return todo, stale


def scored_by(path: Path, shard: Shard) -> set[tuple[str, str]]:
    """The ``(model_version, model_digest)`` pairs of a shard file's rows; ValueError when it is not a complete
    shard file of ``shard``."""
    try:
        table = pq.read_table(path, columns=["model_version", "model_digest"])
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: not a shard file rescore wrote ({exc}); delete it to score the shard "
                         "again") from None
    if table.num_rows != shard.size:
        raise ValueError(f"{path}: {table.num_rows} rows for a shard of {shard.size} events; delete it to score the "
                         "shard again")
    return set(zip(table["model_version"].to_pylist(), table["model_digest"].to_pylist(), strict=True))


def score_shards(shards: list[Shard], model_dir: str | Path, line: str, digest: str, replicas: int,
                 batch_size: int) -> Iterator[tuple[Shard, pa.Table]]:
    """Score ``shards`` on a pool of ``replicas`` :class:`ShardScorer` actors; yields each shard with its rows (in
    ``seq`` order) as soon as they are all back, in the order shards finish."""
    if not shards:
        return
    gpus = gpu_share(replicas)
    dataset = ray.data.from_items([asdict(shard) for shard in shards], override_num_blocks=len(shards)).map_batches(
        ShardScorer, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=replicas),
        fn_constructor_kwargs={"model_dir": str(model_dir), "line": line, "model_digest": digest,
                               "batch_size": batch_size},
        num_cpus=0 if gpus else 1, num_gpus=gpus,
    )
    by_id = {shard.shard_id: shard for shard in shards}
    arrived: dict[str, list[pa.Table]] = defaultdict(list)
    for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for shard_id in pc.unique(block["shard"]).to_pylist():
            arrived[shard_id].append(block.filter(pc.equal(block["shard"], shard_id)))
            if sum(part.num_rows for part in arrived[shard_id]) == by_id[shard_id].size:
                yield by_id.pop(shard_id), pa.concat_tables(arrived.pop(shard_id)).sort_by("seq")
    if by_id:
        raise RuntimeError(f"{len(by_id)} shards came back incomplete or not at all (e.g. {next(iter(by_id))}): has a "
                           "recording changed while it was rescored?")


def summarize(line: str, shards: list[Shard], folder: Path, model_dir: str | Path, digest: str,
              run: dict[str, Any]) -> dict[str, Any]:
    """What the shard files of the plan hold (items, decided, quarantined, rejects, per-class counts, accuracy per
    labelled task) and what this ``run`` did."""
    columns = ["item_id", "decision", "reject", "extra", "model_version"]
    rows = [{**row, "recording": shard.recording}  # where the archive is now (a moved one keeps its shards)
            for shard in shards
            for row in pq.read_table(folder / f"{shard.shard_id}.parquet", columns=columns).to_pylist()]
    decided = [row for row in rows if row["decision"] != QUARANTINED]
    recordings = list(dict.fromkeys(shard.recording for shard in shards))
    return {
        "line": line,
        "model": str(model_dir),
        "model_version": sorted({row["model_version"] for row in rows}),
        "model_digest": digest,
        "archives": recordings,
        "items": len(rows),
        "decided": len(decided),
        "quarantined": len(rows) - len(decided),
        "rejects": sum(bool(row["reject"]) for row in decided),
        "classes": dict(sorted(Counter(row["decision"] for row in decided).items())),
        "accuracy": accuracy(decided, recordings),
        "shards": len(shards),
        "rows": str(folder / "*.parquet"),
        "run": run,
    }


def accuracy(decided: list[dict[str, Any]], recordings: list[str]) -> dict[str, dict[str, float]]:
    """Per labelled task (a class list in the recording's manifest, a value in its ``labels.jsonl``): how many decided
    items were scored and the share whose answer is the label. The answer is ``extra[task]`` when the row has it,
    else the decision when it is one of the task's classes (the primary task: ``defect``)."""
    labels = {recording: read_labels(recording) for recording in recordings}
    classes = {recording: Manifest.read(Path(recording)).classes for recording in recordings}
    scored: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for row in decided:
        truth = labels[row["recording"]].get(row["item_id"])
        if truth is None:
            continue
        extra = json.loads(row["extra"])
        for task, names in classes[row["recording"]].items():
            answer = extra.get(task, row["decision"] if row["decision"] in names else None)
            if task in truth and answer is not None:
                scored[task] += 1
                correct[task] += answer == truth[task]
    return {task: {"scored": scored[task], "accuracy": correct[task] / scored[task]} for task in sorted(scored)}


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the table ``fusionline rescore`` prints."""
    run = summary["run"]
    accuracy_text = "; ".join(f"{task} {a['accuracy']:.2%} of {a['scored']}" for task, a in summary["accuracy"].items())
    replicas = f"{run['replicas']} replica{'s' if run['replicas'] != 1 else ''}"
    throughput = (f"{run['items_per_s']:.1f} items/s ({run['items']} items in {run['wall_s']:.1f} s, {replicas})"
                  if run["items"] else "nothing left to score")
    rows = [
        ("items", f"{summary['items']} ({summary['decided']} decided, {summary['quarantined']} quarantined)"),
        ("decisions", ", ".join(f"{label} {n}" for label, n in summary["classes"].items()) or "none"),
        ("accuracy", accuracy_text or "no labels"),
        ("rejects", str(summary["rejects"])),
        ("shards", f"{summary['shards']} ({run['shard_size']} events each): {run['shards_scored']} scored now "
                   f"({run['shards_rescored_stale']} of them stale), {run['shards_skipped']} skipped (done earlier)"),
        ("this run", throughput),
        ("model", f"{', '.join(summary['model_version'])} [{summary['model_digest']}] {summary['model']}"),
        ("rows", f"{summary['rows']} (one per item)"),
    ]
    width = max(len(key) for key, _ in rows)
    rule = "─" * (width + 60)
    return "\n".join([rule, *(f"{key:<{width}}  {value}" for key, value in rows), rule])


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` beside ``path``, flushed to disk, then renamed over ``path``: a kill leaves the old file or the
    new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with tmp.open("rb") as written:
        os.fsync(written.fileno())
    os.replace(tmp, path)
