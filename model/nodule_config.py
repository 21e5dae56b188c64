"""The nodule model's configuration: one dataclass, saved next to the weights in ``config.json``
(:mod:`model.pretrained`). Imports no torch (the dashboard reads model configurations too).

Example:
    >>> cfg = NoduleConfig(record_features=["age_years", "pack_years"])
    >>> NoduleFusionModel(cfg).save_pretrained(tmp_dir)      # tmp_dir/config.json
    >>> NoduleConfig.load(tmp_dir) == cfg
    True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from model.pretrained import SavedConfig

#: Modalities of the nodule model, in token order (presence-mask columns): the CT series, the structured clinical
#: record (FHIR features) and the free-text clinical note.
NODULE_MODALITIES: tuple[str, ...] = ("ct", "record", "note")

#: Tasks, in the router's query order: nodule present (logit), malignancy (logit), diameter (log mm).
NODULE_TASKS: tuple[str, ...] = ("nodule", "malignancy", "diameter")


@dataclass
class NoduleConfig(SavedConfig):
    """Everything needed to rebuild a :class:`~model.nodule_model.NoduleFusionModel` and its CT preprocessing.

    Attributes:
        spacing_mm: ``(slice, row, column)`` spacing of the fine grid every series is resampled to (MONAI
            ``Spacing``); the candidate crops are cut from it.
        hu_window: ``(low, high)`` Hounsfield units mapped to ``[0, 1]`` (clipped), a lung window.
        lung_hu: air below this many HU inside the body is lung (:func:`~model.blobs.lung_region`).
        blob_radii_mm: the nodule radii the blob filter looks for, one scale each (:func:`~model.blobs.find_blobs`).
        peak_window: side (voxels) of the window in which a peak of the blob response must be the maximum.
        ranker_trees / ranker_nodes: size of the learned candidate ranker (:class:`~model.tree_ensemble.TreeEnsemble`,
            set when it is fitted; 0: peaks are ranked by blobness).
        candidates: how many blobs are looked at (K).
        crop_size: side of the cubic fine-grid crop around each candidate (voxels; odd, so the candidate is its
            centre).
        crop_channels: widths of the crop encoder's three stride-2 stages.
        record_features: the names of the structured record's features, in vector order (each feature is
            followed by its missing flag in the record vector).
        record_mean / record_std: normalisation of the record features (from the training recording).
        text_dim: width of the note's sentence embedding (384 = MiniLM-L6).
        d_model / n_heads / fusion_layers / dropout: the router.
        embedding_dim: width of the fused case embedding (similar-cases index).
        modality_dropout: training-time probability of dropping each modality of a sample (never all).
        threshold: nodule probability at and above which a case is called "nodule".
        version: the model's identity in decisions and the audit trail.
    """

    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    lung_hu: float = -400.0
    blob_radii_mm: tuple[float, ...] = (2.0, 3.0, 4.5, 6.5, 9.0, 13.0)
    peak_window: int = 3
    ranker_trees: int = 0
    ranker_nodes: int = 0
    candidates: int = 24
    crop_size: int = 21
    crop_channels: tuple[int, ...] = (8, 16, 32)
    record_features: list[str] = field(default_factory=list)
    record_mean: list[float] = field(default_factory=list)
    record_std: list[float] = field(default_factory=list)
    text_dim: int = 384
    d_model: int = 64
    n_heads: int = 4
    fusion_layers: int = 1
    dropout: float = 0.1
    embedding_dim: int = 64
    modality_dropout: float = 0.25
    threshold: float = 0.5
    name: str = "nodule-fusion"
    version: str = "nodule-fusion-3.0"

    def __post_init__(self) -> None:
        self.spacing_mm = tuple(float(v) for v in self.spacing_mm)  # JSON gives lists
        self.hu_window = tuple(float(v) for v in self.hu_window)
        self.blob_radii_mm = tuple(float(v) for v in self.blob_radii_mm)
        self.crop_channels = tuple(int(v) for v in self.crop_channels)
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be three positive numbers, got {self.spacing_mm}")
        if not self.blob_radii_mm or min(self.blob_radii_mm) <= 0:
            raise ValueError(f"blob_radii_mm must be positive radii, got {self.blob_radii_mm}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {self.candidates}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not self.record_features:
            raise ValueError("record_features is empty: name the structured record's features")
        for name in ("record_mean", "record_std"):
            values = getattr(self, name)
            if values and len(values) != len(self.record_features):
                raise ValueError(f"{name} has {len(values)} values for {len(self.record_features)} record features")

    @property
    def record_dim(self) -> int:
        """Width of the record vector: each feature and its missing flag."""
        return 2 * len(self.record_features)

    def preprocess_key(self) -> str:
        """A short hash of the fields CT preprocessing depends on (keys the on-disk cache of preprocessed cases)."""
        blob = json.dumps({"spacing_mm": self.spacing_mm, "hu_window": self.hu_window}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("spacing_mm", "hu_window", "blob_radii_mm", "crop_channels"):
            data[key] = list(data[key])
        return data
