"""Task weighting over training and cross-modal contrastive alignment.

- :class:`SigmoidTaskWeight` -- ``loss = (1 - λ_t) * L_aux + λ_t * L_main`` with
  ``λ_t = 1 / (1 + exp(-k (t - t0)))``: the auxiliary loss (e.g. :func:`info_nce` aligning modalities) dominates
  early, the main task (e.g. defect classification) late; ``k > 0`` (softplus) sets how sharp the hand-over is
  and ``t0`` when it happens. Both are learnable parameters.
- :class:`FixedTaskWeight` -- the same combination with a constant ``λ``.
- :func:`info_nce` -- symmetric InfoNCE over a batch of paired embeddings.

``t`` is whatever progress measure the trainer passes (step, epoch or fraction of training, as a float or
0-d tensor); choose ``t0`` and ``k`` in its units. Note that minimising the combined loss moves ``λ_t`` towards
whichever loss is currently smaller, so give ``k`` and ``t0`` a small learning rate, or freeze them
(``requires_grad_(False)``) for a fixed schedule.

Example:
    >>> weight = SigmoidTaskWeight(steepness=10.0, midpoint=0.5)  # t = fraction of training
    >>> a, b = torch.randn(8, 32), torch.randn(8, 32)
    >>> loss = weight(info_nce(a, b), torch.tensor(0.7), t=0.1)  # mostly the alignment loss
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SigmoidTaskWeight(nn.Module):
    """Learnable sigmoid hand-over from an auxiliary loss to the main loss.

    Parameters:
        raw_steepness: ``()``, ``k = softplus(raw_steepness)``.
        midpoint: ``()``, ``t0``.
    """

    def __init__(self, steepness: float = 10.0, midpoint: float = 0.5) -> None:
        super().__init__()
        if steepness <= 0:
            raise ValueError(f"steepness must be > 0, got {steepness}")
        self.raw_steepness = nn.Parameter(torch.tensor(math.log(math.expm1(steepness))))
        self.midpoint = nn.Parameter(torch.tensor(float(midpoint)))

    @property
    def steepness(self) -> Tensor:
        """``k > 0``."""
        return F.softplus(self.raw_steepness)

    def weight(self, t: float | Tensor) -> Tensor:
        """``λ_t``, the main loss's share at progress ``t`` (same shape as ``t``)."""
        return torch.sigmoid(self.steepness * (torch.as_tensor(t, dtype=self.midpoint.dtype) - self.midpoint))

    def forward(self, aux_loss: Tensor, main_loss: Tensor, t: float | Tensor) -> Tensor:
        """``(1 - λ_t) * aux_loss + λ_t * main_loss``."""
        share = self.weight(t)
        return (1 - share) * aux_loss + share * main_loss


class FixedTaskWeight(nn.Module):
    """``(1 - λ) * aux_loss + λ * main_loss`` with a constant ``λ`` (``t`` accepted and ignored)."""

    def __init__(self, main_share: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= main_share <= 1.0:
            raise ValueError(f"main_share must be in [0, 1], got {main_share}")
        self.register_buffer("main_share", torch.tensor(float(main_share)))

    def weight(self, t: float | Tensor | None = None) -> Tensor:
        """``λ``."""
        return self.main_share

    def forward(self, aux_loss: Tensor, main_loss: Tensor, t: float | Tensor | None = None) -> Tensor:
        return (1 - self.main_share) * aux_loss + self.main_share * main_loss


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.07) -> Tensor:
    """Symmetric InfoNCE: row ``i`` of ``a`` ``(B, d)`` and of ``b`` ``(B, d)`` are a positive pair, every other
    row of the batch a negative. Cosine similarities over ``temperature``; mean of the ``a -> b`` and
    ``b -> a`` cross-entropies. ``()``; about ``log(B)`` for unrelated embeddings, towards 0 for aligned ones."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / temperature
    targets = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
