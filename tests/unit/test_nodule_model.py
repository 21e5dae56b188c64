"""The nodule model on small tensors: shapes, modality masking, the CT grid's geometry, crops, persistence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.nodule_config import NODULE_MODALITIES, NoduleConfig
from model.nodule_model import NoduleFusionModel, ct_grid, cut_crops
from model.pretrained import model_type

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(**overrides) -> NoduleConfig:
    """A small but complete configuration (fast on CPU)."""
    base = dict(spacing_mm=(4.0, 4.0, 4.0), candidates=3, crop_size=9, crop_channels=(4, 8, 8), record_features=[
        "age_years", "pack_years"], d_model=16, n_heads=2, embedding_dim=16, version="tiny-test")
    base.update(overrides)
    return NoduleConfig(**base)


@pytest.fixture(scope="module")
def model() -> NoduleFusionModel:
    torch.manual_seed(0)
    return NoduleFusionModel(tiny_config()).eval()


def inputs(cfg: NoduleConfig, b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = cfg.crop_size
    return {"ct": torch.rand(b, cfg.candidates, 2, s, s, s, generator=g),
            "record": torch.randn(b, cfg.record_dim, generator=g), "note": torch.randn(b, cfg.text_dim, generator=g)}


def test_forward_shapes(model):
    cfg = model.config
    with torch.no_grad():
        out = model(inputs(cfg))
    assert out.nodule_logit.shape == out.malignancy_logit.shape == out.log_diameter.shape == (3,)
    assert out.offset_mm.shape == (3, 3) and out.best.shape == (3,)
    assert out.candidates.logit.shape == (3, cfg.candidates)
    assert out.candidates.offset_mm.shape == (3, cfg.candidates, 3)
    assert out.modality_weights.shape == (3, 3) and out.task_weights.shape == (3, 3, 3)
    assert out.embedding.shape == (3, cfg.embedding_dim)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(3))
    assert torch.equal(out.best, out.candidates.logit.argmax(dim=1))


def test_absent_modalities_weigh_zero_and_are_ignored(model):
    cfg = model.config
    x = inputs(cfg)
    present = torch.tensor([[True, True, True], [True, False, False], [False, True, True]])
    with torch.no_grad():
        out = model(x, present)
        garbage = {**x, "record": x["record"] * 100 + 7, "note": -x["note"]}
        again = model(garbage, present)
    weights = out.modality_weights
    assert torch.allclose(weights.sum(dim=1), torch.ones(3), atol=1e-5)
    assert (weights[~present] == 0).all() and (weights[present] > 0).all()
    # sample 1 is CT only: what its record and note hold does not matter
    assert torch.allclose(out.nodule_logit[1], again.nodule_logit[1], atol=1e-5)
    assert not torch.allclose(out.nodule_logit[0], again.nodule_logit[0], atol=1e-5)


def test_a_modality_left_out_of_the_batch(model):
    cfg = model.config
    x = inputs(cfg, b=2)
    with torch.no_grad():
        ct_only = model({"ct": x["ct"]})
        masked = model(x, torch.tensor([[True, False, False]] * 2))
    assert torch.allclose(ct_only.modality_weights, torch.tensor([[1.0, 0.0, 0.0]] * 2))
    assert torch.allclose(ct_only.nodule_logit, masked.nodule_logit, atol=1e-5)
    with pytest.raises(ValueError, match="unknown modalities"):
        model({"image": x["ct"]})
    with pytest.raises(ValueError, match="at least one"):
        model({})


def test_ct_grid_keeps_positions_in_millimetres():
    cfg = tiny_config(spacing_mm=(2.0, 2.0, 2.0), hu_window=(0.0, 1000.0))
    volume = np.zeros((40, 64, 64), np.float32)
    volume[19:22, 29:32, 49:52] = 1000.0  # centre voxel (20, 30, 50)
    spacing = (2.5, 1.5, 1.5)
    grid = ct_grid(volume, spacing, cfg)[0].numpy()
    assert grid.min() >= 0 and grid.max() <= 1
    w = grid / grid.sum()
    centroid = [float((w * axis).sum()) for axis in np.indices(grid.shape)]
    np.testing.assert_allclose(centroid, np.array([20, 30, 50]) * spacing / 2.0, atol=0.3)


def test_crops_are_centred_and_read_air_outside():
    grid = torch.arange(10 * 12 * 12, dtype=torch.float32).reshape(1, 10, 12, 12)
    crops = cut_crops(grid, torch.tensor([[2.0, 3.0, 4.0], [0.0, 0.0, 0.0]]), 5)
    assert crops.shape == (2, 1, 5, 5, 5)
    assert crops[0, 0, 2, 2, 2] == grid[0, 2, 3, 4] and crops[1, 0, 0, 0, 0] == 0


def test_locate_finds_candidates_in_a_volume(model):
    cfg = model.config
    fine = torch.rand(1, 1, 12, 20, 20)
    crops, centres = model.locate(fine)
    assert crops.shape == (1, cfg.candidates, 2, cfg.crop_size, cfg.crop_size, cfg.crop_size)
    assert centres.shape == (1, cfg.candidates, 3)
    assert (centres >= 0).all() and (centres[0] < torch.tensor([12, 20, 20])).all()


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert model_type(tmp_path) == "nodule-fusion"
    same = NoduleFusionModel.from_pretrained(tmp_path)
    assert same.config == model.config
    x = inputs(model.config)
    with torch.no_grad():
        a, b = model(x), same(x)
    assert torch.equal(a.nodule_logit, b.nodule_logit) and torch.equal(a.embedding, b.embedding)


def test_config_checks():
    with pytest.raises(ValueError, match="record_features"):
        NoduleConfig()
    with pytest.raises(ValueError, match="blob_radii_mm"):
        tiny_config(blob_radii_mm=(2.0, -1.0))
    with pytest.raises(ValueError, match="record_mean"):
        tiny_config(record_mean=[0.0])
    assert NoduleConfig.from_dict({**tiny_config().to_dict(), "model_type": "nodule-fusion"}) == tiny_config()
    assert tiny_config().record_dim == 4 and tuple(NODULE_MODALITIES) == ("ct", "record", "note")


def test_config_imports_no_torch():
    probe = "import sys, model.nodule_config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_a_fitted_ranker_is_saved_with_the_model_and_picks_the_candidates(tmp_path):
    """A ranker fitted to prefer peaks high in the volume (their value feature): it is saved and loaded with the
    weights, and locate's candidates are the peaks it ranks first, not the most blob-like."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from model.blobs import find_peaks
    from model.tree_ensemble import TreeEnsemble

    config = tiny_config()
    fine = torch.full((1, 1, 24, 20, 20), 0.6)  # soft tissue around a lung of mottled air
    fine[..., 4:16, 4:16] = 0.1 + 0.3 * torch.rand(1, 1, 24, 12, 12, generator=torch.Generator().manual_seed(1))
    peaks = find_peaks(fine[0, 0].numpy(), config)
    value = peaks.features[:, -2]
    classifier = HistGradientBoostingClassifier(max_iter=20).fit(peaks.features, value > np.quantile(value, 0.9))
    ranker = TreeEnsemble.from_sklearn(classifier)
    config.ranker_trees, config.ranker_nodes = len(ranker.roots), len(ranker.feature)
    model = NoduleFusionModel(config).eval()
    model.ranker.load_state_dict(ranker.state_dict())
    model.save_pretrained(tmp_path)
    same = NoduleFusionModel.from_pretrained(tmp_path)
    assert same.ranker.fitted and torch.equal(same.ranker.threshold, ranker.threshold)
    _, centres = same.locate(fine)
    picked = fine[0, 0][tuple(centres[0].long().T)]
    assert picked.min() >= np.quantile(value, 0.9) - 1e-6
