"""Dynamic depth: an encoder whose samples leave the batch as soon as a learned gate says they are done.

:class:`GatedEncoder` is a small CNN on log-mel spectrograms: a stride-4 stem, then ``num_blocks`` (``L``)
residual inverted-bottleneck blocks of constant width and resolution. After every ``exit_every`` blocks sits an
**exit**: a tiny head on the pooled feature map (mean and max over frequency and time) that gives

- class logits (an early-exit classifier, trained on every sample: deep supervision), and
- a halting probability ``h_k = sigmoid(gate_k)``: "this exit's answer is good enough, stop here".

The last exit always halts (``h_K = 1``).

**Training** (:func:`depth_loss`, :func:`fit_depth`). The gates define a halting distribution over the ``K``
exits, as in ACT / PonderNet: ``p_k = h_k * prod_{j<k} (1 - h_j)``. The loss per sample is

    mean_k CE_k  +  sum_k p_k * (CE_k.detach() + lambda * depth_k / L)

The first term (deep supervision) trains the backbone and every exit classifier on every sample. The second is
the expected cost of stopping where the gates say: the task loss of the exit stopped at (detached, so it trains
only the gates) plus ``lambda`` times the fraction of blocks executed to get there. It is differentiable in the
gates, so they learn to stop where going deeper would not lower the loss by more than ``lambda`` per unit of
depth. ``lambda`` (``DepthConfig.compute_weight``) sets the trade-off during training; the inference threshold
moves along it afterwards. With ``gate_fraction > 0``, :func:`fit_depth` holds out that share of the training
data, trains backbone and classifiers on the rest, then trains only the gates on the held-out share (where the
classifiers' mistakes look like test-time mistakes, not memorised training labels).

**Inference** (:meth:`GatedEncoder.forward`). The batch runs block by block; at each exit the samples whose
halting probability exceeds ``threshold`` leave: their logits are written out, and the remaining active rows
are gathered (``index_select``) so the following blocks run on fewer rows and the compute really shrinks. No
loop over samples: one loop over blocks, one gather per exit where someone left. ``threshold <= 0`` stops every
sample at the first exit; ``threshold >= 1`` never stops early (exactly the full-depth model). In eval mode
every sample's result is independent of which other samples share its batch (batch norm uses running
statistics).

Cost (``C`` channels, ``e`` expansion, ``P`` positions after the stride-8 stem): a block is ``P * (2 * e * C^2 +
9 * e * C)`` multiply-adds (defaults: 285 k per clip of 101 frames); the stem about 1 M, a fifth of the whole
12-block encoder, so skipping blocks pays; each exit head ``O(P * C)`` for the pooling.

Example:
    >>> enc = GatedEncoder(DepthConfig(n_mels=64, channels=24, num_blocks=12, n_classes=3)).eval()
    >>> out = enc(torch.randn(16, 1, 64, 101) * 10 - 40, threshold=0.5)
    >>> out.logits.shape, out.exit_block.shape, 0.0 <= out.skip_rate <= 1.0
    (torch.Size([16, 3]), torch.Size([16]), True)
    >>> full = enc(torch.randn(16, 1, 64, 101), threshold=1.0)   # never exits early: full depth
    >>> bool((full.exit_block == 12).all()), full.skip_rate
    (True, 0.0)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from model.encoders import ConvBNAct, fused_copy
from model.pretrained import PretrainedModel, SavedConfig


@dataclass
class DepthConfig(SavedConfig):
    """Shape and training trade-off of a :class:`GatedEncoder`.

    Attributes:
        n_mels: mel bands of the input ``(B, 1, n_mels, frames)``.
        stem_channels: widths of the stem's first stride-2 convolutions; a last one outputs ``C``, so the stem
            has ``len(stem_channels) + 1`` stride-2 stages (default 3: stride 8).
        channels: width ``C`` of the residual blocks.
        expansion: hidden width of a block is ``expansion * C`` (1x1 expand, 3x3 depthwise, 1x1 project).
        num_blocks: ``L``, the residual blocks.
        exit_every: an exit after every ``exit_every`` blocks (``L`` must be a multiple); ``K = L / exit_every``.
        head_dim: hidden width of each exit head.
        n_classes: classes of the task.
        classes: optional class names (saved with the weights).
        compute_weight: ``lambda``, the training cost of running the whole depth, in units of cross-entropy.
        dropout: dropout in the exit heads (training only).
    """

    n_mels: int = 64
    stem_channels: tuple[int, ...] = (8, 16)
    channels: int = 24
    expansion: int = 2
    num_blocks: int = 12
    exit_every: int = 1
    head_dim: int = 64
    n_classes: int = 3
    classes: list[str] = field(default_factory=list)
    compute_weight: float = 0.2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.exit_every < 1 or self.num_blocks % self.exit_every:
            raise ValueError(f"num_blocks {self.num_blocks} must be a positive multiple of exit_every "
                             f"{self.exit_every}")
        if self.classes and len(self.classes) != self.n_classes:
            raise ValueError(f"{len(self.classes)} class names for n_classes {self.n_classes}")
        self.classes = list(self.classes)
        self.stem_channels = tuple(int(c) for c in self.stem_channels)  # JSON gives lists

    @property
    def exit_blocks(self) -> list[int]:
        """Blocks after which an exit sits, 1-based: ``[exit_every, 2 * exit_every, ..., L]``."""
        return list(range(self.exit_every, self.num_blocks + 1, self.exit_every))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stem_channels"] = list(self.stem_channels)
        return data


@dataclass
class DepthOutput:
    """Result of :meth:`GatedEncoder.forward`.

    Attributes:
        logits: ``(B, n_classes)`` each sample's logits from the exit it left at.
        exit_block: ``(B,)`` int64, blocks executed by each sample (1..L).
        skip_rate: fraction of the ``B * L`` block evaluations not executed, ``1 - exit_block.sum() / (B * L)``.
    """

    logits: Tensor
    exit_block: Tensor
    skip_rate: float


@dataclass
class AllExits:
    """Result of :meth:`GatedEncoder.forward_all` (every sample through every block).

    Attributes:
        logits: ``(K, B, n_classes)`` each exit's logits.
        gate_logits: ``(K, B)`` halting logits ``g_k`` (``h_k = sigmoid(g_k)``; the last one is ignored: the
            last exit always halts).
        hidden: ``(K, B, head_dim)`` the exit heads' hidden features (what the gates read, with the logits).
    """

    logits: Tensor
    gate_logits: Tensor
    hidden: Tensor | None = None


class Block(nn.Module):
    """Inverted-bottleneck residual block, ``(B, C, F, T) -> (B, C, F, T)``: ``relu(x + project(dw(expand(x))))``.

    ``expand``: 1x1 ``ConvBNAct`` to ``e * C``; ``dw``: 3x3 depthwise ``ConvBNAct``; ``project``: 1x1
    ``ConvBNAct`` back to ``C`` without activation.
    """

    def __init__(self, channels: int, expansion: int = 2):
        super().__init__()
        hidden = channels * expansion
        self.expand = ConvBNAct(channels, hidden, kernel=1)
        self.dw = ConvBNAct(hidden, hidden, kernel=3, groups=hidden)
        self.project = ConvBNAct(hidden, channels, kernel=1, act=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.project(self.dw(self.expand(x))))


class ExitHead(nn.Module):
    """Pooled features -> class logits and a halting logit.

    ``(B, C, F, T)`` -> ``[mean, max]`` over ``(F, T)`` ``(B, 2C)`` -> ``Linear + ReLU`` ``(B, head_dim)`` ->
    logits ``(B, n_classes)`` (``Linear``) and gate logit ``(B,)`` (``Linear`` on the hidden features and the
    class probabilities: how sure the exit is, and of what).
    """

    def __init__(self, channels: int, head_dim: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.hidden = nn.Linear(2 * channels, head_dim)
        self.drop = nn.Dropout(dropout)
        self.classify = nn.Linear(head_dim, n_classes)
        self.gate = nn.Linear(head_dim + n_classes, 1)

    def classifier(self, fmap: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, F, T)`` -> hidden features ``(B, head_dim)`` and class logits ``(B, n_classes)``."""
        pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
        hidden = self.drop(F.relu(self.hidden(pooled)))
        return hidden, self.classify(hidden)

    def gate_logit(self, hidden: Tensor, logits: Tensor) -> Tensor:
        """Hidden features ``(B, head_dim)`` and class logits ``(B, n_classes)`` -> halting logit ``(B,)``."""
        return self.gate(torch.cat([hidden, torch.softmax(logits, dim=1)], dim=1)).squeeze(1)

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, F, T)`` -> class logits ``(B, n_classes)``, halting logit ``(B,)``."""
        hidden, logits = self.classifier(fmap)
        return logits, self.gate_logit(hidden, logits)


class GatedEncoder(PretrainedModel, nn.Module):
    """Log-mel ``(B, 1, n_mels, frames)`` -> class logits, with per-sample early exit (see the module docstring).

    ``save_pretrained`` / ``from_pretrained`` come from :class:`~model.pretrained.PretrainedModel`.

    Parameters:
        stem: stride-2 3x3 ``ConvBNAct`` (1 -> ``*stem_channels`` -> ``C``): ``(B, C, n_mels/s, frames/s)``,
            ``s = 2 ** (len(stem_channels) + 1)``.
        blocks: ``L`` :class:`Block`.
        exits: ``K`` :class:`ExitHead`, exit ``k`` after block ``config.exit_blocks[k]``.
    """

    model_type = "gated-encoder"
    config_class = DepthConfig

    def __init__(self, config: DepthConfig):
        super().__init__()
        self.config = config
        c = config.channels
        widths = (1, *config.stem_channels, c)
        self.stem = nn.Sequential(*[ConvBNAct(a, b, stride=2) for a, b in zip(widths[:-1], widths[1:])])
        self.blocks = nn.ModuleList(Block(c, config.expansion) for _ in range(config.num_blocks))
        self.exits = nn.ModuleList(ExitHead(c, config.head_dim, config.n_classes, config.dropout)
                                   for _ in config.exit_blocks)
        self._fused = False

    def features(self, mels: Tensor) -> Tensor:
        """``(B, 1, n_mels, frames)`` log-mel dB -> stem output ``(B, C, n_mels/s, frames/s)``.

        The log-mel is normalised per clip (minus its mean, divided by 20 dB): gain does not matter.
        """
        return self.stem((mels - mels.mean(dim=(2, 3), keepdim=True)) / 20.0)

    def forward_all(self, mels: Tensor) -> AllExits:
        """Every sample through every block: ``(B, 1, n_mels, frames)`` -> per-exit logits ``(K, B, n_classes)``,
        gate logits ``(K, B)`` and the exit heads' hidden features ``(K, B, head_dim)``. What training uses."""
        h = self.features(mels)
        hiddens, logits, gates = [], [], []
        exit_at = {b: k for k, b in enumerate(self.config.exit_blocks)}
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i + 1 in exit_at:
                head = self.exits[exit_at[i + 1]]
                hidden, lg = head.classifier(h)
                hiddens.append(hidden)
                logits.append(lg)
                gates.append(head.gate_logit(hidden, lg))
        return AllExits(torch.stack(logits), torch.stack(gates), torch.stack(hiddens))

    def forward_full(self, mels: Tensor) -> Tensor:
        """The plain full-depth encoder, no gates: ``(B, 1, n_mels, frames)`` -> the last exit's logits
        ``(B, n_classes)``. The baseline the early exits are measured against."""
        h = self.features(mels)
        for block in self.blocks:
            h = block(h)
        return self.exits[-1].classifier(h)[1]

    def forward(self, mels: Tensor, threshold: float = 0.5) -> DepthOutput:
        """Batched early exit: ``(B, 1, n_mels, frames)`` -> :class:`DepthOutput`.

        At each exit, the active samples with ``sigmoid(gate) > threshold`` leave the batch (their logits are
        final) and the rest are gathered into a smaller batch for the next blocks. ``threshold <= 0``: all
        leave at the first exit; ``threshold >= 1``: none leaves before the last block.
        """
        cfg = self.config
        b = mels.shape[0]
        h = self.features(mels)
        out = h.new_empty(b, cfg.n_classes)
        exit_block = torch.full((b,), cfg.num_blocks, dtype=torch.long, device=mels.device)
        active = torch.arange(b, device=mels.device)  # original row of each active sample
        exit_at = {blk: k for k, blk in enumerate(cfg.exit_blocks)}
        for i, block in enumerate(self.blocks):
            h = block(h)
            k = exit_at.get(i + 1)
            if k is None:
                continue
            logits, gate = self.exits[k](h)
            if i + 1 == cfg.num_blocks:
                out[active] = logits
                break
            if threshold <= 0:
                stop = torch.ones_like(gate, dtype=torch.bool)
            else:
                stop = torch.sigmoid(gate) > threshold
            n_stop = int(stop.sum())  # one host sync per exit
            if n_stop == 0:
                continue
            leaving = active[stop]
            out[leaving] = logits[stop]
            exit_block[leaving] = i + 1
            if n_stop == len(active):
                break
            keep = (~stop).nonzero().squeeze(1)
            h = h.index_select(0, keep)
            active = active.index_select(0, keep)
        skip_rate = 1.0 - float(exit_block.sum()) / (b * cfg.num_blocks)
        return DepthOutput(out, exit_block, skip_rate)

    # -- inference copy --------------------------------------------------------------------

    def fused_for_inference(self) -> GatedEncoder:
        """An eval-mode deep copy with every batch norm folded into its convolution (same outputs, faster)."""
        model = fused_copy(self)
        model._fused = True
        return model


