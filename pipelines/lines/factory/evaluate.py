"""Evaluate a saved model on a labelled recording through the serving path (:class:`model.predictor.Predictor`).

Items go through the line's own rules: an item the line would quarantine (an event the replayer refuses, a
payload :func:`~pipelines.lines.factory.handler.decode` cannot decode) is counted as quarantined, with its
reason, and not scored; the reject decision is the predictor's (:attr:`model.predictor.Prediction.reject`).

Metrics per task (``defect``, ``machine``): accuracy, per-class precision / recall / F1 / one-vs-rest AUROC,
macro-F1, macro-AUROC and the confusion matrix; plus the reject decision against the labels and, for correctly
found defects, how well the CAM box matches the labelled box (hit rate at IoU >= :data:`HIT_IOU`). With an
output folder, also a confusion-matrix plot and a contact sheet of the primary task's mistakes (``mistakes.jpg``).

With ``anomaly`` (a folder of ``fusionline fit factory``), items are decided as ``fusionline run factory
--anomaly`` decides them (a part the anomaly model flags is rejected too), and the report adds the anomaly
model's and the fused rule's good-vs-defect AUROC (:func:`fused_defect_score`).

Example:
    >>> metrics = evaluate("runs/model", "data/test")
    >>> print(format_report(metrics))
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from connectors.records import Quarantined, Sample
from connectors.recording import Replayer, read_labels
from model.anomaly import PatchMemory
from model.config import rejected_tasks
from model.predictor import Predictor, batch_inputs
from pipelines.lines.factory.handler import Decoded, decode, flag_anomalies

#: A CAM box "hits" a defect when its IoU with a labelled instance is at least this (the PASCAL VOC criterion).
HIT_IOU = 0.5


def evaluate(
    model_dir: str | Path,
    recording_dir: str | Path,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    out_dir: str | Path | None = None,
    device: str | None = None,
    anomaly: str | Path | None = None,
) -> dict[str, Any]:
    """Predict every labelled item of ``recording_dir`` with the model in ``model_dir`` and score it.

    Args:
        batch_size: items per ``Predictor`` call.
        workers: decoding threads.
        out_dir: when given, ``metrics.json``, ``confusion_matrix.png`` and ``mistakes.jpg`` (the first
            :data:`MAX_MISTAKE_TILES` misclassified images of the primary task, cropped around their labelled
            box, titled ``id truth->predicted confidence``) are written there.
        device: for the predictor (None: cuda if available, else cpu).
        anomaly: a fitted good-only model's folder: its flags reject too, and ``metrics["anomaly"]`` scores it.

    Returns:
        ``{"tasks": {task: {...}}, "reject": {...}, "box": {...}, "items": n scored, "quarantined":
        [{"item_id", "stage", "reason"}, ...], ...}`` (JSON-serialisable).
    """
    model_dir, recording_dir = Path(model_dir), Path(recording_dir)
    predictor = Predictor.from_pretrained(model_dir, device=device)
    memory = PatchMemory.from_pretrained(anomaly) if anomaly is not None else None
    anomaly_ratios: list[float] = []  # score / threshold per item (NaN without a frame)
    classes = predictor.config.classes
    primary = predictor.config.primary_task
    labels = read_labels(recording_dir)
    ids: list[str] = []
    probs: dict[str, list[np.ndarray]] = {t: [] for t in classes}
    rejects: list[bool] = []
    boxes: list[Any] = []
    quarantined: list[dict[str, str]] = []
    batch: list[tuple[str, Decoded]] = []
    sizes: dict[str, tuple[int, int]] = {}  # frame (width, height): labelled boxes are in its pixels
    mistakes: list[np.ndarray] = []  # tiles for mistakes.jpg
    started = time.perf_counter()
    predict_seconds = 0.0

    def flush() -> None:
        nonlocal predict_seconds
        t0 = time.perf_counter()
        out = predictor.forward_batch(batch_inputs([b[1] for b in batch]))
        predict_seconds += time.perf_counter() - t0
        ids.extend(b[0] for b in batch)
        for task in classes:
            probs[task].append(out.probs[task])
        answers = predictor.predictions(out)
        if memory is not None:
            ratios = memory.threshold_ratios([b[1]["image"] for b in batch])
            anomaly_ratios.extend(ratios)
            flag_anomalies(answers, ratios, "")
        rejects.extend(a.reject for a in answers)
        boxes.extend(out.boxes)
        if out_dir is not None:
            collect_mistakes(batch, out.probs[primary])
        batch.clear()

    def collect_mistakes(items: list[tuple[str, Decoded]], primary_probs: np.ndarray) -> None:
        names = classes[primary]
        for (item_id, decoded), p in zip(items, primary_probs, strict=True):
            pixels = decoded["image"]
            truth, guess = labels[item_id].get(primary), names[int(p.argmax())]
            if len(mistakes) < MAX_MISTAKE_TILES and pixels is not None and truth in names and guess != truth:
                title = f"{item_id} {truth}->{guess} {p.max():.2f}"
                mistakes.append(mistake_tile(pixels, labels[item_id].get("boxes") or [], title))

    for item_id, decoded in _line_inputs(recording_dir, workers, progress):
        if isinstance(decoded, Quarantined):
            quarantined.append({"item_id": item_id, "stage": decoded.stage, "reason": decoded.reason})
            continue
        if item_id not in labels:
            continue
        pixels = decoded["image"]
        if pixels is not None:
            sizes[item_id] = (pixels.shape[1], pixels.shape[0])
        batch.append((item_id, decoded))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    elapsed = time.perf_counter() - started

    metrics: dict[str, Any] = {
        "model_dir": str(model_dir),
        "model_version": predictor.config.version,
        "recording": str(recording_dir),
        "items": len(ids),
        "quarantined": quarantined,
        "seconds": {"total": elapsed, "predict": predict_seconds},
        "device": str(predictor.device),
        "tasks": {},
    }
    predicted: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    for task, names in classes.items():
        p = np.concatenate(probs[task]) if probs[task] else np.zeros((0, len(names)), np.float32)
        y = np.array([names.index(labels[i][task]) if labels[i].get(task) in names else -1 for i in ids], dtype=np.int64)
        known = y >= 0
        metrics["tasks"][task] = classification_metrics(y[known], p[known], names)
        predicted[task], truth[task] = p.argmax(axis=1) if len(p) else np.zeros(0, np.int64), y
    metrics["reject"] = _reject_metrics(predictor, ids, labels, np.array(rejects, dtype=bool))
    if memory is not None:
        primary_probs = np.concatenate(probs[primary]) if ids else np.zeros((0, len(classes[primary])))
        metrics["anomaly"] = _anomaly_metrics(anomaly, memory, ids, labels, predictor, np.array(anomaly_ratios),
                                              primary_probs)
    cam_task = predictor.config.cam_task
    metrics["box"] = _box_metrics(ids, labels, sizes, boxes, predicted.get(cam_task), truth.get(cam_task))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if ids:
            metrics["confusion_png"] = str(plot_confusion(metrics, out_dir / "confusion_matrix.png"))
        if mistakes:
            metrics["mistakes_jpg"] = str(contact_sheet(mistakes, out_dir / "mistakes.jpg"))
        save_metrics(metrics, out_dir / "metrics.json")
    return metrics


def fused_defect_score(anomaly_ratio: np.ndarray, p_good: np.ndarray) -> np.ndarray:
    """One good-vs-defect score for the line's rule with an anomaly model (reject when the classifier calls a
    defect or the anomaly model flags the part): each side over its own decision point, the larger of
    ``anomaly score / threshold`` and ``(1 - p(good)) / 0.5``."""
    return np.maximum(anomaly_ratio, (1.0 - p_good) / 0.5)


def _anomaly_metrics(folder: str | Path, memory: PatchMemory, ids: list[str], labels: dict[str, dict],
                     predictor: Predictor, ratios: np.ndarray, primary_probs: np.ndarray) -> dict[str, Any]:
    """Good-vs-defect AUROC of the anomaly model, of the classifier and of the fused rule, over items with a
    frame and a known primary-task class; how many items it flagged."""
    primary = predictor.config.primary_task
    names, nominal = predictor.config.classes[primary], predictor.config.nominal[primary]
    known = np.array([labels[i].get(primary) in names for i in ids], dtype=bool) & ~np.isnan(ratios)
    defect = np.array([labels[i].get(primary) != nominal for i in ids], dtype=bool)[known]
    p_good = primary_probs[known, names.index(nominal)]
    return {
        "model": str(folder),
        "threshold": float(memory.threshold),
        "flagged": int((ratios[~np.isnan(ratios)] > 1).sum()),
        "auroc": auroc(ratios[known], defect),
        "classifier_auroc": auroc(1.0 - p_good, defect),
        "fused_auroc": auroc(fused_defect_score(ratios[known], p_good), defect),
        "n": int(known.sum()),
    }


def _line_inputs(recording_dir: Path, workers: int, progress: bool) -> Iterator[tuple[str, Any]]:
    """``(item_id, Decoded or Quarantined)`` per event, in recording order: what
    a replica gets to predict on, or the quarantine it would record (the replayer's and
    :func:`~pipelines.lines.factory.handler.decode`'s), decoded in ``workers`` threads a few items ahead."""
    replayer = Replayer(recording_dir)
    events = tqdm(replayer, total=len(replayer), desc=f"decode {recording_dir.name}", unit="item",
                  disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV's image decoding releases the GIL
        ahead: deque[tuple[str, Future | Quarantined]] = deque()

        def oldest() -> tuple[str, Any]:
            item_id, pending = ahead.popleft()
            return item_id, pending.result() if isinstance(pending, Future) else pending

        for item in events:
            ahead.append((item.item_id, pool.submit(decode, item) if isinstance(item, Sample) else item))
            if len(ahead) > 4 * workers:
                yield oldest()
        while ahead:
            yield oldest()


# -- metrics (numpy only) ------------------------------------------------------------------------------------


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the binary ``positive`` labels (ties count one half).

    The Mann-Whitney U statistic with average ranks; NaN when only one class is present.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # mean of 1-based ranks s+1..e
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """``(n, n)`` counts, rows = truth, columns = prediction."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def classification_metrics(y: np.ndarray, probs: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/AUROC/support, macro-F1, macro-AUROC, confusion matrix."""
    n = len(names)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    cm = confusion_matrix(y, pred, n)
    per_class = {}
    for k, name in enumerate(names):
        tp = cm[k, k]
        precision = tp / cm[:, k].sum() if cm[:, k].sum() else 0.0
        recall = tp / cm[k].sum() if cm[k].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "auroc": auroc(probs[:, k], y == k) if len(y) else float("nan"),
            "support": int(cm[k].sum()),
        }
    supported = [c for c in per_class.values() if c["support"] > 0]
    aurocs = [c["auroc"] for c in supported if not np.isnan(c["auroc"])]
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "macro_f1": float(np.mean([c["f1"] for c in supported])) if supported else float("nan"),
        "macro_auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
        "per_class": per_class,
        "confusion": cm.tolist(),
        "classes": list(names),
        "n": int(len(y)),
    }


