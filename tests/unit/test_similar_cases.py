"""The similar-cases index: a real faiss index, persisted, idempotent, growing with the line's decisions."""

from __future__ import annotations

import numpy as np
import pytest

from connectors.records import Decision
from pipelines.lines.medical.similar import CaseIndex, CaseIndexSink, model_finding


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_search_finds_the_nearest_cases_by_cosine_and_leaves_the_query_out(tmp_path) -> None:
    vectors = _vectors(40)
    index = CaseIndex(16)
    for k, v in enumerate(vectors):
        assert index.add(f"case-{k:03d}", v, {"nodule": "present" if k % 2 else "absent"})
    query = vectors[7] + 0.01 * _vectors(1, seed=1)[0]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = [f"case-{k:03d}" for k in np.argsort(-(unit @ (query / np.linalg.norm(query))))]
    hits = index.search(query, k=5)
    assert [h.item_id for h in hits] == expected[:5] and hits[0].item_id == "case-007"
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-3) and hits[0].finding == {"nodule": "present"}
    assert [h.item_id for h in index.search(query, k=5, exclude="case-007")] == expected[1:6]


def test_saved_index_loads_back_the_same_and_adding_is_idempotent(tmp_path) -> None:
    index = CaseIndex(16)
    for k, v in enumerate(_vectors(10)):
        index.add(f"case-{k}", v, {"k": k})
    assert not index.add("case-3", _vectors(1, seed=5)[0], {"k": 99})  # already there: nothing changes
    index.save(tmp_path / "cases")
    loaded = CaseIndex.load(tmp_path / "cases")
    assert len(loaded) == 10 and "case-3" in loaded
    query = _vectors(1, seed=9)[0]
    assert loaded.search(query, k=3) == index.search(query, k=3)


def test_bad_embeddings_and_missing_index_are_clear_errors(tmp_path) -> None:
    index = CaseIndex(16)
    with pytest.raises(ValueError, match="8 values"):
        index.add("case-x", np.ones(8), {})
    with pytest.raises(ValueError, match="finite"):
        index.add("case-y", np.full(16, np.nan), {})
    with pytest.raises(FileNotFoundError, match="no similar-cases index"):
        CaseIndex.load(tmp_path)


def test_sink_adds_each_decided_case_once_and_persists_it(tmp_path) -> None:
    def decision(item_id: str, seed: int) -> Decision:
        extra = {"nodule": "present", "diameter_mm": 8.5, "malignancy_risk": 0.4, "case_embedding":
                 _vectors(1, seed=seed)[0].round(4).tolist(), "ct_path": "/nowhere"}
        return Decision(item_id, 0, "nodule", 0.9, True, {"ct": 1.0}, "m", 1.0, "d", extra=extra)

    sink = CaseIndexSink(tmp_path / "cases")
    with sink:
        assert sink.send(decision("case-a", 1)) == "ok" and sink.send(decision("case-b", 2)) == "ok"
        assert sink.send(decision("case-a", 1)) == "ok"  # a resend
        no_embedding = decision("case-c", 3)
        del no_embedding.extra["case_embedding"]
        assert sink.send(no_embedding).startswith("error:")
    loaded = CaseIndex.load(tmp_path / "cases")
    assert len(loaded) == 2
    assert loaded.search(_vectors(1, seed=2)[0], k=1)[0].finding == model_finding(decision("case-b", 2).extra) == {
        "source": "model", "nodule": "present", "diameter_mm": 8.5, "malignancy_risk": 0.4}
