"""CT ingest (connectors.dicom): series written by connectors.ct_writer read back exactly, in position order; the
fast pixel path gives pydicom's values (unused high bits, per-slice rescale, compressed slices); resampling keeps
the field of view; rejections name the file and the reason. The bad-input corpus is in test_bad_inputs.py."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from connectors.ct_writer import CTPatient, CTStudy, encode_ct_series
from connectors.dicom import read_ct_series, resample
from connectors.records import CTSeries, InputError

PATIENT = CTPatient("Doe^Jane", "FL-000042", date(1961, 7, 1), "F")
STUDY = CTStudy.from_seed([42, "case-42"], study_datetime=datetime(2024, 3, 5, 9, 30))


def write_series(folder: Path, hu: np.ndarray, slice_spacing_mm: float = 2.0) -> list[Path]:
    """``hu`` as one file per slice, named so that name order is not slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    files = encode_ct_series(hu, pixel_spacing_mm=0.7, slice_spacing_mm=slice_spacing_mm, patient=PATIENT,
                             study=STUDY)
    order = np.random.default_rng(0).permutation(len(files))
    paths = [folder / f"{order[k]:04d}.dcm" for k in range(len(files))]
    for path, data in zip(paths, files):
        path.write_bytes(data)
    return paths


@pytest.fixture()
def hu() -> np.ndarray:
    return np.random.default_rng(1).integers(-1024, 3000, (6, 24, 20)).astype(np.int16)


def test_a_written_series_reads_back_exactly_in_position_order(tmp_path: Path, hu: np.ndarray) -> None:
    paths = write_series(tmp_path / "ct", hu)
    ct = read_ct_series(tmp_path / "ct", "case-42", ts=3.0)
    assert ct.volume.dtype == np.float32 and np.array_equal(ct.volume, hu.astype(np.float32))
    assert ct.spacing_mm == pytest.approx((2.0, 0.7, 0.7)) and ct.ts == 3.0
    assert ct.files == [str(p) for p in paths]  # slice order, not name order
    assert (ct.study_uid, ct.series_uid) == (STUDY.study_uid, STUDY.series_uid)
    assert CTSeries("case-42", 3.0, [str(p) for p in reversed(paths)]).decode().volume.tobytes() == ct.volume.tobytes()


def edited_series(folder: Path, edits: list) -> Path:
    """CT_small.dcm (128x128) as ``len(edits)`` slices 5 mm apart, slice ``k`` changed by ``edits[k]``."""
    folder.mkdir()
    for k, edit in enumerate(edits):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        edit(ds)
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    return folder


def reference_hu(folder: Path) -> np.ndarray:
    """pydicom's own reading, file by file: ``pixel_array * RescaleSlope + RescaleIntercept``."""
    slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    return np.stack([s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices])


def test_the_fast_pixel_path_gives_pydicoms_values(tmp_path: Path) -> None:
    def twelve_bits_with_garbage_above(ds) -> None:  # as some scanners leave overlay bits in the unused ones
        stored = (ds.pixel_array.astype(np.int32) & 0x0FFF) | 0xA000
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = stored.astype(np.uint16).tobytes()

    def unsigned_rescaled(ds) -> None:
        ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 0, 0.5, -1000

    def compressed(ds) -> None:
        ds.compress(RLELossless)

    volumes = {}
    for name, edits in {
        "twelve-bits": [twelve_bits_with_garbage_above] * 3,
        "per-slice-rescale": [lambda ds: None, unsigned_rescaled, lambda ds: None],
        "some-compressed": [compressed, lambda ds: None, compressed],
    }.items():
        folder = edited_series(tmp_path / name, edits)
        volumes[name] = read_ct_series(folder, name).volume
        assert np.array_equal(volumes[name], reference_hu(folder).astype(np.float32)), name
    assert volumes["twelve-bits"].min() < -2048  # 12-bit values >= 2048 are negative: the garbage bits dropped
    assert np.array_equal(volumes["some-compressed"], volumes["per-slice-rescale"][[0, 2, 0]])  # same slices


def test_resample_keeps_the_field_of_view_and_interpolates_trilinearly(tmp_path: Path) -> None:
    z = np.arange(10, dtype=np.float32)[:, None, None]
    ramp = np.broadcast_to(z * 100.0 - 500.0, (10, 8, 8)).astype(np.float32)  # HU linear in the slice index
    series = CTSeries("case-1", 0.0, volume=ramp, spacing_mm=(2.0, 0.5, 0.5))
    out = resample(series, (1.0, 1.0, 1.0))
    assert out.volume.shape == (20, 4, 4) and out.volume.dtype == np.float32
    assert out.spacing_mm == (1.0, 1.0, 1.0) and out.item_id == "case-1"
    # voxel centres at (i + 0.5) * spacing on both grids: output slice j samples input slice (j + 0.5) / 2 - 0.5
    inside = np.arange(1, 19)
    expected = ((inside + 0.5) / 2 - 0.5) * 100.0 - 500.0
    assert np.allclose(out.volume[inside, 2, 2], expected, atol=1e-3)

    odd = resample(series, (3.0, 0.7, 0.5))  # 20 mm / 3 mm -> 7 slices of 20/7 mm: the extent, not the step, kept
    assert odd.volume.shape == (7, 6, 8) and odd.spacing_mm == pytest.approx((20 / 7, 4 / 6, 0.5))
    assert resample(series, (2.0, 0.5, 0.5)) is series
    with pytest.raises(ValueError, match="three positive"):
        resample(series, (1.0, 0.0, 1.0))


def test_resample_decodes_a_series_that_travels_as_files(tmp_path: Path, hu: np.ndarray) -> None:
    paths = write_series(tmp_path / "ct", hu)
    out = resample(CTSeries("case-42", 0.0, [str(p) for p in paths]), (2.0, 1.4, 1.4))
    assert out.volume.shape == (6, 12, 10) and out.spacing_mm == pytest.approx((2.0, 1.4, 1.4))
    with pytest.raises(InputError, match="case-9: CT series has no files"):
        resample(CTSeries("case-9", 0.0, []), (1.0, 1.0, 1.0))


def test_series_refused_with_the_file_and_the_reason(tmp_path: Path, hu: np.ndarray) -> None:
    def edit_slice(path: Path, **attributes: object) -> None:
        ds = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)

    paths = write_series(tmp_path / "uneven", hu)  # slices 2 mm apart; slice 3 moved 0.7 mm up
    edit_slice(paths[3], ImagePositionPatient=[*pydicom.dcmread(paths[3]).ImagePositionPatient[:2], 3 * 2.0 + 0.7])
    with pytest.raises(InputError, match=f"case-7: CT series: uneven slice spacing: {paths[2].name} and "
                                         f"{paths[3].name} are 2.700 mm apart, the other slices 2.000 mm"):
        read_ct_series(tmp_path / "uneven", "case-7")

    paths = write_series(tmp_path / "pet", hu)
    edit_slice(paths[2], Modality="PT")
    with pytest.raises(InputError, match=f"case-8: {paths[2].name}: not a CT image \\(Modality PT\\)"):
        read_ct_series(tmp_path / "pet", "case-8")
