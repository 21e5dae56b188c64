"""Helpers for the medical line's page (:mod:`apps.medical`): pure functions over its decisions, CT slices,
records and similar cases.

A medical decision's ``extra`` (what :class:`Finding` reads): ``nodule`` (``present``/``absent``),
``nodule_probability``, ``center_vox`` (``[slice, row, column]`` or null), ``diameter_mm``, ``malignancy_risk``,
``case_embedding`` (the fused case vector the similar-cases index is searched with), ``ct_path`` (folder of the
series' DICOM files) and ``record_path`` (the FHIR Bundle). Runs, decisions and quarantine load with
:mod:`apps.data`, as the factory page's do.

Nothing here returns a name, patient id or birth date: :func:`record_summary` turns a record into age, sex,
smoking, pack-years and conditions only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from apps import data
from connectors.audit import RUN_START
from connectors.fhir import CONDITIONS, SMOKING_STATUS, clinical_features
from connectors.records import ClinicalRecord
from pipelines.lines.medical.similar import CaseIndex

#: CT lung window (HU): centre and width, the window a radiologist reads lung nodules in.
LUNG_WINDOW_HU = (-600.0, 1500.0)
#: Slices are shown at least this many pixels on their longer side (small series are scaled up).
DISPLAY_SIDE = 512
FINDING_RGB = (255, 176, 0)

#: What the record summary calls each condition of :data:`connectors.fhir.CONDITIONS`.
CONDITION_TITLES = {"copd": "COPD", "emphysema": "emphysema", "prior_malignancy": "prior malignancy",
                    "known_nodule": "known lung nodule"}

STUDY_COLUMNS = ["item_id", "finding", "probability", "diameter_mm", "malignancy_risk", "flagged"]
SIMILAR_COLUMNS = ["item_id", "similarity", "nodule", "diameter_mm", "malignancy", "source"]


@dataclass(frozen=True)
class Finding:
    """One study's decision as the page shows it; ``None`` where the model stated nothing (no nodule found)."""

    item_id: str
    label: str
    flagged: bool  # the decision's ``reject``: queued for a radiologist's review
    probability: float | None  # of a nodule
    center_vox: tuple[int, int, int] | None  # (slice, row, column)
    diameter_mm: float | None
    malignancy_risk: float | None
    modality_weights: dict[str, float]
    case_embedding: list[float] | None
    ct_path: str | None
    record_path: str | None

    @property
    def nodule(self) -> bool:
        return self.center_vox is not None


def findings(decisions: pd.DataFrame) -> list[Finding]:
    """The run's studies, flagged ones first, each group in decision order."""
    rows = decisions.sort_values(["reject", "seq"], ascending=[False, True]) if not decisions.empty else decisions
    out = []
    for row in rows.itertuples():
        extra = row.extra
        center = extra.get("center_vox")
        out.append(Finding(
            item_id=row.item_id, label=row.label, flagged=bool(row.reject),
            probability=_number(extra.get("nodule_probability")),
            center_vox=tuple(int(v) for v in center) if isinstance(center, list) and len(center) == 3 else None,
            diameter_mm=_number(extra.get("diameter_mm")), malignancy_risk=_number(extra.get("malignancy_risk")),
            modality_weights=dict(row.modality_weights), case_embedding=extra.get("case_embedding"),
            ct_path=extra.get("ct_path"), record_path=extra.get("record_path"),
        ))
    return out


def study_table(studies: list[Finding]) -> pd.DataFrame:
    """The study list: ``item_id, finding, probability, diameter_mm, malignancy_risk, flagged`` (pseudonymous ids
    and the model's outputs only)."""
    return pd.DataFrame([(f.item_id, f.label, f.probability, f.diameter_mm, f.malignancy_risk, f.flagged)
                         for f in studies], columns=STUDY_COLUMNS)


def run_config(db: str | Path, run_id: str) -> dict[str, Any]:
    """The configuration the run recorded at its start (``{}`` when it holds none)."""
    row = data._read(db, f"SELECT config FROM {RUN_START.table} WHERE run_id = ?", (run_id,))
    text = row["config"].iloc[0] if not row.empty else None
    try:
        config = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return config if isinstance(config, dict) else {}


def resolve(path: str | None, config: dict[str, Any]) -> Path | None:
    """A path a decision names: as written, else relative to the run's recording (or EHR) folder; None when it
    is nowhere (moved or deleted)."""
    if not path:
        return None
    candidates = [Path(path)] + [Path(config[key]) / path for key in ("recording", "ehr")
                                 if config.get(key) and not Path(path).is_absolute()]
    return next((p for p in candidates if p.exists()), None)


