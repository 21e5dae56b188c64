"""Training: a tiny run learns; augmentation keeps boxes on their defects; datasets, train and evaluate pipelines."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from model.config import InspectorConfig, modality_column, presence_mask
from model.factory_model import FactoryInspector
from model.train import (TensorData, TrainConfig, augment_images, box_cells, drop_modalities, fit,
                         randomise_style)

CLASSES = {"defect": ["good", "scratch", "dent", "crack", "contamination"], "machine": ["normal", "bearing_click", "imbalance_hum"]}


def tiny_config(**overrides) -> InspectorConfig:
    base = dict(
        image_size=(64, 96), image_channels=(8, 16, 32), audio_channels=(8, 8, 16), d_model=32, n_heads=4,
        n_mels=32, n_fft=256, hop_length=128, clip_seconds=0.25, text_dim=24, version="tiny-test", dropout=0.0,
    )
    base.update(overrides)
    return InspectorConfig(**base)


def toy_data(n: int, cfg: InspectorConfig, seed: int = 0) -> TensorData:
    """Defect = a bright or dark square of a class-specific colour; machine = a class-specific tone."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    y_defect = torch.arange(n) % 5
    y_machine = torch.arange(n) % 3
    images = (torch.rand(n, 3, h, w, generator=g) * 60 + 90).to(torch.uint8)
    boxes = torch.full((n, 1, 4), float("nan"))
    for i in range(n):
        k = int(y_defect[i])
        if k:
            x0, y0 = int(torch.randint(0, w - 16, (1,), generator=g)), int(torch.randint(0, h - 16, (1,), generator=g))
            images[i, :, y0 : y0 + 14, x0 : x0 + 14] = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]][k - 1], dtype=torch.uint8)[:, None, None]
            boxes[i, 0] = torch.tensor([x0 / w, y0 / h, 14 / w, 14 / h])
    t = torch.arange(cfg.clip_samples) / cfg.sample_rate
    freq = torch.tensor([300.0, 1500.0, 4000.0])[y_machine]
    waves = 0.3 * torch.sin(2 * math.pi * freq[:, None] * t) + 0.02 * torch.randn(n, cfg.clip_samples, generator=g)
    return TensorData(images, waves[:, None].float(), {"defect": y_defect, "machine": y_machine}, boxes)


def test_tiny_training_run_lowers_the_loss():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = FactoryInspector(cfg)
    data = toy_data(48, cfg)
    cfg_train = TrainConfig(epochs=4, batch_size=12, lr=5e-3, crop=None, progress=False, threads=1, recalibrate_bn=48)
    history = fit(model, data, toy_data(10, cfg, seed=1), cfg_train)
    assert history["train_loss"][-1] < 0.8 * history["train_loss"][0], history["train_loss"]
    assert len(history["val_acc"]["defect"]) == 4 and len(history["val_loss"]) == 4
    assert set(history["final_val_acc"]) == {"defect", "machine"}
    assert not model.training


def test_training_is_deterministic():
    cfg = tiny_config()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = FactoryInspector(cfg)
        cfg_train = TrainConfig(epochs=2, batch_size=12, seed=3, crop=(32, 48), full_frame_epochs=1, progress=False, threads=1)
        h = fit(model, toy_data(24, cfg), None, cfg_train)
        runs.append((h["train_loss"], next(iter(model.state_dict().values())).clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_fit_stopped_after_an_epoch_resumes_where_it_stopped(tmp_path):
    cfg = tiny_config(dropout=0.1)  # dropout draws from torch's global generator: a resumed run must draw the same
    cfg_train = TrainConfig(epochs=4, batch_size=8, seed=3, crop=(32, 48), full_frame_epochs=1, progress=False,
                            threads=1, recalibrate_bn=24)

    def run(stop_after: int | None = None, resume: dict | None = None) -> tuple[FactoryInspector, dict]:
        torch.manual_seed(0)
        model = FactoryInspector(cfg)

        def on_epoch_end(state: dict) -> bool:
            torch.save(state, tmp_path / f"epoch-{state['epoch']}.pt")  # what a checkpoint goes through
            return state["epoch"] == stop_after

        history = fit(model, toy_data(24, cfg), toy_data(10, cfg, seed=1), cfg_train, resume=resume,
                      on_epoch_end=on_epoch_end)
        return model, history

    whole_model, whole = run()
    _, first = run(stop_after=2)
    assert first["epoch"] == [1, 2] and "final_val_acc" not in first
    resumed_model, resumed = run(resume=torch.load(tmp_path / "epoch-2.pt", weights_only=True))
    assert resumed["epoch"] == [1, 2, 3, 4] and resumed["steps"] == whole["steps"] == [3, 6, 9, 12]
    for key in ("train_loss", "val_loss", "lr", "final_val_loss", "final_val_acc"):
        assert resumed[key] == whole[key], key
    assert resumed["train_loss"][0] != resumed["train_loss"][-1]
    for name, tensor in whole_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], tensor), name


