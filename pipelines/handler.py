"""The contract a model replica hosts: one line's model, from its folder to answers for a batch of samples.

Every line ships a ``Handler`` (``pipelines/lines/<line>/handler.py``); :class:`pipelines.replicas.ModelReplica`
hosts it by the line's name and adds what all lines share (the result cache, counters, the Ray actor). The
handler decodes its samples' payloads itself (decoding stays on the pipelines side, next to the compute, so it
scales with the replicas) and hands decoded arrays to its model. An item it cannot use comes back as
:class:`connectors.records.Quarantined` with its reason, never as an error that fails the whole batch.

Example:
    >>> handler = lines.handler_class("factory").from_pretrained("runs/model")
    >>> handler.warm_up()
    >>> handler.infer(samples)      # one Answer or Quarantined per sample, in order
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from connectors.records import Quarantined, Sample


class Answer(Protocol):
    """What a handler says about one item; :func:`pipelines.line.to_decision` makes it a ``Decision``."""

    label: str
    confidence: float
    reject: bool
    modality_weights: dict[str, float]
    extra: dict[str, Any]
    model_version: str


class Handler(Protocol):
    """One line's model behind a replica.

    Attributes:
        model_type: the ``model_type`` of the ``config.json`` folders this handler loads.
        payloads: what an item of this line carries, by the names a recording's events give them
            (``docs/recording-format.md``); ``fusionline serve`` takes these as the parts of an upload.
        model_version: the loaded model's identity in decisions and the audit trail.
        device: where the model runs (``cpu``, ``cuda``, ...).
    """

    model_type: ClassVar[str]
    payloads: ClassVar[tuple[str, ...]]
    model_version: str
    device: str

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, runtime: str = "eager") -> Handler:
        """Load the model saved in ``model_dir`` (``config.json`` + ``model.safetensors``) to run in ``runtime``
        (``eager``, ``onnx`` or ``int8``, :mod:`model.runtimes`); a runtime the line lacks raises ValueError."""
        ...

    def warm_up(self) -> None:
        """Load the decoders' libraries and run one forward pass, so the first real batch is not the slow one."""
        ...

    def infer(self, samples: Sequence[Sample]) -> list[Answer | Quarantined]:
        """Decode and predict a batch: entry ``i`` answers ``samples[i]`` or quarantines it (stage ``decode``)."""
        ...

    def provenance(self, sample: Sample) -> dict[str, str]:
        """What a decision records about where the sample's payloads came from (read without decoding), e.g.
        ``{"image_path": "frames/part-000001.png"}``; merged into the decision's ``extra``."""
        ...
