"""The factory line's :class:`~pipelines.handler.Handler`: decode each part's frame and machine sound, then one
batched :class:`~model.predictor.Predictor` call for the parts that decoded.

A folder written by ``fusionline cascade factory`` (``model_type`` ``factory-cascade``) makes the handler a
confidence cascade: the small model answers every part, and the parts whose calibrated confidence
(:mod:`model.calibration`) falls below the folder's threshold are answered by the big model, in the same replica
on the same decoded inputs. Each answer says who decided (``extra["cascade"]``: ``small`` or ``escalated``).

With ``anomaly`` (a folder written by ``fusionline fit factory``: a good-only model of one product), every frame is
also scored against that product's good parts, and a part the anomaly model flags is rejected whatever the
classifier said: ``extra["anomaly_score"]`` (the score over the fitted threshold: above 1 is anomalous) and
``extra["anomalous"]``. The classifier names the defect; the anomaly model catches what it was never taught.

Example:
    >>> handler = FactoryHandler.from_pretrained("runs/model")
    >>> handler.infer(samples)      # Prediction or Quarantined per sample, in order
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from connectors.records import InputError, Quarantined, Sample, decode_audio, encode_wav
from model.anomaly import PatchMemory
from model.calibration import calibrated_confidence
from model.factory_model import FactoryInspector
from model.predictor import Inputs, Prediction, Predictor, batch_inputs
from model.pretrained import model_type, read_config

#: ``model_type`` of a cascade folder (``fusionline cascade factory``): small + big model, temperature, threshold.
CASCADE_TYPE = "factory-cascade"

#: A decoded part by modality: ``{"image": BGR pixels (H, W, 3) | None, "audio": (waveform (C, T), rate) | None}``.
Decoded = dict[str, Any]


class FactoryHandler:
    """A :class:`~model.predictor.Predictor` over a saved :class:`~model.factory_model.FactoryInspector`, or a
    cascade of two (``big`` answers what ``predictor`` is less sure of than ``threshold``)."""

    model_type = FactoryInspector.model_type
    model_types = (FactoryInspector.model_type, CASCADE_TYPE)
    payloads = ("image", "audio")

    def __init__(self, predictor: Predictor, big: Predictor | None = None, threshold: float = 0.0,
                 temperature: float = 1.0, anomaly: PatchMemory | None = None, anomaly_id: str = ""):
        self.predictor = predictor
        self.big = big
        self.threshold = threshold
        self.temperature = temperature
        self.anomaly, self.anomaly_id = anomaly, anomaly_id
        self.model_version = predictor.version if big is None else \
            f"{predictor.version}>{big.version}@{threshold:.4f}"
        if anomaly is not None:
            self.model_version += f"+anomaly:{anomaly_id}"
        self.device = str(predictor.device)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, runtime: str = "eager",
                        anomaly: str | Path | None = None) -> FactoryHandler:
        """The model in ``model_dir`` run by ``runtime`` (``eager``, ``onnx``, ``int8``: :mod:`model.runtimes`);
        a cascade folder loads its small and big models (each in ``runtime``). ``anomaly``: a fitted good-only
        model's folder (``fusionline fit factory``), named in the version by its weights' hash."""
        memory, memory_id = None, ""
        if anomaly is not None:
            memory, memory_id = PatchMemory.from_pretrained(anomaly), read_config(anomaly)["weights_sha256"][:12]
        if model_type(model_dir) != CASCADE_TYPE:
            return cls(Predictor.from_pretrained(model_dir, runtime=runtime), anomaly=memory, anomaly_id=memory_id)
        spec = read_config(model_dir)
        small, big = (Predictor.from_pretrained(d, runtime=runtime) for d in network_dirs(model_dir))
        return cls(small, big, float(spec["threshold"]), float(spec["temperature"]), memory, memory_id)

    def warm_up(self) -> None:
        """Load the WAV decoder and run one forward on a 480×640 frame and a 0.1 s clip (and the anomaly model on
        the frame)."""
        wave = np.zeros((1, 1600), np.float32)
        decode_audio("warm-up", encode_wav(wave, 16000))
        for predictor in (self.predictor, self.big):
            if predictor is not None:
                predictor.predict({"image": [np.zeros((480, 640, 3), np.uint8)], "audio": [(wave, 16000)]})
        if self.anomaly is not None:
            self.anomaly.score_frames([np.zeros((480, 640, 3), np.uint8)])

    def infer(self, samples: Sequence[Sample]) -> list[Prediction | Quarantined]:
        """Decode every sample (:func:`decode`) and predict the ones that decoded in one batch; order is kept."""
        decoded = [decode(sample) for sample in samples]
        ready = [d for d in decoded if not isinstance(d, Quarantined)]
        predictions = iter(self.predict(batch_inputs(ready)) if ready else [])
        return [d if isinstance(d, Quarantined) else next(predictions) for d in decoded]

    def predict(self, inputs: Inputs) -> list[Prediction]:
        """Decoded inputs -> predictions: the model's, or the cascade's (small first, big for the unsure ones),
        then the anomaly model's verdict on each frame where one was fitted."""
        answers = self.classify(inputs)
        if self.anomaly is not None:
            ratios = self.anomaly.threshold_ratios(inputs.get("image", [None] * len(answers)))
            flag_anomalies(answers, ratios, self.anomaly_id)
        return answers

    def classify(self, inputs: Inputs) -> list[Prediction]:
        """The classifier's answers: the model's, or the cascade's."""
        if self.big is None:
            return self.predictor.predict(inputs)
        out = self.predictor.forward_batch(inputs)
        confidence = calibrated_confidence(out.probs, self.temperature)
        answers = self.predictor.predictions(out)
        unsure = [i for i, c in enumerate(confidence) if c < self.threshold]
        if unsure:
            escalated = self.big.predict({m: [items[i] for i in unsure] for m, items in inputs.items()})
            for i, answer in zip(unsure, escalated, strict=True):
                answers[i] = answer
        for i, answer in enumerate(answers):
            answer.extra["cascade"] = "escalated" if confidence[i] < self.threshold else "small"
            answer.extra["small_confidence"] = round(float(confidence[i]), 4)
        return answers

    def provenance(self, sample: Sample) -> dict[str, str]:
        """``{"image_path": the frame's file}`` when the frame came from one (the dashboard shows it)."""
        return {"image_path": sample.frame.source} if sample.frame is not None and sample.frame.source else {}


