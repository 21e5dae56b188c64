"""The nodule candidate filter on a drawn chest: the lungs are found, a sphere outranks a tube and the wall."""

from __future__ import annotations

import numpy as np
import pytest

from model.blobs import find_blobs, find_peaks, lung_region, peak_features
from model.nodule_config import NoduleConfig

HU_LOW, HU_HIGH = -1000.0, 400.0


def windowed(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu - HU_LOW) / (HU_HIGH - HU_LOW), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def chest() -> tuple[np.ndarray, tuple[int, int, int], tuple[int, int, int]]:
    """A 2 mm grid: air around a body of soft tissue holding two lungs; a 10 mm sphere in the left lung and a
    vessel of the same radius running through the right one (slice, row, column)."""
    z, y, x = np.indices((40, 64, 96), dtype=np.float32)
    hu = np.full(z.shape, -1000.0, np.float32)
    hu[((y - 32) / 28) ** 2 + ((x - 48) / 44) ** 2 <= 1] = 40.0  # body
    for cx in (26, 70):
        hu[((y - 32) / 20) ** 2 + ((x - cx) / 16) ** 2 <= 1] = -850.0  # lungs
    sphere, vessel = (20, 30, 24), (20, 30, 72)
    hu[(z - sphere[0]) ** 2 + (y - sphere[1]) ** 2 + (x - sphere[2]) ** 2 <= 2.5**2] = 30.0
    hu[(y - vessel[1]) ** 2 + (x - vessel[2]) ** 2 <= 2.5**2] = 30.0  # along the slices
    noise = np.random.default_rng(0).normal(0, 10, hu.shape).astype(np.float32)
    return windowed(hu + noise), sphere, vessel


def test_lung_region_holds_the_lungs_and_not_the_air_outside(chest):
    volume, sphere, _ = chest
    region = lung_region(volume, NoduleConfig(record_features=["age_years"]))
    assert region[sphere] and region[20, 32, 26] and region[20, 32, 70]  # the nodule and both lungs
    assert not region[20, 1, 1] and not region[20, 32, 48]  # the air around the body, the mediastinum


def test_the_sphere_is_the_best_candidate_and_the_vessel_scores_lower(chest):
    volume, sphere, vessel = chest
    found = find_blobs(volume, NoduleConfig(record_features=["age_years"], candidates=5))
    assert found.centres.shape == (5, 3) and found.scores.shape == (5,)
    assert found.response.shape == volume.shape and 0 <= found.response.min() and found.response.max() <= 1
    assert np.abs(found.centres[0] - sphere).max() <= 1 and found.scores[0] > 0
    on_vessel = [s for c, s in zip(found.centres, found.scores, strict=True) if np.hypot(*(c[1:] - vessel[1:])) <= 2]
    assert all(s < 0.5 * found.scores[0] for s in on_vessel)


def test_a_volume_without_lungs_still_gives_k_candidates():
    found = find_blobs(np.zeros((8, 16, 16), np.float32), NoduleConfig(record_features=["age_years"], candidates=3))
    assert found.centres.tolist() == [[4, 8, 8]] * 3 and not found.scores.any()


def test_peaks_carry_one_named_feature_column_each_and_a_ranker_reorders_them(chest):
    volume, sphere, vessel = chest
    config = NoduleConfig(record_features=["age_years"], candidates=5)
    peaks = find_peaks(volume, config)
    assert peaks.features.shape == (len(peaks.at), len(peak_features(config.blob_radii_mm)))
    assert np.isfinite(peaks.features).all()
    on_vessel = np.hypot(*(peaks.at[:, 1:] - vessel[1:]).T) <= 2
    found = find_blobs(volume, config, rank=lambda features: np.where(on_vessel, 1.0, 0.0))
    assert np.hypot(*(found.centres[0, 1:] - vessel[1:])) <= 2 and found.scores[0] == 1.0
