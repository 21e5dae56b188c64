"""The factory model on random tensors: shapes, missing modalities, text query, gradients, persistence, predictor."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import MODALITIES, InspectorConfig, presence_mask, rejected_tasks
from model.encoders import AudioEncoder, ImageEncoder, local_mean
from model.factory_model import FactoryInspector
from model.predictor import Prediction, Predictor, heat_to_box
from model.preprocess import image_batch, image_tensor, log_mel, waveform_tensor

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(**overrides) -> InspectorConfig:
    """A small but complete configuration (fast on CPU)."""
    base = dict(
        image_size=(64, 96), image_channels=(8, 16, 32), audio_channels=(8, 8, 16), d_model=32, n_heads=4,
        n_mels=32, n_fft=256, hop_length=128, clip_seconds=0.25, text_dim=24, version="tiny-test",
    )
    base.update(overrides)
    return InspectorConfig(**base)


def inputs(cfg: InspectorConfig, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(b, 3, *cfg.image_size, generator=g),
        "audio": torch.randn(b, 1, cfg.n_mels, cfg.audio_frames, generator=g) * 10 - 40,
        "text": torch.randn(b, cfg.text_dim, generator=g),
    }


@pytest.fixture(scope="module")
def cfg() -> InspectorConfig:
    return tiny_config()


@pytest.fixture(scope="module")
def model(cfg) -> FactoryInspector:
    torch.manual_seed(0)
    return FactoryInspector(cfg).eval()


def test_output_shapes(model, cfg):
    out = model(inputs(cfg))
    assert out.logits["defect"].shape == (4, 5)
    assert out.logits["machine"].shape == (4, 3)
    assert out.modality_weights.shape == (4, len(MODALITIES))
    assert out.cam.shape == (4, 5, cfg.image_size[0] // 8, cfg.image_size[1] // 8)
    assert out.fused.shape == (4, 2, cfg.d_model)  # one fused vector per task query
    assert out.task_weights.shape == (4, 2, len(MODALITIES))
    assert torch.isfinite(out.fused).all()


@pytest.mark.parametrize(
    "given",
    [("image",), ("audio",), ("text",), ("image", "audio"), ("image", "text"), ("audio", "text"), ("image", "audio", "text")],
)
def test_any_subset_of_modalities(model, cfg, given):
    x = inputs(cfg)
    out = model({k: v for k, v in x.items() if k in given})
    w = out.modality_weights
    for j, m in enumerate(MODALITIES):
        if m in given:
            assert (w[:, j] > 0).all(), m
        else:
            assert (w[:, j] == 0).all(), m
    torch.testing.assert_close(w.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(out.task_weights.sum(dim=2), torch.ones(4, 2))
    assert (out.cam is None) == ("image" not in given)
    assert all(torch.isfinite(v).all() for v in out.logits.values())


def test_per_sample_mask_ignores_absent_content(model, cfg):
    x = inputs(cfg)
    present = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 1, 1]], dtype=torch.bool)
    out = model(x, present)
    w = out.modality_weights
    assert (w[~present] == 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(4))
    # whatever sits in an absent slot must not change that sample's outputs
    y = {k: v.clone() for k, v in x.items()}
    y["image"][2:] = torch.randn_like(y["image"][2:]) * 5
    y["audio"][1] = 0.0
    y["text"][:3] = torch.randn_like(y["text"][:3])
    out2 = model(y, present)
    for task in out.logits:
        torch.testing.assert_close(out.logits[task][1:], out2.logits[task][1:], atol=1e-5, rtol=1e-5)
    # ...while a present slot does change it
    y["image"][0] += 1.0
    assert not torch.allclose(model(y, present).logits["defect"][0], out.logits["defect"][0])


def test_image_only_and_audio_only_batches(model, cfg):
    x = inputs(cfg)
    only_image = model({"image": x["image"]})
    only_audio = model({"audio": x["audio"]})
    torch.testing.assert_close(only_image.modality_weights, torch.tensor([[1.0, 0, 0]] * 4))
    torch.testing.assert_close(only_audio.modality_weights, torch.tensor([[0.0, 1, 0]] * 4))
    # the same as passing all tensors with a presence mask
    masked = model(x, presence_mask({"image": True}, 4))
    torch.testing.assert_close(masked.logits["defect"], only_image.logits["defect"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown modality 'depth'"):
        model({"image": x["image"], "depth": x["image"]})


def test_text_becomes_the_query(model, cfg):
    x = inputs(cfg)
    router = model.router
    tokens = {"image": torch.zeros(4, 6, 32), "audio": torch.zeros(4, 5, 32), "text": model.text_encoder(x["text"])}
    with_text = torch.tensor([[True, True, True], [True, True, False]] * 2)
    q = router.query(tokens, with_text)  # (B, tasks, d)
    assert q.shape == (4, 2, cfg.d_model)
    torch.testing.assert_close(q[1], router.learned_query)
    torch.testing.assert_close(q[3], router.learned_query)
    assert not torch.allclose(q[0], router.learned_query)
    assert not torch.allclose(q[0], q[2])  # each sample's own text
    # different texts -> different queries -> different modality weights over the same image and audio
    a = model(x, torch.ones(4, 3, dtype=torch.bool))
    other_text = {"image": x["image"], "audio": x["audio"], "text": torch.randn_like(x["text"])}
    b = model(other_text, torch.ones(4, 3, dtype=torch.bool))
    assert not torch.allclose(a.modality_weights, b.modality_weights)
    no_text = model({"image": x["image"], "audio": x["audio"]})
    assert not torch.allclose(a.fused, no_text.fused)


def test_gradients_reach_every_parameter(cfg):
    torch.manual_seed(1)
    model = FactoryInspector(cfg).train()
    x = inputs(cfg, b=6)
    present = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    out = model(x, present)
    loss = sum(v.logsumexp(dim=1).sum() - v[:, 0].sum() for v in out.logits.values()) + out.cam.pow(2).mean()
    loss = loss + sum(v.pow(2).mean() for v in out.aux_logits.values())
    assert set(out.aux_logits) == {"defect", "machine"}
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient: {missing}"


def test_save_load_round_trip_is_bit_exact(tmp_path, cfg):
    torch.manual_seed(2)
    model = FactoryInspector(cfg)
    model.train()
    model(inputs(cfg, b=8))  # move batch-norm statistics away from their initial values
    model.eval()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    loaded = FactoryInspector.from_pretrained(tmp_path)
    assert loaded.config == cfg
    assert json.loads((tmp_path / "config.json").read_text())["version"] == "tiny-test"
    x = inputs(cfg, seed=5)
    with torch.inference_mode():
        a, b = model(x), loaded(x)
    for task in a.logits:
        assert torch.equal(a.logits[task], b.logits[task])
    assert torch.equal(a.modality_weights, b.modality_weights)
    assert torch.equal(a.cam, b.cam)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k


def test_corrupt_weights_are_refused(tmp_path, cfg):
    FactoryInspector(cfg).save_pretrained(tmp_path)
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        FactoryInspector.from_pretrained(tmp_path)


def test_config_json_names_the_model_type_and_a_folder_without_one_still_loads(tmp_path, cfg):
    from model.lab.depth import DepthConfig, GatedEncoder
    from model.pretrained import model_type

    FactoryInspector(cfg).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model_type"] == model_type(tmp_path) == FactoryInspector.model_type == "factory-inspector"
    with pytest.raises(ValueError, match="holds a 'factory-inspector' model, not a 'gated-encoder'"):
        GatedEncoder.from_pretrained(tmp_path)
    GatedEncoder(DepthConfig(num_blocks=2)).save_pretrained(tmp_path / "depth")
    with pytest.raises(ValueError, match="holds a 'gated-encoder' model, not a 'factory-inspector'"):
        FactoryInspector.from_pretrained(tmp_path / "depth")

    del meta["model_type"]  # as saved before models had a type: still loads, and only the line cannot be guessed
    (tmp_path / "config.json").write_text(json.dumps(meta))
    assert FactoryInspector.from_pretrained(tmp_path).config == cfg
    with pytest.raises(ValueError, match="no model_type"):
        model_type(tmp_path)


def test_config_json_round_trip():
    cfg = tiny_config(classes={"defect": ["ok", "bad"], "machine": ["normal", "loud"]}, nominal={"defect": "ok", "machine": "normal"})
    again = InspectorConfig.from_json(cfg.to_json())
    assert again == cfg
    with pytest.raises(ValueError):
        tiny_config(d_model=30, n_heads=4)


def test_band_normalised_audio_ignores_a_steady_equaliser_and_clip_normalised_only_a_gain():
    torch.manual_seed(0)
    mels = torch.randn(3, 1, 32, 41) * 10 - 40
    equaliser = torch.linspace(-15, 15, 32).view(1, 1, 32, 1)  # a tilted microphone or machine spectrum, in dB
    band = AudioEncoder(n_mels=32, channels=(8, 8, 16), dim=32, norm="band").eval()
    clip = AudioEncoder(n_mels=32, channels=(8, 8, 16), dim=32, norm="clip").eval()
    clip.load_state_dict(band.state_dict())  # the same weights: only the normalisation differs
    with torch.no_grad():
        torch.testing.assert_close(band(mels + equaliser), band(mels), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(clip(mels + 6.0), clip(mels), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(clip(mels + equaliser), clip(mels), atol=1e-2)
        assert not torch.allclose(band(mels * 1.5), band(mels), atol=1e-2)  # how a band moves in time still counts
    with pytest.raises(ValueError, match="norm"):
        AudioEncoder(norm="loudness")
    with pytest.raises(ValueError, match="audio_norm"):
        tiny_config(audio_norm="loudness")
    assert InspectorConfig.from_dict({k: v for k, v in tiny_config().to_dict().items() if k != "audio_norm"}
                                     ).audio_norm == "clip"  # a model saved before the setting keeps its input


def test_preprocess_shapes_and_resampling():
    cfg = InspectorConfig()
    img = image_tensor(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8), cfg.image_size)
    assert img.shape == (3, *cfg.image_size) and img.dtype == torch.float32
    wave = np.random.default_rng(1).standard_normal((2, 44100)).astype(np.float32) * 0.1
    mono = waveform_tensor(wave, 44100, cfg)
    assert mono.shape == (1, cfg.clip_samples)
    short = waveform_tensor(wave[:, :8000], 16000, cfg)  # 0.5 s: zero-padded at the end
    assert short.shape == (1, cfg.clip_samples) and torch.all(short[0, 8000:] == 0)
    mel = log_mel(wave, 44100, cfg)
    assert mel.shape == (1, cfg.n_mels, cfg.audio_frames) and torch.isfinite(mel).all()
    with pytest.raises(ValueError):
        image_tensor(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        waveform_tensor(np.zeros((1, 0), np.float32), 16000, cfg)


def test_predictor_on_random_arrays(tmp_path, cfg):
    torch.manual_seed(3)
    FactoryInspector(cfg).save_pretrained(tmp_path)
    predictor = Predictor.from_pretrained(tmp_path, device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), None, rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)]
    audios = [(rng.standard_normal((1, 16000)).astype(np.float32) * 0.1, 16000),
              (rng.standard_normal((2, 22050)).astype(np.float32) * 0.1, 44100), None]
    preds = predictor.predict({"image": images, "audio": audios})
    assert len(preds) == 3 and all(isinstance(p, Prediction) for p in preds)
    for p in preds:
        assert p.label in cfg.classes["defect"] and 0 < p.confidence <= 1
        assert p.model_version == "tiny-test"
        assert abs(sum(p.modality_weights.values()) - 1) < 1e-5
        assert set(p.extra) >= {"machine", "machine_confidence", "defect_box", "unobserved"}
        assert p.extra["machine"] in cfg.classes["machine"]
        box = p.extra["defect_box"]
        assert (box is None) == (p.label == "good" or p.modality_weights["image"] == 0)
        if box is not None:
            assert len(box) == 4 and all(0 <= v <= 1 for v in box) and box[0] + box[2] <= 1.0001
        seen = {t for t in ("defect", "machine") if t not in p.extra["unobserved"]}
        assert p.reject == any(
            (p.label if t == "defect" else p.extra["machine"]) != cfg.nominal[t] for t in seen
        )
    assert preds[1].modality_weights["image"] == 0 and preds[1].extra["unobserved"] == ["defect"]
    assert preds[2].modality_weights["audio"] == 0 and preds[2].extra["unobserved"] == ["machine"]
    with pytest.raises(ValueError, match="item 0"):
        predictor.predict({"image": [None], "audio": [None]})
    with pytest.raises(ValueError, match="'image': 3, 'audio': 2"):
        predictor.predict({"image": images, "audio": audios[:2]})
    with pytest.raises(ValueError, match="unknown modality 'depth'"):
        predictor.predict({"depth": images})
    audio_only = predictor.predict({"audio": audios[:2]})
    assert [p.extra["unobserved"] for p in audio_only] == [["defect"], ["defect"]]
    assert all(p.modality_weights["image"] == 0 and p.extra["defect_box"] is None for p in audio_only)
    assert predictor.predict({"image": [], "audio": []}) == predictor.predict({}) == []


def test_reject_rule_names_the_tasks_that_reject():
    nominal = {"defect": "good", "machine": "normal"}
    assert rejected_tasks({"defect": "good", "machine": "normal"}, nominal) == []
    assert rejected_tasks({"defect": "dent", "machine": "normal"}, nominal) == ["defect"]
    assert rejected_tasks({"defect": "good", "machine": "imbalance_hum"}, nominal) == ["machine"]
    assert rejected_tasks({"defect": "dent", "machine": "imbalance_hum"}, nominal) == ["defect", "machine"]
    assert rejected_tasks({"defect": "dent", "machine": "imbalance_hum"}, nominal, ["machine"]) == ["defect"]
    assert rejected_tasks({"defect": "dent", "colour": "red"}, {"defect": "good"}) == ["defect"]  # no nominal: never


def test_predictor_matches_the_unfused_model(tmp_path, cfg):
    """Batch-norm folding changes rounding only; batch composition does not change an item's answer."""
    torch.manual_seed(4)
    model = FactoryInspector(cfg)
    model.train()
    model(inputs(cfg, b=8))
    model.eval().save_pretrained(tmp_path)
    predictor = Predictor.from_pretrained(tmp_path, device="cpu")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
    audios = [(rng.standard_normal((1, 4000)).astype(np.float32) * 0.1, 16000) for _ in range(4)]
    batch = predictor.forward_batch({"image": images, "audio": audios})
    single = predictor.forward_batch({"image": images[2:3], "audio": audios[2:3]})
    np.testing.assert_allclose(batch.probs["defect"][2], single.probs["defect"][0], atol=1e-5)
    from model.preprocess import log_mel_batch

    x = torch.stack([image_tensor(im, cfg.image_size) for im in images])
    a = log_mel_batch(torch.stack([waveform_tensor(w, r, cfg) for w, r in audios]), cfg)
    with torch.inference_mode():
        ref = torch.softmax(model({"image": x, "audio": a}).logits["defect"], dim=1).numpy()
    np.testing.assert_allclose(batch.probs["defect"], ref, atol=1e-4)