# -- training ----------------------------------------------------------------------------------------------


def halting_distribution(gate_logits: Tensor) -> Tensor:
    """``(K, B)`` gate logits -> ``(K, B)`` probability of stopping at each exit (sums to 1 over ``K``).

    ``p_k = h_k * prod_{j<k} (1 - h_j)`` with ``h_k = sigmoid(g_k)`` and ``h_K = 1``; computed in log space.
    """
    log_h = F.logsigmoid(gate_logits)
    log_not_h = F.logsigmoid(-gate_logits)
    log_h = torch.cat([log_h[:-1], torch.zeros_like(log_h[-1:])])  # the last exit always halts
    survive = torch.cat([torch.zeros_like(log_not_h[:1]), log_not_h[:-1].cumsum(0)])  # log prod_{j<k}(1-h_j)
    return (log_h + survive).exp()


def depth_loss(out: AllExits, labels: Tensor, config: DepthConfig, label_smoothing: float = 0.0,
               task_weight: float = 1.0, gate_weight: float = 1.0) -> dict[str, Tensor]:
    """Deep supervision + expected (task loss + compute) under the halting distribution; see the module docstring.

    Args:
        out: :meth:`GatedEncoder.forward_all` of a batch, logits ``(K, B, n)``, gate logits ``(K, B)``.
        labels: ``(B,)`` int64 class indices.
        config: gives ``compute_weight`` (lambda) and the exit positions.
        task_weight / gate_weight: weights of the deep-supervision term and of the halting term.

    Returns:
        ``{"loss", "task", "halt", "expected_blocks"}``: scalars; ``expected_blocks`` is ``E[blocks executed]``
        under the halting distribution (differentiable in the gates).
    """
    k, b, n = out.logits.shape
    ce = F.cross_entropy(out.logits.reshape(k * b, n), labels.repeat(k), reduction="none",
                         label_smoothing=label_smoothing).view(k, b)
    p = halting_distribution(out.gate_logits)
    depth = torch.tensor(config.exit_blocks, dtype=p.dtype, device=p.device)[:, None]  # (K, 1)
    expected_blocks = (p * depth).sum(0).mean()
    task = ce.mean()
    halt = (p * ce.detach()).sum(0).mean() + config.compute_weight * expected_blocks / config.num_blocks
    return {"loss": task_weight * task + gate_weight * halt, "task": task, "halt": halt,
            "expected_blocks": expected_blocks}


