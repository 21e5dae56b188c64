"""A CT series from DICOM files into :class:`~connectors.records.CTSeries`, with pydicom.

Example:
    >>> ct = read_ct_series("case-0042/ct/", item_id="case-0042")
    >>> ct.volume.shape, ct.spacing_mm            # (slices, rows, columns) in HU; (slice, row, column) mm

Slices are ordered along the slice normal by ``ImagePositionPatient`` (by ``InstanceNumber`` when positions are
absent) and rescaled to Hounsfield units. Anything unusable raises :class:`~connectors.records.InputError`
naming the item, the file and the reason: not DICOM, damaged or truncated, not CT, no pixel data, sizes past
the limits (checked from the headers, before any pixel is decoded), slices that disagree in size, spacing,
orientation or series, two slices at one position, uneven slice spacing. Reasons never quote element values
(patient names, ids), only file names, keywords and numbers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from connectors.records import CTSeries, InputError, checked_size

MAX_SIDE = 4096  # rows and columns of one slice
MAX_SLICES = 2048
MAX_VOXELS = 2**28  # 1 GiB of float32 HU
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_SERIES_BYTES = 1024 * 1024 * 1024
SPACING_TOLERANCE = 0.01  # relative: slice gaps may differ this much (and 0.01 mm) from their mean


class _Bad(ValueError):
    """A reason; :func:`read_ct_series` adds the item (and the file name where one file is at fault)."""


@dataclass
class _Slice:
    """One file's header, checked; its pixels are decoded only once the whole series has passed."""

    path: Path
    dataset: Any
    shape: tuple[int, int]  # (rows, columns)
    rescale: tuple[float, float]  # slope, intercept
    spacing: tuple[float, float]
    orientation: np.ndarray | None
    position: np.ndarray | None
    instance: int | None
    thickness: float | None
    series_uid: str
    study_uid: str


def read_ct_series(files: str | Path | Sequence[str | Path], item_id: str, ts: float = 0.0) -> CTSeries:
    """Read a CT series from a folder (every file in it but hidden files and ``DICOMDIR``) or a list of files."""
    paths = _series_files(files, item_id)
    slices = [_per_file(item_id, path, _read_header, path) for path in paths]
    try:
        ordered, slice_spacing = _order(slices)
        _check_consistent(ordered)
    except _Bad as exc:
        raise InputError(item_id, f"CT series: {exc}") from None
    rows, cols = ordered[0].shape
    if len(ordered) * rows * cols > MAX_VOXELS:
        raise InputError(item_id, f"CT series: {len(ordered)}x{rows}x{cols} voxels, more than {MAX_VOXELS}")
    volume = np.empty((len(ordered), rows, cols), np.float32)
    for k, s in enumerate(ordered):
        volume[k] = _per_file(item_id, s.path, _hounsfield, s)
    first = ordered[0]
    return CTSeries(item_id, ts, [str(s.path) for s in ordered], volume, (slice_spacing, *first.spacing),
                    study_uid=first.study_uid, series_uid=first.series_uid, source=str(first.path.parent))


def _series_files(files: str | Path | Sequence[str | Path], item_id: str) -> list[Path]:
    if isinstance(files, (str, Path)):
        root = Path(files)
        paths = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name.upper() != "DICOMDIR") if root.is_dir() else [root]
        if not paths:
            raise InputError(item_id, f"CT series: no files in {root.name}")
    else:
        paths = [Path(f) for f in files]
        if not paths:
            raise InputError(item_id, "CT series: no files given")
    if len(paths) > MAX_SLICES:
        raise InputError(item_id, f"CT series: {len(paths)} files, more than {MAX_SLICES} slices")
    total = 0
    for path in paths:
        total += checked_size(path, item_id, MAX_FILE_BYTES, "DICOM file")
    if total > MAX_SERIES_BYTES:
        raise InputError(item_id, f"CT series: {total} bytes exceeds the {MAX_SERIES_BYTES}-byte limit")
    return paths


T = TypeVar("T")


def _per_file(item_id: str, path: Path, step: Callable[..., T], arg: Any) -> T:
    """Run one step on one file; whatever goes wrong becomes an :class:`InputError` naming the item and file."""
    from pydicom.config import disable_value_validation
    from pydicom.errors import InvalidDicomError

    try:
        with disable_value_validation():  # pydicom would otherwise log invalid values: names, ids (PHI)
            return step(arg)
    except _Bad as exc:
        raise InputError(item_id, f"{path.name}: {exc}") from None
    except InvalidDicomError:
        raise InputError(item_id, f"{path.name}: not a DICOM file") from None
    except OSError as exc:
        raise InputError(item_id, f"{path.name}: cannot read ({exc.strerror})") from None
    except Exception as exc:  # pydicom and its pixel decoders raise many types on damaged bytes
        raise InputError(item_id, f"{path.name}: damaged or truncated DICOM ({type(exc).__name__})") from None


