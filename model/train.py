"""A pure training loop over tensors: no files, no recordings (``pipelines.lines.factory.train`` does the I/O).

Losses, per sample:

- each task's cross-entropy (optional label smoothing) where the modality it is observable from
  (``config.task_modality``, image for ``defect``, audio for ``machine``) is present; where that modality was
  dropped, a cross-entropy towards the training **class prior**, so a model that cannot see the evidence says
  "I don't know" (the prior) instead of guessing;
- deep supervision (``aux_weight``): each task read linearly from its evidence modality's tokens, so each
  encoder learns its task directly, whatever the router attends to early on;
- the class-activation map (CAM), trained densely: every cell of the stride-8 grid is classified (softmax over
  the defect classes, the nominal class standing for "background"); a cell touching a labelled defect box takes
  that defect's class, every other cell the nominal class (``cam_weight``; defect cells weigh ``pos_weight``).
  Items with a defect label but no box only train the image-level head.

Training runs mostly on **random crops** (``crop``, at the model's resolution; ``crop_focus`` of them around a
labelled defect): four times cheaper than full frames, with the crop's own label derived from the boxes (a defect
when at least 30 % of a box lies inside, ignored when less, nominal when none). The last ``full_frame_epochs``
run on whole frames so the router and heads see what serving sees, and the batch-norm statistics are finally
re-estimated on clean whole frames (``recalibrate_bn``).

The two groups are combined as ``2 * ((1 - λ_t) * auxiliary + λ_t * main)`` (``task_weighting``): a fixed
``λ = 0.5`` (their plain sum, the default), a sigmoid schedule ``λ_t = 1 / (1 + exp(-k (t - t0)))`` over the
fraction ``t`` of training, or that schedule with ``k`` and ``t0`` **meta-learned** on a held-out split
(:class:`MetaWeighting`). ``precision``: autocast in bf16/fp16 where the device supports it (CUDA), fp32 on CPU.

Augmentation happens in tensor space, on the batch: flips, small rotation/scale/translation, brightness,
contrast, colour gain, blur and noise for images (the boxes follow the geometry; optionally, with
``synthetic_defects``, a defect drawn onto good parts: ``model.synthetic_defects``); gain, noise and circular
time shift for audio; **modality dropout** (image or audio hidden from the router, never both) and, with
``text_dropin``, a random unit "text" embedding so an unrelated operator note cannot derail the query.

The same loop runs as one of several **data-parallel** processes (:class:`model.parallel.DataParallel`:
``torch.distributed`` initialised by the caller, e.g. Ray Train): every process draws the same global batch from
the same seeded generator and trains on its own rows of it, with the gradients all-reduced (DDP), the masked losses
divided by the global batch's weight sums and the batch norms normalising with its statistics
(:class:`model.parallel.GlobalBatchNorm2d`): the step is the global batch's, but for the dropout masks, which each
process draws for its own rows (same distribution, other draws). ``on_epoch_end`` receives the whole training state
after every epoch (to checkpoint it) and ``resume`` continues from such a state.

Example:
    >>> data = TensorData(images, waveforms, {"defect": y_defect, "machine": y_machine})
    >>> history = fit(FactoryInspector(InspectorConfig()), data, val=None, cfg=TrainConfig(epochs=3))
    >>> history["train_loss"]
    [1.43, 0.61, 0.32]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from model.config import modality_column, presence_mask
from model.losses import FixedTaskWeight, SigmoidTaskWeight
from model.parallel import DataParallel, at_least_one, global_batch_norms
from model.preprocess import LogMel, normalize_images
from model.synthetic_defects import synthesise_defects


@dataclass
class TensorData:
    """A dataset as tensors (what :func:`fit` consumes).

    Attributes:
        images: ``(N, 3, H, W)`` uint8 RGB at the config's image size (``model.preprocess.image_uint8``).
        waveforms: ``(N, 1, T)`` float32 mono at the config's rate and clip length (``waveform_tensor``).
        labels: ``{task: (N,) int64}`` class indices; -1 where unknown.
        boxes: ``(N, K, 4)`` (or ``(N, 4)``) float32 defect boxes ``[x, y, w, h]`` normalised to 0..1; NaN rows
            where none (a sample may have up to ``K`` defect instances).
        present: ``(N, M)`` bool, which modalities the item has (columns :data:`model.config.MODALITIES`);
            default image and audio.
        texts: ``(N, text_dim)`` float32 sentence embeddings, or None.
    """

    images: Tensor
    waveforms: Tensor
    labels: dict[str, Tensor]
    boxes: Tensor | None = None
    present: Tensor | None = None
    texts: Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.boxes is None:
            self.boxes = torch.full((n, 1, 4), float("nan"))
        elif self.boxes.ndim == 2:
            self.boxes = self.boxes[:, None]
        if self.present is None:
            self.present = presence_mask({"image": True, "audio": True}, n)
        for name, t in [("waveforms", self.waveforms), ("boxes", self.boxes), ("present", self.present)]:
            if len(t) != n:
                raise ValueError(f"TensorData: {name} has {len(t)} rows, images has {n}")
        for task, y in self.labels.items():
            if len(y) != n:
                raise ValueError(f"TensorData: labels[{task!r}] has {len(y)} rows, images has {n}")

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> TensorData:
        """The frames and waveforms (the bulk) on ``device``; labels, boxes, presence and texts stay on the CPU,
        where the batch's random choices are made."""
        return TensorData(self.images.to(device), self.waveforms.to(device), self.labels, self.boxes, self.present,
                          self.texts)

    def subset(self, index: Tensor) -> TensorData:
        return TensorData(
            self.images[index],
            self.waveforms[index],
            {k: v[index] for k, v in self.labels.items()},
            self.boxes[index],
            self.present[index],
            None if self.texts is None else self.texts[index],
        )


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`fit`.

    The default schedule is the recipe for the demo's 4,800-part training recording: 24 epochs (3,240 steps of
    32). The same steps over twice the parts beat 48 epochs over 2,400 (held-out 91.7 % vs 90.2 %, and 80.3 % vs
    76.8 % on another generator's parts; ``docs/model.md``); a smaller recording needs more epochs.
    """

    epochs: int = 24
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.02
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.05
    seed: int = 0
    augment: bool = True
    modality_dropout: float = 0.15
    text_dropin: float = 0.1
    prior_weight: float = 0.5
    aux_weight: float = 0.5
    cam_weight: float = 1.0
    pos_weight: float = 3.0
    crop: tuple[int, int] | None = (96, 128)
    crop_focus: float = 0.7
    crop_image_only: float = 0.0
    style_randomisation: float = 0.0  # share of training images whose look is redrawn (randomise_style)
    synthetic_defects: float = 0.0  # share of good training parts given a drawn defect (synthetic_defects.py)
    full_frame_epochs: int = 3
    recalibrate_bn: int = 512
    threads: int | None = 2
    device: str | None = None  # None: cuda when available, else cpu
    batches_on_device: bool = True  # CUDA: keep the frames on the GPU and crop/augment there (CPU-bound otherwise)
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (CUDA: bf16 where supported, else fp16; CPU: fp32)
    task_weighting: str = "fixed"  # fixed | sigmoid | meta: λ_t between the auxiliary and the main losses
    main_share: float = 0.5  # "fixed": λ
    weight_steepness: float = 10.0  # "sigmoid" / "meta": k (start value for "meta"), t = fraction of training
    weight_midpoint: float = 0.5  # "sigmoid" / "meta": t0 (start value for "meta")
    meta_every: int = 10  # "meta": a hypergradient step on k and t0 every n training steps
    meta_lr: float = 0.05  # "meta": Adam learning rate of k and t0
    meta_fraction: float = 0.1  # "meta": share of the training items held out for the hypergradient
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# -- augmentation ---------------------------------------------------------------------------------------


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _randn(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> Tensor:
    """Standard normal noise of ``shape`` on ``device``: drawn from ``gen`` on the CPU, or on an accelerator from a
    generator of its own seeded by ``gen`` (copying CPU noise over would cost more than the step)."""
    if device.type == "cpu":
        return torch.randn(shape, generator=gen)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), device=device)


def box_cells(boxes: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(B, K, 4)`` (or ``(B, 4)``) normalised ``[x, y, w, h]`` boxes, NaN rows = none -> ``(B, 1, h, w)`` targets.

    A cell of the ``grid`` (the CAM resolution) is 1 when it overlaps any of the sample's boxes.
    """
    h, w = grid
    if boxes.ndim == 2:
        boxes = boxes[:, None]
    b = torch.nan_to_num(boxes, nan=-2.0)  # NaN boxes end up outside every cell
    x0, y0 = b[..., 0, None], b[..., 1, None]
    x1, y1 = x0 + b[..., 2, None], y0 + b[..., 3, None]
    xs = torch.arange(w, dtype=torch.float32) / w
    ys = torch.arange(h, dtype=torch.float32) / h
    in_x = (x0 < xs + 1.0 / w) & (x1 > xs)  # (B, K, w)
    in_y = (y0 < ys + 1.0 / h) & (y1 > ys)  # (B, K, h)
    return (in_y[..., :, None] & in_x[..., None, :]).any(dim=1).float()[:, None]


def has_box(boxes: Tensor) -> Tensor:
    """``(B,)``: the sample has at least one complete box (``boxes`` ``(B, K, 4)``, NaN rows = none)."""
    return ~torch.isnan(boxes).any(dim=-1).all(dim=-1)


def crop_labels(labels: Tensor, inside: Tensor, boxed: Tensor, nominal: int) -> Tensor:
    """A crop's defect label ``(B,)`` from its part's ``labels``, the largest share of a box ``inside`` it and
    whether the part has boxes (``boxed``): the defect when at least 30 % of a box is inside, ignored (-1) when
    less, nominal when none; parts without boxes keep a nominal label and ignore a defect one."""
    crop = torch.where(inside >= 0.3, labels, torch.where(inside > 0, -1, nominal))
    return torch.where(boxed, crop, torch.where(labels == nominal, nominal, -1))


def cam_targets(boxes: Tensor, labels: Tensor, nominal: int, grid: tuple[int, int]) -> Tensor:
    """Per-cell CAM classes ``(B, h, w)``: a cell touching one of the sample's ``boxes`` takes its defect label,
    every other cell ``nominal``; -1 (ignored) everywhere for samples whose label is unknown (-1) and for a
    defect without a box (where it is, is unknown)."""
    labels = torch.where(has_box(boxes) | (labels == nominal), labels, -1)
    cells = box_cells(boxes, grid)[:, 0] > 0
    target = torch.where(cells, labels[:, None, None], nominal)
    return torch.where(labels[:, None, None] >= 0, target, -1)


def cam_loss(cam: Tensor, cell_target: Tensor, nominal: int, pos_weight: float,
             denominator: Callable[[Tensor], Tensor] = at_least_one) -> Tensor:
    """Dense CAM cross-entropy ``()``: cells of a defect weigh ``pos_weight``, background cells 1, -1 cells 0; the
    weighted sum is divided by ``denominator(sum of the weights)``."""
    ce = F.cross_entropy(cam, cell_target.clamp_min(0), reduction="none")  # (B, h, w)
    weight = torch.where(cell_target == nominal, 1.0, pos_weight) * (cell_target >= 0)
    return (ce * weight).sum() / denominator(weight.sum())


def _warp_boxes(boxes: Tensor, theta: Tensor) -> Tensor:
    """Where ``(B, K, 4)`` boxes land after ``grid_sample`` with ``theta`` ``(B, 2, 3)``: the corners' bounding box.

    ``affine_grid`` maps output coordinates to input ones (``p_in = A p_out + t``, in -1..1), so a corner moves to
    ``A^-1 (p_in - t)``.
    """
    x, y, w, h = boxes.unbind(-1)
    corners = torch.stack([torch.stack([x, y], -1), torch.stack([x + w, y], -1),
                           torch.stack([x, y + h], -1), torch.stack([x + w, y + h], -1)], dim=2)  # (B, K, 4, 2)
    p = corners * 2 - 1
    inv = torch.linalg.inv(theta[:, :, :2])  # (B, 2, 2)
    q = torch.einsum("bij,bkcj->bkci", inv, p - theta[:, None, None, :, 2])
    q = ((q + 1) / 2).clamp(0, 1)
    lo, hi = q.amin(dim=2), q.amax(dim=2)
    return torch.cat([lo, hi - lo], dim=-1)


def augment_images(images: Tensor, boxes: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """uint8 ``(B, 3, H, W)`` + boxes ``(B, K, 4)`` -> augmented float images in [0, 1] and the moved boxes.

    Geometry: horizontal and vertical flips (p 0.5 each); for half the samples a rotation +-12 deg, scale
    0.85..1.15 and translation +-8 % (``grid_sample``, reflected borders). Photometry: contrast 0.6..1.4,
    brightness +-0.15, colour gain +-10 % per channel, 3x3 blur (p 0.25), Gaussian noise sigma 0..0.04 (p 0.5).
    Boxes follow the geometry (bounding box of the moved corners).
    """
    b, _, h, w = images.shape
    device = images.device  # random draws happen on the CPU (``gen``), the pixel work where the images are
    x = images.float().div_(255.0)
    boxes = boxes.clone()
    flip_x = torch.rand(b, generator=gen) < 0.5
    flip_y = torch.rand(b, generator=gen) < 0.5
    if flip_x.any():
        at = flip_x.to(device)
        x[at] = x[at].flip(-1)
        boxes[flip_x, :, 0] = 1 - boxes[flip_x, :, 0] - boxes[flip_x, :, 2]
    if flip_y.any():
        at = flip_y.to(device)
        x[at] = x[at].flip(-2)
        boxes[flip_y, :, 1] = 1 - boxes[flip_y, :, 1] - boxes[flip_y, :, 3]

    warp = torch.nonzero(torch.rand(b, generator=gen) < 0.5).flatten()
    if len(warp):
        n = len(warp)
        angle = _uniform(gen, n, -12.0, 12.0) * math.pi / 180.0
        scale = torch.exp(_uniform(gen, n, math.log(0.85), math.log(1.15)))
        tx, ty = _uniform(gen, n, -0.08, 0.08), _uniform(gen, n, -0.08, 0.08)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        aspect = w / h  # rotate in pixel space, not in the (non-square) normalised space
        theta = torch.stack(
            [torch.stack([cos, -sin / aspect, tx], dim=1), torch.stack([sin * aspect, cos, ty], dim=1)], dim=1
        )
        grid = F.affine_grid(theta.to(device), [n, 3, h, w], align_corners=False)
        at = warp.to(device)
        x[at] = F.grid_sample(x[at], grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        boxes[warp] = _warp_boxes(boxes[warp], theta)

    # contrast, brightness and colour gain in one pass: x * alpha + beta
    mean = x.mean(dim=(1, 2, 3)).view(b, 1, 1, 1)
    contrast = _uniform(gen, b, 0.6, 1.4).view(b, 1, 1, 1)
    gain = 1.0 + 0.1 * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    bright = _uniform(gen, b, -0.15, 0.15).view(b, 1, 1, 1)
    contrast, gain, bright = contrast.to(device), gain.to(device), bright.to(device)
    x.mul_(contrast * gain).add_((mean * (1 - contrast) + bright) * gain)
    blur = torch.nonzero(torch.rand(b, generator=gen) < 0.25).flatten().to(device)
    if len(blur):
        x[blur] = F.avg_pool2d(x[blur], 3, 1, 1, count_include_pad=False)
    noisy = torch.nonzero(torch.rand(b, generator=gen) < 0.5).flatten()
    if len(noisy):
        sigma = _uniform(gen, len(noisy), 0.0, 0.04).view(-1, 1, 1, 1).to(device)
        x[noisy.to(device)] += sigma * _randn((len(noisy), 3, h, w), gen, device)
    return x.clamp_(0.0, 1.0), boxes


def randomise_style(images: Tensor, gen: torch.Generator, p: float) -> Tensor:
    """Redraw how a share ``p`` of the images ``(B, 3, H, W)`` in [0, 1] look, keeping what is in them: another
    renderer, light or camera draws the same part differently, and a model that must work on parts no generator of
    ours drew should not learn our renderers' look.

    Per chosen image: a random colour matrix (near identity, a channel swap, or grey; p 1/3 each), gamma
    0.6..1.6, a smooth illumination field (gains 0.6..1.4 on a 3x4 grid, bicubic), and a random 3x3 convolution
    mixed in at 0..50 % (RandConv, Xu et al., ICLR 2021: new local texture statistics, same shapes).
    """
    b, c, h, w = images.shape
    chosen = torch.nonzero(torch.rand(b, generator=gen) < p).flatten()
    if not len(chosen):
        return images
    n, device = len(chosen), images.device
    x = images[chosen.to(device)]
    kind = torch.randint(0, 3, (n,), generator=gen)
    mix = torch.eye(c).repeat(n, 1, 1) + 0.15 * torch.randn(n, c, c, generator=gen)
    swap = torch.stack([torch.eye(c)[torch.randperm(c, generator=gen)] for _ in range(n)])
    grey = torch.full((n, c, c), 1.0 / c)
    mix = torch.where((kind == 1).view(n, 1, 1), swap, torch.where((kind == 2).view(n, 1, 1), grey, mix))
    x = torch.einsum("nij,njhw->nihw", mix.to(device), x).clamp(0.0, 1.0)
    gamma = torch.exp(_uniform(gen, n, math.log(0.6), math.log(1.6))).view(n, 1, 1, 1).to(device)
    x = x.clamp_min(1e-4).pow(gamma)
    light = _uniform(gen, n * 12, 0.6, 1.4).view(n, 1, 3, 4).to(device)
    x = x * F.interpolate(light, size=(h, w), mode="bicubic", align_corners=True)
    kernels = torch.randn(n * c, c, 3, 3, generator=gen).to(device) / math.sqrt(c * 9)
    texture = F.conv2d(x.reshape(1, n * c, h, w), kernels, padding=1, groups=n).view(n, c, h, w)
    lo, hi = texture.amin(dim=(1, 2, 3), keepdim=True), texture.amax(dim=(1, 2, 3), keepdim=True)
    texture = (texture - lo) / (hi - lo).clamp_min(1e-6)
    alpha = _uniform(gen, n, 0.0, 0.5).view(n, 1, 1, 1).to(device)
    out = images.clone()
    out[chosen.to(device)] = ((1 - alpha) * x + alpha * texture).clamp(0.0, 1.0)
    return out


def augment_waveforms(waves: Tensor, gen: torch.Generator) -> Tensor:
    """``(B, 1, T)`` -> gain 0.5..2 (log-uniform), circular time shift +-25 %, white noise at 15..45 dB SNR (p 0.5)."""
    b, _, t = waves.shape
    device = waves.device
    gain = torch.exp(_uniform(gen, b, math.log(0.5), math.log(2.0))).view(b, 1, 1)
    shifts = (_uniform(gen, b, -0.25, 0.25) * t).long()
    idx = (torch.arange(t)[None] - shifts[:, None]) % t
    x = torch.gather(waves, 2, idx[:, None].to(device)) * gain.to(device)
    rms = x.pow(2).mean(dim=2, keepdim=True).sqrt().clamp_min(1e-5)
    snr_db = _uniform(gen, b, 15.0, 45.0).view(b, 1, 1)
    noisy = (torch.rand(b, generator=gen) < 0.5).view(b, 1, 1)
    noise = _randn(tuple(x.shape), gen, device) * rms * (10 ** (-snr_db / 20)).to(device)
    return torch.where(noisy.to(device), x + noise, x)


def drop_modalities(present: Tensor, p: float, gen: torch.Generator) -> Tensor:
    """Hide image and/or audio per sample (``present`` ``(B, M)``) with probability ``p`` each, always leaving one
    of them."""
    if p <= 0:
        return present
    present = present.clone()
    b = present.shape[0]
    drop = torch.rand(b, 2, generator=gen) < p
    both = drop.all(dim=1)
    keep = torch.randint(0, 2, (b,), generator=gen)  # where both were drawn, keep one at random
    drop[both, keep[both]] = False
    present[:, [modality_column("image"), modality_column("audio")]] &= ~drop
    return present


# -- loss -------------------------------------------------------------------------------------------------


def _soft_ce(logits: Tensor, target: Tensor) -> Tensor:
    return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def nominal_index(config: Any) -> int:
    """The index of ``config.cam_task``'s nominal class: the CAM's background class."""
    names = config.classes[config.cam_task]
    return names.index(config.nominal.get(config.cam_task, names[0]))


def inspector_loss(
    model: nn.Module,
    out: Any,
    labels: dict[str, Tensor],
    present: Tensor,
    cell_target: Tensor | None,
    priors: dict[str, Tensor],
    cfg: TrainConfig,
    present_physically: Tensor | None = None,
    denominator: Callable[[Tensor], Tensor] = at_least_one,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """The main loss, the auxiliary loss and every part as a float, for one batch (see the module docstring).

    Main: the tasks' cross-entropies (what serving answers). Auxiliary: deep supervision and the dense CAM.
    :func:`fit` combines them as ``2 * ((1 - λ) * aux + λ * main)`` (``λ = 0.5``: their plain sum).
    ``present`` is what the router saw (after modality dropout); ``present_physically`` what the item has
    (default: ``present``): the deep-supervision heads learn from every item that has the modality. Each masked
    sum is divided by ``denominator(its weight sum)`` (data-parallel: :meth:`DataParallel.denominator`).
    """
    config = model.config
    present_physically = present if present_physically is None else present_physically
    parts: dict[str, Tensor] = {}
    for task, logits in out.logits.items():
        y = labels[task]
        known = y >= 0
        seen = present[:, modality_column(config.task_modality.get(task, "image"))]
        n = logits.shape[1]
        onehot = F.one_hot(y.clamp_min(0), n).float()
        smooth = onehot * (1 - cfg.label_smoothing) + cfg.label_smoothing / n
        target = torch.where(seen[:, None], smooth, priors[task].expand_as(smooth))
        weight = torch.where(seen, 1.0, cfg.prior_weight) * known
        parts[task] = (_soft_ce(logits, target) * weight).sum() / denominator(known.sum())

    for task, logits in getattr(out, "aux_logits", {}).items():
        y = labels[task]
        seen = (y >= 0) & present_physically[:, modality_column(config.task_modality[task])]
        ce = F.cross_entropy(logits, y.clamp_min(0), reduction="none")
        parts[f"aux_{task}"] = cfg.aux_weight * (ce * seen).sum() / denominator(seen.sum())
    if out.cam is not None and cell_target is not None:
        parts["cam"] = cfg.cam_weight * cam_loss(out.cam, cell_target, nominal_index(config), cfg.pos_weight,
                                                 denominator)
    main = sum(v for k, v in parts.items() if k in out.logits)
    aux = sum((v for k, v in parts.items() if k not in out.logits), torch.zeros((), device=main.device))
    return main, aux, {k: float(v.detach()) for k, v in parts.items()}


# -- the loop ---------------------------------------------------------------------------------------------


def class_priors(labels: dict[str, Tensor], classes: dict[str, list[str]]) -> dict[str, Tensor]:
    """Class frequencies per task over the known labels (Laplace-smoothed)."""
    priors = {}
    for task, names in classes.items():
        y = labels[task]
        counts = torch.bincount(y[y >= 0], minlength=len(names)).float() + 1.0
        priors[task] = counts / counts.sum()
    return priors


@dataclass
class Batch:
    """One training/evaluation batch: model inputs, router mask, (crop-)labels and CAM cell targets."""

    inputs: dict[str, Tensor | None]
    present: Tensor  # (B, 3) what the router may see (after modality dropout)
    labels: dict[str, Tensor]  # class indices, -1 = no loss
    cell_target: Tensor  # (B, h, w) class per CAM cell, -1 = no loss
    physical: Tensor  # (B, 3) what the items have (and the batch carries)

    def to(self, device: torch.device) -> Batch:
        return Batch(
            {k: None if v is None else v.to(device, non_blocking=True) for k, v in self.inputs.items()},
            self.present.to(device),
            {k: v.to(device) for k, v in self.labels.items()},
            self.cell_target.to(device),
            self.physical.to(device),
        )


def random_crops(
    images: Tensor, boxes: Tensor, size: tuple[int, int], focus: float, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Cut one ``size`` crop per image: ``focus`` of them around a random labelled box, the rest anywhere.

    Returns the crops ``(B, 3, ch, cw)``, the boxes in crop coordinates ``(B, K, 4)`` (may extend past the
    crop) and, per crop, the largest fraction of a box's area that lies inside it ``(B,)`` (0 when no box).
    """
    b, _, h, w = images.shape
    ch, cw = min(size[0], h), min(size[1], w)
    valid = ~torch.isnan(boxes).any(dim=2)  # (B, K)
    centre = (boxes[..., :2] + boxes[..., 2:] / 2) * torch.tensor([w, h])  # (B, K, 2) pixels
    pick = torch.multinomial(valid.float() + 1e-9, 1, generator=gen)[:, 0]
    around = valid.any(dim=1) & (torch.rand(b, generator=gen) < focus)
    jitter = (torch.rand(b, 2, generator=gen) - 0.5) * torch.tensor([cw, ch]) * 0.7
    chosen = centre[torch.arange(b), pick].nan_to_num(0.0)
    x0 = torch.where(around, chosen[:, 0] - cw / 2 + jitter[:, 0], torch.rand(b, generator=gen) * (w - cw + 1))
    y0 = torch.where(around, chosen[:, 1] - ch / 2 + jitter[:, 1], torch.rand(b, generator=gen) * (h - ch + 1))
    x0 = x0.long().clamp(0, w - cw)
    y0 = y0.long().clamp(0, h - ch)
    crops = torch.stack([images[i, :, y0[i] : y0[i] + ch, x0[i] : x0[i] + cw] for i in range(b)])
    scale = torch.tensor([w / cw, h / ch, w / cw, h / ch])
    offset = torch.stack([x0 / w, y0 / h, torch.zeros(b), torch.zeros(b)], dim=1)[:, None]
    moved = (boxes - offset) * scale
    # share of each box inside the crop (the crop is [0, 1] x [0, 1] in its own coordinates)
    ix = (moved[..., 0] + moved[..., 2]).clamp(max=1) - moved[..., 0].clamp(min=0)
    iy = (moved[..., 1] + moved[..., 3]).clamp(max=1) - moved[..., 1].clamp(min=0)
    area = (moved[..., 2] * moved[..., 3]).clamp_min(1e-9)
    inside = (ix.clamp_min(0) * iy.clamp_min(0) / area).nan_to_num(0.0).amax(dim=1)
    return crops, moved, inside


def _batch(
    model: nn.Module,
    data: TensorData,
    index: Tensor,
    logmel: LogMel,
    gen: torch.Generator | None,
    cfg: TrainConfig,
    crop: tuple[int, int] | None = None,
    audio: bool = True,
    rows: slice | None = None,
) -> Batch:
    """Build a batch: crop (``crop`` given) and augment (``gen`` given) or clean whole frames; ``audio=False``
    leaves the audio out (an image-only batch). ``rows``: keep only these rows of the batch (a data-parallel
    process's share); the random draws are the whole batch's, so the shares of all processes make up the batch one
    process would build."""
    config = model.config
    at = index.to(data.images.device)
    images, waves = data.images[at], data.waveforms[at]
    present = data.present[index].clone()
    boxes = data.boxes[index]
    labels = {t: data.labels[t][index].clone() for t in config.classes}
    boxed = has_box(boxes)
    texts = data.texts[index] if data.texts is not None else torch.zeros(len(index), config.text_dim)
    nominal = nominal_index(config)
    image_col, audio_col, text_col = (modality_column(m) for m in ("image", "audio", "text"))
    y = labels[config.cam_task]  # the boxes locate this task's classes
    if gen is not None and cfg.synthetic_defects > 0:
        eligible = (y == nominal) & ~boxed & data.present[index, image_col]
        images, boxes, y = synthesise_defects(images, boxes, y, config.classes[config.cam_task], eligible,
                                              cfg.synthetic_defects, gen)
        labels[config.cam_task], boxed = y, has_box(boxes)
    if crop is not None and gen is not None:
        images, boxes, inside = random_crops(images, boxes, crop, cfg.crop_focus, gen)
        # the crop's own label: the defect when 30 % of a box is inside, none when nothing is, else no loss
        labels[config.cam_task] = crop_labels(y, inside, boxed, nominal)
    if gen is not None:
        x, boxes = augment_images(images, boxes, gen)
        if cfg.style_randomisation > 0:
            x = randomise_style(x, gen, cfg.style_randomisation)
        if audio:
            waves = augment_waveforms(waves, gen)
            present = drop_modalities(present, cfg.modality_dropout, gen)
        if cfg.text_dropin > 0:
            dropin = (torch.rand(len(index), generator=gen) < cfg.text_dropin) & ~present[:, text_col]
            noise = F.normalize(torch.randn(len(index), config.text_dim, generator=gen), dim=1)
            texts = torch.where(dropin[:, None], noise, texts)
            present[:, text_col] |= dropin
    else:
        x = images.float() / 255.0
    stride = model.image_encoder.stride
    grid = (x.shape[-2] // stride, x.shape[-1] // stride)
    cell_target = cam_targets(boxes, torch.where(data.present[index, image_col], y, -1), nominal, grid)
    if rows is not None:  # before the log-mel, the costliest step left
        index, x, waves, texts, present, cell_target = (t[rows] for t in (index, x, waves, texts, present, cell_target))
        labels = {task: v[rows] for task, v in labels.items()}
    image = normalize_images(x).contiguous(memory_format=torch.channels_last)  # faster convolutions on CPU
    if not audio:
        present[:, audio_col] = False
        present[:, image_col] = data.present[index, image_col]
    inputs = {"image": image, "audio": logmel(waves) if audio else None, "text": texts}
    physical = data.present[index].clone()
    physical[:, audio_col] &= audio
    return Batch(inputs, present, labels, cell_target, physical)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: TensorData, n: int = 512, batch_size: int = 32,
                          parallel: DataParallel | None = None) -> None:
    """Re-estimate every batch norm's running statistics on up to ``n`` clean whole frames and clips (data-parallel:
    each process its rows of each batch, every process taking part).

    Training on crops and augmented inputs leaves statistics that differ from what serving sees. Frozen norms (a
    pretrained backbone's frozen stages, whose weights do not train) keep their statistics.
    """
    parallel = parallel or DataParallel()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and (m.weight is None or m.weight.requires_grad)]
    if not norms or not len(data):
        return
    device = next(model.parameters()).device
    logmel = LogMel(model.config).to(data.waveforms.device)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes
    model.eval()
    for m in norms:
        m.train()
    index = torch.arange(min(n, len(data)))
    for start in range(0, len(index), batch_size):
        chunk = index[start : start + batch_size]
        if len(chunk) < max(2, parallel.world_size):
            break
        batch = _batch(model, data, chunk, logmel, None, TrainConfig(), rows=parallel.rows(len(chunk))).to(device)
        model(batch.inputs, batch.present)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def evaluate_tensors(model: nn.Module, data: TensorData, batch_size: int = 64) -> dict[str, Any]:
    """Clean-input loss-free evaluation: ``{"acc": {task: float}, "probs": {task: (N, C)}}``."""
    model.eval()
    logmel = LogMel(model.config).to(data.waveforms.device)
    device = next(model.parameters()).device
    probs: dict[str, list[Tensor]] = {t: [] for t in model.config.classes}
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            index = torch.arange(start, min(start + batch_size, len(data)))
            batch = _batch(model, data, index, logmel, None, TrainConfig()).to(device)
            out = model(batch.inputs, batch.present)
            for task, logits in out.logits.items():
                probs[task].append(torch.softmax(logits, dim=1).cpu())
    result: dict[str, Any] = {"acc": {}, "probs": {}}
    for task, chunks in probs.items():
        p = torch.cat(chunks)
        y = data.labels[task]
        known = y >= 0
        result["probs"][task] = p
        result["acc"][task] = float((p.argmax(1)[known] == y[known]).float().mean()) if known.any() else float("nan")
    return result


def task_weighting(cfg: TrainConfig) -> FixedTaskWeight | SigmoidTaskWeight:
    """The λ_t between the auxiliary and the main losses that ``cfg.task_weighting`` names."""
    if cfg.task_weighting == "fixed":
        return FixedTaskWeight(cfg.main_share)
    if cfg.task_weighting in ("sigmoid", "meta"):
        weighting = SigmoidTaskWeight(cfg.weight_steepness, cfg.weight_midpoint)
        return weighting.requires_grad_(cfg.task_weighting == "meta")
    raise ValueError(f"task_weighting must be fixed, sigmoid or meta, got {cfg.task_weighting!r}")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype ``precision`` means on ``device`` (None: plain fp32). "auto": bf16 on CUDA where
    supported, else fp16; fp32 on CPU, where chips without bf16 instructions (AVX-512 BF16, AMX) run bf16 slower.
    """
    if precision == "auto":
        if device.type != "cuda":
            return None
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {sorted(dtypes)} or auto, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs CUDA; use bf16 or fp32 on CPU")
    return dtypes[precision]


class MetaWeighting:
    """Meta-learns ``k`` and ``t0`` of a :class:`SigmoidTaskWeight` on a held-out split, by a first-order
    hypergradient.

    One SGD step with the combined loss moves the weights by ``-η · 2 ((1 - λ) g_aux + λ g_main)``; the main loss
    of a held-out batch after that step changes with ``λ`` at the rate ``dL_val/dλ ≈ -2 η ⟨g_val, g_main - g_aux⟩``
    (``g``: gradients with respect to the model's weights). ``λ_t`` follows that direction through ``k`` and
    ``t0`` (Adam on the two parameters). So λ grows while the main task's own gradient helps unseen items more
    than the auxiliary one does, and shrinks otherwise. Costs three extra backward passes per meta step.
    """

    def __init__(self, weighting: SigmoidTaskWeight, data: TensorData, cfg: TrainConfig, gen: torch.Generator):
        self.weighting, self.data, self.cfg, self.gen = weighting, data, cfg, gen
        self.opt = torch.optim.Adam(weighting.parameters(), lr=cfg.meta_lr)
        self.trace: list[dict[str, float]] = []

    def step(self, model: nn.Module, main: Tensor, aux: Tensor, progress: float, lr: float, logmel: LogMel,
             priors: dict[str, Tensor], autocast: torch.autocast) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        g_main, g_aux = _grads(main, params, retain=True), _grads(aux, params, retain=True)
        index = torch.randperm(len(self.data), generator=self.gen)[: self.cfg.batch_size]
        crop = self.cfg.crop if self.cfg.augment else None
        batch = _batch(model, self.data, index, logmel, self.gen, self.cfg, crop).to(main.device)
        with autocast:
            out = model(batch.inputs, batch.present)
            val_main, _, _ = inspector_loss(model, out, batch.labels, batch.present, batch.cell_target, priors,
                                            self.cfg, batch.physical)
        g_val = _grads(val_main, params, retain=False)
        alignment = sum(
            (v * ((0 if m is None else m) - (0 if a is None else a))).sum()
            for v, m, a in zip(g_val, g_main, g_aux, strict=True) if v is not None
        )
        d_share = -2.0 * lr * float(alignment)
        self.opt.zero_grad(set_to_none=True)
        share = self.weighting.weight(progress)
        (share * d_share).backward()
        self.opt.step()
        self.trace.append({"progress": progress, "main_share": float(share.detach()), "d_share": d_share,
                           "steepness": float(self.weighting.steepness.detach()),
                           "midpoint": float(self.weighting.midpoint.detach())})


def _grads(loss: Tensor, params: list[Tensor], retain: bool) -> tuple[Tensor | None, ...]:
    """``d loss / d params`` (None for unused ones, all None for a constant loss)."""
    if not loss.requires_grad:
        return (None,) * len(params)
    return torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)


def fit(
    model: nn.Module,
    data: TensorData,
    val: TensorData | None = None,
    cfg: TrainConfig | None = None,
    parallel: DataParallel | None = None,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data``; returns the history (per-epoch losses, val accuracy, timings).

    Deterministic for a given ``cfg.seed`` (shuffling, augmentation, dropout and initialisation all draw from
    seeded generators) on a given machine and thread count.

    Args:
        parallel: this process's place among data-parallel ones (default: alone); with several, the model's batch
            norms become :class:`~model.parallel.GlobalBatchNorm2d`. Every process returns the history of the
            whole global batches; rank 0 alone validates.
        resume: a state ``on_epoch_end`` was given: training continues after its epoch, as if never stopped.
        on_epoch_end: called after every epoch with the training state (``epoch`` done, ``step``, the model's,
            optimiser's, scheduler's, scaler's, task weighting's and the batch generator's states, ``history``),
            valid until training goes on: save it now. Returning True stops training there (no batch-norm
            re-estimation).
    """
    cfg = cfg or TrainConfig()
    parallel = parallel or DataParallel()
    if parallel.world_size > 1 and cfg.task_weighting == "meta":
        raise ValueError("task_weighting='meta' takes hypergradients on one process; it cannot run data-parallel")
    if cfg.batch_size < 2 * parallel.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} leaves some of {parallel.world_size} processes fewer than 2 "
                         "items per batch (batch norm needs 2)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    if parallel.world_size > 1:
        global_batch_norms(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    config = model.config
    if device.type == "cuda" and cfg.batches_on_device:
        data = data.to(device)
        val = val.to(device) if val is not None else None
    logmel = LogMel(config).to(data.waveforms.device)
    meta_data = None
    if cfg.task_weighting == "meta":
        n_meta = max(2 * cfg.batch_size, int(cfg.meta_fraction * len(data)))
        if len(data) - n_meta < 2:
            raise ValueError(f"task_weighting='meta' holds out {n_meta} of {len(data)} items for the hypergradient; "
                             "too few are left to train on")
        split = torch.randperm(len(data), generator=gen)
        meta_data, data = data.subset(split[:n_meta]), data.subset(split[n_meta:])
    priors = {t: p.to(device) for t, p in class_priors(data.labels, config.classes).items()}
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    steps_per_epoch = max(1, math.ceil(len(data) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_fraction * total))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    weighting = task_weighting(cfg)
    meta = MetaWeighting(weighting, meta_data, cfg, gen) if meta_data is not None else None
    dtype = autocast_dtype(device, cfg.precision)
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    model.to(memory_format=torch.channels_last)
    history: dict[str, Any] = {"epoch": [], "train_loss": [], "parts": [], "val_loss": [], "val_acc": {}, "lr": [],
                               "seconds": [], "main_share": [], "steps": []}
    step, first_epoch = 0, 0
    if resume is not None:
        step, first_epoch, history = resume["step"], resume["epoch"], resume["history"]
        model.load_state_dict(resume["model"])
        for part, state in ((opt, "optimizer"), (sched, "scheduler"), (scaler, "scaler"), (weighting, "weighting")):
            part.load_state_dict(resume[state])
        gen.set_state(resume["generator"])
        if meta is not None:
            meta.opt.load_state_dict(resume["meta"]["optimizer"])
            meta.trace = resume["meta"]["trace"]
    net = parallel.wrap(model)  # what the training steps call: DDP all-reduces the gradients in backward
    lead = parallel.rank == 0
    bar = tqdm(total=total, initial=step, desc="train", unit="batch", disable=not (cfg.progress and lead),
               dynamic_ncols=True)
    start = time.perf_counter() - (history["seconds"][-1] if history["seconds"] else 0.0)
    stopped = False
    for epoch in range(first_epoch, cfg.epochs):
        model.train()
        # dropout draws from torch's generator: seeded every epoch from the shared stream plus the rank, so each
        # process draws its own masks (as the rows of one batch do) and a resumed run draws what it would have
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)) + parallel.rank)
        cropped = cfg.augment and cfg.crop is not None and epoch < cfg.epochs - cfg.full_frame_epochs
        order = torch.randperm(len(data), generator=gen)
        # drop a last batch that would leave a process one sample: batch norm cannot train on a single one
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(data), cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2 * parallel.world_size:
            batches = batches[:-1]
        running, parts_sum, seen = 0.0, {}, 0
        for index in batches:
            # some crop batches are image-only: they skip the audio branch (half the cost of a crop step), and the
            # machine head learns to answer with the prior when it cannot hear
            image_only = cropped and torch.rand(1, generator=gen).item() < cfg.crop_image_only
            crop = cfg.crop if cropped else None
            batch = _batch(model, data, index, logmel, gen if cfg.augment else None, cfg, crop, audio=not image_only,
                           rows=parallel.rows(len(index)))
            batch = batch.to(device)
            progress = step / total
            with autocast:
                out = net(batch.inputs, batch.present)
                main, aux, parts = inspector_loss(
                    model, out, batch.labels, batch.present, batch.cell_target, priors, cfg, batch.physical,
                    parallel.denominator,
                )
            if meta is not None and step % cfg.meta_every == 0:
                meta.step(model, main, aux, progress, opt.param_groups[0]["lr"], logmel, priors, autocast)
            share = weighting.weight(progress).detach()
            loss = 2 * ((1 - share) * aux + share * main)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            share = len(index) / parallel.world_size  # the processes' losses average to the global batch's
            running += loss.item() * share
            seen += share
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * share
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / seen:.3f}")
        running, seen, *sums = parallel.all_sum([running, seen, *parts_sum.values()], device)
        parts_sum = dict(zip(parts_sum, sums, strict=True))
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(running / max(seen, 1))
        history["parts"].append({k: v / max(seen, 1) for k, v in parts_sum.items()})
        history["lr"].append(opt.param_groups[0]["lr"])
        history["steps"].append(step)
        history["main_share"].append(float(weighting.weight(step / total).detach()))
        if val is not None and len(val) and lead:
            val_loss, acc = _validate(model, val, logmel, priors, cfg)
            history["val_loss"].append(val_loss)
            for task, a in acc.items():
                history["val_acc"].setdefault(task, []).append(a)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / seen:.3f}", **{f"val_{t}": f"{a:.3f}" for t, a in acc.items()})
        history["seconds"].append(time.perf_counter() - start)
        if on_epoch_end is not None:
            state = {"epoch": epoch + 1, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                     "weighting": weighting.state_dict(), "generator": gen.get_state(),
                     "history": history,
                     "meta": {"optimizer": meta.opt.state_dict(), "trace": meta.trace} if meta is not None else None}
            if on_epoch_end(state):
                stopped = True
                break
    bar.close()
    model.to(memory_format=torch.contiguous_format).eval()
    if cfg.recalibrate_bn and not stopped:
        recalibrate_batchnorm(model, data, cfg.recalibrate_bn, cfg.batch_size, parallel)
        if val is not None and len(val) and lead:
            history["final_val_loss"], history["final_val_acc"] = _validate(model, val, logmel, priors, cfg)
    history["seconds_total"] = time.perf_counter() - start
    if meta is not None:
        history["meta_trace"] = meta.trace
    return history


def _validate(
    model: nn.Module, val: TensorData, logmel: LogMel, priors: dict[str, Tensor], cfg: TrainConfig
) -> tuple[float, dict[str, float]]:
    """Loss and accuracy per task on clean whole frames."""
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    correct: dict[str, int] = {}
    known: dict[str, int] = {}
    with torch.inference_mode():
        for start in range(0, len(val), 64):
            index = torch.arange(start, min(start + 64, len(val)))
            batch = _batch(model, val, index, logmel, None, cfg).to(device)
            out = model(batch.inputs, batch.present)
            main, aux, _ = inspector_loss(model, out, batch.labels, batch.present, batch.cell_target, priors, cfg,
                                          batch.physical)
            total += float(main + aux) * len(index)
            n += len(index)
            for task, logits in out.logits.items():
                y = batch.labels[task]
                ok = y >= 0
                correct[task] = correct.get(task, 0) + int((logits.argmax(1)[ok] == y[ok]).sum())
                known[task] = known.get(task, 0) + int(ok.sum())
    return total / max(n, 1), {t: correct[t] / known[t] if known[t] else float("nan") for t in correct}