@dataclass
class DepthTrainConfig:
    """Hyper-parameters of :func:`fit_depth`.

    Attributes:
        epochs: epochs of backbone + exits (+ gates when ``gate_fraction == 0``).
        gate_epochs: epochs of gate-only training on the held-out ``gate_fraction`` (0 when ``gate_fraction == 0``).
        gate_fraction: share of the data held out from backbone training to train the gates on.
        time_shift: circular time shift augmentation, as a fraction of the frames (uniform +-).
        gate_views: views of each gate-training clip (the clip and ``gate_views - 1`` time-shifted copies).
    """

    epochs: int = 8
    gate_epochs: int = 20
    gate_fraction: float = 0.2
    batch_size: int = 32
    lr: float = 3e-3
    gate_lr: float = 1e-2
    weight_decay: float = 0.02
    label_smoothing: float = 0.05
    time_shift: float = 0.25
    gate_views: int = 4
    seed: int = 0
    threads: int | None = 2
    progress: bool = True


def _time_shift(mels: Tensor, fraction: float, gen: torch.Generator) -> Tensor:
    """``(B, 1, M, T)`` -> each sample rolled along time by a uniform ``+-fraction * T`` frames."""
    if fraction <= 0:
        return mels
    b, t = mels.shape[0], mels.shape[-1]
    shifts = ((torch.rand(b, generator=gen) * 2 - 1) * fraction * t).long()
    idx = (torch.arange(t)[None] - shifts[:, None]) % t  # (B, T)
    return torch.gather(mels, 3, idx[:, None, None].expand_as(mels))


