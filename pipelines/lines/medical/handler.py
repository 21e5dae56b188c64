"""The medical line's :class:`~pipelines.handler.Handler`: decode each case's CT series, clinical record and note,
then the nodule model (:class:`~model.nodule_model.NoduleFusionModel`): blob candidates over the whole series,
candidate crops, fusion with the record and the note.

One inference path: training (:mod:`~pipelines.lines.medical.datasets`), evaluation
(:mod:`~pipelines.lines.medical.evaluate`) and the line all go :func:`decode` -> :func:`case_tensors` ->
:meth:`MedicalHandler.findings`.

Example:
    >>> handler = MedicalHandler.from_pretrained("tests/data/models/medical-v3")
    >>> handler.infer(samples)      # Finding or Quarantined per sample, in order
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from connectors.fhir import clinical_features
from connectors.records import InputError, Quarantined, Sample
from model.nodule_config import NODULE_MODALITIES, NoduleConfig
from model.nodule_model import NoduleFusionModel, NoduleOutput, ct_grid
from model.router import check_modalities
from model.text import embed_notes

#: Decimals of the case embedding in a finding (the similar-cases index reads it).
EMBEDDING_DECIMALS = 4


@dataclass
class DecodedCase:
    """A case as a replica decodes it.

    Attributes:
        item_id: the case.
        volume: ``(slices, rows, columns)`` float32 Hounsfield units, slices along the slice normal.
        spacing_mm: ``(slice, row, column)`` spacing of ``volume``.
        record: the structured record's features by name (:func:`connectors.fhir.clinical_features`), or None.
        note: the clinical note's text, or None.
    """

    item_id: str
    volume: np.ndarray
    spacing_mm: tuple[float, float, float]
    record: dict[str, float] | None
    note: str | None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)`` of the series."""
        return tuple(self.volume.shape)  # type: ignore[return-value]


@dataclass
class CaseTensors:
    """Model inputs of ``B`` decoded cases (candidates already found).

    Attributes:
        crops: ``(B, K, 2, S, S, S)`` candidate crops; ``centres``: ``(B, K, 3)`` their fine-grid voxels.
        record: ``(B, record_dim)``; ``note``: ``(B, text_dim)`` (zeros where absent).
        present: ``(B, 3)`` bool, columns :data:`~model.nodule_config.NODULE_MODALITIES`.
        spacing_mm / shape: each case's series spacing and ``(slices, rows, columns)`` (to map the centre back).
    """

    crops: torch.Tensor
    centres: torch.Tensor
    record: torch.Tensor
    note: torch.Tensor
    present: torch.Tensor
    spacing_mm: list[tuple[float, float, float]] = field(default_factory=list)
    shape: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class Finding:
    """The model's answer for one case (an :class:`~pipelines.handler.Answer`)."""

    label: str
    confidence: float
    reject: bool
    modality_weights: dict[str, float]
    extra: dict[str, Any]
    model_version: str


