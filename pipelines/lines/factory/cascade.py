"""Tie a small and a big factory model into a confidence cascade, its numbers chosen on validation data.

The small model's temperature is fitted on a labelled validation recording that neither model trained on, then
the threshold is the lowest calibrated confidence at which the cascade's defect accuracy on that recording stays
within ``max_drop`` of the big model's alone (:func:`model.calibration.choose_threshold`). The cascade folder
holds only ``config.json`` (``model_type`` ``factory-cascade``, the two model folders relative to it, the
temperature, the threshold, and what the choice did on validation); the factory handler loads it as one model.

Example:
    >>> build_cascade("models/small", "models/big", "data/factory-val", "models/cascade")
    {'threshold': 0.93, 'decided_share': 0.71, 'accuracy': 0.921, 'big_accuracy': 0.923, ...}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from connectors.recording import Replayer, read_labels
from connectors.records import Sample
from model.calibration import calibrated_confidence, choose_threshold, fit_temperature
from model.predictor import Predictor, batch_inputs
from pipelines.lines.factory.handler import CASCADE_TYPE, decode


def build_cascade(small_dir: str | Path, big_dir: str | Path, validation: str | Path, out_dir: str | Path,
                  max_drop: float = 0.005, batch_size: int = 32) -> dict[str, Any]:
    """Choose the cascade's temperature and threshold on ``validation`` and write ``out_dir/config.json``;
    returns what was chosen and measured."""
    small, big = Predictor.from_pretrained(small_dir), Predictor.from_pretrained(big_dir)
    if small.classes != big.classes:
        raise ValueError(f"{small_dir} and {big_dir} answer different classes: no cascade")
    primary = big.config.primary_task
    labels = read_labels(validation)
    items = [(s.item_id, d) for s in Replayer(validation) if isinstance(s, Sample) and s.item_id in labels
             for d in [decode(s)] if isinstance(d, dict)]
    if not items:
        raise ValueError(f"{validation}: no labelled, decodable part to choose the threshold on")
    truth = np.array([small.classes[primary].index(labels[i][primary]) for i, _ in items])
    small_probs: dict[str, list[np.ndarray]] = {t: [] for t in small.classes}
    big_probs: list[np.ndarray] = []
    for start in range(0, len(items), batch_size):
        batch = batch_inputs([d for _, d in items[start:start + batch_size]])
        for task, p in small.forward_batch(batch).probs.items():
            small_probs[task].append(p)
        big_probs.append(big.forward_batch(batch).probs[primary])
    probs = {t: np.concatenate(p) for t, p in small_probs.items()}
    temperature = fit_temperature(probs[primary], truth)
    confidence = calibrated_confidence(probs, temperature)
    choice = choose_threshold(confidence, probs[primary].argmax(1) == truth,
                              np.concatenate(big_probs).argmax(1) == truth, max_drop)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    measured = {**choice.to_dict(), "small_accuracy": float((probs[primary].argmax(1) == truth).mean()),
                "temperature": temperature, "max_drop": max_drop, "validation": str(validation)}
    spec = {"model_type": CASCADE_TYPE,
            "small": os.path.relpath(Path(small_dir).resolve(), out_dir.resolve()),
            "big": os.path.relpath(Path(big_dir).resolve(), out_dir.resolve()),
            "temperature": temperature, "threshold": choice.threshold, "validation": measured}
    (out_dir / "config.json").write_text(json.dumps(spec, indent=2) + "\n")
    return measured
