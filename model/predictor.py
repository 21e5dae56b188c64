"""The one inference path: decoded arrays in, :class:`Prediction` out (Ray replicas, baselines, evaluation).

Example:
    >>> predictor = Predictor.from_pretrained("runs/model")          # cuda if available, else cpu
    >>> preds = predictor.predict({"image": [pixels_bgr, None], "audio": [(wave, 16000), (wave2, 44100)]})
    >>> preds[0].label, preds[0].confidence, preds[0].reject, preds[0].modality_weights
    ('scratch', 0.998, True, {'image': 0.71, 'audio': 0.29, 'text': 0.0})
    >>> preds[0].extra
    {'machine': 'normal', 'machine_confidence': 0.99, 'defect_box': [0.41, 0.22, 0.12, 0.05], 'unobserved': []}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from model.config import MODALITIES, InspectorConfig, modality_column, presence_mask, rejected_tasks
from model.factory_model import FactoryInspector, InspectorGraph
from model.preprocess import LogMel, image_batch, waveform_tensor
from model.pretrained import read_config
from model.runtimes import (BF16_CPU_FLAGS, ONNX_FILES, RUNTIMES, OnnxSession, cpu_has_bf16, export_onnx,
                            quantize_int8)

log = logging.getLogger("fusionline.predictor")


@dataclass
class Prediction:
    """The model's answer for one item.

    Attributes:
        label: the primary task's class (``defect``: good/scratch/...).
        confidence: its probability.
        reject: True when any task whose evidence was present predicts a non-nominal class
            (a defect, or an abnormal machine sound).
        modality_weights: router attention mass per modality (``image``, ``audio``, ``text``); sums to 1 over
            the present ones, 0 for absent ones.
        extra: each other task's label and ``<task>_confidence`` (``machine``, ``machine_confidence``),
            ``<cam_task>_box`` (``defect_box``: ``[x, y, w, h]`` normalised to 0..1 from the class-activation map
            when the CAM task's class is not nominal, else None) and ``unobserved`` (tasks whose evidence modality
            was missing: their output is the training prior, not an observation).
        model_version: ``config.version`` of the model that answered.
    """

    label: str
    confidence: float
    reject: bool
    modality_weights: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    model_version: str = ""


#: What :meth:`Predictor.predict` takes: per-item lists by modality name (see :meth:`Predictor.predict`).
Inputs = Mapping[str, Sequence[Any]]


@dataclass
class BatchOutput:
    """Arrays for a batch: ``probs`` ``{task: (n, C)}``, ``modality_weights`` ``(n, M)``, ``present`` ``(n, M)``
    (columns in :data:`model.config.MODALITIES` order) and ``boxes`` (per item ``[x, y, w, h]`` or None)."""

    probs: dict[str, np.ndarray]
    modality_weights: np.ndarray
    present: np.ndarray
    boxes: list[list[float] | None]


class Predictor:
    """Batched, inference-mode prediction with a :class:`FactoryInspector` (batch norms folded).

    The device is chosen once, here: ``cuda`` when available, else ``cpu`` (or the ``device`` given). Thread
    counts are left to the caller (a Ray replica sets ``torch.set_num_threads`` for its core). The network runs
    in PyTorch, or in ONNX Runtime (fp32 or INT8) when a ``session`` is given; pre- and post-processing are the
    same for every runtime. On CUDA the eager network runs under bf16 autocast (fp16 where bf16 is missing) and
    batches go to the GPU from pinned memory.

    Args:
        model: a trained :class:`FactoryInspector` (not modified; a fused copy is used).
        device: ``"cpu"``, ``"cuda"``, ... or None for automatic.
        session: an ONNX Runtime session on the model's exported graph (:meth:`from_pretrained` with ``runtime``).
        runtime: the name of what runs the network (``eager``, ``bf16``, ``onnx``, ``int8``; ``bf16`` is eager
            PyTorch under bf16 autocast, on CPU too); any but ``eager`` is appended
            to the model version (``factory-inspector-2.0+int8``), so decisions and caches tell runtimes apart.
    """

    def __init__(self, model: FactoryInspector, device: str | torch.device | None = None,
                 session: OnnxSession | None = None, runtime: str = "eager"):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.config: InspectorConfig = model.config
        self.model = model.fused_for_inference().to(self.device).to(memory_format=torch.channels_last)
        self.logmel = LogMel(self.config).to(self.device)
        self.classes = self.config.classes
        self.nominal = {t: self.classes[t].index(self.config.nominal[t]) for t in self.classes if t in self.config.nominal}
        self.primary = self.config.primary_task
        self.session = session
        self.runtime = runtime
        self.version = self.config.version + ("" if runtime == "eager" else f"+{runtime}")
        self.weights_sha256 = ""
        self._autocast = self._autocast_dtype() if session is None else None

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None,
                        runtime: str = "eager") -> Predictor:
        """Load a ``save_pretrained`` folder (``model.safetensors`` + ``config.json``) to run in ``runtime``
        (``eager`` or ``bf16``, or ``onnx`` / ``int8`` from the folder's exported files, :meth:`export`)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        sha = read_config(directory).get("weights_sha256", "")
        session = OnnxSession.load(directory, runtime, sha, torch.get_num_threads()) if runtime in ONNX_FILES else None
        predictor = cls(FactoryInspector.from_pretrained(directory), device, session, runtime)
        predictor.weights_sha256 = sha
        return predictor

    def export(self, directory: str | Path, runtime: str, calibration: Sequence[Inputs] = ()) -> Path:
        """Write this model's ONNX graph for ``runtime`` into ``directory`` (its ``save_pretrained`` folder):
        ``onnx`` exports fp32; ``int8`` exports then quantises, calibrated on the ``calibration`` batches (the same
        per-item inputs :meth:`predict` takes). Returns the file written."""
        if not self.weights_sha256:
            raise ValueError("export: load the predictor with from_pretrained (the file records the weights' SHA-256)")
        directory = Path(directory)
        fp32 = directory / ONNX_FILES["onnx"]
        if runtime == "onnx" or not fp32.is_file():
            example = self.graph_inputs(self._inputs_tensors({"image": [np.zeros((64, 64, 3), np.uint8)] * 2,
                                                              "audio": [(np.zeros((1, 1600), np.float32), 16000)] * 2}))
            graph = InspectorGraph(self.model).to(memory_format=torch.contiguous_format)
            export_onnx(graph.cpu(), {k: torch.from_numpy(v) for k, v in example.items()}, fp32, graph.output_names,
                        self.weights_sha256)
        if runtime == "onnx":
            return fp32
        if runtime != "int8":
            raise ValueError(f"export: runtime {runtime!r} has no ONNX file (choose one of {', '.join(ONNX_FILES)})")
        if not calibration:
            raise ValueError("export int8: calibration needs batches of real inputs")
        feeds = (self.graph_inputs(self._inputs_tensors(inputs)) for inputs in calibration)
        return quantize_int8(fp32, directory / ONNX_FILES["int8"], feeds,
                             fp32_modules=InspectorGraph.int8_fp32_modules)

    def graph_inputs(self, tensors: tuple[dict[str, torch.Tensor], torch.Tensor]) -> dict[str, np.ndarray]:
        """The exported graph's feeds for a batch's model tensors and presence ``(n, M)``: every modality, zeros
        where the batch has none, C-contiguous float32 (``present`` bool)."""
        inputs, present = tensors
        n, cfg = len(present), self.config
        frames = cfg.clip_samples // cfg.hop_length + 1
        shapes = {"image": (n, 6, *cfg.image_size), "audio": (n, 1, cfg.n_mels, frames), "text": (n, cfg.text_dim)}
        feeds = {m: np.ascontiguousarray(inputs[m].float().cpu().numpy()) if m in inputs
                 else np.zeros(shapes[m], np.float32) for m in MODALITIES}
        feeds["present"] = present.cpu().numpy().astype(bool)
        return feeds

    def predict(self, inputs: Inputs) -> list[Prediction]:
        """Predict a batch; entry ``i`` of every list belongs to item ``i``.

        Args:
            inputs: per-item lists by modality name, all of one length; a modality may be left out of the dict
                (absent for every item) and an entry may be None (absent for that item):

                - ``"image"``: ``(H, W, 3)`` uint8 BGR frames (any size; resized here);
                - ``"audio"``: ``(waveform (C, T) float32, sample_rate)``;
                - ``"text"``: ``(text_dim,)`` sentence embeddings.

        Raises:
            ValueError: an unknown modality, lists of different lengths, a malformed input, or an item with no
                modality at all (each named).
        """
        return self.predictions(self.forward_batch(inputs))

    def _inputs_tensors(self, inputs: Inputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Checked per-item inputs -> the model's tensors by modality and the presence mask ``(n, M)``."""
        lengths = {m: len(items) for m, items in inputs.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"predict: the modalities' lists differ in length: {lengths}")
        n = next(iter(lengths.values()), 0)
        present = presence_mask({m: [x is not None for x in items] for m, items in inputs.items()}, n)
        empty = torch.nonzero(~present.any(dim=1)).flatten().tolist()
        if empty:
            raise ValueError(f"predict: item {empty[0]} has none of {list(MODALITIES)}")
        return (self._tensors(inputs, n) if n else {}), present

    def predictions(self, batch: BatchOutput) -> list[Prediction]:
        """One :class:`Prediction` per item of a :meth:`forward_batch` output: what :meth:`predict` returns."""
        return [self._prediction(i, batch) for i in range(len(batch.present))]

    def forward_batch(self, inputs: Inputs) -> BatchOutput:
        """The arrays behind :meth:`predict` (class probabilities per task, weights, boxes), for evaluation."""
        tensors, present = self._inputs_tensors(inputs)
        if len(present) == 0:
            return BatchOutput({t: np.zeros((0, len(c)), np.float32) for t, c in self.classes.items()},
                               np.zeros((0, len(MODALITIES)), np.float32), present.numpy(), [])
        cam_task = self.config.cam_task
        with torch.inference_mode():
            logits, weights, cam = self._network(tensors, present)
            probs = {t: torch.softmax(v.float(), dim=1).cpu() for t, v in logits.items()}
            weights = weights.float().cpu()
            boxes = self._boxes(cam, probs.get(cam_task), present[:, modality_column("image")])
        return BatchOutput({t: p.numpy() for t, p in probs.items()}, weights.numpy(), present.numpy(), boxes)

    # -- internals -----------------------------------------------------------------------------------------

    def _network(self, tensors: dict[str, torch.Tensor], present: torch.Tensor
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """The network on a batch, in this predictor's runtime: ``({task: logits (n, C)}, modality weights
        (n, M), cam (n, n_cam, h, w) or None)``."""
        if self.session is not None:
            out = self.session(self.graph_inputs((tensors, present)))
            cam = torch.from_numpy(out["cam"]) if "image" in tensors else None
            return {t: torch.from_numpy(out[t]) for t in self.classes}, torch.from_numpy(out["modality_weights"]), cam
        with torch.autocast(self.device.type, dtype=self._autocast, enabled=self._autocast is not None):
            out = self.model(tensors, present.to(self.device))
        return out.logits, out.modality_weights, out.cam

    def _autocast_dtype(self) -> torch.dtype | None:
        """The eager network's autocast: on CUDA bf16 (fp16 where bf16 is missing); on CPU bf16 for the ``bf16``
        runtime (a warning where the CPU lacks bf16 instructions: emulated, it runs slower than fp32), else none."""
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if self.runtime != "bf16":
            return None
        if not cpu_has_bf16():
            log.warning("runtime bf16: this CPU has none of %s, so bf16 is emulated and slower than fp32 "
                        "(--runtime eager or onnx run faster here)", ", ".join(BF16_CPU_FLAGS))
        return torch.bfloat16

    def _tensors(self, inputs: Inputs, n: int) -> dict[str, torch.Tensor]:
        """The model's input tensors, by modality, for the modalities some item has (zeros where an item lacks
        one): ``image`` ``(n, 6, H, W)`` channels-last, ``audio`` ``(n, 1, n_mels, frames)``, ``text``
        ``(n, text_dim)``."""
        cfg = self.config
        tensors: dict[str, torch.Tensor] = {}
        images = inputs.get("image")
        if images is not None and any(x is not None for x in images):
            batch = image_batch(list(images), cfg.image_size, cfg.image_highpass)
            tensors["image"] = self._to_device(batch).contiguous(memory_format=torch.channels_last)
        audios = inputs.get("audio")
        if audios is not None and any(x is not None for x in audios):
            waves = torch.zeros(n, 1, cfg.clip_samples)
            for i, audio in enumerate(audios):
                if audio is not None:
                    waveform, rate = audio
                    waves[i] = waveform_tensor(waveform, int(rate), cfg)
            with torch.inference_mode():
                tensors["audio"] = self.logmel(self._to_device(waves))
        texts = inputs.get("text")
        if texts is not None and any(x is not None for x in texts):
            emb = torch.zeros(n, cfg.text_dim)
            for i, text in enumerate(texts):
                if text is not None:
                    vec = torch.as_tensor(np.asarray(text, dtype=np.float32)).flatten()
                    if vec.numel() != cfg.text_dim:
                        raise ValueError(f"predict: item {i} text embedding has {vec.numel()} values, expected {cfg.text_dim}")
                    emb[i] = vec
            tensors["text"] = self._to_device(emb)
        return tensors

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A CPU batch on the predictor's device (through pinned memory, without blocking, on CUDA)."""
        if self.device.type != "cuda":
            return batch
        return batch.pin_memory().to(self.device, non_blocking=True)

    def _boxes(self, cam: torch.Tensor | None, cam_probs: torch.Tensor | None, has_image: torch.Tensor) -> list:
        """Per item: ``[x, y, w, h]`` (0..1) of the CAM region of the ``config.cam_task`` class predicted from
        ``cam_probs`` ``(n, C)``, or None where that class is nominal or the item has no image (``has_image``
        ``(n,)``).

        The class's per-cell probability is upsampled 4x (bilinear) and cut with :func:`heat_to_box`.
        """
        n = len(has_image)
        boxes: list[list[float] | None] = [None] * n
        cam_task = self.config.cam_task
        if cam is None or cam_probs is None or cam_task not in self.nominal:
            return boxes
        label = cam_probs.argmax(dim=1)
        todo = torch.nonzero(has_image & (label != self.nominal[cam_task])).flatten()
        if len(todo) == 0:
            return boxes
        h, w = cam.shape[-2:]
        probs = torch.softmax(cam[todo.to(cam.device)].float(), dim=1)
        maps = probs[torch.arange(len(todo)), label[todo].to(cam.device)][:, None]  # (K, 1, h, w)
        maps = F.interpolate(maps, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        for i, heat in zip(todo.tolist(), maps[:, 0].cpu().numpy(), strict=True):
            boxes[i] = heat_to_box(heat)
        return boxes

    def _prediction(self, i: int, batch: BatchOutput) -> Prediction:
        observed = {t: bool(batch.present[i, modality_column(m)]) for t, m in self.config.task_modality.items()}
        labels, confs = {}, {}
        for task, p in batch.probs.items():
            k = int(p[i].argmax())
            labels[task], confs[task] = self.classes[task][k], float(p[i, k])
        unobserved = [t for t, seen in observed.items() if not seen]
        extra: dict[str, Any] = {}
        for task in batch.probs:
            if task != self.primary:
                extra[task] = labels[task]
                extra[f"{task}_confidence"] = confs[task]
        extra[f"{self.config.cam_task}_box"] = batch.boxes[i]
        extra["unobserved"] = unobserved
        return Prediction(
            label=labels[self.primary],
            confidence=confs[self.primary],
            reject=bool(rejected_tasks(labels, self.config.nominal, unobserved)),
            modality_weights={m: float(batch.modality_weights[i, j]) for j, m in enumerate(MODALITIES)},
            extra=extra,
            model_version=self.version,
        )


def batch_inputs(items: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Per-item inputs ``[{modality: input}, ...]`` -> what :meth:`Predictor.predict` takes: one list per modality
    that some item names, None where an item lacks it.

    Example:
        >>> batch_inputs([{"image": pixels, "audio": None}, {"audio": (wave, 16000)}])
        {'image': [pixels, None], 'audio': [None, (wave, 16000)]}
    """
    names = [m for m in MODALITIES if any(m in item for item in items)]
    return {m: [item.get(m) for item in items] for m in names}


def heat_to_box(heat: np.ndarray) -> list[float]:
    """A ``(h, w)`` probability map -> ``[x, y, w, h]`` (0..1) of the connected region around its peak.

    The region is the connected component containing the peak, thresholded at ``min(0.5, peak / 2)``.
    """
    peak = float(heat.max())
    mask = (heat >= min(0.5, 0.5 * peak)).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    py, px = np.unravel_index(int(heat.argmax()), heat.shape)
    ys, xs = np.nonzero(labels == labels[py, px])
    h, w = heat.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return [round(x0 / w, 4), round(y0 / h, 4), round((x1 - x0) / w, 4), round((y1 - y0) / h, 4)]