def _read_header(path: Path) -> _Slice:
    import pydicom

    data = path.read_bytes()
    if not data:
        raise _Bad("empty file (0 bytes)")
    # from memory: a length field claiming gigabytes reads what is there, never allocates what it claims
    ds = pydicom.dcmread(io.BytesIO(data))
    if ds.get("Modality") != "CT":
        raise _Bad("not a CT image (Modality " + ("missing)" if not ds.get("Modality") else "is not CT)"))
    if "PixelData" not in ds:
        raise _Bad("no pixel data")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if not (1 <= rows <= MAX_SIDE and 1 <= cols <= MAX_SIDE):
        raise _Bad(f"slice size {cols}x{rows} outside 1..{MAX_SIDE}")
    if _int(ds, "SamplesPerPixel", 1) != 1 or _int(ds, "NumberOfFrames", 1) != 1:
        raise _Bad("not a single-frame greyscale slice")
    bits = _int(ds, "BitsAllocated")
    if bits not in (8, 16, 32):
        raise _Bad(f"BitsAllocated {bits} is not 8, 16 or 32")
    if not ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian).is_compressed:
        expected, held = rows * cols * bits // 8, len(ds.PixelData)
        if held < expected:
            raise _Bad(f"pixel data truncated ({held} of {expected} bytes)")
    spacing = _floats(ds, "PixelSpacing", 2)
    if spacing is None or min(spacing) <= 0:
        raise _Bad("PixelSpacing missing or not positive")
    slope, intercept = _floats(ds, "RescaleSlope", 1) or [1.0], _floats(ds, "RescaleIntercept", 1) or [0.0]
    thickness = _floats(ds, "SpacingBetweenSlices", 1) or _floats(ds, "SliceThickness", 1)
    orientation, position = _floats(ds, "ImageOrientationPatient", 6), _floats(ds, "ImagePositionPatient", 3)
    return _Slice(
        path, ds, (rows, cols), (slope[0], intercept[0]), (spacing[0], spacing[1]),
        None if orientation is None else np.array(orientation), None if position is None else np.array(position),
        _int(ds, "InstanceNumber", None), thickness[0] if thickness and thickness[0] > 0 else None,
        str(ds.get("SeriesInstanceUID", "")), str(ds.get("StudyInstanceUID", "")),
    )


def _hounsfield(s: _Slice) -> np.ndarray:
    pixels = s.dataset.pixel_array
    if pixels.shape != s.shape:
        raise _Bad(f"pixel array {pixels.shape} does not match Rows x Columns {s.shape}")
    slope, intercept = s.rescale
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _int(ds, keyword: str, default: int | None = 0) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _Bad(f"{keyword} is not an integer") from None


def _floats(ds, keyword: str, count: int) -> list[float] | None:
    """``count`` finite numbers from a (multi-valued) element; None when it is absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    from pydicom.multival import MultiValue

    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        raise _Bad(f"{keyword} is not numeric") from None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise _Bad(f"{keyword} must be {count} finite number(s)")
    return numbers


def _order(slices: list[_Slice]) -> tuple[list[_Slice], float]:
    """Slices along the normal (or by InstanceNumber), and the slice spacing in mm."""
    if all(s.position is not None and s.orientation is not None for s in slices):
        normal = np.cross(slices[0].orientation[:3], slices[0].orientation[3:])
        if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-2):
            raise _Bad(f"{slices[0].path.name}: ImageOrientationPatient is not two orthogonal unit vectors")
        where = {id(s): float(np.dot(s.position, normal)) for s in slices}
        ordered = sorted(slices, key=lambda s: where[id(s)])
        gaps = np.diff([where[id(s)] for s in ordered])
        for gap, a, b in zip(gaps, ordered, ordered[1:]):
            if gap < 1e-3:
                raise _Bad(f"{a.path.name} and {b.path.name} are at the same position")
        if len(gaps):
            mean = float(gaps.mean())
            if float(np.abs(gaps - mean).max()) > SPACING_TOLERANCE * mean + 0.01:
                raise _Bad(f"uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm): slices missing?")
            return ordered, mean
    elif all(s.instance is not None for s in slices):
        ordered = sorted(slices, key=lambda s: s.instance)
        for a, b in zip(ordered, ordered[1:]):
            if a.instance == b.instance:
                raise _Bad(f"{a.path.name} and {b.path.name} have the same InstanceNumber")
    else:
        raise _Bad("slices have neither ImagePositionPatient/ImageOrientationPatient nor InstanceNumber to order "
                   "them")
    if ordered[0].thickness is None:
        raise _Bad("no slice positions, SpacingBetweenSlices or SliceThickness to give the slice spacing")
    return ordered, ordered[0].thickness


def _check_consistent(slices: list[_Slice]) -> None:
    first = slices[0]
    for s in slices[1:]:
        if s.shape != first.shape:
            raise _Bad(f"{s.path.name} is {s.shape[1]}x{s.shape[0]}, {first.path.name} is "
                       f"{first.shape[1]}x{first.shape[0]}")
        if not np.allclose(s.spacing, first.spacing, rtol=1e-3):
            raise _Bad(f"{s.path.name} has PixelSpacing {s.spacing}, {first.path.name} {first.spacing}")
        if s.series_uid != first.series_uid:
            raise _Bad(f"{s.path.name} belongs to another series than {first.path.name}")
        if (s.orientation is None) != (first.orientation is None) or (
                s.orientation is not None and not np.allclose(s.orientation, first.orientation, atol=1e-3)):
            raise _Bad(f"{s.path.name} is oriented differently from {first.path.name}")
