"""``fusionline fit factory``: fit a good-only anomaly model to one product from its good parts, in minutes.

The recording's frames go to :func:`model.anomaly.fit_patch_memory` (a patch-feature memory bank on the frozen
pretrained backbone, its threshold set on held-out good parts); the fitted bank is saved with
``save_pretrained`` (``model_type: patch-memory``) and scores any part of that product.

Example:
    >>> fit_good_parts(Path("data/product3-fit"), Path("runs/fit-product3"))
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from connectors.recording import Replayer, read_labels
from connectors.records import InputError, Sample
from model.anomaly import AnomalyConfig, PatchMemory, fit_patch_memory, frame_tensor

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
    labels = read_labels(root)
    ids, images = recording_frames(root)
    good = [x for i, x in zip(ids, images, strict=True) if not labels or labels.get(i, {}).get("defect") == "good"]
    if len(good) < 2:
        raise ValueError(f"{root}: {len(good)} good parts to fit on; at least 2 are needed (200 recommended)")
    return torch.stack(good[:limit])


def fit_good_parts(normal: Path, out: Path, good: int = 200, config: AnomalyConfig | None = None) -> PatchMemory:
    """Fit on the first ``good`` good parts of ``normal`` and save the model to ``out``."""
    started = time.perf_counter()
    images = good_frames(normal, good)
    memory = fit_patch_memory(images, config)
    memory.save_pretrained(out, fitted_on=str(normal), good_parts=len(images),
                           fit_seconds=round(time.perf_counter() - started, 1))
    return memory
