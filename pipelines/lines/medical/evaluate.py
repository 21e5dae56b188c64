"""Evaluate a saved nodule model on a labelled medical recording through the line's own inference path
(:func:`~pipelines.lines.medical.handler.decode` -> :func:`~pipelines.lines.medical.handler.case_tensors` ->
:meth:`~pipelines.lines.medical.handler.MedicalHandler.findings`).

A case the line would set aside (an event the replayer refuses, a series or record that does not decode) is counted
as quarantined, with its stage and reason, and not scored.

Metrics:

- ``tasks.nodule``: AUROC of the nodule probability over all scored cases; accuracy, sensitivity, specificity at
  the model's threshold;
- ``tasks.malignancy``: AUROC of the malignancy risk over the cases with a nodule and a known malignancy;
- ``ablation``: both AUROCs with the router given only some modalities, the others masked for every case (the
  presence mask, as for a sample that lacks them): ``ct_only`` (record and note masked), ``record_only`` (the
  record and the note, CT masked), ``fused`` (all);
- ``localisation``: over the cases with a nodule, the share whose predicted centre lies within the nodule's radius
  (in mm), whether or not the case was called ("hit_rate"), and the share called *and* hit ("called_hit_rate");
- ``diameter``: mean absolute error (mm) of the predicted diameter over the cases with a nodule;
- ``candidate_recall``: the share of the nodules that one of the ``K`` candidates lies on (within the radius plus
  :func:`~pipelines.lines.medical.train.on_nodule`): a nodule no candidate is on cannot be found;
- ``nodule_auroc_by``: the presence AUROC of each kind of nodule (its density, site and size band) against all
  the cases without one.

With an output folder, ``metrics.json`` and ``roc.png`` (ROC curves of presence and malignancy per ablation) are
written there.

Example:
    >>> metrics = evaluate_medical("tests/data/models/medical-v3", "data/medical-holdout", out="runs/eval")
    >>> print(format_report(metrics))
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from connectors.records import Quarantined, Sample
from connectors.recording import Replayer, read_labels
from pipelines.lines.medical.datasets import decoded_ahead
from pipelines.lines.medical.train import on_nodule
from pipelines.lines.medical.handler import (
    CaseTensors,
    DecodedCase,
    MedicalHandler,
    case_tensors,
    decode,
    series_centres,
)

#: Modalities masked for each ablation (presence mask), by name.
ABLATIONS: dict[str, tuple[str, ...]] = {"fused": (), "ct_only": ("record", "note"), "record_only": ("ct",)}


def evaluate_medical(
    model_dir: str | Path,
    data_dir: str | Path,
    out: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Score every labelled case of ``data_dir`` with the model in ``model_dir``.

    Args:
        out: when given, ``metrics.json`` and ``roc.png`` are written there.
        workers: decoding threads.
        device: for the model (None: cuda if available, else cpu).

    Returns:
        ``{"tasks": {"nodule": {"auroc", ...}, "malignancy": {"auroc", "n"}}, "ablation": {...},
        "localisation": {...}, "diameter": {...}, "items": n scored, "quarantined": [{"item_id", "stage",
        "reason"}], ...}`` (JSON-serialisable).
    """
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    handler = MedicalHandler.from_pretrained(model_dir, device=device)
    labels = read_labels(data_dir)
    started = time.perf_counter()
    quarantined: list[dict[str, str]] = []
    batches: list[CaseTensors] = []
    ids: list[str] = []
    for item_id, decoded in _line_inputs(data_dir, workers, progress):
        if isinstance(decoded, Quarantined):
            quarantined.append({"item_id": item_id, "stage": decoded.stage, "reason": decoded.reason})
        elif item_id in labels:
            batches.append(case_tensors([decoded], handler.model))
            ids.append(item_id)
    cases = _concat(batches)
    predicted = {name: _scores(handler, cases, absent) for name, absent in ABLATIONS.items()} if ids else {}
    truth = [labels[i] for i in ids]
    metrics: dict[str, Any] = {
        "model_dir": str(model_dir),
        "model_version": handler.model_version,
        "recording": str(data_dir),
        "items": len(ids),
        "quarantined": quarantined,
        "seconds": {"total": time.perf_counter() - started},
        "device": handler.device,
        "ablation_method": "modalities masked in the router's presence mask for every case: ct_only masks the "
                           "record and the note, record_only masks the CT (record and note kept)",
        **score(truth, predicted, handler.config.threshold),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if ids:
            metrics["roc_png"] = str(plot_roc(truth, predicted, out / "roc.png"))
        save_metrics(metrics, out / "metrics.json")
    return metrics


def _line_inputs(data_dir: Path, workers: int, progress: bool) -> Iterator[tuple[str, DecodedCase | Quarantined]]:
    """``(item_id, DecodedCase or Quarantined)`` per event in recording order: what a replica predicts on, or the
    quarantine it would record, decoded in ``workers`` threads a few cases ahead."""
    replayer = Replayer(data_dir)
    events = tqdm(replayer, total=len(replayer), desc=f"score {data_dir.name}", unit="case", disable=not progress,
                  dynamic_ncols=True)
    return decoded_ahead(events, decode, workers)


def _concat(batches: list[CaseTensors]) -> CaseTensors | None:
    if not batches:
        return None
    return CaseTensors(*(torch.cat([getattr(b, name) for b in batches])
                         for name in ("crops", "centres", "record", "note", "present")),
                       [s for b in batches for s in b.spacing_mm], [s for b in batches for s in b.shape])


def _scores(handler: MedicalHandler, cases: CaseTensors, absent: tuple[str, ...]) -> dict[str, Any]:
    """The findings' numbers for every case with the ``absent`` modalities masked; the centre and the diameter
    whether or not the case is called (a finding shows them only when it is)."""
    out = handler.predict(cases, absent)
    findings = handler.answers(cases, out)
    return {
        "nodule": np.array([f.extra["nodule_probability"] for f in findings]),
        "malignancy": np.array([f.extra["malignancy_risk"] for f in findings]),
        "called": np.array([f.reject for f in findings]),
        "centre": series_centres(cases, out, handler.config),
        "diameter": np.exp(out.log_diameter.cpu().numpy()),
        "spacing_mm": cases.spacing_mm,
        "candidates_mm": cases.centres.cpu().numpy() * np.asarray(handler.config.spacing_mm),
    }


def score(truth: list[dict[str, Any]], predicted: dict[str, dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The metrics of the module docstring from the labels and the per-ablation predictions."""
    from sklearn.metrics import roc_auc_score

    def auroc(y: np.ndarray, s: np.ndarray) -> float:
        return float(roc_auc_score(y, s)) if len(y) and 0 < y.sum() < len(y) else math.nan

    present = np.array([t.get("nodule") == "present" for t in truth])
    malignant = np.array([t.get("malignancy") == "malignant" for t in truth])
    known = present & np.array([t.get("malignancy") in ("benign", "malignant") for t in truth])
    ablation = {
        name: {"nodule_auroc": auroc(present, p["nodule"]) if p else math.nan,
               "malignancy_auroc": auroc(malignant[known], p["malignancy"][known]) if p else math.nan}
        for name, p in predicted.items()
    }
    fused = predicted.get("fused")
    if fused is None:
        return {"tasks": {"nodule": {"auroc": math.nan, "n": 0}, "malignancy": {"auroc": math.nan, "n": 0}},
                "ablation": ablation, "localisation": {}, "diameter": {}}
    called = fused["called"]
    hits, errors = [], []
    for i in np.flatnonzero(present):
        spacing = np.asarray(fused["spacing_mm"][i])
        distance = np.linalg.norm((np.asarray(fused["centre"][i]) - np.asarray(truth[i]["center_vox"])) * spacing)
        hits.append(distance <= truth[i]["diameter_mm"] / 2)
        errors.append(abs(fused["diameter"][i] - truth[i]["diameter_mm"]))
    hits_arr = np.array(hits, dtype=bool)
    candidate_hits = [on_nodule(fused["candidates_mm"][i], truth[i], fused["spacing_mm"][i]).any()
                      for i in np.flatnonzero(present)]
    n_pos, n_neg = int(present.sum()), int((~present).sum())
    return {
        "tasks": {
            "nodule": {
                "auroc": ablation["fused"]["nodule_auroc"],
                "threshold": threshold,
                "accuracy": float((called == present).mean()),
                "sensitivity": float(called[present].mean()) if n_pos else math.nan,
                "specificity": float((~called[~present]).mean()) if n_neg else math.nan,
                "n": len(present), "positives": n_pos,
            },
            "malignancy": {"auroc": ablation["fused"]["malignancy_auroc"], "n": int(known.sum()),
                           "malignant": int((malignant & known).sum())},
        },
        "ablation": ablation,
        "fused_margin": {
            task: ablation["fused"][f"{task}_auroc"] - max(ablation["ct_only"][f"{task}_auroc"],
                                                           ablation["record_only"][f"{task}_auroc"])
            for task in ("nodule", "malignancy")
        },
        "localisation": {
            "hit_rate": float(hits_arr.mean()) if n_pos else math.nan,
            "called_hit_rate": float((hits_arr & called[present]).mean()) if n_pos else math.nan,
            "criterion": "predicted centre within the nodule's radius (mm)",
            "n": n_pos,
        },
        "diameter": {"mae_mm": float(np.mean(errors)) if errors else math.nan,
                     "median_abs_error_mm": float(np.median(errors)) if errors else math.nan, "n": len(errors)},
        "candidate_recall": float(np.mean(candidate_hits)) if n_pos else math.nan,
        "nodule_auroc_by": {
            group: {kind: {"auroc": auroc(present[chosen], fused["nodule"][chosen]), "n": int((chosen & present).sum())}
                    for kind, chosen in ((k, ~present | (present & (kinds == k))) for k in sorted(set(kinds[present])))}
            for group, kinds in nodule_kinds(truth).items()
        },
    }


def nodule_kinds(truth: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per case, the kind of its nodule by density, site and size band (\"\" without a nodule)."""
    def band(t: dict[str, Any]) -> str:
        d = t.get("diameter_mm") or 0.0
        return "" if t.get("nodule") != "present" else "< 6 mm" if d < 6 else "6-10 mm" if d < 10 else ">= 10 mm"

    present = [t.get("nodule") == "present" for t in truth]
    return {"density": np.array([t.get("density", "") if p else "" for t, p in zip(truth, present)]),
            "site": np.array([t.get("site", "") if p else "" for t, p in zip(truth, present)]),
            "size": np.array([band(t) for t in truth])}


def format_report(metrics: dict[str, Any]) -> str:
    """A plain-text report: cases scored and quarantined, AUROCs with the ablation, localisation, diameter, the
    candidates' recall and presence by kind of nodule."""
    q = metrics.get("quarantined", [])
    lines = [f"model {metrics.get('model_version', '?')} on {metrics.get('recording', '?')}: {metrics.get('items', 0)} "
             f"cases scored, {len(q)} quarantined as the line would"
             + (f" (first: {q[0]['item_id']}: {q[0]['reason']})" if q else "")]
    nodule, malignancy = metrics["tasks"]["nodule"], metrics["tasks"]["malignancy"]
    lines.append(f"nodule presence: AUROC {_f(nodule.get('auroc'))}, sensitivity {_f(nodule.get('sensitivity'))}, "
                 f"specificity {_f(nodule.get('specificity'))} at {nodule.get('threshold')}")
    lines.append(f"malignancy (over {malignancy.get('n', 0)} nodules): AUROC {_f(malignancy.get('auroc'))}")
    lines.append("ablation (AUROC)    presence  malignancy")
    for name, row in metrics.get("ablation", {}).items():
        lines.append(f"  {name:<16} {_f(row['nodule_auroc']):>9} {_f(row['malignancy_auroc']):>11}")
    loc, dia = metrics.get("localisation") or {}, metrics.get("diameter") or {}
    if loc:
        lines.append(f"localisation over {loc['n']} nodules: hit rate {_f(loc['hit_rate'])} (called and hit "
                     f"{_f(loc['called_hit_rate'])})")
    if dia:
        lines.append(f"diameter: MAE {_f(dia['mae_mm'], 2)} mm (median {_f(dia['median_abs_error_mm'], 2)} mm)")
    if "candidate_recall" in metrics:
        recall = _f(metrics["candidate_recall"], 2)
        lines.append(f"candidates: one lies on the nodule in {recall} of the cases with one")
    for group, kinds in metrics.get("nodule_auroc_by", {}).items():
        lines.append(f"presence AUROC by {group}: " + ", ".join(f"{kind} {_f(row['auroc'], 3)} ({row['n']})"
                                                               for kind, row in kinds.items()))
    return "\n".join(lines)


def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def plot_roc(truth: list[dict[str, Any]], predicted: dict[str, dict[str, Any]], path: Path) -> Path:
    """``roc.png``: ROC curves of nodule presence and of malignancy (cases with a nodule), one line per ablation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    present = np.array([t.get("nodule") == "present" for t in truth])
    malignant = np.array([t.get("malignancy") == "malignant" for t in truth])
    known = present & np.array([t.get("malignancy") in ("benign", "malignant") for t in truth])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, task, y, rows in ((axes[0], "nodule", present, slice(None)), (axes[1], "malignancy", malignant, known)):
        target = y[rows]
        for name, p in predicted.items():
            if 0 < target.sum() < len(target):
                fpr, tpr, _ = roc_curve(target, p[task][rows])
                ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(target, p[task][rows]):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{task} ({len(target)} cases)")
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_metrics(metrics: dict[str, Any], path: Path) -> Path:
    """Write the metrics as JSON (NaN written as null)."""
    import json

    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    path.write_text(json.dumps(clean(metrics), indent=2) + "\n")
    return path
