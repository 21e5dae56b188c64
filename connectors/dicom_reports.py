"""A lung-nodule finding as DICOM objects that PACS viewers read, with highdicom: a Comprehensive 3D SR (TID 1500
measurement report) and a binary Segmentation of the nodule.

Example:
    >>> finding = NoduleFinding.from_extra(decision.extra)
    >>> sources = read_headers(sorted(Path("spool/case-1f2e/").iterdir()))
    >>> sr = nodule_sr(sources, finding, uid_seed=decision.decision_id, algorithm_version="0.3.1")
    >>> seg = nodule_seg(sources, finding, uid_seed=decision.decision_id, algorithm_version="0.3.1")
    >>> sr.save_as("sr.dcm"); seg.save_as("seg.dcm")

Both objects belong to the source series' study and patient (highdicom copies the patient and study modules from
the sources); their UIDs derive from ``uid_seed`` alone, so building them again for the same decision gives the same
instances, and a PACS that has them already stores nothing new. Their series descriptions say that they are
decision support, not a diagnosis. ``finding.center_vox`` indexes the series ordered along the slice normal
(ascending ``ImagePositionPatient`` . normal, as :func:`connectors.dicom.read_ct_series` orders it); the functions
order the sources themselves, so any order goes in.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # highdicom and pydicom's code dictionary take seconds to import: only where SR/SEG are built
    import highdicom as hd
    from pydicom import Dataset

ALGORITHM_NAME = "fusionline"
MANUFACTURER = "fusionline"
MODEL_NAME = "fusionline medical line"
DISCLAIMER = "decision support, not a diagnosis"
SR_SERIES_NUMBER, SEG_SERIES_NUMBER = 9001, 9002


class ReportError(ValueError):
    """A finding or source series no report can be made of; the message names fields and numbers, never PHI."""


@dataclass(frozen=True)
class NoduleFinding:
    """What the nodule model says about one CT series.

    Attributes:
        present: whether a nodule is reported (the decision's ``nodule`` label is ``"present"``).
        probability: probability that a nodule is there, in [0, 1].
        center_vox: ``(slice, row, column)`` of its centre in the series ordered along the slice normal; None when
            absent or not located.
        diameter_mm: its diameter in millimetres; None when absent or not measured.
        malignancy_risk: probability that it is malignant, in [0, 1]; None when absent or not scored.
    """

    present: bool
    probability: float
    center_vox: tuple[int, int, int] | None = None
    diameter_mm: float | None = None
    malignancy_risk: float | None = None

    def __post_init__(self) -> None:
        for name in ("probability", "malignancy_risk"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ReportError(f"finding: {name} {value} is not a probability in [0, 1]")
        if self.diameter_mm is not None and not 0.0 < self.diameter_mm < 1000.0:
            raise ReportError(f"finding: diameter_mm {self.diameter_mm} is not a positive size under 1 m")
        if self.center_vox is not None and (len(self.center_vox) != 3 or min(self.center_vox) < 0):
            raise ReportError(f"finding: center_vox {self.center_vox} is not three non-negative indices")

    @property
    def located(self) -> bool:
        """Present with a centre and a diameter: what a region and a segmentation need."""
        return self.present and self.center_vox is not None and self.diameter_mm is not None

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> NoduleFinding:
        """The finding in a medical decision's ``extra`` (keys ``nodule``, ``nodule_probability``, ``center_vox``,
        ``diameter_mm``, ``malignancy_risk``); :class:`ReportError` naming the key that is missing or malformed."""
        try:
            present = {"present": True, "absent": False}[extra["nodule"]]
            probability = float(extra["nodule_probability"])
            center = extra.get("center_vox")
            center_vox = None if center is None else tuple(int(v) for v in center)
            diameter, risk = extra.get("diameter_mm"), extra.get("malignancy_risk")
            return cls(present, probability, center_vox, None if diameter is None else float(diameter),
                       None if risk is None else float(risk))
        except KeyError as exc:
            raise ReportError(f"finding: decision extra has no {exc.args[0]!r} or an unknown nodule label") from None
        except ReportError:
            raise
        except (TypeError, ValueError) as exc:
            raise ReportError(f"finding: malformed value in decision extra ({exc})") from None


def read_headers(paths: Sequence[str | Path]) -> list[Dataset]:
    """The DICOM headers of ``paths`` (pixel data not read): enough for SR and SEG sources."""
    import pydicom

    return [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]


def order_along_normal(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Single-frame slices sorted by their position along the slice normal (the order ``center_vox`` indexes)."""
    return sorted(datasets, key=_position_along_normal)


