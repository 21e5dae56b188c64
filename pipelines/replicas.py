"""Model replicas hosted by Ray actors: decode, cache and batched inference, next to the model.

Each replica owns one :class:`model.predictor.Predictor` (one GPU when CUDA exists, one CPU core
otherwise). Samples arrive with *encoded* payloads; decoding happens here, so it scales with replicas.
An item that cannot be decoded comes back as :class:`connectors.records.Quarantined`, never as an error
that fails its batch.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import ray

from connectors.records import InputError, Quarantined, Sample

log = logging.getLogger("fusionline.replica")


@dataclass
class Inference:
    """A replica's answer for one sample: the prediction plus what the audit trail needs."""

    item_id: str
    seq: int
    prediction: Any  # model.predictor.Prediction
    input_digest: str
    image_path: str = ""
    cached: bool = False


class ModelReplica:
    """One model replica. Ray hosts it as an actor through :class:`ReplicaPool`; it also runs in-process.

    Args:
        model_dir: a ``save_pretrained`` folder.
        cache_size: LRU entries keyed by the input digest (0 disables the cache).
        threads: torch/OpenCV threads for this replica (1: replicas, not threads, use the cores).

    Example:
        >>> replica = ModelReplica("runs/model")
        >>> outcomes = replica.infer(samples)   # list[Inference | Quarantined], same order as samples
    """

    def __init__(self, model_dir: str, cache_size: int = 4096, threads: int = 1):
        import cv2
        import torch

        from model.predictor import Predictor

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.predictor = Predictor.from_pretrained(model_dir)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self.stats = {"items": 0, "cache_hits": 0, "quarantined": 0, "batches": 0}
        self._warm_up()

    def _warm_up(self) -> None:
        """Load the decoders' libraries and run one forward, so the first real batch is not the slow one."""
        import numpy as np

        from connectors.records import decode_audio, encode_wav

        wave = np.zeros((1, 1600), np.float32)
        decode_audio("warm-up", encode_wav(wave, 16000))
        self.predictor.predict([np.zeros((480, 640, 3), np.uint8)], [(wave, 16000)])

    def infer(self, samples: list[Sample]) -> list[Inference | Quarantined]:
        """Decode, look up the cache, run one batched forward for the misses; order is preserved."""
        outcomes: list[Inference | Quarantined | None] = [None] * len(samples)
        todo: list[tuple[int, str, Any, Any, Any]] = []
        for i, sample in enumerate(samples):
            digest = sample.digest()
            hit = self._cache.get(digest)
            if hit is not None:
                self._cache.move_to_end(digest)
                outcomes[i] = Inference(sample.item_id, sample.seq, hit, digest, _image_path(sample), cached=True)
                self.stats["cache_hits"] += 1
                continue
            try:
                image = sample.frame.decode() if sample.frame is not None else None
                audio = sample.audio.decode() if sample.audio is not None else None
            except InputError as exc:
                outcomes[i] = Quarantined(sample.item_id, sample.seq, exc.reason, "decode", _payload_sources(sample))
                self.stats["quarantined"] += 1
                continue
            todo.append((i, digest, image, audio, sample))
        if todo:
            predictions = self.predictor.predict([t[2] for t in todo], [t[3] for t in todo])
            for (i, digest, _, _, sample), prediction in zip(todo, predictions, strict=True):
                outcomes[i] = Inference(sample.item_id, sample.seq, prediction, digest, _image_path(sample))
                self._remember(digest, prediction)
        self.stats["items"] += len(samples)
        self.stats["batches"] += 1
        return outcomes  # type: ignore[return-value]

    def _remember(self, digest: str, prediction: Any) -> None:
        if self.cache_size <= 0:
            return
        self._cache[digest] = prediction
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def info(self) -> dict[str, Any]:
        """Model version, device, pid and counters (for logs and tests)."""
        return {
            "model_version": self.predictor.config.version,
            "device": str(self.predictor.device),
            "pid": os.getpid(),
            **self.stats,
        }


def _image_path(sample: Sample) -> str:
    return sample.frame.source if sample.frame is not None else ""


def _payload_sources(sample: Sample) -> list[str]:
    return [p.source for p in (sample.frame, sample.audio) if p is not None and p.source]


class ReplicaPool:
    """N :class:`ModelReplica` actors with least-loaded dispatch.

    Each actor asks for one GPU when CUDA is available, else one CPU. ``submit`` returns a Ray
    ObjectRef; the caller bounds how many are in flight.
    """

    def __init__(self, model_dir: str, replicas: int = 2, cache_size: int = 4096):
        import torch

        gpus = 1 if torch.cuda.is_available() else 0
        actor = ray.remote(num_cpus=0 if gpus else 1, num_gpus=gpus)(ModelReplica)
        self.actors = [actor.remote(model_dir, cache_size) for _ in range(replicas)]
        self._load = [0] * replicas
        self._owner: dict[ray.ObjectRef, int] = {}
        infos = ray.get([a.info.remote() for a in self.actors])
        self.model_version = infos[0]["model_version"]
        log.info("replicas=%d device=%s model_version=%s", replicas, infos[0]["device"], self.model_version)

    def submit(self, samples: list[Sample]) -> ray.ObjectRef:
        index = min(range(len(self.actors)), key=self._load.__getitem__)
        ref = self.actors[index].infer.remote(samples)
        self._load[index] += 1
        self._owner[ref] = index
        return ref

    def done(self, ref: ray.ObjectRef) -> None:
        self._load[self._owner.pop(ref)] -= 1

    def info(self) -> list[dict[str, Any]]:
        return ray.get([a.info.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
