"""Similar cases: past cases found by the model's fused case embedding, with their findings, in a faiss index.

The index is a folder: ``cases.faiss`` (a flat inner-product index over L2-normalised embeddings, i.e. cosine
similarity; exact search, which is instant for the thousands of cases a department sees in a year) and
``cases.jsonl`` (one line per vector, in index order: the case's pseudonymous id and its finding). It is built from
a labelled recording (:func:`build_case_index`: findings confirmed by the ground truth) and grows as the line
decides new cases (:class:`CaseIndexSink`: findings as the model made them, marked so).

Example:
    >>> index = CaseIndex.load("runs/cases")
    >>> index.search(decision.extra["case_embedding"], k=5, exclude=decision.item_id)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from connectors.records import Decision, Sample
from connectors.sinks import DecisionSink

INDEX_NAME = "cases.faiss"
CASES_NAME = "cases.jsonl"
#: The finding fields a case keeps (from a decision's ``extra`` or a recording's labels).
FINDING_KEYS = ("nodule", "diameter_mm", "malignancy", "malignancy_risk", "density", "site")


@dataclass(frozen=True)
class SimilarCase:
    """One hit: the case, its cosine similarity to the query, and its finding (``source`` says whose)."""

    item_id: str
    similarity: float
    finding: dict[str, Any]


class CaseIndex:
    """Case embeddings in a faiss ``IndexFlatIP``, with each case's finding beside it."""

    def __init__(self, dim: int):
        import faiss

        self.dim = dim
        self.index = faiss.IndexFlatIP(dim)
        self.cases: list[dict[str, Any]] = []  # index order: {"item_id", "finding"}
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self.cases)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._ids

    def add(self, item_id: str, embedding: Sequence[float], finding: dict[str, Any]) -> bool:
        """Add a case (L2-normalised here); False when the index already holds ``item_id`` (adding is idempotent)."""
        if item_id in self._ids:
            return False
        self.index.add(_unit(embedding, self.dim)[None])
        self.cases.append({"item_id": item_id, "finding": finding})
        self._ids.add(item_id)
        return True

    def search(self, embedding: Sequence[float], k: int = 5, exclude: str | None = None) -> list[SimilarCase]:
        """The ``k`` most similar cases, best first, leaving out ``exclude`` (the query case itself)."""
        if not self.cases:
            return []
        scores, rows = self.index.search(_unit(embedding, self.dim)[None], min(k + 1, len(self.cases)))
        hits = [SimilarCase(self.cases[r]["item_id"], float(s), self.cases[r]["finding"])
                for s, r in zip(scores[0], rows[0]) if r >= 0 and self.cases[r]["item_id"] != exclude]
        return hits[:k]

    def save(self, folder: str | Path) -> Path:
        """Write the index folder atomically (each file replaced whole), so a reader never sees half of it."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp_index, tmp_cases = folder / f".{INDEX_NAME}.tmp", folder / f".{CASES_NAME}.tmp"
        faiss.write_index(self.index, str(tmp_index))
        tmp_cases.write_text("".join(json.dumps(case) + "\n" for case in self.cases))
        os.replace(tmp_cases, folder / CASES_NAME)
        os.replace(tmp_index, folder / INDEX_NAME)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CaseIndex:
        """Read an index folder written by :meth:`save`; FileNotFoundError naming the folder when it holds none."""
        import faiss

        folder = Path(folder)
        if not (folder / INDEX_NAME).is_file():
            raise FileNotFoundError(f"{folder}: no similar-cases index ({INDEX_NAME}) there")
        index = faiss.read_index(str(folder / INDEX_NAME))
        cases = [json.loads(line) for line in (folder / CASES_NAME).read_text().splitlines() if line.strip()]
        if index.ntotal != len(cases):
            raise ValueError(f"{folder}: {INDEX_NAME} holds {index.ntotal} vectors, {CASES_NAME} {len(cases)} cases")
        loaded = cls(index.d)
        loaded.index, loaded.cases, loaded._ids = index, cases, {c["item_id"] for c in cases}
        return loaded


def _unit(embedding: Sequence[float], dim: int) -> np.ndarray:
    vector = np.asarray(embedding, np.float32).reshape(-1)
    if vector.shape[0] != dim or not np.isfinite(vector).all():
        raise ValueError(f"case embedding of {vector.shape[0]} values (finite expected), the index holds {dim}")
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def model_finding(extra: dict[str, Any]) -> dict[str, Any]:
    """The finding a decision states (its ``extra``), marked ``source: model``."""
    return {"source": "model", **{k: extra[k] for k in FINDING_KEYS if extra.get(k) is not None}}


def build_case_index(model_dir: str | Path, recording: str | Path, out: str | Path, batch_size: int = 4,
                     progress: bool = True) -> CaseIndex:
    """Index a labelled recording's cases by the model's embedding, each with its confirmed finding (the
    recording's labels, ``source: confirmed``); cases the model cannot read are left out and counted."""
    from tqdm import tqdm

    from connectors.recording import Replayer, read_labels
    from pipelines.lines.medical.handler import MedicalHandler

    handler = MedicalHandler.from_pretrained(model_dir)
    labels = read_labels(recording)
    replay = Replayer(recording)
    index: CaseIndex | None = None
    skipped = 0
    batch: list = []

    def flush() -> None:
        nonlocal index, skipped
        for sample, answer in zip(batch, handler.infer(batch)):
            embedding = getattr(answer, "extra", {}).get("case_embedding")
            if embedding is None:
                skipped += 1
                continue
            index = index or CaseIndex(len(embedding))
            truth = labels.get(sample.item_id, {})
            index.add(sample.item_id, embedding,
                      {"source": "confirmed", **{k: truth[k] for k in FINDING_KEYS if truth.get(k) is not None}})
        batch.clear()

    for sample in tqdm(replay, total=len(replay), unit="case", desc="similar-cases index", disable=not progress):
        if isinstance(sample, Sample):
            batch.append(sample)
        else:
            skipped += 1
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if index is None:
        raise ValueError(f"{recording}: no case could be indexed ({skipped} unreadable)")
    index.save(out)
    return index


class CaseIndexSink(DecisionSink):
    """Adds each decided case to the similar-cases index (saved after every new case; idempotent by item id,
    so a resent decision adds nothing)."""

    name = "cases"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.address = str(self.folder)
        self.index: CaseIndex | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self.index = CaseIndex.load(self.folder) if (self.folder / INDEX_NAME).is_file() else None

    def send(self, decision: Decision) -> str:
        embedding = decision.extra.get("case_embedding")
        if embedding is None:
            return "error: the decision carries no case embedding"
        with self._lock:
            self.index = self.index or CaseIndex(len(embedding))
            if self.index.add(decision.item_id, embedding, model_finding(decision.extra)):
                self.index.save(self.folder)
        return "ok"

    def close(self) -> None:
        self.index = None
