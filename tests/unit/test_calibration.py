"""Temperature scaling and the cascade threshold chosen on validation data."""

from __future__ import annotations

import numpy as np
import pytest

from model.calibration import calibrated_confidence, choose_threshold, fit_temperature, tempered


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_fit_temperature_recovers_an_overconfident_models_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (6000, 5))
    truth = np.array([rng.choice(5, p=p) for p in softmax(logits / 2.0)])  # the world is twice as unsure
    assert fit_temperature(softmax(logits), truth) == pytest.approx(2.0, rel=0.1)


def test_tempered_keeps_the_ranking_and_temperature_one_is_identity() -> None:
    probs = softmax(np.random.default_rng(1).normal(0, 2, (50, 4)))
    np.testing.assert_allclose(tempered(probs, 1.0), probs, atol=1e-9)
    assert (tempered(probs, 3.0).argmax(1) == probs.argmax(1)).all()
    assert (tempered(probs, 3.0).max(1) < probs.max(1) + 1e-12).all()


def test_the_least_sure_task_sets_the_confidence() -> None:
    probs = {"defect": np.array([[0.9, 0.1], [0.6, 0.4]]), "machine": np.array([[0.7, 0.3], [0.99, 0.01]])}
    np.testing.assert_allclose(calibrated_confidence(probs, 1.0), [0.7, 0.6])


def test_the_threshold_gives_the_small_model_what_it_gets_right() -> None:
    confidence = np.linspace(1.0, 0.01, 100)
    small_right = np.arange(100) < 70  # right on its 70 most confident items, wrong below
    big_right = np.ones(100, bool)
    choice = choose_threshold(confidence, small_right, big_right, max_drop=0.0)
    assert choice.decided_share == 0.70 and choice.accuracy == 1.0
    assert choice.threshold == pytest.approx(confidence[69])
    assert choose_threshold(confidence, small_right, big_right, max_drop=0.02).decided_share == 0.72


def test_a_threshold_never_splits_tied_confidences() -> None:
    confidence = np.array([0.9, 0.8, 0.8, 0.8, 0.5])
    small_right = np.array([True, True, False, True, False])
    choice = choose_threshold(confidence, small_right, np.ones(5, bool), max_drop=0.0)
    assert choice.decided_share == 0.2 and choice.threshold == 0.9


def test_a_small_model_that_is_always_wrong_decides_nothing() -> None:
    choice = choose_threshold(np.linspace(1, 0, 10), np.zeros(10, bool), np.ones(10, bool))
    assert choice.decided_share == 0.0 and choice.threshold == float("inf") and choice.accuracy == 1.0