def _run_epochs(n: int, batch_loss: Callable[[Tensor], dict[str, Tensor]], params: list[nn.Parameter],
                epochs: int, lr: float, cfg: DepthTrainConfig, gen: torch.Generator, desc: str, keys: tuple[str, ...],
                history: dict[str, list[float]], min_batch: int = 1) -> None:
    """AdamW + one-cycle over ``epochs`` shuffles of ``n`` items: ``batch_loss(index)`` gives the loss parts of a
    batch (``"loss"`` is optimised); the per-epoch means of ``keys`` go to ``history["<desc>_<key>"]``. Batches
    smaller than ``min_batch`` are skipped (batch norm cannot train on one sample)."""
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.1)
    bar = tqdm(total=total, desc=desc, unit="batch", disable=not cfg.progress, dynamic_ncols=True)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        sums = dict.fromkeys(keys, 0.0)
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if len(idx) < min_batch:
                continue
            parts = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
            sched.step()
            for key in sums:
                sums[key] += parts[key].item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(parts['loss']):.3f}",
                            blocks=f"{float(parts['expected_blocks']):.1f}")
        for key, value in sums.items():
            history.setdefault(f"{desc}_{key}", []).append(value / steps_per_epoch)
    bar.close()


def fit_gates(model: GatedEncoder, mels: Tensor, labels: Tensor, cfg: DepthTrainConfig, gen: torch.Generator,
              history: dict[str, Any]) -> None:
    """Train only the gates (backbone and classifiers frozen, eval mode) on ``(M, 1, n_mels, frames)`` log-mels
    not used for the classifiers. The exit heads' features are computed once (``gate_views`` time-shifted views
    of each clip, the first unshifted); the gates then train for ``gate_epochs`` on those cached tensors."""
    model.eval()
    with torch.no_grad():
        views = [mels] + [_time_shift(mels, cfg.time_shift, gen) for _ in range(max(cfg.gate_views, 1) - 1)]
        cached = [model.forward_all(v[i:i + 64]) for v in views for i in range(0, len(v), 64)]
    hidden = torch.cat([c.hidden for c in cached], dim=1)  # (K, M * views, head_dim)
    logits = torch.cat([c.logits for c in cached], dim=1)
    y = labels.repeat(len(views))
    gate_params = [p for e in model.exits for p in e.gate.parameters()]

    def gate_loss(idx: Tensor) -> dict[str, Tensor]:
        gates = torch.stack([head.gate_logit(hidden[k, idx], logits[k, idx]) for k, head in enumerate(model.exits)])
        return depth_loss(AllExits(logits[:, idx], gates), y[idx], model.config, task_weight=0.0)

    _run_epochs(len(y), gate_loss, gate_params, cfg.gate_epochs, cfg.gate_lr, cfg, gen, "gates",
                ("loss", "expected_blocks"), history)


