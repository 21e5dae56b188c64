"""A CT series from DICOM files into :class:`~connectors.records.CTSeries`, with pydicom; and its resampling.

Example:
    >>> ct = read_ct_series("case-0042/ct/", item_id="case-0042")
    >>> ct.volume.shape, ct.spacing_mm            # (slices, rows, columns) in HU; (slice, row, column) mm
    >>> iso = resample(ct, (1.0, 1.0, 1.0))       # trilinear, the field of view kept

Every header is read and checked before any pixel is decoded. Slices are ordered along the slice normal by
``ImagePositionPatient`` (by ``InstanceNumber`` when positions are absent); their pixels go into one
preallocated array of the stored integer type (uncompressed little-endian Pixel Data straight from its bytes,
compressed transfer syntaxes through pydicom's decoders: one at a time, as threads gained nothing with the RLE,
JPEG-LS and JPEG 2000 decoders installed, which hold the GIL) and are rescaled to Hounsfield units once,
vectorised. Anything unusable raises :class:`~connectors.records.InputError` naming the item, the file and the
reason: not DICOM, damaged or truncated, not CT (its Modality named), no or short pixel data, sizes past the
limits, slices from more than one study or series, slices that disagree in size, spacing or orientation, two
slices at one position, slices missing (a gap in the positions), uneven slice spacing. Reasons never quote element
values that may be PHI (patient names, ids, UIDs), only file names, keywords, codes and numbers.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from connectors.records import CTSeries, InputError, checked_size

MAX_SIDE = 4096  # rows and columns of one slice
MAX_SLICES = 2048
MAX_VOXELS = 2**28  # 1 GiB of float32 HU
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_SERIES_BYTES = 1024 * 1024 * 1024
SPACING_TOLERANCE = 0.01  # relative: slice gaps may differ this much (and 0.01 mm) from the series' spacing


class _Bad(ValueError):
    """A reason; :func:`read_ct_series` adds the item (and the file name where one file is at fault)."""


@dataclass
class _Slice:
    """One file's header, checked; its pixels are decoded only once the whole series has passed."""

    path: Path
    dataset: Any
    shape: tuple[int, int]  # (rows, columns)
    stored: np.dtype  # the stored integer type, by BitsAllocated and PixelRepresentation
    unused_bits: int  # BitsAllocated - BitsStored: high bits that hold no pixel value
    raw: bool  # uncompressed little-endian Pixel Data: read straight from its bytes
    rescale: tuple[float, float]  # slope, intercept
    spacing: tuple[float, float]
    orientation: np.ndarray | None
    position: np.ndarray | None
    instance: int | None
    thickness: float | None
    series_uid: str
    study_uid: str


def read_ct_series(files: str | Path | Sequence[str | Path], item_id: str, ts: float = 0.0) -> CTSeries:
    """Read a CT series from a folder (every file in it but hidden files and ``DICOMDIR``) or a list of files.

    Returns a decoded :class:`CTSeries`: ``volume`` ``(slices, rows, columns)`` float32 HU along the slice normal,
    ``spacing_mm`` ``(slice, row, column)``.
    """
    from pydicom.config import disable_value_validation

    paths = _series_files(files, item_id)
    with disable_value_validation():  # pydicom would otherwise log invalid values: names, ids (PHI)
        slices = [_per_file(item_id, path, _read_header, path) for path in paths]
        try:
            _check_consistent(slices)
            ordered, slice_spacing = _order(slices)
        except _Bad as exc:
            raise InputError(item_id, f"CT series: {exc}") from None
        rows, cols = ordered[0].shape
        if len(ordered) * rows * cols > MAX_VOXELS:
            raise InputError(item_id, f"CT series: {len(ordered)}x{rows}x{cols} voxels, more than {MAX_VOXELS}")
        volume = _hounsfield(item_id, ordered)
    first = ordered[0]
    return CTSeries(item_id, ts, [str(s.path) for s in ordered], volume, (slice_spacing, *first.spacing),
                    study_uid=first.study_uid, series_uid=first.series_uid, source=str(first.path.parent))