def test_data_parallel_shares_of_a_batch_make_up_the_whole_batch():
    from model.parallel import DataParallel
    from model.preprocess import LogMel
    from model.train import _batch

    cfg = tiny_config()
    model = FactoryInspector(cfg)
    data = toy_data(12, cfg)
    train_cfg = TrainConfig(crop=(32, 48), text_dropin=0.5, modality_dropout=0.3)
    index = torch.randperm(12, generator=torch.Generator().manual_seed(1))[:10]

    def build(rows: slice | None = None):
        gen = torch.Generator().manual_seed(5)  # every process draws the same random choices
        return _batch(model, data, index, LogMel(cfg), gen, train_cfg, train_cfg.crop, rows=rows)

    whole = build()
    shares = [build(DataParallel(rank, 3).rows(len(index))) for rank in range(3)]
    assert [len(share.present) for share in shares] == [3, 3, 4]
    for name in ("image", "audio", "text"):
        torch.testing.assert_close(torch.cat([share.inputs[name] for share in shares]), whole.inputs[name])
    for name in ("present", "cell_target", "physical"):
        assert torch.equal(torch.cat([getattr(share, name) for share in shares]), getattr(whole, name)), name
    for task in cfg.classes:
        assert torch.equal(torch.cat([share.labels[task] for share in shares]), whole.labels[task]), task


