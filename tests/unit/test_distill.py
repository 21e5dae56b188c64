"""Distillation and contrastive alignment: the losses go down and the student moves towards the teacher."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from model.config import InspectorConfig
from model.lab.distill import (
    AlignmentHeads,
    DistillConfig,
    agreement,
    contrastive_pretrain,
    distill,
    distill_loss,
    evaluate_alignment,
    student_config,
)
from model.factory_model import FactoryInspector

CLASSES = {"defect": ["good", "scratch", "dent"], "machine": ["normal", "hum"]}


def tiny_config(width: int = 8, **overrides) -> InspectorConfig:
    default = InspectorConfig()  # stage counts follow whatever the encoders take
    base = dict(
        image_size=(32, 48), image_channels=tuple(width for _ in default.image_channels),
        image_blocks=tuple(1 for _ in default.image_blocks),
        audio_channels=tuple(width for _ in default.audio_channels), d_model=16, n_heads=2, n_mels=16, n_fft=128,
        hop_length=64, clip_seconds=0.25, text_dim=12, classes=CLASSES, version="tiny-distill", dropout=0.0,
    )
    base.update(overrides)
    return InspectorConfig(**base)


@dataclass
class Data:
    images: torch.Tensor
    waveforms: torch.Tensor
    labels: dict[str, torch.Tensor]
    present: torch.Tensor | None = None
    texts: torch.Tensor | None = None


def random_data(n: int, cfg: InspectorConfig, seed: int = 0, text: bool = False) -> Data:
    """Items whose image and audio share a latent ``z``: image brightness and tint, audio tone pitch (and a
    text vector), plus noise; labels are random."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    z = torch.rand(n, generator=g)
    tint = torch.rand(n, 3, generator=g)
    base = 40 + 170 * z[:, None, None, None] * (0.5 + 0.5 * tint[:, :, None, None])
    images = (base + 25 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 255).to(torch.uint8)
    t = torch.arange(cfg.clip_samples) / cfg.sample_rate
    freq = 300 + 3000 * z[:, None]
    waves = (0.3 * torch.sin(2 * torch.pi * freq * t) + 0.02 * torch.randn(n, cfg.clip_samples, generator=g))[:, None]
    present = torch.tensor([True, True, text]).expand(n, 3).clone()
    texts = torch.cat([z[:, None], tint], 1) @ torch.randn(4, cfg.text_dim, generator=g) if text else None
    return Data(
        images, waves.float(),
        {"defect": torch.randint(0, 3, (n,), generator=g), "machine": torch.randint(0, 2, (n,), generator=g)},
        present, texts,
    )


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_student_config_is_narrower_and_preprocesses_alike():
    teacher = tiny_config(width=16, d_model=32, n_heads=4)
    student = student_config(teacher, width=0.5)
    assert all(s < t for s, t in zip(student.image_channels, teacher.image_channels))
    assert all(s < t for s, t in zip(student.audio_channels, teacher.audio_channels))
    assert student.d_model == 16 and student.classes == teacher.classes
    assert (student.image_size, student.n_mels, student.sample_rate) == (teacher.image_size, teacher.n_mels,
                                                                         teacher.sample_rate)
    n_t = sum(p.numel() for p in FactoryInspector(teacher).parameters())
    n_s = sum(p.numel() for p in FactoryInspector(student).parameters())
    assert n_s < n_t / 2


def test_distill_loss_is_zero_kl_for_identical_logits_and_ignores_unknown_labels():
    logits = {"defect": torch.randn(4, 3), "machine": torch.randn(4, 2)}
    labels = {"defect": torch.full((4,), -1), "machine": torch.full((4,), -1)}
    loss, parts = distill_loss(logits, logits, labels, temperature=3.0, alpha=1.0)
    assert abs(float(loss)) < 1e-5 and parts["defect_ce"] == 0.0
    other = {k: v + torch.randn_like(v) for k, v in logits.items()}
    assert float(distill_loss(other, logits, labels, temperature=3.0, alpha=1.0)[0]) > 1e-3