def _reject_metrics(predictor: Predictor, ids: list[str], labels: dict[str, dict], got: np.ndarray) -> dict:
    """The predictor's reject decisions ``got`` (one per item of ``ids``) against the same rule applied to the
    labels; items without a known class for every task that can reject are left out."""
    nominal, classes = predictor.config.nominal, predictor.classes
    tasks = [t for t in nominal if t in classes]
    truth = [{t: labels[i].get(t) for t in tasks} for i in ids]
    known = np.array([all(row[t] in classes[t] for t in tasks) for row in truth], dtype=bool)
    if not tasks or not known.any():
        return {}
    want = np.array([bool(rejected_tasks(row, nominal)) for row in truth], dtype=bool)[known]
    got = got[known]
    tp, fp, fn = int((want & got).sum()), int((~want & got).sum()), int((want & ~got).sum())
    return {
        "accuracy": float((want == got).mean()),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "false_rejects": fp,
        "missed_rejects": fn,
        "n": int(known.sum()),
    }


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two ``[x, y, w, h]`` boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _box_metrics(ids, labels, sizes, boxes, predicted, truth) -> dict[str, Any]:
    """For defects (classes of the model's ``cam_task``; ``predicted`` / ``truth`` are its class indices, None when
    the model has no such task) found with the right class and a labelled box: the mean IoU with the labelled
    (union) box; the hit rate, the share whose box has IoU >= :data:`HIT_IOU` with one of the labelled instances;
    and, looser, the overlap rate, the share whose box touches one (IoU > 0)."""
    if predicted is None:
        return {}
    ious, best = [], []
    for i, item_id in enumerate(ids):
        row = labels[item_id]
        if truth[i] < 0 or predicted[i] != truth[i] or boxes[i] is None or not row.get("box") or item_id not in sizes:
            continue
        fw, fh = sizes[item_id]
        norm = lambda b: [b[0] / fw, b[1] / fh, b[2] / fw, b[3] / fh]  # noqa: E731
        ious.append(box_iou(boxes[i], norm(row["box"])))
        best.append(max(box_iou(boxes[i], norm(b)) for b in row.get("boxes") or [row["box"]]))
    best_iou = np.array(best)
    return {
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "hit_rate": float(np.mean(best_iou >= HIT_IOU)) if best else float("nan"),
        "hits": int((best_iou >= HIT_IOU).sum()),
        "hit_iou": HIT_IOU,
        "overlap_rate": float(np.mean(best_iou > 0)) if best else float("nan"),
        "overlaps": int((best_iou > 0).sum()),
        "n": len(ious),
    }