def resample(series: CTSeries, spacing_mm: tuple[float, float, float]) -> CTSeries:
    """The series (decoded first if it is not) resampled trilinearly to about ``spacing_mm`` (slice, row, column).

    The field of view is kept: an axis of ``n`` voxels at spacing ``s`` becomes ``max(1, round(n * s / t))``
    voxels for a target ``t``, and the returned ``spacing_mm`` is what that gives exactly (``n * s / n'``, within
    half a voxel of the target). Voxel centres keep their convention: index ``i`` lies at ``(i + 0.5) * spacing``
    from the volume's edge, before and after, so a point's millimetres map between the two grids.

    Torch's trilinear ``interpolate`` (``align_corners=False``), not MONAI: MONAI's ``Resize`` is this same call
    (identical output), but importing ``monai`` takes ~20 s of CPU (it loads its apps, networks, torchvision and
    torch's compiler), and its ``Spacing`` resamples through a general affine grid and ``grid_sample``, ~18x
    slower on a 100x512x512 series. No anti-aliasing: the reconstruction kernel has already band-limited the
    slices, and MONAI's Gaussian anti-aliasing would cost seconds.

    Raises:
        ValueError: ``spacing_mm`` is not three positive finite numbers.
        InputError: the series does not decode.
    """
    import torch

    target = tuple(float(t) for t in spacing_mm)
    if len(target) != 3 or not all(math.isfinite(t) and t > 0 for t in target):
        raise ValueError(f"spacing_mm must be three positive millimetre values, got {spacing_mm}")
    decoded = series.decode()
    shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(decoded.volume.shape, decoded.spacing_mm, target))
    if shape == decoded.volume.shape:
        return decoded
    volume = torch.nn.functional.interpolate(torch.from_numpy(decoded.volume)[None, None], size=shape,
                                             mode="trilinear", align_corners=False)[0, 0]
    spacing = tuple(n * s / m for n, s, m in zip(decoded.volume.shape, decoded.spacing_mm, shape))
    return replace(decoded, volume=volume.numpy(), spacing_mm=spacing)


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
    from pydicom.errors import InvalidDicomError

    try:
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
    try:
        return _checked_header(path, ds)
    except _Bad:
        if (overrun := _overrun(ds)) is not None:  # the real reason a header lacks what it should have
            raise _Bad(f"damaged or truncated DICOM (element {overrun} runs past the end of the file)") from None
        raise


def _overrun(ds) -> str | None:
    """The tag of an element (Pixel Data aside: its shortfall is reported as such) whose length claims more bytes
    than the file held: garbage read as a header, or a file cut short. pydicom reads such files without a word."""
    from pydicom.dataelem import RawDataElement

    for elem in ds.elements():
        if (isinstance(elem, RawDataElement) and elem.tag != 0x7FE00010 and elem.length != 0xFFFFFFFF
                and elem.value is not None and len(elem.value) < elem.length):
            return str(elem.tag)
    return None


def _checked_header(path: Path, ds) -> _Slice:
    import pydicom

    modality = ds.get("Modality")
    if modality != "CT":
        raise _Bad(f"not a CT image (Modality {_code(modality)})")
    if "PixelData" not in ds:
        raise _Bad("no pixel data")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if not (1 <= rows <= MAX_SIDE and 1 <= cols <= MAX_SIDE):
        raise _Bad(f"slice size {cols}x{rows} outside 1..{MAX_SIDE}")
    if _int(ds, "SamplesPerPixel", 1) != 1 or _int(ds, "NumberOfFrames", 1) != 1:
        raise _Bad("not a single-frame greyscale slice")
    bits, bits_stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored", None)
    if bits not in (8, 16, 32):
        raise _Bad(f"BitsAllocated {bits} is not 8, 16 or 32")
    if bits_stored is None or not 1 <= bits_stored <= bits:
        raise _Bad(f"BitsStored must be 1..{bits} (BitsAllocated)")
    signed = _int(ds, "PixelRepresentation", 0) == 1
    syntax = ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)
    if not syntax.is_compressed:
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
        path, ds, (rows, cols), np.dtype(f"<{'i' if signed else 'u'}{bits // 8}"), bits - bits_stored,
        not syntax.is_compressed and syntax.is_little_endian, (slope[0], intercept[0]), (spacing[0], spacing[1]),
        None if orientation is None else np.array(orientation), None if position is None else np.array(position),
        _int(ds, "InstanceNumber", None), thickness[0] if thickness and thickness[0] > 0 else None,
        str(ds.get("SeriesInstanceUID", "")), str(ds.get("StudyInstanceUID", "")),
    )


def _code(value: Any) -> str:
    """A DICOM code string (e.g. a Modality) for a message: itself when it looks like a code, never free text."""
    if value is None or value == "":
        return "missing"
    return str(value) if re.fullmatch(r"[A-Z0-9_ ]{1,16}", str(value)) else "not a code string"


def _hounsfield(item_id: str, slices: list[_Slice]) -> np.ndarray:
    """``(slices, rows, columns)`` float32 HU: stored values into one array, then one vectorised rescale."""
    stored = np.empty((len(slices), *slices[0].shape), np.result_type(*(s.stored for s in slices)))
    for k, s in enumerate(slices):
        stored[k] = _per_file(item_id, s.path, _raw_pixels if s.raw else _decoded_pixels, s)
    slopes, intercepts = (np.array(values, np.float32) for values in zip(*(s.rescale for s in slices)))
    volume = np.empty(stored.shape, np.float32)
    if (slopes == 1).all():  # CT's usual case: one pass, the cast fused with the add
        np.add(stored, _per_slice(intercepts), out=volume, dtype=np.float32)
    else:
        np.multiply(stored, _per_slice(slopes), out=volume, dtype=np.float32)
        volume += _per_slice(intercepts)
    return volume