def _position_along_normal(ds: Dataset) -> float:
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), np.cross(orientation[:3], orientation[3:])))


def derived_uid(seed: str, what: str) -> str:
    """A DICOM UID that depends only on ``seed`` and ``what``: ``2.25.`` and the integer of a name-based UUID
    (version 5), the UUID-derived form DICOM PS3.5 B.2 describes."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'urn:fusionline:{seed}:{what}').int}"


def nodule_sr(
    source_datasets: Sequence[Dataset],
    finding: NoduleFinding,
    uid_seed: str,
    algorithm_version: str = "unknown",
    content_datetime: datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 measurement report of ``finding`` on the CT series ``source_datasets`` (headers suffice).

    One measurement group, tracked as "Nodule 1" (its tracking UID is the SEG segment's): finding type Nodule,
    finding site Lung, algorithm ``fusionline`` ``algorithm_version``; a qualitative evaluation Nodule: Present or
    Absent; measurements: the probability of a nodule (DCM 122157, UCUM 1) and, when given, the diameter (SCT
    81827009, mm) and the probability of cancer (DCM 111047, UCUM 1), each referencing the centre slice. A located
    finding is a planar ROI group whose region is a POINT at the centre voxel of its source slice; any other a
    measurement group without a region.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    no_units = codes.UCUM.NoUnits  # UCUM "1": probabilities in [0, 1]
    ordered = order_along_normal(source_datasets)
    center_image = _center_image(ordered, finding)
    referenced = [hd.sr.SourceImageForMeasurement.from_source_image(center_image)] if center_image else None
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=algorithm_version)
    measurements = [hd.sr.Measurement(codes.DCM.Probability, finding.probability, no_units,
                                      referenced_images=referenced, algorithm_id=algorithm)]
    if finding.diameter_mm is not None:
        measurements.append(hd.sr.Measurement(codes.SCT.Diameter, finding.diameter_mm, codes.UCUM.Millimeter,
                                              referenced_images=referenced, algorithm_id=algorithm))
    if finding.malignancy_risk is not None:
        measurements.append(hd.sr.Measurement(codes.DCM.ProbabilityOfCancer, finding.malignancy_risk, no_units,
                                              referenced_images=referenced, algorithm_id=algorithm))
    group_fields: dict[str, Any] = dict(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(uid_seed, "tracking"), identifier="Nodule 1"),
        finding_type=codes.SCT.Nodule,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            codes.SCT.Nodule, codes.SCT.Present if finding.present else codes.SCT.Absent)],
    )
    if finding.located and center_image is not None:
        _, row, column = finding.center_vox  # type: ignore[misc]
        point = hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POINT, np.array([[column + 0.5, row + 0.5]]),
                                  hd.sr.SourceImageForRegion.from_source_image(center_image))
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=point, **group_fields)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(**group_fields)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(ALGORITHM_NAME, "device"), name=ALGORITHM_NAME, manufacturer_name=MANUFACTURER,
            model_name=MODEL_NAME))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=Code("24627-2", "LN", "CT Chest"), imaging_measurements=[group])
    return hd.sr.Comprehensive3DSR(
        evidence=ordered, content=report[0], series_instance_uid=derived_uid(uid_seed, "sr-series"),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=derived_uid(uid_seed, "sr-instance"), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, series_description=f"Nodule report: {DISCLAIMER}",
        **_content_datetime(content_datetime))


def nodule_seg(
    source_datasets: Sequence[Dataset],
    finding: NoduleFinding,
    uid_seed: str,
    mask: np.ndarray | None = None,
    algorithm_version: str = "unknown",
    content_datetime: datetime | None = None,
) -> hd.seg.Segmentation:
    """A binary SEG with one segment "Nodule" (algorithm type AUTOMATIC, ``fusionline``) on ``source_datasets``.

    ``mask`` is ``(Z, Y, X)`` bool in the series ordered along the slice normal. Without one, the mask is a sphere
    of ``finding.diameter_mm`` centred on ``finding.center_vox`` in the source geometry (slice positions and pixel
    spacing in mm; the centre voxel is always in it): the model reports a centre and a diameter, not an outline,
    and the sphere says exactly that. Frames without the nodule are left out. :class:`ReportError` when there is no
    mask and the finding is not located, or the mask is empty or does not match the series.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ordered = order_along_normal(source_datasets)
    shape = (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns))
    if mask is None:
        if not finding.located:
            raise ReportError("SEG: the finding has no centre and diameter, and no mask was given")
        mask = sphere_mask(ordered, finding.center_vox, finding.diameter_mm)  # type: ignore[arg-type]
    if mask.shape != shape or mask.dtype != bool:
        raise ReportError(f"SEG: mask must be bool {shape} (slices, rows, columns), got {mask.dtype} {mask.shape}")
    if not mask.any():
        raise ReportError("SEG: the mask is empty")
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Nodule",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, family=codes.DCM.ArtificialIntelligence, version=algorithm_version),
        tracking_uid=derived_uid(uid_seed, "tracking"), tracking_id="Nodule 1",
        anatomic_regions=[codes.SCT.Lung])
    return hd.seg.Segmentation(
        source_images=ordered, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=derived_uid(uid_seed, "seg-series"),
        series_number=SEG_SERIES_NUMBER, sop_instance_uid=derived_uid(uid_seed, "seg-instance"), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME, software_versions=algorithm_version,
        device_serial_number="0", content_label="NODULE", content_description=f"Nodule: {DISCLAIMER}",
        series_description=f"Nodule segmentation: {DISCLAIMER}", **_content_datetime(content_datetime))