# -- report ------------------------------------------------------------------------------------------------


def format_report(metrics: dict[str, Any]) -> str:
    """A plain-text report: items scored and quarantined, one table per task, the confusion matrices, reject and box
    figures."""
    q = metrics.get("quarantined", [])
    lines = [f"model {metrics.get('model_version', '?')} on {metrics.get('recording', '?')}: {metrics.get('items', 0)} "
             f"items scored, {len(q)} quarantined as the line would"
             + (f" (first: {q[0]['item_id']}: {q[0]['reason']})" if q else "")]
    for task, m in metrics["tasks"].items():
        lines.append("")
        lines.append(
            f"{task}: accuracy {m['accuracy']:.4f}   macro-F1 {m['macro_f1']:.4f}   macro-AUROC {m['macro_auroc']:.4f}"
        )
        width = max(len(c) for c in m["classes"]) + 2
        lines.append(f"  {'class':<{width}} precision  recall      F1   AUROC  support")
        for name, c in m["per_class"].items():
            lines.append(
                f"  {name:<{width}} {c['precision']:9.4f} {c['recall']:7.4f} {c['f1']:7.4f} {c['auroc']:7.4f} {c['support']:8d}"
            )
        lines.append("  confusion (rows: truth, columns: predicted)")
        lines.append("  " + " " * width + " ".join(f"{c[:8]:>8}" for c in m["classes"]))
        for name, row in zip(m["classes"], m["confusion"], strict=True):
            lines.append(f"  {name:<{width}}" + " ".join(f"{v:8d}" for v in row))
    r = metrics.get("reject") or {}
    if r:
        lines.append("")
        lines.append(
            f"reject: accuracy {r['accuracy']:.4f}  precision {r['precision']:.4f}  recall {r['recall']:.4f}  "
            f"false rejects {r['false_rejects']}  missed {r['missed_rejects']}"
        )
    a = metrics.get("anomaly")
    if a:
        lines.append(f"anomaly model {a['model']}: flagged {a['flagged']}; good-vs-defect AUROC over {a['n']} parts: "
                     f"anomaly {a['auroc']:.4f}, classifier {a['classifier_auroc']:.4f}, fused {a['fused_auroc']:.4f} "
                     "(rejects above: the fused rule)")
    b = metrics.get("box") or {}
    if b.get("n"):
        lines.append(f"defect box (CAM), over {b['n']} found defects: hits (IoU >= {b['hit_iou']}) {b['hits']} = "
                     f"{b['hit_rate']:.3f}, mean IoU {b['mean_iou']:.3f}; any overlap (IoU > 0) {b['overlaps']} = "
                     f"{b['overlap_rate']:.3f}")
    s = metrics.get("seconds")
    if s and metrics.get("items"):
        lines.append(f"time: {s['total']:.1f} s total, predict {1000 * s['predict'] / metrics['items']:.2f} ms/item ({metrics.get('device')})")
    return "\n".join(lines)