def _per_slice(values: np.ndarray) -> np.ndarray:
    """One value per slice, shaped to broadcast over ``(slices, rows, columns)`` (a scalar when all are equal)."""
    return values[:, None, None] if (values != values[0]).any() else values[0]


def _raw_pixels(s: _Slice) -> np.ndarray:
    """Uncompressed little-endian Pixel Data as ``(rows, columns)`` of the stored type, a view on its bytes where
    every stored bit is a pixel bit; pydicom's ``pixel_array`` gives the same values, ~6x slower."""
    pixels = np.frombuffer(s.dataset.PixelData, s.stored, count=s.shape[0] * s.shape[1]).reshape(s.shape)
    return _clear_unused_bits(pixels.copy(), s.unused_bits) if s.unused_bits else pixels


def _decoded_pixels(s: _Slice) -> np.ndarray:
    pixels = s.dataset.pixel_array  # pydicom's decoders clear the unused bits themselves
    if pixels.shape != s.shape:
        raise _Bad(f"pixel array {pixels.shape} does not match Rows x Columns {s.shape}")
    return pixels


def _clear_unused_bits(pixels: np.ndarray, unused: int) -> np.ndarray:
    """Drop the high bits BitsStored leaves unused (sign-extending signed values), in place, as pydicom does."""
    np.left_shift(pixels, unused, out=pixels)
    np.right_shift(pixels, unused, out=pixels)
    return pixels


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


def _check_consistent(slices: list[_Slice]) -> None:
    """One study, one series, one slice size, spacing and orientation; the study first: a series whose slices
    name two studies is a mix-up upstream (two patients' slices, perhaps), whatever else is wrong."""
    first = slices[0]
    for s in slices[1:]:
        if s.study_uid != first.study_uid:
            raise _Bad(f"the series mixes studies: {s.path.name} belongs to another study (StudyInstanceUID) "
                       f"than {first.path.name}")
    for s in slices[1:]:
        if s.series_uid != first.series_uid:
            raise _Bad(f"{s.path.name} belongs to another series (SeriesInstanceUID) than {first.path.name}")
        if s.shape != first.shape:
            raise _Bad(f"{s.path.name} is {s.shape[1]}x{s.shape[0]}, {first.path.name} is "
                       f"{first.shape[1]}x{first.shape[0]}")
        if not np.allclose(s.spacing, first.spacing, rtol=1e-3):
            raise _Bad(f"{s.path.name} has PixelSpacing {s.spacing}, {first.path.name} {first.spacing}")
        if (s.orientation is None) != (first.orientation is None) or (
                s.orientation is not None and not np.allclose(s.orientation, first.orientation, atol=1e-3)):
            raise _Bad(f"{s.path.name} is oriented differently from {first.path.name}")


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
                raise _Bad(f"{a.path.name} and {b.path.name} are at the same position (duplicate slices)")
        if len(gaps):
            _check_gaps(gaps, ordered)
            return ordered, float(gaps.mean())
    elif all(s.instance is not None for s in slices):
        ordered = sorted(slices, key=lambda s: s.instance)
        for a, b in zip(ordered, ordered[1:]):
            if a.instance == b.instance:
                raise _Bad(f"{a.path.name} and {b.path.name} have the same InstanceNumber (duplicate slices)")
    else:
        raise _Bad("slices have neither ImagePositionPatient/ImageOrientationPatient nor InstanceNumber to order "
                   "them")
    if ordered[0].thickness is None:
        raise _Bad("no slice positions, SpacingBetweenSlices or SliceThickness to give the slice spacing")
    return ordered, ordered[0].thickness


def _check_gaps(gaps: np.ndarray, ordered: list[_Slice]) -> None:
    """Every gap between neighbouring slices equals the series' spacing (the lower median gap: missing slices
    widen gaps, never narrow them); a gap of a whole number of spacings is named as slices missing."""
    spacing = float(np.sort(gaps)[(len(gaps) - 1) // 2])
    for gap, a, b in zip(gaps, ordered, ordered[1:]):
        steps = round(gap / spacing)
        if abs(gap - spacing) <= SPACING_TOLERANCE * spacing + 0.01:
            continue
        between = f"{a.path.name} and {b.path.name}"
        if steps >= 2 and abs(gap - steps * spacing) <= SPACING_TOLERANCE * gap + 0.01:
            raise _Bad(f"{steps - 1} slice(s) missing between {between} (gap {gap:.3f} mm, slices {spacing:.3f} mm "
                       f"apart)")
        raise _Bad(f"uneven slice spacing: {between} are {gap:.3f} mm apart, the other slices {spacing:.3f} mm")