def lung_window(volume: np.ndarray, center: float = LUNG_WINDOW_HU[0], width: float = LUNG_WINDOW_HU[1]) -> np.ndarray:
    """HU ``(slices, rows, cols)`` float -> uint8 grey of the same shape, ``center ± width / 2`` mapped to 0..255."""
    low = center - width / 2
    return np.clip((volume - low) * (255.0 / width), 0, 255).astype(np.uint8)


def finding_slices(finding: Finding, slice_spacing_mm: float, n_slices: int) -> range:
    """The slices the finding spans: centres within half its diameter of the nodule's centre (empty: no nodule)."""
    if finding.center_vox is None:
        return range(0)
    half = int(np.floor((finding.diameter_mm or 0.0) / 2 / slice_spacing_mm)) if slice_spacing_mm > 0 else 0
    k = finding.center_vox[0]
    return range(max(k - half, 0), min(k + half, n_slices - 1) + 1)


def start_slice(finding: Finding, n_slices: int) -> int:
    """The slice the scroller opens on: the finding's, else the middle of the series."""
    if finding.center_vox is not None and 0 <= finding.center_vox[0] < n_slices:
        return finding.center_vox[0]
    return n_slices // 2


def draw_slice(windowed: np.ndarray, k: int, spacing_mm: tuple[float, float, float], finding: Finding,
               min_side: int = DISPLAY_SIDE) -> np.ndarray:
    """Slice ``k`` of a lung-windowed ``(slices, rows, cols)`` uint8 volume as RGB uint8 ``(H, W, 3)``, square
    pixels, scaled up to ``min_side``; on the slices the finding spans, a circle of its diameter around its centre,
    drawn just outside the nodule's edge (thicker on its centre slice)."""
    _, row_mm, col_mm = spacing_mm
    rows, cols = windowed.shape[1:]
    scale = max(1.0, min_side / max(rows * row_mm / col_mm, cols))  # output pixels per column
    size = (round(cols * scale), round(rows * scale * row_mm / col_mm))  # (W, H)
    image = cv2.resize(windowed[k], size, interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if k in finding_slices(finding, spacing_mm[0], len(windowed)):
        _, row, col = finding.center_vox
        radius_mm = (finding.diameter_mm or 0.0) / 2
        px_per_mm = size[0] / (cols * col_mm)
        center = (round((col + 0.5) * size[0] / cols), round((row + 0.5) * size[1] / rows))
        radius = max(round(radius_mm * px_per_mm), 3)
        thickness = max(2, round(max(size) / 256)) * (2 if k == finding.center_vox[0] else 1)
        cv2.circle(image, center, radius + thickness, FINDING_RGB, thickness, lineType=cv2.LINE_AA)
    return image


def record_summary(record: ClinicalRecord) -> dict[str, str]:
    """Age at the study, sex, smoking, pack-years and conditions, from the record encoder's numbers
    (:func:`connectors.fhir.clinical_features`): never a name, identifier or birth date. InputError when the
    record does not validate."""
    f = clinical_features(record)
    smoking = next((status for status in SMOKING_STATUS.values() if f[f"smoking_{status}"]), None)
    conditions = [CONDITION_TITLES[name] for name in CONDITIONS.values() if f[name]]
    return {
        "Age": f"{int(f['age_years'])} years" if f["age_known"] else "not recorded",
        "Sex": ("female" if f["female"] else "male") if f["sex_known"] else "not recorded",
        "Smoking": f"{smoking} smoker" if smoking else "not recorded",
        "Pack-years": f"{f['pack_years']:g}" if f["pack_years_known"] else "not recorded",
        "Conditions": ", ".join(conditions) or "none recorded",
    }


def similar_cases(index: CaseIndex, finding: Finding, k: int = 5) -> pd.DataFrame:
    """The ``k`` past cases nearest the study's case embedding (the study itself left out), best first:
    ``item_id, similarity, nodule, diameter_mm, malignancy, source``. ``malignancy`` is the confirmed class, else
    the model's risk as a percentage. ValueError when the study has no embedding or one of another size."""
    if not finding.case_embedding:
        raise ValueError(f"{finding.item_id}: the decision carries no case embedding")
    rows = []
    for hit in index.search(finding.case_embedding, k=k, exclude=finding.item_id):
        f = hit.finding
        risk = _number(f.get("malignancy_risk"))
        malignancy = f.get("malignancy") or (None if risk is None else f"risk {risk:.0%}")
        rows.append((hit.item_id, hit.similarity, f.get("nodule"), _number(f.get("diameter_mm")), malignancy,
                     f.get("source")))
    return pd.DataFrame(rows, columns=SIMILAR_COLUMNS)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