def flag_anomalies(answers: list[Prediction], ratios: Sequence[float], anomaly_id: str) -> None:
    """The line's rule with a good-only model: each answer's anomaly score over the threshold (``ratios``, NaN
    for a part without a frame, left as the classifier answered it) goes into ``extra`` (``anomaly_score``,
    ``anomalous``); an anomalous part is rejected, and its version names both models."""
    for answer, ratio in zip(answers, ratios, strict=True):
        if math.isnan(ratio):  # no frame
            continue
        answer.extra["anomaly_score"] = round(ratio, 4)
        answer.extra["anomalous"] = bool(ratio > 1)
        answer.reject = answer.reject or ratio > 1
        answer.model_version += f"+anomaly:{anomaly_id}"


def network_dirs(model_dir: str | Path) -> list[Path]:
    """The folders of the networks ``model_dir`` runs: itself, or a cascade's small and big models (that order)."""
    if model_type(model_dir) != CASCADE_TYPE:
        return [Path(model_dir)]
    spec = read_config(model_dir)
    return [Path(model_dir) / spec[k] for k in ("small", "big")]


def inspector_dir(model_dir: str | Path) -> Path:
    """The folder of the inspector that names the classes: ``model_dir``, or a cascade's big model."""
    return network_dirs(model_dir)[-1]


#: The class this line's replicas host (:func:`pipelines.lines.handler_class`).
Handler = FactoryHandler


def decode(sample: Sample) -> Decoded | Quarantined:
    """A sample's payloads as a replica decodes them (:data:`Decoded`), or the
    :class:`Quarantined` record (stage ``decode``) when any payload cannot be decoded (the whole item is set
    aside, never decided on what is left of it) or when it has neither a frame nor a sound (a CT series, a record
    or a note alone: nothing the factory inspector reads). Evaluation applies the same rule."""
    if sample.frame is None and sample.audio is None:
        return Quarantined(sample.item_id, sample.seq, "no frame and no sound: nothing the factory inspector reads",
                           "decode", [])
    try:
        image = sample.frame.decode() if sample.frame is not None else None
        audio = sample.audio.decode() if sample.audio is not None else None
    except InputError as exc:
        return Quarantined(sample.item_id, sample.seq, exc.reason, "decode", _payload_sources(sample))
    return {"image": image, "audio": audio}


def _payload_sources(sample: Sample) -> list[str]:
    return [p.source for p in (sample.frame, sample.audio) if p is not None and p.source]
