"""Cross-modal contrastive alignment (InfoNCE pre-training) and teacher -> student distillation.

Two optional training stages around :func:`model.train.fit`, for models shaped like
:class:`~model.factory_model.FactoryInspector` (``image_encoder`` / ``audio_encoder`` / ``text_encoder``
attributes; ``forward(inputs, present)`` with inputs by modality name, returning an object with ``.logits``, a
``{task: (B, n_classes)}`` dict):

- :func:`contrastive_pretrain` -- aligns the modalities of the same item before supervised training: each
  encoder's tokens are mean-pooled, projected by a small :class:`AlignmentHeads` into a shared space, and every
  pair of modalities present in the batch gets a symmetric :func:`~model.losses.info_nce` (row ``i`` of image,
  audio and text is one item: positives; the rest of the batch: negatives). Useful where the modalities share
  content (an operator note describing the part, a camera and a microphone on the same event). On the synthetic
  factory recordings the defect and the machine state are drawn independently, so there it can only learn
  item identity, not class structure: keep it off for that line unless measured otherwise.
- :func:`distill` -- trains a small student from a trained teacher: per task,
  ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, label)``
  (Hinton et al. 2015), the cross-entropy only where the label is known (``>= 0``), plus a dense term on the
  defect map (:func:`cam_distill_loss`, ``cam_weight``): a student trained on the part-level logits alone never
  left the class prior on whole frames. :func:`student_config` derives the narrower serving-cascade
  configuration from the teacher's.

Data is anything with ``images`` ``(N, 3, H, W)`` (uint8 or float in [0, 1]), ``waveforms`` ``(N, 1, T)`` (or
``(N, 1, n_mels, frames)`` log-mels), ``labels`` ``{task: (N,)}`` and optionally ``present`` ``(N, M)`` (columns :data:`model.config.MODALITIES`) and
``texts`` ``(N, text_dim)`` -- :class:`model.train.TensorData` fits.

Example:
    >>> teacher = FactoryInspector.from_pretrained("data/models/factory-v2")
    >>> student = FactoryInspector(student_config(teacher.config))
    >>> history = distill(teacher, student, data, DistillConfig(epochs=4))
    >>> history["loss"][0] > history["loss"][-1]
    True
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import MODALITIES, InspectorConfig, modality_column, presence_mask
from model.losses import info_nce
from model.preprocess import log_mel_batch, normalize_images
from model.train import nominal_index

# -- configuration ------------------------------------------------------------------------------------------


@dataclass
class DistillConfig:
    """Hyper-parameters of :func:`distill` and :func:`contrastive_pretrain`.

    Attributes:
        temperature: softening ``T`` of both models' logits in the KL term (the KL is scaled by ``T^2`` so its
            gradients keep their size whatever ``T``).
        alpha: share of the KL term; ``1 - alpha`` goes to the hard-label cross-entropy.
        task_weights: per-task loss weight (default 1 for every task of the student's logits).
        info_nce_temperature: temperature of :func:`~model.losses.info_nce` in :func:`contrastive_pretrain`.
        align_dim: width of the shared space of :class:`AlignmentHeads`.
        recalibrate_bn: after :func:`contrastive_pretrain`, re-estimate the encoders' batch-norm statistics over
            the data with the final weights (the running averages lag weights that moved fast).
        cam_weight: weight of the dense term of :func:`distill`: per-cell KL between the teacher's and the
            student's defect maps (CAM), so the student learns *where* the teacher sees defects, not only the
            part's class (0: logits only).
        cam_pos_weight: weight of the cells the teacher calls defective (most likely class not the nominal one).
    """

    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 4.0
    alpha: float = 0.7
    task_weights: dict[str, float] | None = None
    info_nce_temperature: float = 0.1
    align_dim: int = 64
    recalibrate_bn: bool = True
    cam_weight: float = 1.0
    cam_pos_weight: float = 3.0
    seed: int = 0
    threads: int | None = None
    device: str | None = None  # None: cuda when available, else cpu


def student_config(teacher: InspectorConfig, width: float = 0.5, d_model: int | None = None) -> InspectorConfig:
    """The teacher's configuration with every image/audio stage ``width`` times as wide (at least 4 channels)
    and ``d_model`` (default: half the teacher's, rounded to a multiple of ``n_heads``); same preprocessing,
    classes and tasks, so the student reads the same tensors and answers the same questions."""
    data = teacher.to_dict()
    data["image_channels"] = [max(4, int(round(c * width))) for c in teacher.image_channels]
    data["audio_channels"] = [max(4, int(round(c * width))) for c in teacher.audio_channels]
    if d_model is None:
        d_model = max(teacher.n_heads, int(round(teacher.d_model * width / teacher.n_heads)) * teacher.n_heads)
    data["d_model"] = d_model
    data["name"] = f"{teacher.name}-student"
    data["version"] = f"{teacher.version}-student"
    return InspectorConfig.from_dict(data)


# -- helpers ------------------------------------------------------------------------------------------------


def _device(cfg: DistillConfig) -> torch.device:
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _inputs(data: Any, index: Tensor, config: InspectorConfig,
            device: torch.device) -> tuple[dict[str, Tensor | None], Tensor]:
    """Model inputs of the rows ``index`` by modality (normalised images, log-mels, text embeddings) and their
    ``(B, M)`` presence (image and audio where ``data`` has none)."""
    images = normalize_images(data.images[index].to(device))
    waves = data.waveforms[index].to(device)
    audio = waves if waves.ndim == 4 else log_mel_batch(waves.float(), config)
    n = len(index)
    present = getattr(data, "present", None)
    present = presence_mask({"image": True, "audio": True}, n) if present is None else present[index]
    texts = getattr(data, "texts", None)
    return {"image": images, "audio": audio, "text": None if texts is None else texts[index].to(device)}, present.to(device)


def _pooled(encoder: nn.Module, x: Tensor) -> Tensor:
    """Mean of an encoder's tokens ``(B, n, d) -> (B, d)`` (the image encoder also returns its CAM)."""
    out = encoder(x)
    tokens = out[0] if isinstance(out, tuple) else out
    return tokens.mean(dim=1)


def _loader(n: int, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    order = torch.randperm(n, generator=gen)
    return [order[s : s + batch_size] for s in range(0, n, batch_size)]


# -- contrastive alignment ----------------------------------------------------------------------------------


class AlignmentHeads(nn.Module):
    """One ``Linear`` per modality from its pooled encoder tokens into a shared ``dim``-wide space.

    Example:
        >>> heads = AlignmentHeads({"image": 128, "audio": 128}, dim=64)
        >>> heads("image", torch.randn(4, 128)).shape
        torch.Size([4, 64])
    """

    def __init__(self, dims: dict[str, int], dim: int = 64):
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, dim)) for m, d in dims.items()})

    def forward(self, modality: str, pooled: Tensor) -> Tensor:
        return self.proj[modality](pooled)


