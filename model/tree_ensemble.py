"""A fitted gradient-boosted tree ensemble as an ``nn.Module``: its trees live in buffers, so the model's
``model.safetensors`` carries them like any weight, and scoring needs neither scikit-learn nor pickle.

scikit-learn's :class:`~sklearn.ensemble.HistGradientBoostingClassifier` fits the trees (training only);
:meth:`TreeEnsemble.from_sklearn` copies every node (feature, threshold, children, leaf value) into flat arrays, and
:meth:`TreeEnsemble.forward` walks all trees for all rows at once, one level per step until every row is at a
leaf: the raw score it returns is the classifier's ``decision_function``.

Example:
    >>> clf = HistGradientBoostingClassifier().fit(features, labels)      # features (N, F)
    >>> ranker = TreeEnsemble.from_sklearn(clf)
    >>> ranker(torch.from_numpy(features)).shape                         # the logits
    torch.Size([N])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier


class TreeEnsemble(nn.Module):
    """Binary gradient-boosted trees over ``features`` columns, ``nodes`` nodes in all (0: empty, scores 0).

    Buffers (one entry per node, the trees one after another): ``feature`` (int64, the column split on),
    ``threshold`` (float64: a row goes left when its value is ``<=``), ``left``/``right`` (int64, global node
    indices), ``leaf`` (bool), ``value`` (float64, a leaf's contribution); ``roots`` (int64, one per tree) and
    ``baseline`` (float64, the prior logit).
    """

    def __init__(self, nodes: int = 0, trees: int = 0):
        super().__init__()
        self.register_buffer("feature", torch.zeros(nodes, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(nodes, dtype=torch.float64))
        self.register_buffer("left", torch.zeros(nodes, dtype=torch.int64))
        self.register_buffer("right", torch.zeros(nodes, dtype=torch.int64))
        self.register_buffer("leaf", torch.ones(nodes, dtype=torch.bool))
        self.register_buffer("value", torch.zeros(nodes, dtype=torch.float64))
        self.register_buffer("roots", torch.zeros(trees, dtype=torch.int64))
        self.register_buffer("baseline", torch.zeros((), dtype=torch.float64))

    @property
    def fitted(self) -> bool:
        """Whether it holds any tree."""
        return len(self.roots) > 0

    @classmethod
    def from_sklearn(cls, classifier: HistGradientBoostingClassifier) -> TreeEnsemble:
        """Copy a fitted binary :class:`~sklearn.ensemble.HistGradientBoostingClassifier` (numeric features, no
        missing values expected: NaN goes right)."""
        trees = [predictors[0].nodes for predictors in classifier._predictors]
        sizes = [len(t) for t in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        ensemble = cls(sum(sizes), len(trees))
        columns = {
            "feature": np.concatenate([t["feature_idx"] for t in trees]).astype(np.int64),
            "threshold": np.concatenate([t["num_threshold"] for t in trees]).astype(np.float64),
            "left": np.concatenate([t["left"] + o for t, o in zip(trees, offsets)]).astype(np.int64),
            "right": np.concatenate([t["right"] + o for t, o in zip(trees, offsets)]).astype(np.int64),
            "leaf": np.concatenate([t["is_leaf"] for t in trees]).astype(bool),
            "value": np.concatenate([t["value"] for t in trees]).astype(np.float64),
            "roots": offsets,
        }
        for name, column in columns.items():
            getattr(ensemble, name).copy_(torch.from_numpy(column))
        ensemble.baseline.fill_(float(np.ravel(classifier._baseline_prediction)[0]))
        return ensemble

    @torch.no_grad()
    def forward(self, features: Tensor) -> Tensor:
        """``features (N, F)`` -> ``(N,)`` float32 logits (the prior logit alone where no tree is held)."""
        rows = features.to(torch.float64)
        node = self.roots.expand(len(rows), -1).clone()  # (N, T)
        index = torch.arange(len(rows))[:, None]
        while not bool(self.leaf[node].all()):  # one level of every tree per step
            goes_left = rows[index, self.feature[node]] <= self.threshold[node]
            step = torch.where(goes_left, self.left[node], self.right[node])
            node = torch.where(self.leaf[node], node, step)
        return (self.value[node].sum(dim=1) + self.baseline).float()

    def extra_repr(self) -> str:
        return f"trees={len(self.roots)}, nodes={len(self.feature)}"
