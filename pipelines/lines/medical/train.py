"""Train the nodule model on a labelled medical recording, in one function: load -> candidates -> fusion -> save.

1. **Load** every case once (:func:`~pipelines.lines.medical.datasets.load_cases`, cached) and split off a
   validation share (stratified by nodule presence).
2. **Candidates**: the blob filter (:func:`~model.blobs.find_peaks`, the inference path) runs over every case once;
   a gradient-boosted tree ensemble (scikit-learn's ``HistGradientBoostingClassifier``, copied into the model as a
   :class:`~model.tree_ensemble.TreeEnsemble`) learns from the training cases' peaks which of them lie on the
   nodule, and ranks every case's peaks; the best ``K`` are its candidates. A training case with a nodule that none
   of its candidates hits gets one at the nodule instead of its weakest, so the crop encoder always sees the nodule.
3. **Fusion**: crop encoder, record and note encoders, router and heads on the cached crops (flips as
   augmentation, modality dropout), with per-candidate losses (is it the nodule, offset to its centre, diameter)
   and the case losses (presence, malignancy where a nodule is, diameter).

Example:
    >>> model_dir = train_medical("data/medical-train", "runs/medical", seed=0)
    >>> sorted(p.name for p in model_dir.iterdir())
    ['config.json', 'curves.png', 'model.safetensors', 'training.json']
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from connectors.fhir import RECORD_FEATURES
from model.blobs import Peaks, best_peaks, find_peaks
from model.nodule_config import NODULE_MODALITIES, NoduleConfig
from model.nodule_model import NoduleFusionModel
from model.tree_ensemble import TreeEnsemble
from pipelines.lines.medical.datasets import MedicalCases, load_cases
from pipelines.lines.medical.handler import CaseTensors, stack_cases

log = logging.getLogger("fusionline.medical.train")

#: A candidate "is" the nodule when its centre lies within the nodule's radius plus this margin (mm).
HIT_MARGIN_MM = 2.0

#: The candidate ranker's positives (peaks on a nodule), all together, weigh this share of its negatives.
RANKER_POSITIVE_SHARE = 0.05

#: Fewer peaks on a nodule than this in the training cases: no ranker is fitted (blobness ranks the peaks).
MIN_RANKER_POSITIVES = 20


@dataclass
class Schedule:
    """The training recipe (defaults: the shipped model's).

    Attributes:
        epochs / batch_size / lr / weight_decay: the fusion stage.
        val_fraction: share of the cases held out for per-epoch validation (stratified by presence).
    """

    epochs: int = 45
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15


def train_medical(
    data: str | Path,
    out: str | Path,
    seed: int = 0,
    epochs: int | None = None,
    threads: int = 2,
    progress: bool = True,
    workers: int = 2,
    config: NoduleConfig | None = None,
    schedule: Schedule | None = None,
) -> Path:
    """Train a :class:`~model.nodule_model.NoduleFusionModel` on the labelled recording ``data``; save it to ``out``.

    Args:
        data: a labelled medical recording (``labels.jsonl`` with ``nodule``, ``malignancy``, ``center_vox``,
            ``diameter_mm``).
        out: where ``model.safetensors``, ``config.json``, ``training.json`` and ``curves.png`` go.
        seed: fixes the split, the initialisation, the patches and the augmentation.
        epochs: overrides the schedule's fusion epochs.
        threads: torch threads.
        progress: progress bars.
        workers: decoding threads for the recording (first load; later loads read the cache).
        config: model configuration (its record features and their normalisation are set from the data).
        schedule: the rest of the recipe (:class:`Schedule`).

    Returns:
        ``out``.
    """
    started = time.perf_counter()
    out = Path(out)
    torch.set_num_threads(threads)
    schedule = schedule or Schedule()
    schedule.epochs = epochs if epochs is not None else schedule.epochs
    config = config or NoduleConfig(record_features=list(RECORD_FEATURES))

    cases = load_cases(data, config, workers=workers, progress=progress)
    if len(cases) < 4:
        raise ValueError(f"{data}: {len(cases)} usable cases, too few to train on")
    for problem in cases.quarantined[:20]:
        log.warning("%s: %s", problem["item_id"], problem["reason"])
    config.record_mean, config.record_std = record_statistics(cases, config)
    loaded = time.perf_counter()
    train_index, val_index = split(cases, schedule.val_fraction, seed)

    train_cases, val_cases = cases.subset(train_index), cases.subset(val_index)
    train_peaks = case_peaks(train_cases, config, progress, workers)
    val_peaks = case_peaks(val_cases, config, progress, workers)
    ranker, ranker_summary = fit_ranker(train_peaks, train_cases, config, seed)
    ranker_summary["val_peak_recall"] = peak_recall(val_peaks, val_cases, config)
    config.ranker_trees, config.ranker_nodes = len(ranker.roots), len(ranker.feature)
    torch.manual_seed(seed)
    model = NoduleFusionModel(config)
    model.ranker.load_state_dict(ranker.state_dict())
    train_set = candidate_set(model, train_cases, train_peaks, place_missed=True, seed=seed)
    val_set = candidate_set(model, val_cases, val_peaks)
    del train_peaks, val_peaks
    located = time.perf_counter()
    history = train_fusion(model, train_set, val_set, schedule, seed, progress)
    history["val_candidate_recall"] = candidate_recall(val_set)
    trained = time.perf_counter()

    model.save_pretrained(out)
    summary: dict[str, Any] = {
        "model_version": config.version,
        "train_dir": str(data),
        "items": {"train": len(train_index), "val": len(val_index), "quarantined": len(cases.quarantined)},
        "quarantined": cases.quarantined,
        "seconds": {"load": loaded - started, "candidates": located - loaded,
                    "fusion": trained - located, "total": time.perf_counter() - started},
        "schedule": schedule.__dict__,
        "seed": seed,
        "threads": threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "ranker": ranker_summary,
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_curves(history, out / "curves.png")
    log.info("trained %s in %.0f s", out, summary["seconds"]["total"])
    return out


def record_statistics(cases: MedicalCases, config: NoduleConfig) -> tuple[list[float], list[float]]:
    """Mean and standard deviation (at least 1e-3) of each record feature over the cases that have it."""
    means, stds = [], []
    for name in config.record_features:
        values = np.array([float(m.record[name]) for m in cases.meta if m.record and m.record.get(name) is not None])
        values = values[np.isfinite(values)]
        means.append(round(float(values.mean()), 6) if len(values) else 0.0)
        stds.append(round(max(float(values.std()), 1e-3), 6) if len(values) else 1.0)
    return means, stds


def split(cases: MedicalCases, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified (by nodule presence) random split of the case indices into train and validation."""
    rng = np.random.default_rng(seed)
    present = np.array([c.get("nodule") == "present" for c in cases.labels])
    val: list[int] = []
    for group in (np.flatnonzero(present), np.flatnonzero(~present)):
        val.extend(rng.permutation(group)[: int(round(val_fraction * len(group)))].tolist())
    chosen = set(val)
    return [i for i in range(len(cases)) if i not in chosen], sorted(val)


# -- labels -----------------------------------------------------------------------------------------------


def nodule_mm(label: dict[str, Any], spacing_mm: tuple[float, ...]) -> tuple[np.ndarray, float] | None:
    """The labelled nodule's centre in mm from the series' voxel 0 ``(slice, row, column)`` and its diameter, or
    None for a case without one."""
    if label.get("nodule") != "present" or label.get("center_vox") is None or not label.get("diameter_mm"):
        return None
    return np.asarray(label["center_vox"], np.float64) * np.asarray(spacing_mm), float(label["diameter_mm"])


# -- stage 1: candidates ------------------------------------------------------------------------------------


@dataclass
class CandidateSet:
    """The fusion stage's data: model inputs of every case and its targets.

    Attributes:
        inputs: :class:`CaseTensors` (crops ``(N, K, 2, S, S, S)`` float16 to save memory).
        nodule: ``(N,)`` float 0/1; malignancy: ``(N,)`` float, NaN where unknown or no nodule;
        log_diameter: ``(N,)`` log mm, NaN without a nodule.
        hit: ``(N, K)`` float 0/1, the candidate is the nodule; offset_mm: ``(N, K, 3)`` candidate -> nodule centre.
    """

    inputs: CaseTensors
    nodule: torch.Tensor
    malignancy: torch.Tensor
    log_diameter: torch.Tensor
    hit: torch.Tensor
    offset_mm: torch.Tensor

    def __len__(self) -> int:
        return len(self.nodule)


def case_peaks(cases: MedicalCases, config: NoduleConfig, progress: bool, workers: int = 2) -> list[Peaks]:
    """Every case's blob-filter peaks (:func:`~model.blobs.find_peaks`, the inference path, in ``workers``
    processes); the response volumes kept as float16 (the crops are)."""
    volumes = (cases.fine_float(i)[0, 0].numpy() for i in range(len(cases)))
    found: list[Peaks] = []
    with multiprocessing.get_context("fork").Pool(max(1, workers)) as pool:
        for peaks in tqdm(pool.imap(partial(find_peaks, config=config), volumes), total=len(cases), desc="peaks",
                          unit="case", disable=not progress, dynamic_ncols=True):
            peaks.response = peaks.response.astype(np.float16)
            found.append(peaks)
    return found


def on_nodule(points_mm: np.ndarray, label: dict[str, Any], series_spacing_mm: tuple[float, ...]) -> np.ndarray:
    """``(P,)`` bool: which points (``(P, 3)`` mm from the series' voxel 0) lie on the labelled nodule (within its
    radius plus :data:`HIT_MARGIN_MM`); all False without a nodule. The one hit criterion of training and
    evaluation."""
    found = nodule_mm(label, series_spacing_mm)
    if found is None:
        return np.zeros(len(points_mm), bool)
    centre, diameter = found
    return np.linalg.norm(centre - points_mm, axis=1) <= diameter / 2 + HIT_MARGIN_MM


def fit_ranker(peaks: list[Peaks], cases: MedicalCases, config: NoduleConfig, seed: int
               ) -> tuple[TreeEnsemble, dict[str, Any]]:
    """Fit the candidate ranker on the training cases' peaks (is the peak on the nodule?), the positives weighted to
    :data:`RANKER_POSITIVE_SHARE` of the negatives' total weight; returns it and what it was fitted on."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    features = np.concatenate([p.features for p in peaks])
    spacing = np.asarray(config.spacing_mm)
    hits = np.concatenate([on_nodule(p.at * spacing, cases.labels[i], cases.meta[i].spacing_mm)
                           for i, p in enumerate(peaks)])
    if hits.sum() < MIN_RANKER_POSITIVES:
        log.warning("only %d blob-filter peaks lie on a labelled nodule (fewer than %d): no candidate ranker is "
                    "fitted, peaks are ranked by blobness", int(hits.sum()), MIN_RANKER_POSITIVES)
        return TreeEnsemble(), {"trees": 0, "peaks": len(features), "on_nodule": int(hits.sum())}
    negatives_per_positive = (len(hits) - hits.sum()) / hits.sum()
    weight = np.where(hits, negatives_per_positive * RANKER_POSITIVE_SHARE, 1.0)
    started = time.perf_counter()
    # early stopping holds out a tenth of the peaks: only worth it with enough positives to score them
    classifier = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, max_leaf_nodes=31,
                                                early_stopping=bool(hits.sum() >= 50), random_state=seed)
    classifier.fit(features, hits, sample_weight=weight)
    ranker = TreeEnsemble.from_sklearn(classifier)
    log.info("candidate ranker: %d trees fitted on %d peaks (%d on a nodule) in %.0f s", len(ranker.roots),
             len(features), int(hits.sum()), time.perf_counter() - started)
    return ranker, {"trees": len(ranker.roots), "nodes": len(ranker.feature), "peaks": len(features),
                    "on_nodule": int(hits.sum()), "seconds": time.perf_counter() - started}


def peak_recall(peaks: list[Peaks], cases: MedicalCases, config: NoduleConfig) -> float:
    """Share of the cases with a nodule where any peak lies on it: the ceiling of the candidates' recall."""
    hits = [on_nodule(p.at * np.asarray(config.spacing_mm), cases.labels[i], cases.meta[i].spacing_mm).any()
            for i, p in enumerate(peaks) if nodule_mm(cases.labels[i], cases.meta[i].spacing_mm) is not None]
    return float(np.mean(hits)) if hits else math.nan


@torch.no_grad()
def candidate_set(model: NoduleFusionModel, cases: MedicalCases, peaks: list[Peaks], place_missed: bool = False,
                  seed: int = 0) -> CandidateSet:
    """Every case's candidates (the model's ranking of its ``peaks``, as :meth:`NoduleFusionModel.locate` ranks
    them) with the targets attached; with ``place_missed``, a case whose nodule none of its candidates hits gets
    one at the nodule (moved up to 2 mm) instead of its weakest."""
    config = model.config
    fine_spacing = np.asarray(config.spacing_mm)
    rng = np.random.default_rng(seed)
    rank = model.rank_peaks if model.ranker.fitted else None
    crops, centres, hits, offsets = [], [], [], []
    nodule, malignancy, log_diameter = [], [], []
    for i, found_peaks in enumerate(peaks):
        blobs = best_peaks(found_peaks, config, rank)
        at = torch.from_numpy(blobs.centres).float()
        found = nodule_mm(cases.labels[i], cases.meta[i].spacing_mm)
        offset = torch.zeros(config.candidates, 3)
        hit = torch.zeros(config.candidates)
        if found is not None:
            centre, diameter = found
            offset = torch.from_numpy(centre - at.numpy() * fine_spacing).float()
            hit = torch.from_numpy(on_nodule(blobs.centres * fine_spacing, cases.labels[i],
                                             cases.meta[i].spacing_mm)).float()
            if place_missed and not hit.any():
                at[-1] = torch.from_numpy((centre + rng.uniform(-2, 2, 3)) / fine_spacing).float()
                offset[-1] = torch.from_numpy(centre - at[-1].numpy() * fine_spacing).float()
                hit[-1] = 1.0
        response = blobs.response.astype(np.float32)
        crops.append(model.candidate_crops(cases.fine_float(i)[0], response, at).half())
        centres.append(at)
        hits.append(hit)
        offsets.append(offset)
        label = cases.labels[i]
        nodule.append(1.0 if found is not None else 0.0)
        malignancy.append({"malignant": 1.0, "benign": 0.0}.get(label.get("malignancy"), math.nan)
                          if found is not None else math.nan)
        log_diameter.append(math.log(found[1]) if found is not None else math.nan)
    inputs = stack_cases(cases.meta, torch.stack(crops), torch.stack(centres), config, cases.notes)
    return CandidateSet(inputs, torch.tensor(nodule), torch.tensor(malignancy), torch.tensor(log_diameter),
                        torch.stack(hits), torch.stack(offsets))


def candidate_recall(data: CandidateSet) -> float:
    """Share of the cases with a nodule where one of the candidates hits it."""
    has_nodule = data.nodule > 0
    return float(data.hit[has_nodule].any(dim=1).float().mean()) if has_nodule.any() else math.nan


# -- stage 2: fusion ----------------------------------------------------------------------------------------


def train_fusion(model: NoduleFusionModel, train: CandidateSet, val: CandidateSet, schedule: Schedule, seed: int,
                 progress: bool) -> dict[str, Any]:
    """Train the model on the cached candidates; returns the per-epoch history."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / schedule.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, schedule.lr,
                                                    total_steps=schedule.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, Any] = {"epoch": [], "train_loss": [], "val_loss": [], "val_nodule_auroc": [],
                               "val_malignancy_auroc": [], "val_diameter_mae_mm": []}
    bar = tqdm(range(schedule.epochs), desc="fusion", unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        for start in range(0, len(train), schedule.batch_size):
            index = order[start : start + schedule.batch_size]
            crops, offsets = flipped(train.inputs.crops[index].float(), train.offset_mm[index], gen)
            present = drop_modalities(train.inputs.present[index], model.config.modality_dropout, gen)
            out = model({"ct": crops, "record": train.inputs.record[index], "note": train.inputs.note[index]},
                        present)
            loss = fusion_loss(out, train, index, offsets, present)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += loss.item() * len(index)
        scores = validate(model, val)
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(total / len(train))
        for key, value in scores.items():
            history[f"val_{key}"].append(value)
        bar.set_postfix(loss=f"{total / len(train):.3f}", val_auc=f"{scores['nodule_auroc']:.3f}")
    model.eval()
    return history


def flipped(crops: torch.Tensor, offsets: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn each case's crops ``(B, K, C, S, S, S)`` in-plane at random: rows and columns swapped, then each
    flipped (the eight symmetries of the square; the offsets ``(B, K, 3)`` follow)."""
    crops, offsets = crops.clone(), offsets.clone()
    swap = torch.rand(len(crops), generator=gen) < 0.5
    if swap.any():
        crops[swap] = crops[swap].transpose(4, 5)
        offsets[swap] = offsets[swap][..., [0, 2, 1]]
    for axis in (1, 2):  # row, column
        flip = torch.rand(len(crops), generator=gen) < 0.5
        if flip.any():
            crops[flip] = crops[flip].flip(3 + axis)
            offsets[flip, :, axis] = -offsets[flip, :, axis]
    return crops, offsets


def drop_modalities(present: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """``present (B, M)`` with each modality dropped with probability ``p``; a sample keeps the CT when it would
    be left with nothing."""
    kept = present & (torch.rand(present.shape, generator=gen) >= p)
    empty = ~kept.any(dim=1)
    kept[empty, NODULE_MODALITIES.index("ct")] = present[empty, NODULE_MODALITIES.index("ct")]
    return kept


def fusion_loss(out, data: CandidateSet, index: torch.Tensor, offsets: torch.Tensor,
                present: torch.Tensor) -> torch.Tensor:
    """Case losses (presence; malignancy where a nodule is; diameter where a nodule is and the CT was seen) and
    candidate losses (is it the nodule; offset and diameter for the ones that are)."""
    nodule, malignancy, log_d = data.nodule[index], data.malignancy[index], data.log_diameter[index]
    hit = data.hit[index]
    loss = F.binary_cross_entropy_with_logits(out.nodule_logit, nodule)
    known = ~torch.isnan(malignancy)
    if known.any():
        loss = loss + F.binary_cross_entropy_with_logits(out.malignancy_logit[known], malignancy[known])
    sized = ~torch.isnan(log_d) & present[:, NODULE_MODALITIES.index("ct")]
    if sized.any():
        loss = loss + F.smooth_l1_loss(out.log_diameter[sized], log_d[sized], beta=0.1)
    cand = out.candidates
    loss = loss + F.binary_cross_entropy_with_logits(cand.logit, hit)
    is_hit = hit > 0
    if is_hit.any():
        loss = loss + F.smooth_l1_loss(cand.offset_mm[is_hit] / 10.0, offsets[is_hit] / 10.0, beta=0.1)
        target_d = log_d[:, None].expand_as(hit)[is_hit]
        loss = loss + F.smooth_l1_loss(cand.log_diameter[is_hit], target_d, beta=0.1)
    return loss


@torch.no_grad()
def validate(model: NoduleFusionModel, data: CandidateSet) -> dict[str, float]:
    """Validation loss, nodule and malignancy AUROC, diameter MAE (mm) with every modality the cases have."""
    from sklearn.metrics import roc_auc_score

    if not len(data):
        return {"loss": math.nan, "nodule_auroc": math.nan, "malignancy_auroc": math.nan, "diameter_mae_mm": math.nan}
    model.eval()
    index = torch.arange(len(data))
    out = model({"ct": data.inputs.crops.float(), "record": data.inputs.record, "note": data.inputs.note},
                data.inputs.present)
    loss = float(fusion_loss(out, data, index, data.offset_mm, data.inputs.present))
    y = data.nodule.numpy()
    nodule_auc = roc_auc_score(y, out.nodule_logit.numpy()) if 0 < y.sum() < len(y) else math.nan
    known = ~torch.isnan(data.malignancy)
    m = data.malignancy[known].numpy()
    malignancy_auc = roc_auc_score(m, out.malignancy_logit[known].numpy()) if 0 < m.sum() < len(m) else math.nan
    sized = ~torch.isnan(data.log_diameter)
    mae = float((out.log_diameter[sized].exp() - data.log_diameter[sized].exp()).abs().mean()) if sized.any() \
        else math.nan
    return {"loss": loss, "nodule_auroc": float(nodule_auc), "malignancy_auroc": float(malignancy_auc),
            "diameter_mae_mm": mae}


def plot_curves(history: dict[str, Any], path: Path) -> Path:
    """``curves.png``: fusion train/validation loss; validation AUROCs and diameter MAE per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = history["epoch"]
    ax_loss.plot(epochs, history["train_loss"], marker="o", label="train")
    ax_loss.plot(epochs, history["val_loss"], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="fusion loss")
    ax_loss.legend()
    ax_auc.plot(epochs, history["val_nodule_auroc"], marker="o", label="nodule AUROC")
    ax_auc.plot(epochs, history["val_malignancy_auroc"], marker="o", label="malignancy AUROC")
    ax_auc.set(xlabel="epoch", ylabel="AUROC", title="validation", ylim=(0.4, 1.01))
    ax_mae = ax_auc.twinx()
    ax_mae.plot(epochs, history["val_diameter_mae_mm"], color="grey", linestyle="--", label="diameter MAE")
    ax_mae.set(ylabel="diameter MAE (mm)")
    ax_auc.legend(loc="lower right")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
