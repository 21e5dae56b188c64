"""Per-modality encoders: each turns one modality into a few tokens for the router.

========  =====================================  =====================================================
encoder   input                                  tokens
========  =====================================  =====================================================
image     ``(B, 3, H, W)`` normalised RGB        ``(B, 2 + gh*gw, C)``: global, grid cells, CAM evidence
audio     ``(B, 1, n_mels, frames)`` log-mel dB  ``(B, 1 + n_time, D)``: global + time chunks
text      ``(B, 384)`` sentence embedding        ``(B, 1, d_model)``
========  =====================================  =====================================================

All convolutions are plain ``Conv2d + BatchNorm2d + ReLU`` (ONNX/INT8 friendly); :meth:`ConvBNAct.fuse_`
folds the batch norm into the convolution for inference.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import AUDIO_NORMS


class ConvBNAct(nn.Module):
    """``Conv2d(k, stride, padding=k//2, bias=False) -> BatchNorm2d -> ReLU``; ``fuse_()`` folds the norm."""

    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, kernel: int = 3, act: bool = True, groups: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        pad = dilation * (kernel // 2)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, pad, dilation=dilation, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out)
        self.act: nn.Module = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse_(self) -> None:
        """Fold the (eval-mode) batch norm into the convolution, in place. Inference only."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size, self.conv.stride,
            self.conv.padding, dilation=self.conv.dilation, groups=self.conv.groups, bias=True,
        ).to(self.conv.weight.device)
        fused.weight.copy_(self.conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv = fused
        self.bn = nn.Identity()


def fused_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``model`` with every :class:`ConvBNAct`'s batch norm folded (same outputs, faster)."""
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBNAct):
            module.fuse_()
    return fused


class ResBlock(nn.Module):
    """Depthwise-separable residual block: ``relu(x + pw(dw(x)))``, constant width and resolution.

    ``dw``: ``kernel x kernel`` depthwise ``ConvBNAct`` (dilated by ``dilation``: a wider view at the same
    cost); ``pw``: 1x1 ``ConvBNAct`` without activation. About 8x cheaper than two dense 3x3 convolutions on CPU.
    """

    def __init__(self, channels: int, kernel: int = 3, dilation: int = 1):
        super().__init__()
        self.a = ConvBNAct(channels, channels, kernel=kernel, groups=channels, dilation=dilation)
        self.b = ConvBNAct(channels, channels, kernel=1, act=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.b(self.a(x)))


def local_mean(x: Tensor, kernel: int) -> Tensor:
    """Box-filtered ``x`` (borders averaged over the pixels inside the image): ``(B, C, H, W)``.

    Two separable depthwise convolutions with ones give the window sums; dividing by the per-pixel count of
    in-image pixels gives the mean (equal to ``avg_pool2d(..., count_include_pad=False)``, which is about 3x
    slower on CPU). Exportable: only ``conv2d``, ``arange``, ``clamp`` and a division.
    """
    pad = kernel // 2
    channels, height, width = x.shape[1:]
    ones = x.new_ones(channels, 1, kernel, 1)
    sums = F.conv2d(x, ones, padding=(pad, 0), groups=channels)
    sums = F.conv2d(sums, ones.view(channels, 1, 1, kernel), padding=(0, pad), groups=channels)
    inside = inside_count(height, pad, x.device, x.dtype)[:, None] * inside_count(width, pad, x.device, x.dtype)
    return sums / inside


def inside_count(
    n: int, pad: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(n,)``: how many of the ``2 * pad + 1`` window positions around each index fall inside ``0..n-1``."""
    idx = torch.arange(n, device=device)
    return (idx.clamp(max=pad) + 1 + (n - 1 - idx).clamp(max=pad)).to(dtype)


class ImageEncoder(nn.Module):
    """A stride-8 CNN producing image tokens and a dense defect map (CAM).

    The input gets three local-contrast channels (the image minus its ``highpass`` x ``highpass`` local mean:
    scratches, cracks, dents and stains stand out whatever the lighting). Then three stages:

    1. ``3x3/2`` and ``3x3`` ``ConvBNAct`` at ``c1`` (full detail at half resolution: thin scratches survive);
    2. ``3x3/2`` to ``c2`` and ``blocks[0]`` depthwise-separable :class:`ResBlock`;
    3. ``3x3/2`` to ``c3`` and ``blocks[1]`` :class:`ResBlock` with dilations 1, 2, 4, ... (a context of
       ~70 pixels at stride 8, so a defect is judged against the texture around it).

    The feature map ``(B, c3, H/8, W/8)`` gives:

    - a global token: ``Linear([avg-pool, max-pool])`` (max-pooling keeps small defects visible);
    - ``gh * gw`` grid tokens: adaptive average pool to ``grid``;
    - a CAM ``(B, n_cam, H/8, W/8)``: a 1x1 convolution, one channel per defect class, softmax over classes per
      cell; trained densely (``model.train``) from the labelled defect boxes. The predictor turns it into a box;
    - an evidence token: ``Linear([max over cells, mean over cells])`` of the CAM's class probabilities, so the
      router sees "how strongly, and how widely, each class shows anywhere in the frame".

    Args:
        channels: widths ``(c1, c2, c3)`` of the three stages, e.g. ``(32, 64, 128)``.
        grid: ``(gh, gw)`` grid tokens.
        n_cam: CAM channels (number of defect classes); 0 disables the CAM.
        blocks: residual blocks in stage 2 and in stage 3.
        highpass: local-mean kernel of the local-contrast channels (0: plain RGB input).
        backbone: ``"cnn"`` (the stages above, trained from scratch) or ``"efficientnet_lite0"``: the ImageNet-
            pretrained :class:`~model.backbones.LiteTrunk` projected to ``c3`` replaces the three stages (``c1``,
            ``c2`` and ``blocks`` unused; RGB input only, ``highpass`` must be 0); the tokens and the CAM are the
            same.
        frozen_stages: with the pretrained backbone, how many of its stages stay frozen (``LiteTrunk``).

    Example:
        >>> enc = ImageEncoder((16, 32, 64), (2, 2), n_cam=5)
        >>> tokens, cam = enc(torch.randn(2, 3, 192, 256))
        >>> tokens.shape, cam.shape
        (torch.Size([2, 6, 64]), torch.Size([2, 5, 24, 32]))
    """

    stride = 8

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 128),
        grid: tuple[int, int] = (2, 2),
        n_cam: int = 0,
        blocks: tuple[int, int] = (1, 3),
        highpass: int = 9,
        backbone: str = "cnn",
        frozen_stages: int = 2,
    ):
        super().__init__()
        if len(channels) != 3 or len(blocks) != 2:
            raise ValueError(f"ImageEncoder takes three stage widths and two block counts, got {channels} {blocks}")
        c1, c2, c3 = channels
        self.highpass = int(highpass)
        if backbone == "efficientnet_lite0":
            from model.backbones import LiteTrunk  # model.backbones imports model.preprocess, which imports this

            if self.highpass:
                raise ValueError(f"the pretrained backbone takes RGB only: highpass must be 0, got {highpass}")
            self.features: nn.Module = LiteTrunk(c3, frozen_stages=frozen_stages)
        elif backbone == "cnn":
            self.features = nn.Sequential(
                ConvBNAct(6 if self.highpass else 3, c1, stride=2),
                ConvBNAct(c1, c1),
                ConvBNAct(c1, c2, stride=2),
                *[ResBlock(c2) for _ in range(blocks[0])],
                ConvBNAct(c2, c3, stride=2),
                *[ResBlock(c3, dilation=2**k) for k in range(blocks[1])],
            )
        else:
            raise ValueError(f"unknown image backbone {backbone!r}: 'cnn' or 'efficientnet_lite0'")
        self.grid = tuple(grid)
        self.global_proj = nn.Linear(2 * c3, c3)
        self.cam = nn.Conv2d(c3, n_cam, 1) if n_cam > 0 else None
        self.evidence_proj = nn.Linear(2 * n_cam, c3) if n_cam > 0 else None
        self.out_dim = c3
        self.n_tokens = 1 + self.grid[0] * self.grid[1] + (1 if n_cam > 0 else 0)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(B, 3, H, W)`` -> tokens ``(B, n_tokens, C)``, CAM logits ``(B, n_cam, H/8, W/8)`` or None.

        With ``highpass``, a ``(B, 6, H, W)`` input already carries the local-contrast channels
        (:func:`model.preprocess.image_batch`, the serving fast path) and is used as is.
        """
        if self.highpass and images.shape[1] == 3:
            images = torch.cat([images, images - local_mean(images, self.highpass)], dim=1)
        fmap = self.features(images)
        pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
        tokens = [self.global_proj(pooled)[:, None]]
        tokens.append(F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2))
        cam = None
        if self.cam is not None:
            cam = self.cam(fmap)
            probs = torch.softmax(cam, dim=1).flatten(2)
            tokens.append(self.evidence_proj(torch.cat([probs.amax(dim=2), probs.mean(dim=2)], dim=1))[:, None])
        return torch.cat(tokens, dim=1), cam


class AudioEncoder(nn.Module):
    """A small CNN on log-mel spectrograms, frequency-aware, producing audio tokens.

    The log-mel (dB) is normalised per clip, by ``norm``:

    - ``"clip"``: minus the clip's mean level, divided by 20 dB, so an overall gain change does not change the
      input;
    - ``"band"``: each mel band minus its own mean over the clip, divided by 10 dB. The machine's and the
      microphone's steady spectrum (and any fixed equaliser) are gone; what is left is how each band moves in
      time: clicks, beats, a wobble once a turn. Trained on two sound synthesisers, it recognises the third's
      faults far better than ``"clip"`` (``benchmarks/sound_transfer.py``, ``docs/model.md``).

    Three stride-2 ``ConvBNAct`` stages and a (3x3 depthwise) residual block give
    ``(B, C, n_mels/8, frames/8)``; each time step's ``C * n_mels/8`` features (frequency position kept) are
    projected to ``dim``. Tokens: one global token ``Linear([mean_t, max_t])`` (max over time catches
    transient clicks) and ``n_time`` chunk tokens (max-pooled over time).

    Example:
        >>> enc = AudioEncoder(n_mels=64, channels=(16, 32, 64), n_time=4, dim=128)
        >>> enc(torch.randn(2, 1, 64, 101)).shape
        torch.Size([2, 5, 128])
    """

    def __init__(
        self, n_mels: int = 64, channels: tuple[int, ...] = (16, 32, 64), n_time: int = 4, dim: int = 128,
        norm: str = "clip",
    ):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"AudioEncoder takes three stage widths, got {channels}")
        if norm not in AUDIO_NORMS:
            raise ValueError(f"AudioEncoder norm {norm!r} is not one of {AUDIO_NORMS}")
        self.norm = norm
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            ConvBNAct(1, c1, stride=2),
            ConvBNAct(c1, c2, stride=2),
            ConvBNAct(c2, c3, stride=2),
            ResBlock(c3),
        )
        freq = n_mels
        for _ in range(3):
            freq = (freq - 1) // 2 + 1
        self.frame_proj = nn.Linear(c3 * freq, dim)
        self.global_proj = nn.Linear(2 * dim, dim)
        self.n_time = n_time
        self.out_dim = dim
        self.n_tokens = 1 + n_time

    def forward(self, mels: Tensor) -> Tensor:
        """``(B, 1, n_mels, frames)`` log-mel dB -> tokens ``(B, 1 + n_time, dim)``."""
        if self.norm == "band":
            x = (mels - mels.mean(dim=3, keepdim=True)) / 10.0
        else:
            x = (mels - mels.mean(dim=(2, 3), keepdim=True)) / 20.0
        fmap = self.features(x)  # (B, C, F', T')
        frames = F.relu(self.frame_proj(fmap.flatten(1, 2).transpose(1, 2)))  # (B, T', dim)
        glob = self.global_proj(torch.cat([frames.mean(dim=1), frames.amax(dim=1)], dim=1))[:, None]
        return torch.cat([glob, time_chunk_max(frames, self.n_time)], dim=1)


