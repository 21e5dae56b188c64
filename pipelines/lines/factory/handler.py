"""The factory line's :class:`~pipelines.handler.Handler`: decode each part's frame and machine sound, then one
batched :class:`~model.predictor.Predictor` call for the parts that decoded.

Example:
    >>> handler = FactoryHandler.from_pretrained("runs/model")
    >>> handler.infer(samples)      # Prediction or Quarantined per sample, in order
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from connectors.records import InputError, Quarantined, Sample, decode_audio, encode_wav
from model.factory_model import FactoryInspector
from model.predictor import Prediction, Predictor, batch_inputs

#: A decoded part by modality: ``{"image": BGR pixels (H, W, 3) | None, "audio": (waveform (C, T), rate) | None}``.
Decoded = dict[str, Any]


class FactoryHandler:
    """A :class:`~model.predictor.Predictor` over a saved :class:`~model.factory_model.FactoryInspector`."""

    model_type = FactoryInspector.model_type
    payloads = ("image", "audio")

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.model_version = predictor.version
        self.device = str(predictor.device)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, runtime: str = "eager") -> FactoryHandler:
        """The model in ``model_dir`` run by ``runtime`` (``eager``, ``onnx``, ``int8``: :mod:`model.runtimes`)."""
        return cls(Predictor.from_pretrained(model_dir, runtime=runtime))

    def warm_up(self) -> None:
        """Load the WAV decoder and run one forward on a 480×640 frame and a 0.1 s clip."""
        wave = np.zeros((1, 1600), np.float32)
        decode_audio("warm-up", encode_wav(wave, 16000))
        self.predictor.predict({"image": [np.zeros((480, 640, 3), np.uint8)], "audio": [(wave, 16000)]})

    def infer(self, samples: Sequence[Sample]) -> list[Prediction | Quarantined]:
        """Decode every sample (:func:`decode`) and predict the ones that decoded in one batch; order is kept."""
        decoded = [decode(sample) for sample in samples]
        ready = [d for d in decoded if not isinstance(d, Quarantined)]
        predictions = iter(self.predictor.predict(batch_inputs(ready)) if ready else [])
        return [d if isinstance(d, Quarantined) else next(predictions) for d in decoded]

    def provenance(self, sample: Sample) -> dict[str, str]:
        """``{"image_path": the frame's file}`` when the frame came from one (the dashboard shows it)."""
        return {"image_path": sample.frame.source} if sample.frame is not None and sample.frame.source else {}


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
