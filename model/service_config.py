"""The service-desk fault model's configuration: one dataclass, saved next to the weights in ``config.json``
(:mod:`model.pretrained`). Imports no torch (the dashboard reads model configurations too).

Example:
    >>> cfg = ServiceConfig(faults=["burnt_connector", "cracked_casing"], devices=["kettle"])
    >>> ServiceFaultModel(cfg).save_pretrained(tmp_dir)        # tmp_dir/config.json
    >>> ServiceConfig.load(tmp_dir) == cfg
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from model.pretrained import SavedConfig

#: Modalities of the fault model, in token order (presence-mask columns): the photo (frozen EfficientNet-Lite0
#: tokens), the voice message's transcript and the typed text (each a MiniLM sentence embedding).
SERVICE_MODALITIES: tuple[str, ...] = ("photo", "voice", "text")

#: Tasks, in the router's query order.
SERVICE_TASKS: tuple[str, ...] = ("fault", "device")


@dataclass
class ServiceConfig(SavedConfig):
    """Everything needed to rebuild a :class:`~model.service_model.ServiceFaultModel` and its photo preprocessing.

    Attributes:
        faults / devices: the class names of the two tasks, in logit order.
        photo_size: side of the square the photo is resized to for the photo encoder (pixels).
        photo_encoder: the frozen pretrained photo encoder (not saved with the weights: it ships in its package).
        photo_dim: width of its feature map; photo_grid: the map is average-pooled to ``grid x grid`` tokens, plus
            one global-average and one global-max token.
        text_dim: width of a sentence embedding (384 = MiniLM-L6).
        d_model / n_heads / fusion_layers / dropout: the router.
        feature_dropout: dropout on the frozen encoders' features as they enter (photo tokens, sentence
            embeddings): with a few hundred tickets the photo path otherwise memorises the training photos, those
            that hide the fault included, and then outvotes the words on new ones.
        modality_dropout: training-time probability of dropping each present modality of a sample (never all).
        escalate_below: fault confidence below which a ticket goes to a human.
        version: the model's identity in decisions and the audit trail.
    """

    faults: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    photo_size: int = 224
    photo_encoder: str = "efficientnet-lite0"
    photo_dim: int = 1280
    photo_grid: int = 2
    text_dim: int = 384
    d_model: int = 96
    n_heads: int = 4
    fusion_layers: int = 1
    dropout: float = 0.1
    feature_dropout: float = 0.0
    modality_dropout: float = 0.3
    escalate_below: float = 0.6
    name: str = "service-fault"
    version: str = "service-fault-1.0"

    def __post_init__(self) -> None:
        if not self.faults or not self.devices:
            raise ValueError("faults and devices must each name at least one class")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.photo_encoder != "efficientnet-lite0":
            raise ValueError(f"unknown photo encoder {self.photo_encoder!r} (known: efficientnet-lite0)")
        if not 0.0 <= self.escalate_below <= 1.0:
            raise ValueError(f"escalate_below {self.escalate_below} outside 0..1")

    @property
    def photo_tokens(self) -> int:
        """Tokens per photo: the pooled grid and the global average and maximum."""
        return self.photo_grid**2 + 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
