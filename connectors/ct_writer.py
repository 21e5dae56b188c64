"""A CT volume in Hounsfield units into DICOM CT Image Storage files, one per slice, with pydicom.

Example:
    >>> study = CTStudy.from_seed([42, "case-0042"], study_datetime=datetime(2024, 3, 5, 9, 30), kernel="B45f")
    >>> patient = CTPatient("Doe^Jane", "FL-000042", date(1961, 7, 1), "F")
    >>> files = encode_ct_series(hu, pixel_spacing_mm=1.4, slice_spacing_mm=2.0, patient=patient, study=study)
    >>> for k, data in enumerate(files): Path(f"{k:04d}.dcm").write_bytes(data)

Each file is explicit VR little endian, uncompressed, 16-bit signed pixels with ``RescaleSlope`` 1 and
``RescaleIntercept`` -1024 (stored value = HU + 1024), an axial slice (``ImageOrientationPatient``
``[1, 0, 0, 0, 1, 0]``) whose ``ImagePositionPatient`` z grows with the slice index ``k`` of ``hu[k]``. Every
Type 1 and Type 2 attribute of the CT Image IOD is written; ``dciodvfy`` reports no errors. The output is a pure
function of the arguments (UIDs included, when they come from :meth:`CTStudy.from_seed`): the same call gives the
same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np

RESCALE_INTERCEPT = -1024  # stored = HU - intercept, so air (-1000) is stored as 24
MIN_HU, MAX_HU = -1024, 31743  # what 16-bit signed storage holds with that intercept
UID_PREFIX = "2.25."  # a UID as a decimal number (ISO/IEC 9834-8), here a hash of the parts


@dataclass(frozen=True)
class CTPatient:
    """Who the series belongs to (PHI: never log it).

    Attributes:
        name: DICOM person name, ``"Family^Given"``.
        patient_id: the hospital's patient id.
        birth_date: date of birth.
        sex: ``"F"``, ``"M"`` or ``"O"``.
    """

    name: str
    patient_id: str
    birth_date: date
    sex: str


@dataclass(frozen=True)
class CTStudy:
    """The study and series the slices belong to, and how they were acquired.

    Attributes:
        study_uid / series_uid / frame_of_reference_uid: DICOM UIDs (see :meth:`from_seed`).
        study_datetime: when the study was acquired (StudyDate/Time, SeriesDate/Time, ContentDate/Time).
        accession_number: the order's accession number (up to 16 characters).
        description: StudyDescription and SeriesDescription.
        kernel: ConvolutionKernel, the reconstruction kernel's name (e.g. ``"B30f"``, ``"STANDARD"``).
        kvp: peak tube voltage in kV.
        study_id: StudyID (up to 16 characters).
        series_number: SeriesNumber.
        manufacturer: Manufacturer of the equipment.
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    study_datetime: datetime
    accession_number: str = ""
    description: str = "CT CHEST"
    kernel: str = "STANDARD"
    kvp: float = 120.0
    study_id: str = "1"
    series_number: int = 1
    manufacturer: str = "fusionline"

    @classmethod
    def from_seed(cls, seed: Sequence[object], study_datetime: datetime, **fields: object) -> CTStudy:
        """A study whose three UIDs derive from ``seed`` (any values with a stable ``str``): the same seed gives
        the same UIDs, different seeds different ones. ``fields`` are the other attributes."""
        return cls(study_uid=derived_uid(*seed, "study"), series_uid=derived_uid(*seed, "series"),
                   frame_of_reference_uid=derived_uid(*seed, "frame-of-reference"),
                   study_datetime=study_datetime, **fields)  # type: ignore[arg-type]


def derived_uid(*parts: object) -> str:
    """A DICOM UID (``2.25.<decimal>``) that depends only on ``parts``."""
    from pydicom.uid import generate_uid

    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(part) for part in parts])


def encode_ct_series(
    hu: np.ndarray,
    pixel_spacing_mm: float,
    slice_spacing_mm: float,
    patient: CTPatient,
    study: CTStudy,
    first_slice_z_mm: float = 0.0,
) -> list[bytes]:
    """One DICOM CT Image Storage file (bytes) per slice of ``hu``.

    Args:
        hu: ``(Z, Y, X)`` integer Hounsfield units (``hu[k, r, c]``: slice ``k`` feet to head, row ``r`` anterior
            to posterior, column ``c`` patient right to left), within ``MIN_HU..MAX_HU``.
        pixel_spacing_mm: in-plane spacing (square pixels), > 0.
        slice_spacing_mm: distance between slice centres, > 0; written as SliceThickness too (contiguous slices).
        patient / study: the header's patient, study and acquisition.
        first_slice_z_mm: ImagePositionPatient z of slice 0; slice ``k`` is at ``first_slice_z_mm + k *
            slice_spacing_mm``. The volume is centred in x and y on the patient axis.

    Raises:
        ValueError: a volume that is not 3-D integers within range, or spacings that are not positive.
    """
    if hu.ndim != 3 or not np.issubdtype(hu.dtype, np.integer) or min(hu.shape) < 1:
        raise ValueError(f"hu must be a non-empty (Z, Y, X) integer array, got {hu.dtype} {hu.shape}")
    if not (pixel_spacing_mm > 0 and slice_spacing_mm > 0):
        raise ValueError(f"spacings must be positive, got {pixel_spacing_mm} and {slice_spacing_mm} mm")
    low, high = int(hu.min()), int(hu.max())
    if low < MIN_HU or high > MAX_HU:
        raise ValueError(f"HU {low}..{high} outside the storable {MIN_HU}..{MAX_HU}")
    stored = (hu.astype(np.int32) - RESCALE_INTERCEPT).astype("<i2")
    slices, rows, cols = hu.shape
    origin_x = -(cols - 1) / 2 * pixel_spacing_mm
    origin_y = -(rows - 1) / 2 * pixel_spacing_mm
    files = []
    for k in range(slices):
        z = first_slice_z_mm + k * slice_spacing_mm
        ds = _slice_dataset(patient, study, k, (origin_x, origin_y, z), pixel_spacing_mm, slice_spacing_mm,
                            rows, cols)
        ds.PixelData = stored[k].tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def _slice_dataset(patient: CTPatient, study: CTStudy, k: int, position: tuple[float, float, float],
                   pixel_spacing_mm: float, slice_spacing_mm: float, rows: int, cols: int):
    """The header of slice ``k`` (a :class:`pydicom.Dataset` with file meta, pixel data not yet set)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    instance_uid = derived_uid(study.series_uid, "instance", k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    when_date, when_time = study.study_datetime.strftime("%Y%m%d"), study.study_datetime.strftime("%H%M%S")
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = instance_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = study.manufacturer
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = ds.SeriesDescription = study.description
    # Patient
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    # CT Image, acquisition
    ds.SliceThickness = _ds(slice_spacing_mm)
    ds.KVP = _ds(study.kvp)
    ds.ConvolutionKernel = study.kernel
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    # General Study / Series / Frame of Reference / Image
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = study.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = study.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(position[2])
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = [_ds(pixel_spacing_mm), _ds(pixel_spacing_mm)]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    # VOI LUT (a lung window) and Modality LUT
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return ds


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS)."""
    return f"{value:.6g}"