def fit_depth(model: GatedEncoder, mels: Tensor, labels: Tensor, cfg: DepthTrainConfig | None = None
              ) -> dict[str, Any]:
    """Train a :class:`GatedEncoder` on tensors; returns the history.

    Phase 1 (``epochs``): backbone, exit classifiers and gates with :func:`depth_loss` on ``1 - gate_fraction``
    of the data. Phase 2 (``gate_epochs``, when ``gate_fraction > 0``): only the gates, on the held-out
    ``gate_fraction``, with the halting term alone (the classifiers are frozen; batch norm in eval mode).

    Args:
        model: the encoder (trained in place, left in eval mode).
        mels: ``(N, 1, n_mels, frames)`` log-mel dB (``model.preprocess.LogMel``).
        labels: ``(N,)`` int64 class indices.
        cfg: :class:`DepthTrainConfig`.

    Returns:
        ``{"<phase>_loss": [...], "<phase>_task": [...], "<phase>_expected_blocks": [...] per epoch,
        "seconds": float, "gate_index": (M,) rows held out for the gates}``.

    Example:
        >>> history = fit_depth(GatedEncoder(DepthConfig()), mels, labels, DepthTrainConfig(epochs=2))
    """
    cfg = cfg or DepthTrainConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    n = len(mels)
    order = torch.randperm(n, generator=gen)
    n_gate = int(round(cfg.gate_fraction * n)) if cfg.gate_fraction > 0 else 0
    gate_index, main_index = order[:n_gate], order[n_gate:]
    history: dict[str, Any] = {}

    model.train()
    train_mels, train_labels = mels[main_index], labels[main_index]

    def task_loss(idx: Tensor) -> dict[str, Tensor]:
        x = _time_shift(train_mels[idx], cfg.time_shift, gen)
        return depth_loss(model.forward_all(x), train_labels[idx], model.config, cfg.label_smoothing, task_weight=1.0)

    _run_epochs(len(train_mels), task_loss, list(model.parameters()), cfg.epochs, cfg.lr, cfg, gen, "train",
                ("loss", "task", "expected_blocks"), history, min_batch=2)
    if n_gate and cfg.gate_epochs:
        fit_gates(model, mels[gate_index], labels[gate_index], cfg, gen, history)
    model.eval()
    history["seconds"] = time.perf_counter() - start
    history["gate_index"] = gate_index
    return history
