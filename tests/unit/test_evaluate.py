"""Evaluation scores what the line would decide: the replicas' quarantine rule, the predictor's reject rule, and
box hits at IoU >= 0.5."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from connectors.recording import Replayer, read_labels
from model.config import InspectorConfig
from model.factory_model import FactoryInspector
from model.predictor import Predictor, batch_inputs
from pipelines.lines.factory.evaluate import _box_metrics, evaluate, format_report
from pipelines.lines.factory.handler import decode

DATA = Path(__file__).resolve().parents[1] / "data"
RECORDING = DATA / "recordings" / "factory-mini"
MODEL = DATA / "models" / "factory-v2"


def copy_recording(tmp_path: Path) -> Path:
    rec = tmp_path / "rec"
    shutil.copytree(RECORDING, rec)
    return rec


def rewrite_events(rec: Path, edit) -> None:
    """Apply ``edit(index, event)`` to every event of ``rec`` (in place)."""
    lines = (rec / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    for k, event in enumerate(events):
        edit(k, event)
    (rec / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def test_an_item_the_line_quarantines_is_counted_as_quarantined_not_scored(tmp_path: Path) -> None:
    rec = copy_recording(tmp_path)
    wav = rec / "audio" / "part-000005.wav"
    wav.write_bytes(wav.read_bytes()[:2000])  # a truncated WAV: the frame alone would still decode
    [sample] = [s for s in Replayer(rec) if s.item_id == "part-000005"]
    line = decode(sample)  # what a replica does with it
    assert line.stage == "decode" and "truncated" in line.reason

    metrics = evaluate(MODEL, rec, batch_size=8, workers=2, progress=False, device="cpu")
    assert metrics["items"] == 23
    assert metrics["quarantined"] == [{"item_id": "part-000005", "stage": "decode", "reason": line.reason}]
    assert all(np.sum(m["confusion"]) == 23 for m in metrics["tasks"].values())
    assert metrics["reject"]["n"] == 23
    assert "23 items scored, 1 quarantined as the line would (first: part-000005" in format_report(metrics)


def test_reject_figures_are_the_predictors_decisions(tmp_path: Path) -> None:
    """A model that always answers ``good`` and ``bearing_click``: the predictor rejects exactly the parts whose
    clip it heard (without one the machine answer is not an observation); the arg-max over every task rejects all."""
    rec = copy_recording(tmp_path)

    def drop_a_modality(k: int, event: dict) -> None:  # no frame for one part in three, no clip for another
        if k % 3 < 2:
            del event[("image", "audio")[k % 3]]

    rewrite_events(rec, drop_a_modality)
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    cfg = InspectorConfig(image_size=(64, 96), image_channels=(8, 16, 32), audio_channels=(8, 8, 16), d_model=32,
                       n_heads=4, n_mels=32, n_fft=256, hop_length=128, clip_seconds=0.25, text_dim=24)
    model = FactoryInspector(cfg).eval()
    with torch.no_grad():
        for task, k in (("defect", 0), ("machine", 1)):
            model.heads[task].net[-1].bias[k] = 100.0
    model.save_pretrained(model_dir)

    predictor = Predictor.from_pretrained(model_dir, device="cpu")  # the line: replica decode, then predict
    samples = list(Replayer(rec))
    inputs = batch_inputs([decode(s) for s in samples])
    got = np.array([p.reject for p in predictor.predict(inputs)])
    labels = read_labels(rec)
    want = np.array([labels[s.item_id]["defect"] != "good" or labels[s.item_id]["machine"] != "normal"
                     for s in samples])
    assert list(got) == [a is not None for a in inputs["audio"]]

    reject = evaluate(model_dir, rec, batch_size=8, workers=1, progress=False, device="cpu")["reject"]
    assert reject["false_rejects"] == int((got & ~want).sum())
    assert reject["missed_rejects"] == int((want & ~got).sum())
    assert reject["accuracy"] == pytest.approx(float((got == want).mean()))


def test_box_hits_need_iou_of_one_half_and_overlap_is_reported_apart() -> None:
    labels = {
        "a": {"box": [0, 0, 100, 100], "boxes": [[0, 0, 100, 100]]},  # predicted: IoU 0.64
        "b": {"box": [0, 0, 100, 100], "boxes": [[0, 0, 100, 100]]},  # predicted: IoU 0.25, overlaps
        "c": {"box": [0, 0, 300, 100], "boxes": [[0, 0, 100, 100], [200, 0, 100, 100]]},  # 2nd instance: IoU 0.81
        "d": {"box": [0, 0, 100, 100], "boxes": [[0, 0, 100, 100]]},  # predicted: elsewhere
    }
    sizes = {k: (400, 400) for k in labels}
    boxes = [[0, 0, 0.2, 0.2], [0, 0, 0.125, 0.125], [0.5, 0, 0.225, 0.225], [0.5, 0.5, 0.25, 0.25]]
    m = _box_metrics(list(labels), labels, sizes, boxes, np.ones(4, int), np.ones(4, int))
    assert (m["hits"], m["overlaps"], m["n"]) == (2, 3, 4)
    assert m["hit_rate"] == 0.5 and m["overlap_rate"] == 0.75 and m["hit_iou"] == 0.5
