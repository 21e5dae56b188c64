"""Few-shot adaptation to a new product type with LoRA (``peft``).

A trained :class:`~model.factory_model.FactoryInspector` is frozen and low-rank adapters (``W + B A``, rank
``r``, scaled by ``lora_alpha / r``) are added to the dense ``Conv2d`` and ``Linear`` layers of the image encoder
and the task heads; only the adapters train, on a few labelled parts of the new product. Afterwards
:func:`merge` folds them into the weights, giving a plain ``FactoryInspector`` of the original architecture and
cost (``save_pretrained`` works, ``Predictor`` serves it).

Target layers are found **by type**, not by name (:func:`lora_targets`): every ``nn.Conv2d`` / ``nn.Linear``
under the chosen sub-modules, except grouped (depthwise) convolutions, whose LoRA ``peft`` cannot merge. So the
code does not depend on how the image encoder is laid out.

Batch norms keep their trained statistics (the model runs in eval mode while adapting: 40 parts are too few to
re-estimate them) and dropout is off.

Example:
    >>> model = FactoryInspector.from_pretrained("data/models/factory-v2")
    >>> lora = add_lora(model, AdaptConfig(r=16, lora_alpha=32))
    >>> trainable_parameters(lora)            # (trainable, total)
    (41_000, 790_000)
    >>> adapt(lora, few_shot_data, AdaptConfig(epochs=30))
    >>> adjust_prior(lora, "defect", few_shot_counts, line_counts)   # balanced few-shot set -> the line's mix
    >>> adapted = merge(lora)                 # a FactoryInspector again
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.preprocess import log_mel_batch, normalize_images
from model.train import cam_loss, cam_targets, nominal_index


@dataclass
class AdaptConfig:
    """LoRA and few-shot training settings.

    Attributes:
        r / lora_alpha / lora_dropout: LoRA rank, scale numerator (``scale = lora_alpha / r``) and dropout.
        modules: attribute names of the sub-modules whose dense ``Conv2d`` / ``Linear`` layers get adapters.
        tasks: tasks whose cross-entropy trains the adapters (default: the model's ``primary_task``).
        flips: random horizontal/vertical flips of the few-shot images (the labels do not depend on them).
        cam_weight: weight of the dense CAM loss (as in :mod:`model.train`) when the data has defect ``boxes``
            ``(N, K, 4)`` normalised; 0 trains the adapters on the image-level labels only.
        pos_weight: weight of the defect cells in that loss.
    """

    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    modules: tuple[str, ...] = ("image_encoder", "heads")
    tasks: tuple[str, ...] | None = None
    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.0
    flips: bool = True
    cam_weight: float = 1.0
    pos_weight: float = 3.0
    label_smoothing: float = 0.05
    seed: int = 0
    threads: int | None = None
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def lora_targets(model: nn.Module, modules: tuple[str, ...] = ("image_encoder", "heads")) -> list[str]:
    """Full names of the ``nn.Conv2d`` (``groups == 1``) and ``nn.Linear`` layers under ``modules``."""
    names = []
    for prefix in modules:
        root = getattr(model, prefix, None)
        if root is None:
            raise ValueError(f"{type(model).__name__} has no sub-module {prefix!r}")
        for name, module in root.named_modules():
            if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
                names.append(f"{prefix}.{name}" if name else prefix)
    if not names:
        raise ValueError(f"no Conv2d/Linear layer under {modules}")
    return names


def add_lora(model: nn.Module, cfg: AdaptConfig | None = None) -> nn.Module:
    """Wrap ``model`` (modified in place) in a ``peft`` model with LoRA adapters on :func:`lora_targets`;
    every other parameter is frozen."""
    from peft import LoraConfig, get_peft_model

    cfg = cfg or AdaptConfig()
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                        target_modules=lora_targets(model, cfg.modules))
    return get_peft_model(model, config)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def merge(peft_model: nn.Module) -> nn.Module:
    """Fold the adapters into the weights and return the plain base model (eval mode)."""
    return peft_model.merge_and_unload().eval()


@torch.no_grad()
def adjust_prior(model: nn.Module, task: str, trained_on: Tensor, deployed: Tensor) -> Tensor:
    """Logit adjustment for a shift of class prior (Menon et al., 2021), in place: adds
    ``log(deployed) - log(trained_on)`` (both normalised) to the output bias of ``task``'s head, so a model adapted
    on a balanced few-shot set answers with the class mix of the line it serves. Works on a ``peft`` model (before
    :func:`merge`, which keeps it) or a plain one; returns the shift ``(n_classes,)``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    last = base.heads[task].net[-1]
    last = getattr(last, "base_layer", last)  # under a LoRA wrapper
    shift = (deployed / deployed.sum()).log() - (trained_on / trained_on.sum()).log()
    last.bias += shift.to(last.bias)
    return shift


def _inputs(data: Any, index: Tensor, config: Any, device: torch.device) -> tuple[dict[str, Tensor | None], Tensor | None]:
    """The rows ``index`` as model inputs by modality (normalised images, log-mels) and their ``(B, M)`` presence
    (None: as given)."""
    images = normalize_images(data.images[index].to(device))
    waves = getattr(data, "waveforms", None)
    audio = None
    if waves is not None:
        waves = waves[index].to(device)
        audio = waves if waves.ndim == 4 else log_mel_batch(waves.float(), config)
    present = getattr(data, "present", None)
    present = None if present is None else present[index].to(device)
    return {"image": images, "audio": audio}, present


def adapt(model: nn.Module, data: Any, cfg: AdaptConfig | None = None) -> dict[str, Any]:
    """Train the trainable (LoRA) parameters of ``model`` on ``data`` (``images`` uint8, optional
    ``waveforms``/``present``, ``labels``); eval mode throughout (frozen batch-norm statistics, no dropout).

    Returns ``{"loss": [per-epoch mean], "seconds": float}``.
    """
    cfg = cfg or AdaptConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    tasks = cfg.tasks or (config.primary_task,)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: call add_lora first")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(data.images)
    steps = max(1, cfg.epochs * math.ceil(n / cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    use_cam = cfg.cam_weight > 0 and getattr(data, "boxes", None) is not None and config.cam_task in tasks
    history: dict[str, Any] = {"loss": []}
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(0, n, cfg.batch_size):
            index = order[s : s + cfg.batch_size]
            inputs, present = _inputs(data, index, config, device)
            cells = _cell_targets(base, data, index, inputs["image"].shape[-2:], use_cam)
            if cfg.flips:
                fx = torch.rand(len(index), generator=gen) < 0.5
                fy = torch.rand(len(index), generator=gen) < 0.5
                inputs["image"] = _flip(inputs["image"], fx.to(device), fy.to(device))
                cells = None if cells is None else _flip(cells, fx, fy)
            out = model(inputs, present)
            loss = sum(
                F.cross_entropy(out.logits[t], data.labels[t][index].to(device), label_smoothing=cfg.label_smoothing,
                                ignore_index=-1)
                for t in tasks
            )
            if cells is not None and out.cam is not None:
                cam = cam_loss(out.cam, cells.to(device), nominal_index(config), cfg.pos_weight)
                loss = loss + cfg.cam_weight * cam
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(index)
        history["loss"].append(total / n)
    history["seconds"] = time.perf_counter() - start
    return history


def _flip(x: Tensor, horizontal: Tensor, vertical: Tensor) -> Tensor:
    """Flip the rows of ``x`` ``(B, ..., H, W)`` where ``horizontal`` / ``vertical`` ``(B,)`` say so."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    x = torch.where(horizontal.view(shape), x.flip(-1), x)
    return torch.where(vertical.view(shape), x.flip(-2), x)


def _cell_targets(base: nn.Module, data: Any, index: Tensor, size: torch.Size, use_cam: bool) -> Tensor | None:
    """CAM cell classes ``(B, h, w)`` for the batch from ``data.boxes`` (None when not used)."""
    if not use_cam:
        return None
    stride = base.image_encoder.stride
    grid = (size[0] // stride, size[1] // stride)
    labels = data.labels[base.config.cam_task][index]
    return cam_targets(data.boxes[index], labels, nominal_index(base.config), grid)


@torch.no_grad()
def predict(model: nn.Module, data: Any, task: str, batch_size: int = 32, device: str | None = None) -> Tensor:
    """Class indices ``(N,)`` for ``task`` (eval mode)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = []
    for s in range(0, len(data.images), batch_size):
        index = torch.arange(s, min(len(data.images), s + batch_size))
        out.append(model(*_inputs(data, index, base.config, dev)).logits[task].argmax(-1).cpu())
    return torch.cat(out)