def test_heat_to_box():
    heat = np.zeros((48, 64), np.float32)
    heat[10:20, 30:40] = 0.9
    heat[40:44, 2:4] = 0.6  # a second, weaker region: not the peak's component
    assert heat_to_box(heat) == [round(30 / 64, 4), round(10 / 48, 4), round(10 / 64, 4), round(10 / 48, 4)]


def test_model_package_imports_neither_pipelines_nor_connectors():
    for path in (ROOT / "model").rglob("*.py"):  # the lab too
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"pipelines", "connectors", "apps"}, f"{path.name} imports {name}"


@pytest.mark.parametrize("kernel", [1, 3, 9])
def test_local_mean_equals_average_pooling_inside_the_image(kernel):
    """The convolution-based box filter gives ``avg_pool2d(count_include_pad=False)``, borders included."""
    x = torch.randn(2, 3, 17, 23)
    pad = kernel // 2
    expected = torch.nn.functional.avg_pool2d(x, kernel, 1, pad, count_include_pad=False)
    torch.testing.assert_close(local_mean(x, kernel), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("highpass", [0, 9])
def test_serving_image_batch_equals_the_encoders_own_local_contrast(highpass):
    """The OpenCV fast path (``image_batch``) feeds the encoder the same input it would compute itself."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), None, rng.integers(0, 255, (200, 300, 3), np.uint8)]
    size = (48, 64)
    plain = torch.stack([image_tensor(f, size) if f is not None else torch.zeros(3, *size) for f in frames])
    expected = torch.cat([plain, plain - local_mean(plain, highpass)], dim=1) if highpass else plain
    batch = image_batch(frames, size, highpass)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch, expected, atol=2e-6, rtol=1e-5)
    encoder = ImageEncoder((8, 8, 8), n_cam=5, highpass=highpass).eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder(batch)[0], encoder(plain)[0], atol=1e-5, rtol=1e-4)