def time_chunk_max(frames: Tensor, n: int) -> Tensor:
    """``(B, T, D)`` -> ``(B, n, D)``: the maximum over each of ``n`` time chunks, the bins of
    ``F.adaptive_max_pool1d`` (chunk ``i`` spans ``floor(i*T/n)`` to ``ceil((i+1)*T/n)``), written with slices so
    that ONNX export takes it (the exporter has no adaptive max pooling)."""
    steps = frames.shape[1]
    return torch.stack(
        [frames[:, (i * steps) // n:-((-(i + 1) * steps) // n)].amax(dim=1) for i in range(n)], dim=1)


class TextEncoder(nn.Module):
    """Projects a precomputed sentence embedding (e.g. MiniLM, 384-d) to one token.

    The embedding itself is computed outside the model (the factory line has no text).

    Example:
        >>> TextEncoder(384, 128)(torch.randn(2, 384)).shape
        torch.Size([2, 1, 128])
    """

    def __init__(self, text_dim: int = 384, dim: int = 128):
        super().__init__()
        self.norm = nn.LayerNorm(text_dim)
        self.proj = nn.Linear(text_dim, dim)
        self.out_dim = dim
        self.n_tokens = 1

    def forward(self, embeddings: Tensor) -> Tensor:
        """``(B, text_dim)`` -> ``(B, 1, dim)``."""
        return self.proj(self.norm(embeddings))[:, None]
