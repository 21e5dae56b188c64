"""Recordings -> tensors for training: decode in a process pool, preprocess with ``model.preprocess``, cache.

The recording is read with :class:`connectors.recording.Replayer` (payload bytes) and its labels with
:func:`connectors.recording.read_labels`; frames and clips are decoded with ``Frame.decode()`` /
``AudioClip.decode()`` in ``workers`` processes and reduced there to the model's input size (uint8 frames,
fixed-length mono waveforms), so what travels back and what is cached is small.

The preprocessed inputs are cached in ``<recording>/.cache-<key>.pt``; the key covers the preprocessing fields
of the config and the recording's identity (manifest, event log), so a second load is instant and a changed
recording or image size is never served stale. Labels are joined at load time (not cached).

Example:
    >>> rec = load_recording("data/train", InspectorConfig())
    >>> rec.data.images.shape, rec.data.labels["defect"][:5]
    (torch.Size([2400, 3, 192, 256]), tensor([0, 1, 2, 0, 4]))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from connectors.records import InputError, Quarantined, Sample
from connectors.recording import Manifest, Replayer, read_labels
from model.config import InspectorConfig, presence_mask
from model.preprocess import image_uint8, waveform_tensor
from model.train import TensorData

log = logging.getLogger("fusionline.datasets")

LOADER_VERSION = 1
MAX_BOXES = 4


@dataclass
class RecordingTensors:
    """A recording as model-ready tensors.

    Attributes:
        item_ids: ids in recording order (row ``i`` of every tensor).
        data: images, waveforms, labels (class indices, -1 unknown), boxes ``(N, MAX_BOXES, 4)`` normalised.
        frame_sizes: ``(N, 2)`` original ``(width, height)`` of each frame (0 when absent).
        problems: items or payloads that could not be used, with the reason (the rest of the item is kept).
    """

    item_ids: list[str]
    data: TensorData
    frame_sizes: torch.Tensor
    problems: list[dict[str, Any]] = field(default_factory=list)


def load_recording(
    root: str | Path,
    config: InspectorConfig,
    workers: int = 2,
    cache: bool = True,
    progress: bool = True,
    limit: int | None = None,
) -> RecordingTensors:
    """Load (or read from cache) a labelled recording as tensors for ``config``.

    Args:
        root: the recording folder.
        config: decides the image size and the audio rate/length.
        workers: decoding processes (1 decodes in this process).
        cache: read/write ``<root>/.cache-<key>.pt``.
        progress: show a progress bar.
        limit: only the first ``limit`` events.
    """
    root = Path(root)
    path = root / f".cache-{_cache_key(root, config, limit)}.pt"
    inputs = None
    if cache and path.is_file():
        try:
            inputs = torch.load(path, weights_only=True)
            log.info("%s: %d items from cache %s", root, len(inputs["item_ids"]), path.name)
        except Exception as exc:  # a truncated or foreign file: rebuild it
            log.warning("%s: ignoring unreadable cache (%s)", path, exc)
    if inputs is None:
        inputs = _decode_recording(root, config, workers, progress, limit)
        if cache:
            try:
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                torch.save(inputs, tmp)
                tmp.replace(path)
            except OSError as exc:
                log.warning("%s: cannot write cache (%s)", path, exc)
    return _attach_labels(root, config, inputs)


def _cache_key(root: Path, config: InspectorConfig, limit: int | None) -> str:
    h = hashlib.sha256()
    h.update(f"loader={LOADER_VERSION};pre={config.preprocess_key()};limit={limit}".encode())
    manifest = root / "manifest.json"
    h.update(manifest.read_bytes() if manifest.is_file() else b"")
    events = root / "events.jsonl"
    if events.is_file():
        st = events.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _decode_chunk(samples: list[Sample], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Worker: decode a chunk of samples (see :func:`_decode_sample`)."""
    config = InspectorConfig.from_dict(cfg)
    return [_decode_sample(sample, config) for sample in samples]


def _decode_sample(sample: Sample, config: InspectorConfig) -> dict[str, Any]:
    """One sample -> uint8 frame at the model size, fixed-length waveform, frame size, problems."""
    out: dict[str, Any] = {"item_id": sample.item_id, "image": None, "wave": None, "size": (0, 0), "problems": []}
    if sample.frame is not None:
        try:
            pixels = sample.frame.decode()
            out["size"] = (pixels.shape[1], pixels.shape[0])
            out["image"] = image_uint8(pixels, config.image_size).numpy()
        except InputError as exc:
            out["problems"].append(f"image: {exc.reason}")
    if sample.audio is not None:
        try:
            wave, rate = sample.audio.decode()
            out["wave"] = waveform_tensor(wave, rate, config).numpy()
        except (InputError, ValueError) as exc:
            out["problems"].append(f"audio: {getattr(exc, 'reason', exc)}")
    return out