class MedicalHandler:
    """A :class:`~model.nodule_model.NoduleFusionModel` behind a replica."""

    model_type = NoduleFusionModel.model_type
    payloads = ("ct", "record", "note")

    def __init__(self, model: NoduleFusionModel):
        self.model = model.eval()
        self.config: NoduleConfig = model.config
        self.model_version = self.config.version
        self.device = str(next(model.parameters()).device)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | None = None, runtime: str = "eager") -> MedicalHandler:
        """The model in ``model_dir`` on ``device`` (None: cuda when present); PyTorch (``eager``) is its only
        runtime (its candidate finder is SciPy, not a graph an ONNX export could hold)."""
        if runtime != "eager":
            raise ValueError(f"runtime {runtime!r}: the medical line runs eager only")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(NoduleFusionModel.from_pretrained(model_dir, map_location=device))

    def warm_up(self) -> None:
        """Load MONAI and the note model and run one case: a 16-slice air-and-water series with a short note."""
        volume = np.full((16, 64, 64), -1000.0, np.float32)
        volume[:, 16:48, 16:48] = 0.0
        case = DecodedCase("warm-up", volume, (2.5, 1.5, 1.5), None, "warm-up")
        self.findings(case_tensors([case], self.model))

    def infer(self, samples: Sequence[Sample]) -> list[Finding | Quarantined]:
        """Decode every sample (:func:`decode`) and answer the ones that decoded, in order."""
        decoded = [decode(sample) for sample in samples]
        ready = [d for d in decoded if isinstance(d, DecodedCase)]
        answers = iter(self.findings(case_tensors(ready, self.model)) if ready else [])
        return [d if isinstance(d, Quarantined) else next(answers) for d in decoded]

    def provenance(self, sample: Sample) -> dict[str, str]:
        """``{"ct_path": the series' folder, "record_path": the FHIR record's file}`` for what the sample has (the
        dashboard shows the slices, and the record's summary behind its password; paths only, never contents)."""
        paths = {"ct_path": sample.ct.source if sample.ct is not None else "",
                 "record_path": sample.record.source if sample.record is not None else ""}
        return {key: path for key, path in paths.items() if path}

    @torch.no_grad()
    def predict(self, cases: CaseTensors, absent: Collection[str] = ()) -> NoduleOutput:
        """The model's raw outputs; ``absent`` modalities are masked for every case (the ablations)."""
        check_modalities(absent, NODULE_MODALITIES)
        keep = torch.tensor([m not in absent for m in NODULE_MODALITIES])
        present = cases.present & keep
        device = self.device
        inputs = {"ct": cases.crops.to(device), "record": cases.record.to(device), "note": cases.note.to(device)}
        return self.model(inputs, present.to(device))

    def findings(self, cases: CaseTensors, absent: Collection[str] = ()) -> list[Finding]:
        """One :class:`Finding` per case of ``cases`` (``absent`` modalities masked)."""
        return self.answers(cases, self.predict(cases, absent))

    def answers(self, cases: CaseTensors, out: NoduleOutput) -> list[Finding]:
        """The model's outputs ``out`` for ``cases`` as one :class:`Finding` per case."""
        nodule = torch.sigmoid(out.nodule_logit).cpu().numpy()
        malignancy = torch.sigmoid(out.malignancy_logit).cpu().numpy()
        diameter = torch.exp(out.log_diameter).cpu().numpy()
        weights = out.modality_weights.cpu().numpy()
        centres = series_centres(cases, out, self.config)
        answers = []
        for i, p in enumerate(nodule):
            found = bool(p >= self.config.threshold)
            answers.append(Finding(
                label="nodule" if found else "no nodule",
                confidence=float(p if found else 1.0 - p),
                reject=found,  # flagged for a radiologist's review
                modality_weights={m: round(float(w), 4) for m, w in zip(NODULE_MODALITIES, weights[i], strict=True)},
                extra={
                    "nodule": "present" if found else "absent",
                    "nodule_probability": round(float(p), 4),
                    "center_vox": centres[i] if found else None,
                    "spacing_mm": [round(float(v), 4) for v in cases.spacing_mm[i]],
                    "diameter_mm": round(float(diameter[i]), 2) if found else None,
                    "malignancy_risk": round(float(malignancy[i]), 4),
                    "case_embedding": [round(float(v), EMBEDDING_DECIMALS) for v in out.embedding[i].cpu()],
                },
                model_version=self.model_version,
            ))
        return answers


#: The class this line's replicas host (:func:`pipelines.lines.handler_class`).
Handler = MedicalHandler


def decode(sample: Sample) -> DecodedCase | Quarantined:
    """A sample as a replica decodes it, or its :class:`Quarantined` record (stage ``decode``): a sample without a
    CT series (the model reads the CT; a record or note alone is not a case it can answer), a series that does not
    decode, a record whose features cannot be read. A sample without record or note is decided on what it has."""
    if sample.ct is None:
        return Quarantined(sample.item_id, sample.seq, "no CT series: the nodule model needs the CT", "decode",
                           _payload_sources(sample))
    try:
        series = sample.ct.decode()
        features = clinical_features(sample.record) if sample.record is not None else None
    except InputError as exc:
        return Quarantined(sample.item_id, sample.seq, exc.reason, "decode", _payload_sources(sample))
    note = sample.note.text if sample.note is not None and sample.note.text.strip() else None
    return DecodedCase(sample.item_id, series.volume, tuple(float(s) for s in series.spacing_mm), features, note)