def plot_confusion(metrics: dict[str, Any], path: str | Path) -> Path:
    """One confusion-matrix panel per task (row-normalised colours, counts written in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(metrics["tasks"].items())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.6), squeeze=False)
    for ax, (task, m) in zip(axes[0], tasks, strict=True):
        cm = np.array(m["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, f"{int(v)}", ha="center", va="center", color="white" if norm[r, c] > 0.5 else "black")
        ax.set_xticks(range(len(m["classes"])), m["classes"], rotation=35, ha="right")
        ax.set_yticks(range(len(m["classes"])), m["classes"])
        ax.set(xlabel="predicted", ylabel="truth", title=f"{task}: acc {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


MAX_MISTAKE_TILES = 48
TILE = 240


def mistake_tile(pixels: np.ndarray, boxes: list[list[int]], title: str) -> np.ndarray:
    """A ``TILE`` x ``TILE`` BGR tile: the frame cropped (square, with a margin) around its first labelled
    ``[x, y, w, h]`` box, or the whole frame when it has none, with ``title`` on a black band."""
    import cv2

    frame = pixels  # (H, W, 3) BGR: the predictor has already refused anything else
    if boxes:
        x, y, w, h = boxes[0]
        half = max(w, h, 100) // 2 + 24
        cx, cy = x + w // 2, y + h // 2
        # pad first, so a defect near the border still gets a square (undistorted) crop
        frame = cv2.copyMakeBorder(frame, half, half, half, half, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        frame = frame[cy : cy + 2 * half, cx : cx + 2 * half]
    tile = cv2.resize(frame, (TILE, TILE), interpolation=cv2.INTER_AREA)
    cv2.rectangle(tile, (0, 0), (TILE, 18), (0, 0, 0), -1)
    cv2.putText(tile, title, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def contact_sheet(tiles: list[np.ndarray], path: str | Path, columns: int = 6) -> Path:
    """Write equal-sized BGR ``tiles`` as one image grid (JPEG, quality 90), ``columns`` wide (missing cells black)."""
    import cv2

    blank = np.zeros_like(tiles[0])
    cells = tiles + [blank] * (-len(tiles) % columns)
    rows = [np.hstack(cells[k : k + columns]) for k in range(0, len(cells), columns)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def save_metrics(metrics: dict[str, Any], path: str | Path) -> Path:
    """Write the metrics as JSON (NaN written as null)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and np.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    path = Path(path)
    path.write_text(json.dumps(clean(metrics), indent=2) + "\n")
    return path