def _chunks(root: Path, limit: int | None, problems: list[dict[str, Any]], size: int = 16):
    """Samples of the recording in chunks of ``size``; quarantined events go to ``problems``."""
    chunk: list[Sample] = []
    for item in Replayer(root, limit=limit):
        if isinstance(item, Quarantined):
            problems.append({"item_id": item.item_id, "reason": item.reason})
            continue
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _decode_recording(root: Path, config: InspectorConfig, workers: int, progress: bool, limit: int | None) -> dict:
    total = len(Replayer(root, limit=limit))
    problems: list[dict[str, Any]] = []
    cfg = config.to_dict()
    h, w = config.image_size
    ids: list[str] = []
    images, waves, sizes = [], [], []
    present: dict[str, list[bool]] = {"image": [], "audio": []}
    bar = tqdm(total=total, desc=f"decode {root.name}", unit="item", disable=not progress, dynamic_ncols=True)

    def collect(result: dict[str, Any]) -> None:
        bar.update(1)
        problems.extend({"item_id": result["item_id"], "reason": p} for p in result["problems"])
        if result["image"] is None and result["wave"] is None:
            return
        ids.append(result["item_id"])
        has_image, has_audio = result["image"] is not None, result["wave"] is not None
        images.append(torch.from_numpy(result["image"]) if has_image else torch.zeros(3, h, w, dtype=torch.uint8))
        waves.append(torch.from_numpy(result["wave"]) if has_audio else torch.zeros(1, config.clip_samples))
        present["image"].append(has_image)
        present["audio"].append(has_audio)
        sizes.append(result["size"])

    if workers > 1:
        # threads, not processes: OpenCV's PNG decode and resize and torch's ops release the GIL, and forking a
        # process that already runs torch or Ray threads can deadlock the child
        with ThreadPoolExecutor(workers) as pool:
            pending: deque = deque()  # bounded: payload bytes of a few chunks in memory, not the recording
            for chunk in _chunks(root, limit, problems):
                pending.append(pool.submit(_decode_chunk, chunk, cfg))
                while len(pending) > 2 * workers:
                    for result in pending.popleft().result():
                        collect(result)
            while pending:
                for result in pending.popleft().result():
                    collect(result)
    else:
        for chunk in _chunks(root, limit, problems):
            for result in _decode_chunk(chunk, cfg):
                collect(result)
    bar.close()
    return {
        "item_ids": ids,
        "images": torch.stack(images) if images else torch.zeros(0, 3, h, w, dtype=torch.uint8),
        "waveforms": torch.stack(waves) if waves else torch.zeros(0, 1, config.clip_samples),
        "present": presence_mask(present, len(ids)),
        "frame_sizes": torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2),
        "problems": [json.dumps(p) for p in problems],
    }


def _attach_labels(root: Path, config: InspectorConfig, inputs: dict) -> RecordingTensors:
    labels = read_labels(root)
    ids = list(inputs["item_ids"])
    n = len(ids)
    y = {task: torch.full((n,), -1, dtype=torch.int64) for task in config.classes}
    boxes = torch.full((n, MAX_BOXES, 4), float("nan"))
    sizes = inputs["frame_sizes"]
    problems = [json.loads(p) for p in inputs["problems"]]
    for i, item_id in enumerate(ids):
        row = labels.get(item_id)
        if row is None:
            continue
        for task, names in config.classes.items():
            value = row.get(task)
            if value in names:
                y[task][i] = names.index(value)
            elif value is not None:
                problems.append({"item_id": item_id, "reason": f"unknown {task} class {value!r}"})
        fw, fh = (int(v) for v in sizes[i])
        instances = row.get("boxes") or ([row["box"]] if row.get("box") else [])
        if len(instances) > MAX_BOXES:  # keep the tightest description that fits: their union
            instances = [_union(instances)]
        for k, box in enumerate(instances):
            if fw > 0 and fh > 0 and box is not None and len(box) == 4:
                boxes[i, k] = torch.tensor([box[0] / fw, box[1] / fh, box[2] / fw, box[3] / fh])
    data = TensorData(inputs["images"], inputs["waveforms"], y, boxes, inputs["present"])
    return RecordingTensors(ids, data, sizes, problems)


def _union(boxes: list[list[float]]) -> list[float]:
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


def recording_classes(root: str | Path) -> dict[str, list[str]]:
    """The class names a recording's manifest declares (``{}`` when it declares none)."""
    return dict(Manifest.read(Path(root)).classes)