def sphere_mask(ordered: Sequence[Dataset], center_vox: Sequence[int], diameter_mm: float) -> np.ndarray:
    """``(Z, Y, X)`` bool: voxels of the series (``ordered`` along the normal) whose centres lie within
    ``diameter_mm / 2`` of the centre voxel's, by slice positions and pixel spacing in mm."""
    slice_mm = np.array([_position_along_normal(ds) for ds in ordered])
    row_mm, column_mm = (float(v) for v in ordered[0].PixelSpacing)
    k, r, c = center_vox
    rows, columns = int(ordered[0].Rows), int(ordered[0].Columns)
    if not (k < len(ordered) and r < rows and c < columns):
        raise ReportError(f"centre {tuple(center_vox)} is outside the series of {len(ordered)}x{rows}x{columns}")
    dz = (slice_mm - slice_mm[k])[:, None, None]
    dy = ((np.arange(rows) - r) * row_mm)[None, :, None]
    dx = ((np.arange(columns) - c) * column_mm)[None, None, :]
    mask = dz**2 + dy**2 + dx**2 <= (diameter_mm / 2) ** 2
    mask[k, r, c] = True
    return mask


def to_bytes(dataset: Dataset) -> bytes:
    """A DICOM Part 10 file's bytes."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _center_image(ordered: Sequence[Dataset], finding: NoduleFinding) -> Dataset | None:
    if finding.center_vox is None:
        return None
    k = finding.center_vox[0]
    if k >= len(ordered):
        raise ReportError(f"finding: centre slice {k} is outside the series of {len(ordered)} slices")
    return ordered[k]


def _content_datetime(when: datetime | None) -> dict[str, Any]:
    return {} if when is None else {"content_date": when.date(), "content_time": when.time().replace(microsecond=0)}
