"""Calibrated confidence for a confidence cascade: temperature scaling, and the threshold chosen on validation data.

A small model decides an item when its calibrated confidence clears a threshold; below it, the big model decides.
Both numbers come from validation data the models never trained on.

Example:
    >>> t = fit_temperature(small_probs["defect"], labels)
    >>> conf = calibrated_confidence(small_probs, t)                  # (n,), the least sure task
    >>> choice = choose_threshold(conf, small_right, big_right, max_drop=0.005)
    >>> choice.threshold, choice.decided_share, choice.accuracy
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

_EPS = 1e-12


def tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``(n, C)`` probabilities -> the same logits' softmax at ``temperature`` (``softmax(log p / T)``)."""
    logits = np.log(np.clip(probs, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature (0.25 to 8, log grid) that minimises the negative log-likelihood of ``labels`` ``(n,)``
    under ``probs`` ``(n, C)`` tempered."""
    grid = np.geomspace(0.25, 8.0, 97)
    nll = [-np.log(np.clip(tempered(probs, t)[np.arange(len(labels)), labels], _EPS, 1.0)).mean() for t in grid]
    return float(grid[int(np.argmin(nll))])


def calibrated_confidence(probs: Mapping[str, np.ndarray], temperature: float) -> np.ndarray:
    """Per item, the confidence of its least sure task: ``min over tasks of max(tempered probs)`` ``(n,)``."""
    return np.min([tempered(p, temperature).max(axis=1) for p in probs.values()], axis=0)


@dataclass
class ThresholdChoice:
    """A cascade threshold and what it did on the validation data.

    Attributes:
        threshold: the small model decides items whose calibrated confidence is at least this.
        decided_share: share of validation items the small model decided.
        accuracy: the cascade's validation accuracy; ``big_accuracy`` the big model's alone.
    """

    threshold: float
    decided_share: float
    accuracy: float
    big_accuracy: float
    items: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def choose_threshold(confidence: np.ndarray, small_right: np.ndarray, big_right: np.ndarray,
                     max_drop: float = 0.005) -> ThresholdChoice:
    """The lowest threshold (most items to the small model) whose cascade accuracy on these validation items is
    within ``max_drop`` of the big model's alone.

    Args:
        confidence: ``(n,)`` the small model's calibrated confidence per item.
        small_right / big_right: ``(n,)`` bool, whether each model's answer was right.
    """
    n = len(confidence)
    big_accuracy = float(big_right.mean())
    order = np.argsort(-confidence, kind="stable")
    # deciding the k most confident items with the small model: right answers = small's on them + big's on the rest
    small_cum = np.concatenate([[0], np.cumsum(small_right[order])])
    big_rest = np.concatenate([[0], np.cumsum(big_right[order][::-1])])[::-1]
    accuracy = (small_cum + big_rest) / n
    sorted_conf = confidence[order]
    whole = np.ones(n + 1, bool)  # k splits no tie: "confidence >= threshold" picks exactly the first k
    whole[1:n] = sorted_conf[1:] < sorted_conf[:-1]
    k = int(np.nonzero((accuracy >= big_accuracy - max_drop - 1e-12) & whole)[0].max())
    threshold = float(sorted_conf[k - 1]) if k > 0 else float("inf")
    return ThresholdChoice(threshold, k / n, float(accuracy[k]), big_accuracy, n)