def modality_embeddings(model: nn.Module, heads: AlignmentHeads, inputs: dict[str, Tensor | None]) -> dict[str, Tensor]:
    """``{modality: (B, dim)}`` for every modality given in ``inputs`` that has an encoder and a head."""
    out = {}
    for m in MODALITIES:
        x = inputs.get(m)
        encoder = getattr(model, f"{m}_encoder", None)
        if x is not None and encoder is not None and m in heads.proj:
            out[m] = heads(m, _pooled(encoder, x))
    return out


def alignment_loss(embeddings: dict[str, Tensor], present: Tensor, temperature: float = 0.1) -> Tensor:
    """Mean symmetric InfoNCE over every pair of modalities, on the rows where both are present.

    A pair with fewer than two such rows is skipped (no negatives); returns 0 (with a graph) when none is left.
    """
    losses = []
    names = list(embeddings)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rows = present[:, modality_column(a)] & present[:, modality_column(b)]
            if int(rows.sum()) >= 2:
                losses.append(info_nce(embeddings[a][rows], embeddings[b][rows], temperature))
    if not losses:
        return sum(e.sum() * 0.0 for e in embeddings.values())  # type: ignore[return-value]
    return torch.stack(losses).mean()


def contrastive_pretrain(model: nn.Module, data: Any, cfg: DistillConfig | None = None,
                         heads: AlignmentHeads | None = None) -> dict[str, Any]:
    """InfoNCE pre-training of ``model``'s encoders on paired items (see the module docstring).

    Trains the encoders (and ``heads``, created when None) in place; the router and task heads are left alone.
    Returns ``{"loss": [per-epoch mean], "heads": AlignmentHeads, "seconds": float}``.
    """
    cfg = cfg or DistillConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg)
    config: InspectorConfig = model.config
    encoders = {m: getattr(model, f"{m}_encoder", None) for m in MODALITIES}
    if heads is None:
        heads = AlignmentHeads({m: e.out_dim for m, e in encoders.items() if e is not None}, cfg.align_dim)
    model.to(device).train()
    heads.to(device).train()
    params = [p for e in encoders.values() if e is not None for p in e.parameters()] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict[str, Any] = {"loss": []}
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        total, count = 0.0, 0
        for index in _loader(len(data.images), cfg.batch_size, gen):
            if len(index) < 2:
                continue
            inputs, present = _inputs(data, index, config, device)
            loss = alignment_loss(modality_embeddings(model, heads, inputs), present, cfg.info_nce_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(index), count + len(index)
        history["loss"].append(total / max(count, 1))
    if cfg.recalibrate_bn:
        recalibrate_encoders(model, data, cfg, device)
    model.eval()
    heads.eval()
    history["heads"] = heads
    history["seconds"] = time.perf_counter() - start
    return history


@torch.no_grad()
def recalibrate_encoders(model: nn.Module, data: Any, cfg: DistillConfig, device: torch.device,
                         max_items: int = 512) -> None:
    """Re-estimate every batch norm of the encoders as the plain average over (up to ``max_items``) items."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    n = min(len(data.images), max_items)
    for s in range(0, n, cfg.batch_size):
        index = torch.arange(s, min(n, s + cfg.batch_size))
        if len(index) < 2:
            continue
        inputs, _ = _inputs(data, index, model.config, device)
        for m in MODALITIES:
            encoder = getattr(model, f"{m}_encoder", None)
            if inputs.get(m) is not None and encoder is not None:
                encoder(inputs[m])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def evaluate_alignment(model: nn.Module, heads: AlignmentHeads, data: Any, cfg: DistillConfig | None = None) -> float:
    """The alignment loss over ``data`` in eval mode, batch by batch (mean over items)."""
    cfg = cfg or DistillConfig()
    device = _device(cfg)
    model.to(device).eval()
    heads.to(device).eval()
    total, count = 0.0, 0
    n = len(data.images)
    for s in range(0, n, cfg.batch_size):
        index = torch.arange(s, min(n, s + cfg.batch_size))
        if len(index) < 2:
            continue
        inputs, present = _inputs(data, index, model.config, device)
        loss = alignment_loss(modality_embeddings(model, heads, inputs), present, cfg.info_nce_temperature)
        total, count = total + float(loss) * len(index), count + len(index)
    return total / max(count, 1)


# -- distillation -------------------------------------------------------------------------------------------


def distill_loss(student: dict[str, Tensor], teacher: dict[str, Tensor], labels: dict[str, Tensor],
                 temperature: float = 4.0, alpha: float = 0.7,
                 task_weights: dict[str, float] | None = None) -> tuple[Tensor, dict[str, float]]:
    """Sum over tasks of ``w_t * (alpha * T^2 * KL + (1 - alpha) * CE)``; also the parts (floats) for logging.

    Args:
        student / teacher: ``{task: (B, n_classes)}`` logits (teacher's detached).
        labels: ``{task: (B,)}`` class indices, ``-1`` where unknown (no CE there).
    """
    total = None
    parts: dict[str, float] = {}
    t = float(temperature)
    for task, s_logits in student.items():
        w = 1.0 if task_weights is None else float(task_weights.get(task, 1.0))
        kl = F.kl_div(F.log_softmax(s_logits / t, dim=-1), F.log_softmax(teacher[task].detach() / t, dim=-1),
                      reduction="batchmean", log_target=True) * (t * t)
        y = labels.get(task)
        known = y >= 0 if y is not None else None
        ce = F.cross_entropy(s_logits[known], y[known]) if known is not None and known.any() else s_logits.sum() * 0
        loss = w * (alpha * kl + (1 - alpha) * ce)
        total = loss if total is None else total + loss
        parts[f"{task}_kl"], parts[f"{task}_ce"] = float(kl.detach()), float(ce.detach())
    assert total is not None, "the student returned no logits"
    return total, parts


def cam_distill_loss(student: Tensor, teacher: Tensor, nominal: int, temperature: float = 4.0,
                     pos_weight: float = 3.0) -> Tensor:
    """Dense distillation ``()``: per cell ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the
    defect classes, averaged over the ``(B, h, w)`` cells of the CAM logits ``(B, C, h, w)``; the cells the
    teacher calls defective (its most likely class is not the nominal one) weigh ``pos_weight``."""
    t = float(temperature)
    target = F.log_softmax(teacher.detach() / t, dim=1)
    kl = (target.exp() * (target - F.log_softmax(student / t, dim=1))).sum(dim=1) * (t * t)  # (B, h, w)
    weight = torch.where(teacher.detach().argmax(dim=1) != nominal, pos_weight, 1.0)
    return (kl * weight).sum() / weight.sum()


@torch.no_grad()
def agreement(teacher: nn.Module, student: nn.Module, data: Any, cfg: DistillConfig | None = None) -> dict[str, float]:
    """How closely the student follows the teacher on ``data`` (eval mode): per task the mean KL(teacher||student)
    at ``T = 1`` (``{task}_kl``), top-1 agreement (``{task}_agree``) and accuracy on known labels of each model
    (``{task}_student_acc``, ``{task}_teacher_acc``)."""
    cfg = cfg or DistillConfig()
    device = _device(cfg)
    teacher.to(device).eval()
    student.to(device).eval()
    sums: dict[str, float] = {}
    n = len(data.images)
    known: dict[str, int] = {}
    for s in range(0, n, cfg.batch_size):
        index = torch.arange(s, min(n, s + cfg.batch_size))
        inputs, present = _inputs(data, index, student.config, device)
        t_out, s_out = teacher(inputs, present).logits, student(inputs, present).logits
        for task, s_logits in s_out.items():
            t_logits = t_out[task]
            kl = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), reduction="sum", log_target=True)
            sums[f"{task}_kl"] = sums.get(f"{task}_kl", 0.0) + float(kl)
            sums[f"{task}_agree"] = sums.get(f"{task}_agree", 0.0) + float((s_logits.argmax(-1) == t_logits.argmax(-1)).sum())
            y = data.labels[task][index].to(device)
            ok = y >= 0
            known[task] = known.get(task, 0) + int(ok.sum())
            sums[f"{task}_student_acc"] = sums.get(f"{task}_student_acc", 0.0) + float((s_logits.argmax(-1) == y)[ok].sum())
            sums[f"{task}_teacher_acc"] = sums.get(f"{task}_teacher_acc", 0.0) + float((t_logits.argmax(-1) == y)[ok].sum())
    out = {}
    for key, value in sums.items():
        task = key.rsplit("_", 2)[0] if key.endswith("_acc") else key.rsplit("_", 1)[0]
        out[key] = value / max(known[task] if key.endswith("_acc") else n, 1)
    return out


def distill(teacher: nn.Module, student: nn.Module, data: Any, cfg: DistillConfig | None = None,
            val: Any | None = None) -> dict[str, Any]:
    """Train ``student`` in place to follow ``teacher`` (frozen, eval mode) on ``data``.

    AdamW with a cosine schedule; each batch goes through both models with the same inputs and presence
    (the student's preprocessing must match the teacher's: same image size, rate, clip length and mels).
    Returns ``{"loss": [per-epoch mean], "parts": [per-epoch dict], "val": [agreement per epoch] (with val),
    "seconds": float}``; the student is left in eval mode.
    """
    cfg = cfg or DistillConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    s_cfg, t_cfg = student.config, teacher.config
    for key in ("image_size", "sample_rate", "clip_seconds", "n_fft", "hop_length", "n_mels", "f_min", "f_max"):
        if getattr(s_cfg, key) != getattr(t_cfg, key):
            raise ValueError(f"student and teacher preprocess differently: {key} {getattr(s_cfg, key)} "
                             f"!= {getattr(t_cfg, key)}")
    device = _device(cfg)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.to(device).train()
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(data.images)
    steps = max(1, cfg.epochs * math.ceil(n / cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict[str, Any] = {"loss": [], "parts": [], "val": []}
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        total, count, parts_sum = 0.0, 0, {}
        student.train()
        for index in _loader(n, cfg.batch_size, gen):
            if len(index) < 2:  # batch norm needs two rows
                continue
            inputs, present = _inputs(data, index, t_cfg, device)
            with torch.no_grad():
                t_out = teacher(inputs, present)
            s_out = student(inputs, present)
            labels = {k: v[index].to(device) for k, v in data.labels.items()}
            loss, parts = distill_loss(s_out.logits, t_out.logits, labels, cfg.temperature, cfg.alpha,
                                       cfg.task_weights)
            if cfg.cam_weight > 0 and s_out.cam is not None and t_out.cam is not None:
                cam = cam_distill_loss(s_out.cam, t_out.cam, nominal_index(t_cfg), cfg.temperature,
                                       cfg.cam_pos_weight)
                loss = loss + cfg.cam_weight * cam
                parts["cam_kl"] = float(cam.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + float(loss.detach()) * len(index), count + len(index)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * len(index)
        history["loss"].append(total / max(count, 1))
        history["parts"].append({k: v / max(count, 1) for k, v in parts_sum.items()})
        if val is not None:
            history["val"].append(agreement(teacher, student, val, cfg))
    student.eval()
    history["seconds"] = time.perf_counter() - start
    return history
