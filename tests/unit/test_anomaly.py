"""Good-only anomaly scoring (PatchCore) on a real texture: fitted on good crops, it ranks scratched ones higher."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from skimage import data

from model.anomaly import AnomalyConfig, PatchMemory, fit_patch_memory, greedy_coreset

SIZE = (96, 128)  # (h, w)


def crops(n: int, seed: int, scratched: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 3, 96, 128)`` RGB in [0, 1], crops of scikit-image's brick wall (CC0), with a dark scratch if asked,
    and ``(n, 96, 128)`` bool masks of the scratches."""
    rng = np.random.default_rng(seed)
    wall = cv2.cvtColor(data.brick(), cv2.COLOR_GRAY2RGB)
    images, masks = [], []
    for _ in range(n):
        y, x = rng.integers(0, wall.shape[0] - SIZE[0]), rng.integers(0, wall.shape[1] - SIZE[1])
        crop = np.ascontiguousarray(wall[y:y + SIZE[0], x:x + SIZE[1]])
        mask = np.zeros(SIZE, np.uint8)
        if scratched:
            p0 = (int(rng.integers(10, 50)), int(rng.integers(10, 40)))
            p1 = (p0[0] + int(rng.integers(40, 70)), p0[1] + int(rng.integers(20, 45)))
            cv2.line(crop, p0, p1, (20, 20, 20), 3)
            cv2.line(mask, p0, p1, 1, 9)
        images.append(torch.from_numpy(crop).permute(2, 0, 1).float() / 255)
        masks.append(torch.from_numpy(mask).bool())
    return torch.stack(images), torch.stack(masks)


def test_scratched_crops_score_above_good_ones_and_the_heat_sits_on_the_scratch(tmp_path) -> None:
    cfg = AnomalyConfig(image_size=SIZE, coreset=256, calibration_fraction=1 / 3, false_reject_rate=0.0)
    memory = fit_patch_memory(crops(24, seed=0)[0], cfg)  # 16 crops in the bank, 8 set the threshold
    scratched, where = crops(8, seed=2, scratched=True)
    good, bad = memory(crops(8, seed=1)[0]), memory(scratched)
    assert good.heat.shape == (8, *SIZE) and good.score.shape == (8,)
    assert float(bad.score.min()) > float(good.score.max())
    assert int(bad.anomalous.sum()) >= 7 and int(good.anomalous.sum()) <= 2
    for heat, mask in zip(bad.heat, where, strict=True):  # the map points at the scratch
        assert bool(mask.flatten()[heat.argmax()])
        assert float(heat[mask].mean()) > 1.2 * float(heat[~mask].mean())

    memory.save_pretrained(tmp_path)
    again = PatchMemory.from_pretrained(tmp_path)
    assert torch.equal(again.bank, memory.bank) and float(again.threshold) == float(memory.threshold)
    assert torch.allclose(again(scratched[:2]).score, bad.score[:2])


def test_greedy_coreset_spreads_its_picks_over_the_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=gen) * 10
    points = (centres[:, None] + 0.1 * torch.randn(5, 200, 16, generator=gen)).reshape(-1, 16)
    picked = greedy_coreset(points, 5, projection_dim=8)
    assert sorted((picked // 200).tolist()) == [0, 1, 2, 3, 4]  # one pick in each cluster
    assert torch.equal(greedy_coreset(points, 5000), torch.arange(1000))


def test_the_factory_handler_rejects_a_part_the_fitted_anomaly_model_flags(tmp_path) -> None:
    """A good-only model fitted (``fusionline fit factory``'s code) on one product's good parts, loaded by the
    factory line's handler beside the shipped classifier: good frames with a red blot painted on score above the
    fitted threshold and above every clean one, and are rejected; the decision's version names the anomaly model."""
    from connectors.recording import Replayer, read_labels
    from connectors.records import Sample
    from pipelines.lines import shipped_model
    from pipelines.lines.factory.fit import fit_good_parts
    from pipelines.lines.factory.handler import FactoryHandler, decode
    from pipelines.lines.factory.synth import synth_factory

    normal = synth_factory(tmp_path / "product", 20, seed=1, size=(160, 120), progress=False, product=2)
    fit_good_parts(normal, tmp_path / "fit", good=8, config=AnomalyConfig(image_size=SIZE, coreset=256))
    handler = FactoryHandler.from_pretrained(shipped_model("factory"), anomaly=tmp_path / "fit")
    handler.warm_up()
    labels = read_labels(normal)
    good = [s for s in Replayer(normal) if isinstance(s, Sample) and labels[s.item_id]["defect"] == "good"][:3]
    frames = [decode(s)["image"] for s in good]
    blotted = [f.copy() for f in frames]
    for frame in blotted:
        cv2.circle(frame, (80, 60), 14, (0, 0, 255), -1)
    answers = handler.predict({"image": frames + blotted})
    clean, marked = answers[:3], answers[3:]
    assert all(a.extra["anomalous"] and a.reject and a.extra["anomaly_score"] > 1 for a in marked)
    assert max(a.extra["anomaly_score"] for a in clean) < min(a.extra["anomaly_score"] for a in marked)
    assert "+anomaly:" in handler.model_version
    assert "anomaly_score" not in FactoryHandler.from_pretrained(shipped_model("factory")).predict(
        {"image": blotted[:1]})[0].extra

    # `fusionline eval factory --anomaly`: the same rule, scored against the labels
    from pipelines.lines.factory.evaluate import evaluate, format_report

    metrics = evaluate(shipped_model("factory"), normal, progress=False, anomaly=tmp_path / "fit")
    ratios = handler.anomaly.threshold_ratios([decode(s)["image"] for s in Replayer(normal) if isinstance(s, Sample)])
    found = metrics["anomaly"]
    assert found["flagged"] == sum(r > 1 for r in ratios) and found["n"] == len(labels) == 20
    assert all(0.0 <= found[k] <= 1.0 for k in ("auroc", "classifier_auroc", "fused_auroc"))
    assert f"flagged {found['flagged']}" in format_report(metrics)
    alone = evaluate(shipped_model("factory"), normal, progress=False)
    assert "anomaly" not in alone and metrics["reject"]["false_rejects"] >= alone["reject"]["false_rejects"]
