"""Phantom family "chest-b": volume format, tissue densities, the nodule's mask and centre, noise level and
determinism, on small volumes (96 x 96 pixels of 3.8 mm, 24 slices of 12 mm: the whole chest, seconds each)."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
from scipy import ndimage

from pipelines.lines.medical.phantoms import FAMILIES, CaseSpec, NoduleSpec, Phantom, ScanSpec
from pipelines.lines.medical.phantoms import chest_b

SCAN = ScanSpec(size=96, pixel_spacing_mm=3.8, slices=24, slice_spacing_mm=12.0, kernel="standard", noise_hu=25.0)
SOLID = NoduleSpec(diameter_mm=16.0, density="solid", site="intraparenchymal", spiculated=False)


def _case(nodule: NoduleSpec | None = SOLID, **scan: object) -> CaseSpec:
    return CaseSpec(nodule=nodule, lookalikes=2, scan=dataclasses.replace(SCAN, **scan), body_scale=1.0, female=False)


def _render(case: CaseSpec, seed: int = 5) -> Phantom:
    return chest_b.render(case, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def solid() -> Phantom:
    return _render(_case())


def _body(hu: np.ndarray) -> np.ndarray:
    """Each slice's body: what is denser than air, its holes (the lungs) filled."""
    return np.stack([ndimage.binary_fill_holes(ndimage.binary_opening(s > -400, iterations=2)) for s in hu])


def _lung(hu: np.ndarray) -> np.ndarray:
    return _body(hu) & (hu < -600)


def test_registered_and_volume_format(solid: Phantom) -> None:
    assert importlib.import_module(FAMILIES[chest_b.NAME]) is chest_b
    assert solid.hu.shape == (24, 96, 96) and solid.hu.dtype == np.int16
    assert solid.hu.min() >= -1024 and solid.hu.max() <= 3071
    assert solid.nodule_mask.shape == solid.hu.shape and solid.nodule_mask.dtype == bool
    assert len(solid.nodule_center_vox) == 3 and all(isinstance(v, int) for v in solid.nodule_center_vox)


def test_tissue_densities(solid: Phantom) -> None:
    hu = solid.hu.astype(np.float32)
    middle = hu[6:18]  # the lungs' middle part; the ends hold the abdomen and the neck
    body, lung = _body(middle), _lung(middle)
    air = middle[:, :6, 40:56]  # in front of the chest, inside the reconstruction circle
    assert -1030 < np.median(air) < -960
    assert lung.sum() > 0.15 * body.sum(), "the lungs fill much of the chest"
    assert -900 < np.median(middle[lung]) < -780
    soft = body & ~lung & (middle > -300)
    assert -80 < np.median(middle[soft]) < 80, "fat, muscle and organs"
    spine = middle[:, 60:80, 44:52].max(axis=(1, 2))  # behind the body's middle, partial volume and all
    assert (spine > 300).all() and 350 < np.median(spine) < 1100, "a vertebra on every slice"
    assert 450 < np.percentile(middle[body], 99.9) < 1500, "cortical bone"


def test_nodule_mask_and_centre(solid: Phantom) -> None:
    mask, centre = solid.nodule_mask, solid.nodule_center_vox
    assert mask[centre]
    assert np.linalg.norm(np.argwhere(mask).mean(0) - centre) <= 1.0
    # a 16 mm ball in voxels of 3.8 x 3.8 x 12 mm: about 12, partial volume included
    assert 4 <= mask.sum() <= 30
    hu = solid.hu.astype(np.float32)
    assert _body(hu)[centre]
    k, r, c = centre
    around = _lung(hu)[k, r - 5 : r + 6, c - 5 : c + 6]
    assert around.sum() > 20, "in the lung"
    lung_level = np.median(hu[_lung(hu)])
    assert hu[mask].mean() > lung_level + 400, "a solid nodule stands out of the lung"


def test_ground_glass_lies_between_lung_and_soft_tissue() -> None:
    nodule = NoduleSpec(diameter_mm=22.0, density="ground-glass", site="intraparenchymal", spiculated=False)
    phantom = _render(_case(nodule), seed=8)
    hu = phantom.hu.astype(np.float32)
    lung_level = np.median(hu[_lung(hu)])
    assert lung_level + 100 < hu[phantom.nodule_mask].mean() < -250


def test_case_without_nodule() -> None:
    phantom = _render(_case(None), seed=9)
    assert phantom.nodule_center_vox is None and phantom.nodule_mask is None
    assert phantom.hu.shape == (24, 96, 96)


def test_same_seed_same_volume(solid: Phantom) -> None:
    again = _render(_case())
    np.testing.assert_array_equal(again.hu, solid.hu)
    np.testing.assert_array_equal(again.nodule_mask, solid.nodule_mask)
    assert again.nodule_center_vox == solid.nodule_center_vox
    assert not np.array_equal(_render(_case(), seed=6).hu, solid.hu)


def test_noise_level_in_uniform_soft_tissue(solid: Phantom) -> None:
    clean = _render(_case(noise_hu=0.0)).hu.astype(np.float32)  # same seed: the same anatomy, no noise
    hu = solid.hu.astype(np.float32)
    local_spread = np.sqrt(np.maximum(ndimage.uniform_filter(clean**2, (1, 5, 5))
                                      - ndimage.uniform_filter(clean, (1, 5, 5)) ** 2, 0))
    uniform = (clean > 0) & (clean < 100) & (local_spread < 4)
    uniform &= ndimage.binary_erosion(uniform, iterations=2)
    assert uniform.sum() > 200, "some uniform soft tissue (liver, heart, muscle)"
    assert 0.6 * SCAN.noise_hu < np.std(hu[uniform] - clean[uniform]) < 1.4 * SCAN.noise_hu
    assert 0.6 * SCAN.noise_hu < np.std(hu[uniform]) < 1.4 * SCAN.noise_hu


def test_bad_kernel_is_named() -> None:
    with pytest.raises(ValueError, match="scan.kernel 'bone'"):
        _render(_case(kernel="bone"))