def test_distill_lowers_loss_and_student_follows_teacher():
    torch.manual_seed(0)
    t_cfg = tiny_config(width=8)
    teacher = FactoryInspector(t_cfg).eval()
    # a teacher with confident, input-dependent answers: scale its heads' last layers up
    with torch.no_grad():
        for head in teacher.heads.values():
            head.net[-1].weight.mul_(20.0)
    student = FactoryInspector(student_config(t_cfg, width=0.5, d_model=8))
    data = random_data(48, t_cfg)
    before = agreement(teacher, student, data, DistillConfig(batch_size=16))
    cfg = DistillConfig(epochs=6, batch_size=16, lr=5e-3, temperature=2.0, alpha=0.9, threads=1)
    history = distill(teacher, student, data, cfg)
    after = agreement(teacher, student, data, DistillConfig(batch_size=16))
    assert history["loss"][-1] < history["loss"][0]
    assert after["defect_kl"] + after["machine_kl"] < before["defect_kl"] + before["machine_kl"]
    assert not any(p.requires_grad for p in teacher.parameters())


def test_distill_refuses_students_that_preprocess_differently():
    t_cfg = tiny_config()
    s_cfg = tiny_config(n_mels=24)
    with pytest.raises(ValueError, match="n_mels"):
        distill(FactoryInspector(t_cfg), FactoryInspector(s_cfg), random_data(4, t_cfg), DistillConfig(epochs=1))


@pytest.mark.parametrize("text", [False, True])
def test_contrastive_pretraining_reduces_alignment_loss(text):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = FactoryInspector(cfg)
    data = random_data(32, cfg, seed=1, text=text)
    dims = {"image": model.image_encoder.out_dim, "audio": model.audio_encoder.out_dim}
    if text:
        dims["text"] = model.text_encoder.out_dim
    heads = AlignmentHeads(dims, dim=16)
    dcfg = DistillConfig(epochs=8, batch_size=16, lr=3e-3, threads=1)
    before = evaluate_alignment(model, heads, data, dcfg)
    router_before = {k: v.clone() for k, v in model.router.state_dict().items()}
    history = contrastive_pretrain(model, data, dcfg, heads=heads)
    after = evaluate_alignment(model, heads, data, dcfg)
    assert history["heads"] is heads and history["loss"][-1] < history["loss"][0]
    assert after < before - 0.1
    # only the encoders (and the alignment heads) are trained
    assert all(torch.equal(v, model.router.state_dict()[k]) for k, v in router_before.items())


def test_cam_distillation_is_zero_for_identical_maps_and_weighs_the_teachers_defect_cells():
    from model.lab.distill import cam_distill_loss

    teacher = torch.zeros(2, 3, 4, 5)
    teacher[0, 1, 1, 2] = 8.0  # one cell the teacher calls defect class 1
    assert float(cam_distill_loss(teacher.clone(), teacher, nominal=0)) < 1e-6
    wrong_at_defect = teacher.clone()
    wrong_at_defect[0, 1, 1, 2] = 0.0
    wrong_elsewhere = teacher.clone()
    wrong_elsewhere[1, 1, 0, 0] = 8.0
    heavy = cam_distill_loss(wrong_at_defect, teacher, nominal=0, temperature=1.0, pos_weight=3.0)
    light = cam_distill_loss(wrong_at_defect, teacher, nominal=0, temperature=1.0, pos_weight=1.0)
    assert float(heavy) > float(light) > 0
    assert float(cam_distill_loss(wrong_elsewhere, teacher, nominal=0)) > 0


def test_distill_trains_the_students_defect_map_towards_the_teachers():
    torch.manual_seed(0)
    t_cfg = tiny_config(width=8)
    teacher = FactoryInspector(t_cfg).eval()
    student = FactoryInspector(student_config(t_cfg, width=0.5, d_model=8))
    data = random_data(32, t_cfg)
    from model.lab.distill import _inputs, cam_distill_loss

    def cam_gap() -> float:
        student.eval()
        with torch.no_grad():
            inputs = _inputs(data, torch.arange(32), t_cfg, torch.device("cpu"))
            return float(cam_distill_loss(student(*inputs).cam, teacher(*inputs).cam, nominal=0))

    before = cam_gap()
    distill(teacher, student, data, DistillConfig(epochs=6, batch_size=16, lr=5e-3, alpha=0.0, cam_weight=5.0,
                                                  threads=1))
    assert cam_gap() < 0.7 * before
