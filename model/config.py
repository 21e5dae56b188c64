"""The factory inspector's configuration: one dataclass, saved next to the weights in ``config.json``
(:mod:`model.pretrained`); the modality and task vocabulary; the reject rule.

Example:
    >>> cfg = InspectorConfig(classes={"defect": ["good", "scratch"], "machine": ["normal", "hum"]})
    >>> FactoryInspector(cfg).save_pretrained(tmp_dir)      # tmp_dir/config.json
    >>> InspectorConfig.load(tmp_dir) == cfg
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.pretrained import dataclass_from_dict, read_config

if TYPE_CHECKING:  # the dashboard reads configurations and the reject rule without torch
    from torch import Tensor

#: Modalities the router knows, in token order: the one place their names and order are written down.
#:
#: Inputs go by name (``{"image": ..., "audio": ...}``); presence travels as one ``(B, M)`` bool mask whose column
#: ``j`` is ``MODALITIES[j]``, because the router, the modality weights and the training augmentations (dropping a
#: modality, dropping text in) act on all modalities of a batch at once. Code reads a column by name through
#: :func:`modality_column` and builds a mask from names with :func:`presence_mask`, never by a literal index.
MODALITIES: tuple[str, ...] = ("image", "audio", "text")

#: The audio encoder's input normalisations (``InspectorConfig.audio_norm``).
AUDIO_NORMS: tuple[str, ...] = ("clip", "band")

#: Stages of the pretrained image trunk (:class:`~model.backbones.LiteTrunk`), the most it can keep frozen.
LITE_STAGES = 5


def modality_column(name: str) -> int:
    """The column of modality ``name`` in a presence mask or a modality-weight matrix.

    Raises:
        ValueError: ``name`` is not one of :data:`MODALITIES`.
    """
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; the model knows {list(MODALITIES)}")
    return MODALITIES.index(name)


def presence_mask(present: Mapping[str, Tensor | Sequence[bool] | bool], n: int) -> Tensor:
    """``{modality: (n,) bool, or one bool for every row}`` -> the ``(n, M)`` bool mask in :data:`MODALITIES`
    order; a modality missing from the dict is absent from every row.

    Example:
        >>> presence_mask({"image": True, "audio": [True, False]}, 2)
        tensor([[ True,  True, False],
                [ True, False, False]])

    Raises:
        ValueError: an unknown modality name, or a column that is not ``(n,)``.
    """
    import torch

    mask = torch.zeros(n, len(MODALITIES), dtype=torch.bool)
    for name, column in present.items():
        column = torch.as_tensor(column, dtype=torch.bool)
        column = column.expand(n) if column.ndim == 0 else column
        if column.shape != (n,):
            raise ValueError(f"presence of {name!r} has shape {tuple(column.shape)}, expected ({n},)")
        mask[:, modality_column(name)] = column
    return mask

DEFAULT_CLASSES: dict[str, list[str]] = {
    "defect": ["good", "scratch", "dent", "crack", "contamination"],
    "machine": ["normal", "bearing_click", "imbalance_hum"],
}

#: The "nothing wrong" class of each task: a part is rejected when any task predicts something else.
DEFAULT_NOMINAL: dict[str, str] = {"defect": "good", "machine": "normal"}


def rejected_tasks(labels: Mapping[str, str], nominal: Mapping[str, str], unobserved: Iterable[str] = ()) -> list[str]:
    """The reject rule: the tasks (in ``labels`` order) whose class is not their nominal one.

    A part is rejected when the list is not empty, and the list says why (``["defect"]``, ``["machine"]`` or
    both). A task without a nominal class never rejects, nor does an ``unobserved`` one (its evidence modality
    was missing: its answer is the training prior, not an observation).

    Example:
        >>> rejected_tasks({"defect": "good", "machine": "bearing_click"}, DEFAULT_NOMINAL)
        ['machine']
    """
    skip = set(unobserved)
    return [t for t, name in labels.items() if t in nominal and t not in skip and name != nominal[t]]


@dataclass
class InspectorConfig:
    """Everything needed to rebuild a :class:`~model.factory_model.FactoryInspector` and its preprocessing.

    Attributes:
        image_size: ``(H, W)`` the frame is resized to (``cv2.INTER_AREA``) before the image encoder.
        image_channels: widths of the three stages of the image CNN (total stride 8).
        image_blocks: depthwise-separable residual blocks in the second and the third (dilated) stage.
        image_highpass: local-mean kernel of the image encoder's local-contrast input channels (0: none).
        image_grid: ``(rows, cols)`` of the spatial grid tokens pooled from the image feature map.
        image_backbone: ``"cnn"`` (trained from scratch) or ``"efficientnet_lite0"`` (ImageNet-pretrained,
            fine-tuned; :class:`~model.backbones.LiteTrunk`, with ``image_highpass`` 0).
        image_frozen_stages: with the pretrained backbone, how many of its five stages (strides 2, 4, 8, 16, 16)
            keep their ImageNet weights and batch-norm statistics; the stem is always frozen, 5 freezes the trunk
            (only its 1x1 projections train).
        sample_rate: audio is resampled to this rate (Hz).
        clip_seconds: audio is padded/cropped to this duration.
        n_fft / hop_length / n_mels / f_min / f_max: log-mel front end (``torchaudio.transforms.MelSpectrogram``).
        audio_channels: output channels of the three stride-2 stages of the audio CNN.
        audio_time_tokens: number of time-chunk tokens pooled from the audio feature map.
        audio_norm: how the audio encoder normalises its log-mel input (:class:`~model.encoders.AudioEncoder`):
            ``"clip"``, the clip's mean level removed; ``"band"``, each mel band's mean level removed (only how
            each band changes in time is left, whatever the machine's and the microphone's steady spectrum).
        text_dim: size of the sentence embedding the text encoder projects (384 = MiniLM).
        d_model / n_heads / fusion_layers / dropout: the shared token space and the router.
        classes: class names per task (head), e.g. ``{"defect": [...], "machine": [...]}``.
        nominal: the "nothing wrong" class per task; any other class means reject.
        primary_task: the task whose class is the decision's ``label``.
        task_modality: the modality each task's label is observable from (used by training to mask the loss
            when that modality is missing, and by prediction to flag uninformed outputs).
        cam_task: the task the image encoder's class-activation map (CAM) classifies per cell and the predicted
            box locates; no CAM head when ``classes`` has no such task.
        name / version: ``version`` is the model's identity in decisions and the audit trail.
    """

    image_size: tuple[int, int] = (192, 256)
    image_channels: tuple[int, ...] = (16, 48, 96)
    image_blocks: tuple[int, int] = (1, 3)
    image_highpass: int = 9
    image_grid: tuple[int, int] = (2, 2)
    image_backbone: str = "cnn"
    image_frozen_stages: int = 2
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    n_fft: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    audio_channels: tuple[int, ...] = (16, 32, 64)
    audio_time_tokens: int = 4
    audio_norm: str = "clip"
    text_dim: int = 384
    d_model: int = 128
    n_heads: int = 4
    fusion_layers: int = 1
    dropout: float = 0.1
    classes: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_CLASSES.items()})
    nominal: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_NOMINAL))
    primary_task: str = "defect"
    task_modality: dict[str, str] = field(default_factory=lambda: {"defect": "image", "machine": "audio"})
    cam_task: str = "defect"
    name: str = "factory-inspector"
    version: str = "factory-inspector-2.0"

    def __post_init__(self) -> None:
        self.image_size = tuple(int(v) for v in self.image_size)  # JSON gives lists
        self.image_channels = tuple(int(v) for v in self.image_channels)
        self.image_grid = tuple(int(v) for v in self.image_grid)
        self.image_blocks = tuple(int(v) for v in self.image_blocks)
        self.audio_channels = tuple(int(v) for v in self.audio_channels)
        if not 0 <= self.image_frozen_stages <= LITE_STAGES:
            raise ValueError(f"image_frozen_stages {self.image_frozen_stages}: from 0 to {LITE_STAGES}")
        if self.audio_norm not in AUDIO_NORMS:
            raise ValueError(f"audio_norm {self.audio_norm!r} is not one of {AUDIO_NORMS}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.primary_task not in self.classes:
            raise ValueError(f"primary_task {self.primary_task!r} is not one of the tasks {list(self.classes)}")
        for task, names in self.classes.items():
            if len(names) < 2 or len(set(names)) != len(names):
                raise ValueError(f"task {task!r} needs at least two distinct classes, got {names}")
            nominal = self.nominal.get(task)
            if nominal is not None and nominal not in names:
                raise ValueError(f"nominal class {nominal!r} of task {task!r} is not one of {names}")
        for task, modality in self.task_modality.items():
            if modality not in MODALITIES:
                raise ValueError(f"task {task!r} is observed through unknown modality {modality!r}")

    @property
    def clip_samples(self) -> int:
        """Audio length in samples after pad/crop."""
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def audio_frames(self) -> int:
        """Log-mel frames per clip (centred STFT)."""
        return self.clip_samples // self.hop_length + 1

    def preprocess_key(self) -> str:
        """A short hash of the fields preprocessing depends on (keys on-disk caches of preprocessed tensors)."""
        keys = ("image_size", "sample_rate", "clip_seconds")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("image_size", "image_channels", "image_blocks", "image_grid", "audio_channels"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InspectorConfig:
        """Build from a dict; unknown keys (written by newer versions or by ``save_pretrained``) are ignored."""
        return dataclass_from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> InspectorConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, directory: str | Path) -> InspectorConfig:
        """The configuration saved in a ``save_pretrained`` folder."""
        return cls.from_dict(read_config(directory))
