"""Export the factory model for ONNX Runtime: the fp32 graph, or INT8 calibrated on a recording's parts.

Example:
    >>> export_factory("runs/model", "int8", calibration="data/factory-train")
    PosixPath('runs/model/model.int8.onnx')
"""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

from connectors.recording import Replayer
from connectors.records import Quarantined
from model.predictor import Predictor, batch_inputs
from pipelines.lines.factory.handler import decode

log = logging.getLogger("fusionline.export")


def export_factory(model_dir: str | Path, runtime: str, calibration: str | Path | None = None,
                   calibration_parts: int = 256, batch_size: int = 16) -> Path:
    """Write ``model_dir``'s ``runtime`` file (``onnx``: ``model.onnx``; ``int8``: ``model.int8.onnx``, its
    activation ranges from the first ``calibration_parts`` decodable parts of the ``calibration`` recording, read
    and decoded as the line's replicas do). Returns the file written."""
    predictor = Predictor.from_pretrained(model_dir)
    batches = []
    if runtime == "int8":
        if calibration is None:
            raise ValueError("export --runtime int8 needs --calibration RECORDING (parts of your line)")
        decoded = []
        for sample in islice(Replayer(calibration), calibration_parts):
            item = sample if isinstance(sample, Quarantined) else decode(sample)
            if isinstance(item, dict):
                decoded.append(item)
            else:
                log.warning("calibration: %s left out: %s", item.item_id, item.reason)
        if not decoded:
            raise ValueError(f"{calibration}: no decodable part to calibrate on")
        batches = [batch_inputs(decoded[i:i + batch_size]) for i in range(0, len(decoded), batch_size)]
    return predictor.export(model_dir, runtime, batches)