def _payload_sources(sample: Sample) -> list[str]:
    return [p.source for p in (sample.ct, sample.record) if p is not None and p.source]


def record_vector(features: dict[str, float] | None, config: NoduleConfig) -> np.ndarray:
    """``(record_dim,)`` float32: per feature of ``config.record_features`` its normalised value (0 when missing)
    and a missing flag (1 when the record lacks it or it is NaN); all zeros for no record."""
    out = np.zeros(config.record_dim, np.float32)
    if features is None:
        return out
    mean = config.record_mean or [0.0] * len(config.record_features)
    std = config.record_std or [1.0] * len(config.record_features)
    for j, name in enumerate(config.record_features):
        value = features.get(name)
        if value is None or not np.isfinite(value):
            out[2 * j + 1] = 1.0
        else:
            out[2 * j] = (float(value) - mean[j]) / (std[j] or 1.0)
    return out


def fine_grid(case: DecodedCase, config: NoduleConfig) -> torch.Tensor:
    """``(1, Z, Y, X)`` the case's series on the model's fine grid (:func:`~model.nodule_model.ct_grid`)."""
    return ct_grid(case.volume, case.spacing_mm, config)


def case_tensors(cases: Sequence[DecodedCase], model: NoduleFusionModel,
                 notes: np.ndarray | None = None) -> CaseTensors:
    """Find the candidates of each case's series and stack the model inputs (notes embedded here unless given as
    ``(B, text_dim)``)."""
    config = model.config
    device = next(model.parameters()).device
    crops, centres = [], []
    for case in cases:
        c, at = model.locate(fine_grid(case, config)[None].to(device))
        crops.append(c.cpu())
        centres.append(at.cpu())
    return stack_cases(cases, torch.cat(crops), torch.cat(centres), config, notes)


def stack_cases(cases: Sequence[DecodedCase | CaseMeta], crops: torch.Tensor, centres: torch.Tensor,
                config: NoduleConfig, notes: np.ndarray | None = None) -> CaseTensors:
    """:class:`CaseTensors` from the candidates' crops and centres and each case's record and note."""
    texts = [c.note for c in cases]
    if notes is None:
        written = [i for i, t in enumerate(texts) if t]
        notes = np.zeros((len(cases), config.text_dim), np.float32)
        if written:
            notes[written] = embed_notes([texts[i] for i in written])
    present = torch.tensor([[True, c.record is not None, bool(c.note)] for c in cases], dtype=torch.bool)
    return CaseTensors(
        crops, centres,
        torch.from_numpy(np.stack([record_vector(c.record, config) for c in cases])).reshape(len(cases), -1),
        torch.as_tensor(notes, dtype=torch.float32).reshape(len(cases), -1),
        present.reshape(len(cases), len(NODULE_MODALITIES)),
        [tuple(c.spacing_mm) for c in cases], [tuple(c.shape) for c in cases],
    )


@dataclass
class CaseMeta:
    """What :func:`stack_cases` reads of a case when its volume is no longer at hand (the training cache)."""

    item_id: str
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    record: dict[str, float] | None
    note: str | None


def series_centres(cases: CaseTensors, out: NoduleOutput, config: NoduleConfig) -> list[list[int]]:
    """The nodule's centre per case in the series' voxel grid ``[slice, row, column]``: the best candidate's
    fine-grid centre plus its predicted offset, through millimetres back to the series' spacing, clipped to it."""
    b = len(cases.shape)
    pick = torch.arange(b)
    fine = torch.as_tensor(config.spacing_mm)
    mm = cases.centres[pick, out.best.cpu()] * fine + out.offset_mm.cpu()
    found = []
    for i in range(b):
        vox = (mm[i] / torch.as_tensor(cases.spacing_mm[i])).round().long()
        found.append([int(min(max(v, 0), n - 1)) for v, n in zip(vox.tolist(), cases.shape[i], strict=True)])
    return found
