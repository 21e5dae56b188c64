"""LoRA adaptation: only adapters train, they are a small share, merging changes nothing, the base is untouched."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from peft import PeftModel
from torch import nn

from model.adapt import AdaptConfig, adapt, add_lora, lora_targets, merge, predict, trainable_parameters
from model.config import InspectorConfig
from model.factory_model import FactoryInspector

CLASSES = {"defect": ["good", "scratch", "dent"], "machine": ["normal", "hum"]}


def small_config() -> InspectorConfig:
    default = InspectorConfig()  # stage counts follow whatever the encoders take
    return InspectorConfig(
        image_size=(32, 48), image_channels=tuple(32 * 2**i for i in range(len(default.image_channels))),
        image_blocks=tuple(1 for _ in default.image_blocks), audio_channels=tuple(16 for _ in default.audio_channels),
        d_model=128, n_heads=4, n_mels=16, n_fft=128, hop_length=64, clip_seconds=0.25, text_dim=12,
        classes=CLASSES, version="tiny-adapt", dropout=0.0,
    )


@dataclass
class Data:
    images: torch.Tensor
    waveforms: torch.Tensor
    labels: dict[str, torch.Tensor]


def toy_data(n: int, cfg: InspectorConfig, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    y = torch.arange(n) % 3
    images = (torch.rand(n, 3, h, w, generator=g) * 60 + 90)
    images[y == 1, 0] += 80  # "scratch": red cast
    images[y == 2, 2] += 80  # "dent": blue cast
    return Data(images.clamp(0, 255).to(torch.uint8), torch.randn(n, 1, cfg.clip_samples, generator=g) * 0.1,
                {"defect": y, "machine": torch.zeros(n, dtype=torch.long)})


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture
def base() -> FactoryInspector:
    torch.manual_seed(0)
    model = FactoryInspector(small_config())
    # non-trivial batch-norm statistics, as in a trained model
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_targets_are_dense_conv_and_linear_layers_found_by_type(base):
    names = lora_targets(base)
    modules = dict(base.named_modules())
    assert names and all(isinstance(modules[n], (nn.Conv2d, nn.Linear)) for n in names)
    assert all(modules[n].groups == 1 for n in names if isinstance(modules[n], nn.Conv2d))
    assert all(n.startswith(("image_encoder.", "heads.")) for n in names)
    assert any(isinstance(modules[n], nn.Conv2d) for n in names) and any(isinstance(modules[n], nn.Linear) for n in names)


def test_only_lora_parameters_train_and_they_are_a_small_share(base):
    lora = add_lora(base, AdaptConfig(r=16, lora_alpha=32))
    assert isinstance(lora, PeftModel)
    trainable, total = trainable_parameters(lora)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert 0 < trainable / total < 0.10


def test_adaptation_keeps_base_weights_and_merged_model_matches(base):
    cfg = base.config
    data = toy_data(24, cfg)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    lora = add_lora(base, AdaptConfig(r=16, lora_alpha=32))
    history = adapt(lora, data, AdaptConfig(epochs=6, batch_size=8, lr=5e-3, threads=1))
    assert history["loss"][-1] < history["loss"][0]
    # the frozen base weights (peft renames them ``...base_layer.weight``) did not move
    state = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
             for k, v in lora.state_dict().items() if "lora_" not in k}
    assert set(before) == set(state)
    assert all(torch.equal(before[k], state[k]) for k in before)
    # the adapters did move, so the adapted model differs from the base
    assert any(p.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)
    x = data.images[:6]
    with torch.no_grad():
        from model.preprocess import normalize_images

        image = normalize_images(x)
        peft_out = lora({"image": image}).logits["defect"]
        with lora.disable_adapter():
            base_out = lora({"image": image}).logits["defect"]
        merged = merge(lora)
        assert isinstance(merged, FactoryInspector)
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        merged_out = merged({"image": image}).logits["defect"]
    assert torch.allclose(peft_out, merged_out, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(peft_out, base_out, atol=1e-3)


def test_adaptation_fits_the_few_shot_labels(base):
    data = toy_data(24, base.config, seed=1)
    lora = add_lora(base, AdaptConfig())
    before = (predict(lora, data, "defect") == data.labels["defect"]).float().mean()
    adapt(lora, data, AdaptConfig(epochs=10, batch_size=8, lr=5e-3, threads=1))
    after = (predict(lora, data, "defect") == data.labels["defect"]).float().mean()
    assert after > before and after >= 0.9


def test_adaptation_with_boxes_trains_the_defect_map_where_the_box_is(base):
    """With ``boxes`` the adapters also learn the dense CAM: the defect's class wins inside its box, not outside."""
    cfg = base.config
    h, w = cfg.image_size
    n = 24
    data = toy_data(n, cfg, seed=2)
    images = torch.full((n, 3, h, w), 120, dtype=torch.uint8)
    boxes = torch.full((n, 1, 4), float("nan"))
    y = data.labels["defect"]
    for i in torch.nonzero(y > 0).flatten().tolist():
        x0 = 8 + 16 * (i % 2)  # the defect sits left or right: flips must move the targets with it
        images[i, :, 8:24, x0 : x0 + 16] = torch.tensor([250, 30, 30] if y[i] == 1 else [30, 30, 250])[:, None, None]
        boxes[i, 0] = torch.tensor([x0 / w, 8 / h, 16 / w, 16 / h])
    data = Data(images, data.waveforms, data.labels)
    data.boxes = boxes
    lora = add_lora(base, AdaptConfig())
    adapt(lora, data, AdaptConfig(epochs=15, batch_size=8, lr=5e-3, threads=1))
    with torch.no_grad():
        from model.preprocess import normalize_images

        cam = lora({"image": normalize_images(images)}).cam.softmax(dim=1)  # (n, C, h/8, w/8)
    stride = base.image_encoder.stride
    i = int(torch.nonzero(y == 1).flatten()[0])
    x0 = int(boxes[i, 0, 0] * w) // stride
    inside = cam[i, 1, 8 // stride : 24 // stride, x0 : x0 + 16 // stride].mean()
    outside = cam[i, 1, :, (x0 + 16 // stride + 1) % (w // stride)].mean()
    assert inside > 0.5 > outside, (float(inside), float(outside))


def test_prior_adjustment_shifts_the_head_bias_and_survives_merging(base):
    from model.adapt import adjust_prior

    data = toy_data(12, base.config)
    lora = add_lora(base, AdaptConfig())
    with torch.no_grad():
        before = lora({"image": data.images.float() / 255}).logits["defect"]
    shift = adjust_prior(lora, "defect", torch.tensor([1.0, 1.0, 1.0]), torch.tensor([4.0, 1.0, 1.0]))
    torch.testing.assert_close(shift, torch.log(torch.tensor([2.0, 0.5, 0.5])))
    merged = merge(lora)
    with torch.no_grad():
        after = merged({"image": data.images.float() / 255}).logits["defect"]
    torch.testing.assert_close(after - before, shift.expand_as(before), atol=1e-5, rtol=1e-5)
