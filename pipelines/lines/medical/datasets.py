"""Medical recordings -> cached model inputs for training: each case decoded once, the way a replica decodes it
(:func:`~pipelines.lines.medical.handler.decode`), its series put on the model's fine grid
(:func:`~pipelines.lines.medical.handler.fine_grid`), its note embedded by MiniLM; labels joined at load time.

The cache is one ``.npz`` per case in ``<recording>/.cache-medical-<key>/``: the fine grid as uint8 (the window's
``[0, 1]`` in 255 steps), the series' spacing and shape, the record's features, the note and its embedding. The key
covers the preprocessing fields of the configuration and the recording's identity, so a changed recording or grid
is never served stale; a second load reads only the cache.

Example:
    >>> cases = load_cases("data/medical-train", NoduleConfig(record_features=list(RECORD_FEATURES)))
    >>> len(cases), cases.fine[0].shape, cases.labels[0]["nodule"]
    (400, torch.Size([64, 186, 186]), 'present')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from connectors.records import Quarantined, Sample
from connectors.recording import Replayer, read_labels
from model.nodule_config import NoduleConfig
from model.text import embed_notes
from pipelines.lines.medical.handler import CaseMeta, decode, fine_grid

log = logging.getLogger("fusionline.medical.datasets")

CACHE_VERSION = 1


@dataclass
class MedicalCases:
    """A labelled medical recording as model inputs, one row per case that decoded.

    Attributes:
        meta: per case its id, series spacing and shape, record features and note (:class:`CaseMeta`).
        fine: per case ``(Z, Y, X)`` uint8, the series on the fine grid (divide by 255 for the model's input).
        notes: ``(N, text_dim)`` float32 note embeddings (zeros where the case has no note).
        labels: per case its ``labels.jsonl`` row (``{}`` when it has none).
        quarantined: ``{"item_id", "stage", "reason"}`` of the cases the line would set aside.
    """

    meta: list[CaseMeta]
    fine: list[torch.Tensor]
    notes: np.ndarray
    labels: list[dict[str, Any]]
    quarantined: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.meta)

    def fine_float(self, i: int) -> torch.Tensor:
        """``(1, 1, Z, Y, X)`` float32 in ``[0, 1]``: case ``i``'s fine grid as the model takes it."""
        return self.fine[i].float().div_(255.0)[None, None]

    def subset(self, index: list[int]) -> MedicalCases:
        return MedicalCases([self.meta[i] for i in index], [self.fine[i] for i in index], self.notes[index],
                            [self.labels[i] for i in index], self.quarantined)


def load_cases(root: str | Path, config: NoduleConfig, workers: int = 2, cache: bool = True,
               progress: bool = True) -> MedicalCases:
    """Load (or read from the cache) every case of the recording ``root``.

    Args:
        config: decides the fine grid (``spacing_mm``, ``hu_window``).
        workers: decoding threads (pydicom's and MONAI's work releases the GIL in part).
        cache: read and write ``<root>/.cache-medical-<key>/``.
        progress: show a progress bar.
    """
    root = Path(root)
    folder = root / f".cache-medical-{_cache_key(root, config)}"
    if cache:
        folder.mkdir(exist_ok=True)
    labels = read_labels(root)
    meta: list[CaseMeta] = []
    fine: list[torch.Tensor] = []
    notes: list[np.ndarray] = []
    quarantined: list[dict[str, str]] = []
    replayer = Replayer(root)
    bar = tqdm(total=len(replayer), desc=f"decode {root.name}", unit="case", disable=not progress,
               dynamic_ncols=True)
    for item_id, loaded in _cases(replayer, folder if cache else None, config, workers):
        bar.update(1)
        if isinstance(loaded, Quarantined):
            quarantined.append({"item_id": item_id, "stage": loaded.stage, "reason": loaded.reason})
            continue
        case, grid, embedding = loaded
        meta.append(case)
        fine.append(grid)
        notes.append(embedding)
    bar.close()
    matrix = np.stack(notes) if notes else np.zeros((0, config.text_dim), np.float32)
    return MedicalCases(meta, fine, matrix, [labels.get(m.item_id, {}) for m in meta], quarantined)


def _cache_key(root: Path, config: NoduleConfig) -> str:
    h = hashlib.sha256(f"v={CACHE_VERSION};pre={config.preprocess_key()}".encode())
    for name in ("manifest.json", "events.jsonl"):
        path = root / name
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()[:16]


T = TypeVar("T")

#: A case from the cache or freshly decoded: what the line knows of it, its fine grid (uint8) and its note's
#: embedding (zeros without a note).
Loaded = tuple[CaseMeta, torch.Tensor, np.ndarray]


def _cases(replayer: Replayer, folder: Path | None, config: NoduleConfig,
           workers: int) -> Iterator[tuple[str, Loaded | Quarantined]]:
    """``(item_id, loaded or Quarantined)`` per event in order, decoded in ``workers`` threads a few cases ahead."""
    return decoded_ahead(replayer, lambda sample: _load_case(sample, folder, config), workers)


def decoded_ahead(events: Iterable[Sample | Quarantined], work: Callable[[Sample], T],
                  workers: int) -> Iterator[tuple[str, T | Quarantined]]:
    """``(item_id, work(sample))`` per event in order (a quarantined event as it is), ``work`` running in ``workers``
    threads a few events ahead (decoding a series releases the GIL in numpy and zlib)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        ahead: deque[tuple[str, Future | Quarantined]] = deque()
        for item in events:
            ahead.append((item.item_id, pool.submit(work, item) if isinstance(item, Sample) else item))
            while len(ahead) > 2 * workers:
                item_id, pending = ahead.popleft()
                yield item_id, pending.result() if isinstance(pending, Future) else pending
        while ahead:
            item_id, pending = ahead.popleft()
            yield item_id, pending.result() if isinstance(pending, Future) else pending


def _load_case(sample: Sample, folder: Path | None, config: NoduleConfig) -> Loaded | Quarantined:
    path = folder / f"{sample.item_id}.npz" if folder is not None else None
    if path is not None and path.is_file():
        try:
            return _read(path, sample.item_id)
        except (OSError, ValueError, KeyError) as exc:  # a truncated or foreign file: rebuild it
            log.warning("%s: ignoring unreadable cache entry (%s)", path, exc)
    case = decode(sample)
    if isinstance(case, Quarantined):
        return case
    grid = (fine_grid(case, config)[0] * 255.0).round_().to(torch.uint8)
    meta = CaseMeta(case.item_id, case.spacing_mm, case.shape, case.record, case.note)
    note = embed_notes([case.note])[0] if case.note else np.zeros(config.text_dim, np.float32)
    if path is not None:
        _write(path, meta, grid, note)
    return meta, grid, note


def _write(path: Path, meta: CaseMeta, grid: torch.Tensor, note: np.ndarray) -> None:
    info = {"spacing_mm": list(meta.spacing_mm), "shape": list(meta.shape), "record": meta.record, "note": meta.note}
    arrays = {"fine": grid.numpy(), "info": np.array(json.dumps(info)), "note_embedding": note.astype(np.float32)}
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def _read(path: Path, item_id: str) -> Loaded:
    with np.load(path) as data:
        info = json.loads(str(data["info"]))
        grid = torch.from_numpy(data["fine"].copy())
        note = data["note_embedding"].astype(np.float32)
    meta = CaseMeta(item_id, tuple(info["spacing_mm"]), tuple(info["shape"]), info["record"], info["note"])
    return meta, grid, note



