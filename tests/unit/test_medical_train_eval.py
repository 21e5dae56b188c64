"""The medical line's training, evaluation and replica handler on a tiny synthetic recording (real DICOM, FHIR,
MiniLM), with a tiny model so it runs in seconds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from connectors.fhir import RECORD_FEATURES
from connectors.records import CTSeries, Quarantined
from connectors.recording import Replayer
from model.blobs import Peaks
from model.nodule_config import NoduleConfig
from pipelines.lines.medical.evaluate import evaluate_medical, format_report
from pipelines.lines.medical.handler import Finding, MedicalHandler, record_vector
from pipelines.lines.medical.synth import synth_medical
from pipelines.lines.medical.train import Schedule, fit_ranker, flipped, train_medical


def tiny_config() -> NoduleConfig:
    return NoduleConfig(spacing_mm=(8.0, 8.0, 8.0), candidates=2, crop_size=7, crop_channels=(4, 8, 8),
                        record_features=list(RECORD_FEATURES), d_model=16, n_heads=2, embedding_dim=16,
                        version="tiny-test")


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    return synth_medical(tmp_path_factory.mktemp("rec") / "tiny", cases=6, seed=3, size=32, slices=16, workers=1,
                         progress=False)


@pytest.fixture(scope="module")
def model_dir(recording, tmp_path_factory) -> Path:
    schedule = Schedule(epochs=1, batch_size=4, val_fraction=0.2)
    return train_medical(recording, tmp_path_factory.mktemp("model") / "m", seed=1, threads=1, progress=False,
                         config=tiny_config(), schedule=schedule)


def test_train_writes_the_model_folder(model_dir):
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["config.json", "curves.png", "model.safetensors", "training.json"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "nodule-fusion" and config["record_features"] == list(RECORD_FEATURES)
    assert len(config["record_mean"]) == len(RECORD_FEATURES)
    training = json.loads((model_dir / "training.json").read_text())
    assert training["items"]["train"] + training["items"]["val"] == 6 and len(training["history"]["epoch"]) == 1
    assert training["ranker"]["trees"] == config["ranker_trees"]  # 0 here: the 8 mm grid puts no peak on a nodule


def test_evaluate_writes_metrics_with_the_ablation(model_dir, recording, tmp_path):
    metrics = evaluate_medical(model_dir, recording, out=tmp_path, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "roc.png").stat().st_size > 0
    assert saved["items"] == 6 and saved["quarantined"] == []
    assert set(saved["tasks"]) == {"nodule", "malignancy"} and "auroc" in saved["tasks"]["nodule"]
    assert "auroc" in saved["tasks"]["malignancy"]
    assert set(saved["ablation"]) == {"fused", "ct_only", "record_only"}
    assert {"hit_rate", "called_hit_rate", "n"} <= set(saved["localisation"])
    assert saved["diameter"]["n"] == saved["localisation"]["n"] == saved["tasks"]["nodule"]["positives"]
    assert 0 <= saved["candidate_recall"] <= 1
    assert set(saved["nodule_auroc_by"]) == {"density", "site", "size"}
    assert sum(row["n"] for row in saved["nodule_auroc_by"]["size"].values()) == saved["tasks"]["nodule"]["positives"]
    report = format_report(metrics)
    assert "ct_only" in report and "candidates: one lies on the nodule" in report


def test_handler_quarantines_and_answers_the_rest_in_order(model_dir, recording, tmp_path):
    handler = MedicalHandler.from_pretrained(model_dir)
    samples = list(Replayer(recording))[:4]
    broken = tmp_path / "0000.dcm"
    broken.write_bytes(b"not a DICOM file")
    samples[1] = replace(samples[1], ct=None)
    samples[2] = replace(samples[2], ct=CTSeries(samples[2].item_id, 0.0, [str(broken)], source=str(tmp_path)))
    samples[3] = replace(samples[3], record=None, note=None)
    answers = handler.infer(samples)
    assert [type(a) for a in answers] == [Finding, Quarantined, Quarantined, Finding]
    assert answers[1].stage == answers[2].stage == "decode"
    assert "no CT series" in answers[1].reason and "0000.dcm" in answers[2].reason
    for answer, sample in ((answers[0], samples[0]), (answers[3], samples[3])):
        assert answer.label in ("nodule", "no nodule") and answer.reject == (answer.label == "nodule")
        assert set(answer.modality_weights) == {"ct", "record", "note"}
        assert abs(sum(answer.modality_weights.values()) - 1) < 1e-3
        extra = answer.extra
        assert extra["nodule"] in ("present", "absent") and 0 <= extra["malignancy_risk"] <= 1
        assert (extra["center_vox"] is None) == (extra["nodule"] == "absent")
        np.testing.assert_allclose(extra["spacing_mm"], sample.ct.decode().spacing_mm, atol=1e-4)
        embedding = np.array(extra["case_embedding"])
        assert len(embedding) <= 64 and abs(np.linalg.norm(embedding) - 1) < 1e-3
    assert answers[3].modality_weights["record"] == answers[3].modality_weights["note"] == 0  # CT alone
    assert handler.provenance(samples[0]) == {"ct_path": samples[0].ct.source,
                                              "record_path": samples[0].record.source}
    assert samples[0].record.source.endswith(".json")
    assert handler.provenance(samples[1]) == {"record_path": samples[1].record.source}
    assert handler.provenance(samples[3]) == {"ct_path": samples[3].ct.source}


def test_record_vector_flags_missing_features():
    config = NoduleConfig(record_features=["age_years", "pack_years"], record_mean=[60.0, 0.0],
                          record_std=[10.0, 1.0])
    np.testing.assert_allclose(record_vector({"age_years": 70.0, "pack_years": float("nan")}, config),
                               [1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(record_vector(None, config), [0.0, 0.0, 0.0, 0.0])


def test_augmented_crops_move_with_their_offsets():
    """Each of the eight in-plane turns keeps the nodule where the candidate's offset says it is."""

    size, centre = 9, 4
    offsets = torch.tensor([[[0.0, 2.0, -3.0]]]).repeat(64, 1, 1)  # voxels of 1 mm: (slice, row, column)
    crops = torch.zeros(64, 1, 1, size, size, size)
    crops[:, 0, 0, centre, centre + 2, centre - 3] = 1.0
    turned, moved = flipped(crops, offsets, torch.Generator().manual_seed(0))
    seen = set()
    for crop, offset in zip(turned[:, 0, 0], moved[:, 0], strict=True):
        z, y, x = (int(v) for v in torch.nonzero(crop)[0])
        assert (z - centre, y - centre, x - centre) == tuple(int(v) for v in offset)
        seen.add((y, x))
    assert len(seen) == 8


def test_the_candidate_ranker_learns_which_peaks_lie_on_the_nodule():
    """Forty cases of 200 peaks; the peak at the labelled nodule has a telltale second feature (shifted by 4
    standard deviations). Fitted on thirty cases, the ranker puts it first in most of the ten others."""
    rng = np.random.default_rng(0)
    config, peaks, labels = tiny_config(), [], []
    for _ in range(40):
        at = rng.integers(0, 40, (200, 3))
        features = rng.normal(size=(200, 5)).astype(np.float32)
        features[0, 1] += 4.0
        peaks.append(Peaks(at, features, np.zeros((1, 1, 1), np.float32)))
        labels.append({"nodule": "present", "center_vox": at[0].tolist(), "diameter_mm": 4.0})
    cases = SimpleNamespace(labels=labels, meta=[SimpleNamespace(spacing_mm=config.spacing_mm)] * 40)
    ranker, summary = fit_ranker(peaks[:30], cases, config, seed=0)
    assert ranker.fitted and summary["on_nodule"] >= 30 and summary["trees"] == len(ranker.roots)
    first = [int(np.argmax(ranker(torch.from_numpy(p.features)).numpy())) == 0 for p in peaks[30:]]
    assert np.mean(first) >= 0.6