def test_augmentation_moves_boxes_with_the_defect():
    """A bright square on black: after flips/rotation/scale/shift its box must still cover the bright pixels."""
    n, h, w = 16, 96, 128
    images = torch.zeros(n, 3, h, w, dtype=torch.uint8)
    images[:, :, 30:50, 70:100] = 255
    boxes = torch.tensor([70 / w, 30 / h, 30 / w, 20 / h]).repeat(n, 1, 1)
    boxes = torch.cat([boxes, torch.full((n, 1, 4), float("nan"))], dim=1)  # a missing second instance
    x, moved = augment_images(images, boxes, torch.Generator().manual_seed(0))
    assert x.shape == (n, 3, h, w) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.isnan(moved[:, 1]).all()
    for i in range(n):
        grey = x[i].mean(0)
        bright = torch.nonzero(grey > (grey.min() + grey.max()) / 2)  # contrast/brightness moved the levels
        ys, xs = bright[:, 0].float(), bright[:, 1].float()
        bx, by, bw, bh = (moved[i, 0] * torch.tensor([w, h, w, h])).tolist()
        assert xs.min() >= bx - 3 and xs.max() <= bx + bw + 3, i
        assert ys.min() >= by - 3 and ys.max() <= by + bh + 3, i
    cells = box_cells(moved, (h // 16, w // 16))
    assert cells.shape == (n, 1, h // 16, w // 16) and (cells.flatten(1).sum(1) > 0).all()


def test_style_randomisation_redraws_the_look_and_keeps_the_shapes():
    """Only the chosen share changes; a changed image keeps its edges where they were (a bright square stays the
    brightest-edged region) and stays in [0, 1]; p = 0 changes nothing; a seed gives the same result."""
    n, h, w = 64, 48, 64
    images = torch.full((n, 3, h, w), 0.2)
    images[:, :, 16:32, 24:48] = 0.8
    redrawn = randomise_style(images, torch.Generator().manual_seed(1), 0.5)
    again = randomise_style(images, torch.Generator().manual_seed(1), 0.5)
    assert torch.equal(redrawn, again) and 0 <= redrawn.min() and redrawn.max() <= 1
    changed = (redrawn - images).flatten(1).abs().amax(1) > 1e-6
    assert 16 <= changed.sum() <= 48  # about half
    for i in torch.nonzero(changed).flatten():
        edges = (redrawn[i, :, :, 1:] - redrawn[i, :, :, :-1]).abs().sum(0)  # (h, w - 1): x+1 minus x
        column = edges[8:40].mean(0)  # rows across the square
        column[:2], column[-2:] = 0, 0  # the random convolution's zero padding draws the frame's border
        assert set(column.argsort()[-2:].tolist()) <= {22, 23, 24, 46, 47, 48}, int(i)
    assert torch.equal(randomise_style(images, torch.Generator().manual_seed(1), 0.0), images)


def test_synthetic_defects_reach_the_batch_labels_and_the_cam_targets():
    """With every good part given a drawn defect, the whole-frame batch has no good image label left, and each of
    those parts' CAM targets mark cells of the drawn class; the drawing does not touch the recording's tensors."""
    from model.preprocess import LogMel
    from model.train import _batch

    cfg = tiny_config(image_size=(96, 128))
    model = FactoryInspector(cfg)
    data = toy_data(20, cfg)
    before = data.images.clone()
    train_cfg = TrainConfig(synthetic_defects=1.0, modality_dropout=0.0)
    batch = _batch(model, data, torch.arange(20), LogMel(cfg), torch.Generator().manual_seed(0), train_cfg)
    good = data.labels["defect"] == 0
    drawn = batch.labels["defect"][good]
    assert (drawn > 0).all() and torch.equal(batch.labels["defect"][~good], data.labels["defect"][~good])
    for target, label in zip(batch.cell_target[good], drawn, strict=True):
        assert (target == label).any() and set(target.unique().tolist()) <= {0, int(label)}
    assert torch.equal(data.images, before)


def test_modality_dropout_never_hides_everything():
    present = presence_mask({"image": True, "audio": True}, 2000)
    dropped = drop_modalities(present, 0.5, torch.Generator().manual_seed(0))
    image, audio, text = (dropped[:, modality_column(m)] for m in ("image", "audio", "text"))
    assert (image | audio).all()
    assert 0.2 < (~image).float().mean() < 0.5  # both drawn -> one restored: P(hidden) = 0.5 - 0.125
    assert not text.any()


# -- pipelines: recording -> tensors -> model -> evaluation ----------------------------------------------


def _write_recording(root, n: int, seed: int) -> None:
    from connectors.recording import Manifest, RecordingWriter

    rng = np.random.default_rng(seed)
    with RecordingWriter(root, Manifest(line="factory", fps=10, classes=CLASSES)) as rec:
        for i in range(n):
            defect, machine = CLASSES["defect"][i % 5], CLASSES["machine"][i % 3]
            img = rng.integers(80, 160, (48, 72, 3), dtype=np.uint8)
            box = None
            if defect != "good":
                img[10:22, 20:34] = (0, 0, 255)
                box = [20, 10, 14, 12]
            t = np.arange(4000) / 16000
            wave = (0.3 * np.sin(2 * np.pi * (300, 1500, 4000)[i % 3] * t))[None].astype(np.float32)
            rec.add(f"part-{i:03d}", t=i / 10, image=img, audio=(wave, 16000),
                    labels={"defect": defect, "machine": machine, "box": box, "boxes": [box] if box else []})


def test_load_recording_decodes_and_caches(tmp_path):
    from pipelines.lines.factory.datasets import load_recording

    _write_recording(tmp_path / "rec", 12, seed=0)
    (tmp_path / "rec" / "audio" / "part-003.wav").write_bytes(b"not a wav")
    cfg = tiny_config()
    rec = load_recording(tmp_path / "rec", cfg, workers=2, progress=False)
    assert rec.item_ids == [f"part-{i:03d}" for i in range(12)]
    assert rec.data.images.shape == (12, 3, *cfg.image_size) and rec.data.images.dtype == torch.uint8
    assert rec.data.waveforms.shape == (12, 1, cfg.clip_samples)
    assert rec.data.labels["defect"].tolist() == [i % 5 for i in range(12)]
    assert torch.equal(rec.data.present[3], presence_mask({"image": True}, 1)[0])  # the broken clip masked, frame kept
    assert any(p["item_id"] == "part-003" and p["reason"].startswith("audio") for p in rec.problems)
    torch.testing.assert_close(rec.data.boxes[1, 0], torch.tensor([20 / 72, 10 / 48, 14 / 72, 12 / 48]))
    assert torch.isnan(rec.data.boxes[0]).all()
    caches = list((tmp_path / "rec").glob(".cache-*.pt"))
    assert len(caches) == 1
    again = load_recording(tmp_path / "rec", cfg, workers=1, progress=False)
    assert torch.equal(again.data.images, rec.data.images) and again.item_ids == rec.item_ids
    load_recording(tmp_path / "rec", tiny_config(image_size=(32, 48)), workers=1, progress=False)
    assert len(list((tmp_path / "rec").glob(".cache-*.pt"))) == 2  # another image size, another cache


def test_train_and_evaluate_pipelines(tmp_path):
    from pipelines.lines.factory.evaluate import TILE, evaluate, format_report
    from pipelines.lines.factory.train import train_factory

    _write_recording(tmp_path / "train", 30, seed=1)
    _write_recording(tmp_path / "test", 10, seed=2)
    out = train_factory(tmp_path / "train", tmp_path / "model", epochs=8, batch_size=8, seed=0, val_fraction=0.2,
                        config=tiny_config(), workers=1, progress=False, threads=1)
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "metrics.json", "training_curves.png"} <= names
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["items"] == {"train": 25, "val": 5, "problems": 0}  # 20 % of each class of 6, rounded
    losses = metrics["history"]["train_loss"]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses

    result = evaluate(out, tmp_path / "test", batch_size=4, workers=1, progress=False, out_dir=tmp_path / "eval")
    assert result["items"] == 10
    for task, names_ in CLASSES.items():
        m = result["tasks"][task]
        assert set(m["per_class"]) == set(names_)
        assert np.array(m["confusion"]).sum() == 10
        assert m["accuracy"] == pytest.approx(np.trace(np.array(m["confusion"])) / 10)
    # the machines differ by their tone, which the saved model learned (chance: 1/3); the recording's defects all
    # look alike (one blue square), so the defect task has nothing to learn but good against the rest
    assert result["tasks"]["machine"]["accuracy"] >= 0.8, result["tasks"]["machine"]
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()
    wrong = 10 - int(np.trace(np.array(result["tasks"]["defect"]["confusion"])))
    sheet = tmp_path / "eval" / "mistakes.jpg"
    if wrong:  # one TILE x TILE tile per misclassified frame, six to a row
        assert cv2.imread(str(sheet)).shape == (-(-wrong // 6) * TILE, 6 * TILE, 3)
    else:
        assert not sheet.exists()
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["tasks"]["defect"]["confusion"] == result["tasks"]["defect"]["confusion"]
    report = format_report(result)
    assert "defect: accuracy" in report and "machine: accuracy" in report and "AUROC" in report

    # a saved model fine-tuned at a smaller frame size (the cascade's small model): same weights' shapes, new size
    smaller = train_factory(tmp_path / "train", tmp_path / "smaller", epochs=1, batch_size=8, init_from=out,
                            image_size=(32, 48), train_config=TrainConfig(crop=(16, 24)), workers=1,
                            progress=False, threads=1)
    small = FactoryInspector.from_pretrained(smaller)
    assert small.config.image_size == (32, 48) and small.config.version == "tiny-test"
    base = FactoryInspector.from_pretrained(out)
    assert base.config.image_size == (64, 96)
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}

    # the saved model's audio encoder fine-tuned with per-band normalisation (the shipped recipe's last stage)
    banded = train_factory(tmp_path / "train", tmp_path / "banded", epochs=1, batch_size=8, init_from=out,
                           audio_norm="band", workers=1, progress=False, threads=1)
    reloaded = FactoryInspector.from_pretrained(banded)
    assert reloaded.config.audio_norm == "band" and reloaded.audio_encoder.norm == "band"
    assert base.config.audio_norm == "clip" and base.audio_encoder.norm == "clip"
    with pytest.raises(ValueError, match="audio_norm"):
        train_factory(tmp_path / "train", tmp_path / "never", epochs=1, init_from=out, audio_norm="loud", workers=1,
                      progress=False, threads=1)


@pytest.mark.parametrize(
    "scores, positive, expected",
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),  # the sklearn doc example
        ([1, 2, 3, 4], [0, 0, 1, 1], 1.0),
        ([1, 2, 3, 4], [1, 1, 0, 0], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # ties count one half
        ([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1], 0.875),
    ],
)
def test_auroc(scores, positive, expected):
    from pipelines.lines.factory.evaluate import auroc

    assert auroc(np.array(scores), np.array(positive, bool)) == pytest.approx(expected)


def test_auroc_matches_pairwise_definition():
    from pipelines.lines.factory.evaluate import auroc

    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 2)  # many ties
    positive = rng.random(200) < 0.3
    pos, neg = scores[positive], scores[~positive]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert auroc(scores, positive) == pytest.approx(pairwise)
    assert math.isnan(auroc(scores, np.zeros(200, bool)))


def test_classification_metrics():
    from pipelines.lines.factory.evaluate import classification_metrics

    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.1
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))


