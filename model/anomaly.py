"""Good-only anomaly scoring on pretrained features: a patch-feature memory bank with coreset sampling (PatchCore).

A plant fits it from good parts alone, in minutes, on its own parts, light and camera:

1. :func:`patch_features`: the frozen ImageNet EfficientNet-Lite0 (:mod:`model.backbones`), its feature maps at
   ``config.feature_levels`` (default: level 1, stride 4, 24 channels), each averaged over 3x3 neighbourhoods (a
   patch sees its surroundings) and brought to one stride-8 grid (finer maps average-pooled, coarser ones
   upsampled), concatenated: ``(B, D, H/8, W/8)``. Level 1 was chosen on one product of the shaded renderer
   (``benchmarks/anomaly_fit.py``: AUROC 0.816 with the PatchCore-style levels 2 + 3, 0.898 with level 1) and
   confirmed on another it was not chosen on (0.875 -> 0.982) and on two of the paint renderer's (0.995 / 0.989
   -> 0.995 / 0.997): faint defects that show through shading are edges and small relief, which the early level
   keeps;
2. :func:`fit_patch_memory`: the patches of most good parts go through greedy k-center sampling
   (:func:`greedy_coreset`) into a bank of ``coreset`` patches; the rest of the good parts calibrate the
   threshold, the image score their ``1 - false_reject_rate`` quantile reaches;
3. :class:`PatchMemory`: a part's image score is the largest distance of any of its patches to its nearest
   bank patch; the per-patch distances are the heat map.

Example:
    >>> memory = fit_patch_memory(good_images, AnomalyConfig(coreset=2048))   # (N, 3, H, W) RGB in [0, 1]
    >>> out = memory(images)
    >>> out.score.shape, out.heat.shape, out.anomalous
    (torch.Size([B]), torch.Size([B, H, W]), tensor([False, True, ...]))
    >>> memory.save_pretrained("runs/fit")                # the bank and threshold; the backbone ships in a package
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.backbones import frozen_efficientnet_lite0, normalize_lite
from model.pretrained import PretrainedModel, dataclass_from_dict

#: Channels of EfficientNet-Lite0's feature levels 0..3 (strides 2, 4, 8, 16).
LEVEL_CHANNELS = {0: 16, 1: 24, 2: 40, 3: 112}
#: Patches are compared on a grid of this stride (pixels of the resized frame).
PATCH_STRIDE = 8


@dataclass
class AnomalyConfig:
    """How a :class:`PatchMemory` is fitted and how it reads images.

    Attributes:
        image_size: ``(h, w)`` frames are resized to before feature extraction (multiples of 16).
        feature_levels: EfficientNet-Lite0 feature levels the patches are built from (0..3, strides 2..16).
        coreset: patches kept in the memory bank.
        projection_dim: random-projection width used to pick the coreset (distances are then approximate).
        false_reject_rate: share of good parts allowed above the threshold, on the calibration split.
        calibration_fraction: share of the good parts held out of the bank to set the threshold.
        seed: for the split, the projection and the first coreset centre.
    """

    image_size: tuple[int, int] = (240, 320)
    feature_levels: tuple[int, ...] = (1,)
    coreset: int = 2048
    projection_dim: int = 64
    false_reject_rate: float = 0.01
    calibration_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        self.image_size = tuple(int(v) for v in self.image_size)  # JSON gives lists
        self.feature_levels = tuple(int(v) for v in self.feature_levels)
        unknown = [level for level in self.feature_levels if level not in LEVEL_CHANNELS]
        if not self.feature_levels or unknown:
            raise ValueError(f"feature_levels {self.feature_levels}: each one of {sorted(LEVEL_CHANNELS)}")

    @property
    def feature_dim(self) -> int:
        """Channels of a patch feature."""
        return sum(LEVEL_CHANNELS[level] for level in self.feature_levels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnomalyConfig:
        return dataclass_from_dict(cls, data)


@dataclass
class AnomalyOutput:
    """``score`` ``(B,)`` image anomaly scores, ``heat`` ``(B, H, W)`` per-pixel distances at the input's size,
    ``anomalous`` ``(B,)`` bool: score above the fitted threshold."""

    score: Tensor
    heat: Tensor
    anomalous: Tensor


def frame_tensor(pixels: np.ndarray) -> Tensor:
    """A camera frame ``(H, W, 3)`` uint8 BGR -> ``(3, H, W)`` float RGB in [0, 1] (what the model reads)."""
    return torch.from_numpy(np.ascontiguousarray(pixels[:, :, ::-1])).permute(2, 0, 1).float().div_(255.0)


def patch_features(images: Tensor, size: tuple[int, int], levels: tuple[int, ...] = (1,)) -> Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> locally aggregated patch features ``(B, D, size[0]/8, size[1]/8)`` from
    the backbone's feature ``levels`` (``D``: their channels, :data:`LEVEL_CHANNELS`)."""
    backbone = frozen_efficientnet_lite0().to(images.device)
    x = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    maps = backbone.forward_intermediates(normalize_lite(x), indices=list(levels), intermediates_only=True,
                                         stop_early=True)
    grid = (size[0] // PATCH_STRIDE, size[1] // PATCH_STRIDE)
    out = []
    for m in maps:
        m = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
        if m.shape[-1] >= grid[1]:
            out.append(F.adaptive_avg_pool2d(m, grid))
        else:
            out.append(F.interpolate(m, size=grid, mode="bilinear", align_corners=False))
    return torch.cat(out, dim=1)


def greedy_coreset(points: Tensor, k: int, projection_dim: int = 64, seed: int = 0) -> Tensor:
    """Indices ``(k,)`` of ``points`` ``(N, D)`` chosen by greedy k-center (each next point the farthest from
    those chosen), on a Gaussian random projection to ``projection_dim`` dimensions."""
    n = points.shape[0]
    if k >= n:
        return torch.arange(n, device=points.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if points.shape[1] > projection_dim:
        projection = torch.randn(points.shape[1], projection_dim, generator=gen) / projection_dim ** 0.5
        points = points @ projection.to(points.device, points.dtype)
    squared = points.pow(2).sum(dim=1)  # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: one matrix-vector product a step
    chosen = torch.empty(k, dtype=torch.long, device=points.device)
    chosen[0] = int(torch.randint(n, (1,), generator=gen))
    nearest = torch.full((n,), float("inf"), device=points.device)
    for i in range(1, k):
        centre = chosen[i - 1]
        nearest = torch.minimum(nearest, squared - 2 * (points @ points[centre]) + squared[centre])
        chosen[i] = nearest.argmax()
    return chosen


class PatchMemory(PretrainedModel, nn.Module):
    """Anomaly scores from nearest-neighbour distances to a bank of good patches (see the module docstring).

    Buffers:
        bank: ``(coreset, config.feature_dim)`` good patch features.
        threshold: ``()`` image score above which a part is anomalous.
    """

    model_type = "patch-memory"
    config_class = AnomalyConfig

    def __init__(self, config: AnomalyConfig):
        super().__init__()
        self.config = config
        self.register_buffer("bank", torch.zeros(config.coreset, config.feature_dim))
        self.register_buffer("threshold", torch.tensor(float("inf")))

    def patch_distances(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> distance of each patch to its nearest bank patch ``(B, h, w)``."""
        feats = patch_features(images, self.config.image_size, self.config.feature_levels)
        b, d, h, w = feats.shape
        patches = feats.permute(0, 2, 3, 1).reshape(b, h * w, d)
        return torch.stack([torch.cdist(p, self.bank).amin(dim=1) for p in patches]).view(b, h, w)

    def forward(self, images: Tensor) -> AnomalyOutput:
        """``(B, 3, H, W)`` RGB in [0, 1] -> :class:`AnomalyOutput`."""
        dist = self.patch_distances(images)
        score = dist.flatten(1).amax(dim=1)
        heat = F.interpolate(dist[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return AnomalyOutput(score, heat, score > self.threshold)

    def score_frames(self, frames: Sequence[np.ndarray]) -> AnomalyOutput:
        """Camera frames ``(H, W, 3)`` uint8 BGR, of any sizes -> :class:`AnomalyOutput` (heat maps at
        ``config.image_size``). Each frame is resized as :func:`patch_features` resizes a batch."""
        size = self.config.image_size
        images = torch.cat([F.interpolate(frame_tensor(f)[None], size=size, mode="bilinear", antialias=True,
                                          align_corners=False) for f in frames])
        with torch.inference_mode():
            return self(images)

    def threshold_ratios(self, frames: Sequence[np.ndarray | None]) -> list[float]:
        """Each frame's (``(H, W, 3)`` uint8 BGR) score over the fitted threshold, above 1 where the part is
        anomalous; NaN where there is no frame."""
        seen = [i for i, frame in enumerate(frames) if frame is not None]
        ratios = [float("nan")] * len(frames)
        if seen:
            threshold = float(self.threshold)
            for i, score in zip(seen, self.score_frames([frames[i] for i in seen]).score.tolist(), strict=True):
                ratios[i] = score / threshold
        return ratios


def fit_patch_memory(good: Tensor, config: AnomalyConfig | None = None, batch_size: int = 16) -> PatchMemory:
    """Fit a :class:`PatchMemory` on good parts only.

    Args:
        good: ``(N, 3, H, W)`` RGB in [0, 1] (N ≥ 2), all images of good parts.
        config: :class:`AnomalyConfig`.
        batch_size: images per feature-extraction batch.

    Raises:
        ValueError: fewer than two good images (one must calibrate the threshold).
    """
    config = config or AnomalyConfig()
    n = good.shape[0]
    n_cal = max(1, round(config.calibration_fraction * n))
    if n - n_cal < 1:
        raise ValueError(f"fit_patch_memory needs at least 2 good images, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    fit_idx, cal_idx = order[n_cal:], order[:n_cal]
    with torch.no_grad():
        patches = torch.cat([
            patch_features(good[fit_idx[i:i + batch_size]], config.image_size, config.feature_levels)
            .permute(0, 2, 3, 1).flatten(0, 2)
            for i in range(0, len(fit_idx), batch_size)])
        keep = greedy_coreset(patches, config.coreset, config.projection_dim, config.seed)
        memory = PatchMemory(AnomalyConfig(**{**config.to_dict(), "coreset": len(keep)}))
        memory.bank.copy_(patches[keep])
        scores = torch.cat([memory(good[cal_idx[i:i + batch_size]]).score
                            for i in range(0, len(cal_idx), batch_size)])
        memory.threshold.fill_(float(torch.quantile(scores, 1.0 - config.false_reject_rate)))
    return memory.eval()
