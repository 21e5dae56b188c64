"""``fusionline fit factory``: fit a good-only anomaly model to one product from its good parts, in minutes.

The recording's frames go to :func:`model.anomaly.fit_patch_memory` (a patch-feature memory bank on the frozen
pretrained backbone, its threshold set on held-out good parts); the fitted bank is saved with
``save_pretrained`` (``model_type: patch-memory``) and scores any part of that product. Beside it,
``heatmaps.jpg`` shows where the model looks: the most anomalous of the recording's parts it was not fitted on
(its defective parts, when the recording has labelled ones), each with its heat map and labelled boxes.

Example:
    >>> fit_good_parts(Path("data/product3-fit"), Path("runs/fit-product3"))
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from connectors.recording import Replayer, read_labels
from connectors.records import InputError, Sample
from model.anomaly import AnomalyConfig, PatchMemory, fit_patch_memory, frame_tensor
from pipelines.lines.factory.evaluate import contact_sheet

log = logging.getLogger("fusionline.fit")


def recording_frames(root: Path) -> tuple[list[str], list[torch.Tensor]]:
    """Item ids and ``(3, H, W)`` RGB frames in [0, 1] of a recording, in order; an event or frame that cannot be
    read is left out with a warning naming the item and the reason."""
    ids, images = [], []
    for item in Replayer(root):
        if not isinstance(item, Sample) or item.frame is None:
            reason = item.reason if not isinstance(item, Sample) else "no frame"
            log.warning("fit: item %s left out: %s", item.item_id, reason)
            continue
        try:
            pixels = item.frame.decode()
        except InputError as exc:
            log.warning("fit: item %s left out: %s", item.item_id, exc.reason)
            continue
        ids.append(item.item_id)
        images.append(frame_tensor(pixels))
    return ids, images


def good_frames(root: Path, limit: int) -> torch.Tensor:
    """``(N, 3, H, W)``: the first ``limit`` parts labelled ``good`` (every part when the recording has no labels:
    a recording of normal production)."""
    return good_and_rest(root, limit)[0]


def good_and_rest(root: Path, limit: int) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """:func:`good_frames` and the parts left over, as ``(item id, frame)`` in recording order."""
    labels = read_labels(root)
    good, rest = [], []
    for item_id, image in zip(*recording_frames(root), strict=True):
        if len(good) < limit and (not labels or labels.get(item_id, {}).get("defect") == "good"):
            good.append(image)
        else:
            rest.append((item_id, image))
    if len(good) < 2:
        raise ValueError(f"{root}: {len(good)} good parts to fit on; at least 2 are needed (200 recommended)")
    return torch.stack(good), rest


def fit_good_parts(normal: Path, out: Path, good: int = 200, config: AnomalyConfig | None = None) -> PatchMemory:
    """Fit on the first ``good`` good parts of ``normal`` and save the model (and ``heatmaps.jpg``) to ``out``."""
    started = time.perf_counter()
    images, rest = good_and_rest(normal, good)
    memory = fit_patch_memory(images, config)
    memory.save_pretrained(out, fitted_on=str(normal), good_parts=len(images),
                           fit_seconds=round(time.perf_counter() - started, 1))
    if rest:
        heat_sheet(memory, rest, read_labels(normal), Path(out) / "heatmaps.jpg")
    return memory


#: Parts :func:`heat_sheet` scores, and the most anomalous of them it shows.
HEAT_SCORED, HEAT_TILES = 96, 12


def heat_sheet(memory: PatchMemory, parts: list[tuple[str, torch.Tensor]], labels: dict[str, dict],
               path: Path) -> Path:
    """Write the :data:`HEAT_TILES` highest-scoring of the first :data:`HEAT_SCORED` ``parts`` as a contact sheet:
    each frame with its heat map over it (blue: like the good parts; red: twice the threshold's distance or more),
    its labelled boxes in white, titled ``item class score/threshold``."""
    import cv2

    threshold = float(memory.threshold)
    scored = []
    with torch.inference_mode():
        for item_id, image in parts[:HEAT_SCORED]:
            out = memory(image[None])
            scored.append((float(out.score[0]) / threshold, item_id, image, out.heat[0].numpy() / threshold))
    tiles = []
    for ratio, item_id, image, heat in sorted(scored, key=lambda s: -s[0])[:HEAT_TILES]:
        frame = np.ascontiguousarray((image.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).astype(np.uint8))
        colours = cv2.applyColorMap((np.clip(heat / 2, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
        tile = cv2.addWeighted(frame, 0.6, colours, 0.4, 0)
        label = labels.get(item_id, {})
        for x, y, w, h in label.get("boxes") or []:
            cv2.rectangle(tile, (int(x), int(y)), (int(x + w), int(y + h)), (255, 255, 255), 2)
        tile = cv2.resize(tile, (320, 240), interpolation=cv2.INTER_AREA)
        cv2.rectangle(tile, (0, 0), (320, 18), (0, 0, 0), -1)
        title = f"{item_id} {label.get('defect', '')} {ratio:.2f}x{' ANOMALOUS' if ratio > 1 else ''}"
        cv2.putText(tile, title, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    return contact_sheet(tiles, path, columns=4)