def test_meta_weighting_learns_the_schedule_on_a_held_out_split():
    """``task_weighting="meta"``: k and t0 move by hypergradient steps, λ_t is recorded, training still learns."""
    cfg = tiny_config()
    torch.manual_seed(0)
    model = FactoryInspector(cfg)
    cfg_train = TrainConfig(epochs=4, batch_size=12, lr=5e-3, crop=None, progress=False, threads=1, recalibrate_bn=0,
                            task_weighting="meta", meta_every=2, meta_lr=0.2, meta_fraction=0.25)
    history = fit(model, toy_data(48, cfg), None, cfg_train)
    trace = history["meta_trace"]
    assert len(trace) == 4  # 24 items held out, 24 train: 2 steps an epoch, a meta step every 2
    assert all(math.isfinite(t["d_share"]) for t in trace)
    start, end = trace[0], trace[-1]
    assert (end["midpoint"], end["steepness"]) != (start["midpoint"], start["steepness"])
    assert len(history["main_share"]) == 4 and all(0.0 < s < 1.0 for s in history["main_share"])
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_fixed_weighting_at_one_half_is_the_plain_sum_and_sigmoid_follows_its_schedule():
    from model.train import task_weighting

    main, aux = torch.tensor(0.8), torch.tensor(0.3)
    share = task_weighting(TrainConfig()).weight(0.9)
    assert float(2 * ((1 - share) * aux + share * main)) == pytest.approx(1.1)
    schedule = task_weighting(TrainConfig(task_weighting="sigmoid", weight_steepness=10.0, weight_midpoint=0.5))
    assert float(schedule.weight(0.0)) < 0.01 and float(schedule.weight(1.0)) > 0.99
    assert not any(p.requires_grad for p in schedule.parameters())
    with pytest.raises(ValueError, match="task_weighting"):
        task_weighting(TrainConfig(task_weighting="learned"))


