"""The tree ensemble module scores exactly as the scikit-learn classifier it was copied from, and travels in a
state dict (the model's safetensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from model.tree_ensemble import TreeEnsemble


@pytest.fixture(scope="module")
def fitted() -> tuple[HistGradientBoostingClassifier, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 5)).astype(np.float32)
    y = x[:, 0] + x[:, 1] ** 2 - 0.5 * x[:, 2] * x[:, 3] > 0.8
    return HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(x, y), x


def test_scores_equal_the_classifiers_decision_function(fitted):
    classifier, x = fitted
    ensemble = TreeEnsemble.from_sklearn(classifier)
    assert ensemble.fitted and len(ensemble.roots) == classifier.n_iter_
    np.testing.assert_allclose(ensemble(torch.from_numpy(x)).numpy(), classifier.decision_function(x), atol=1e-5)


def test_a_state_dict_rebuilds_it(fitted):
    classifier, x = fitted
    ensemble = TreeEnsemble.from_sklearn(classifier)
    same = TreeEnsemble(len(ensemble.feature), len(ensemble.roots))
    same.load_state_dict(ensemble.state_dict())
    assert torch.equal(same(torch.from_numpy(x)), ensemble(torch.from_numpy(x)))


def test_an_empty_ensemble_scores_zero_for_every_row():
    empty = TreeEnsemble()
    assert not empty.fitted
    assert torch.equal(empty(torch.ones(4, 3)), torch.zeros(4))