def test_bf16_autocast_trains_on_cpu_and_fp16_is_refused_there():
    from model.train import autocast_dtype

    cfg = tiny_config()
    torch.manual_seed(0)
    model = FactoryInspector(cfg)
    cfg_train = TrainConfig(epochs=2, batch_size=12, lr=5e-3, crop=None, progress=False, threads=1, recalibrate_bn=0,
                            precision="bf16")
    computed_in: set[torch.dtype] = set()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(lambda _m, _args, out: computed_in.add(out.dtype))
    history = fit(model, toy_data(24, cfg), None, cfg_train)
    assert computed_in == {torch.bfloat16}  # every convolution and linear layer of every step ran under autocast
    assert all(math.isfinite(x) for x in history["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay fp32
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    with pytest.raises(ValueError, match="CUDA"):
        autocast_dtype(torch.device("cpu"), "fp16")


def test_mistake_tile_centres_the_labelled_defect_even_at_the_border():
    from pipelines.lines.factory.evaluate import TILE, mistake_tile

    frame = np.full((480, 640, 3), 200, np.uint8)
    frame[:40, 600:] = 0  # a dark defect in the top-right corner
    tile = mistake_tile(frame, [[600, 0, 40, 40]], "part-1 crack->good 0.9")
    assert tile.shape == (TILE, TILE, 3)
    assert (tile[TILE // 2, TILE // 2] == 0).all()  # the defect sits in the middle, undistorted
    assert (tile[TILE - 5, 5] == 200).all()  # the part below-left of it
    whole = mistake_tile(frame, [], "part-2 good->dent 0.6")  # no box: the whole frame
    assert whole.shape == (TILE, TILE, 3)
