"""CT ingest: load + Hounsfield units + resampling of one series, fusionline's path vs a naive per-file loop.

The series: ``--slices`` slices of 512x512 (0.7 mm pixels, 2 mm apart; a chest phantom of body, lungs and noise),
written by ``connectors.ct_writer`` (explicit VR little endian, one file per slice) into a temporary folder.

- ``fusionline``: ``connectors.dicom.read_ct_series`` (every header checked first, the pixels of all slices into one
  preallocated array, one vectorised rescale) then ``resample`` (torch trilinear) to ``--spacing``;
- ``naive``: per file ``pydicom.dcmread`` + ``pixel_array`` + rescale, slices sorted by ``ImagePositionPatient``,
  stacked, then ``scipy.ndimage.zoom`` (order 1, trilinear) to the same shape.

Both run in this process, interleaved for ``--rounds`` rounds after one untimed warm-up each (imports, page
cache); each path's median round is reported. Prints a table; the last line is ``ratio: X`` = naive seconds /
fusionline seconds (load + HU + resample).

    python benchmarks/ct_ingest.py --slices 100 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import MachineWatch  # noqa: E402
from connectors.ct_writer import CTPatient, CTStudy, encode_ct_series  # noqa: E402
from connectors.dicom import read_ct_series, resample  # noqa: E402

PIXEL_MM, SLICE_MM, SIDE = 0.7, 2.0, 512


def write_series(folder: Path, slices: int) -> list[Path]:
    """A chest-like series: soft-tissue ellipse (40 HU) with two lungs (-850 HU) in air, Gaussian noise (20 HU)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:SIDE, :SIDE] / SIDE - 0.5
    body = (x / 0.42) ** 2 + (y / 0.3) ** 2 < 1
    lungs = ((np.abs(x) - 0.18) / 0.14) ** 2 + (y / 0.2) ** 2 < 1
    plane = np.where(body, np.where(lungs, -850, 40), -1000)
    hu = (plane[None] + rng.normal(0, 20, (slices, SIDE, SIDE))).clip(-1024, 3000).astype(np.int16)
    study = CTStudy.from_seed(["ct-ingest-benchmark"], study_datetime=datetime(2024, 3, 5, 9, 30))
    files = encode_ct_series(hu, PIXEL_MM, SLICE_MM, CTPatient("Bench^Mark", "BENCH-1", date(1960, 1, 1), "O"), study)
    paths = [folder / f"{k:04d}.dcm" for k in range(slices)]
    for path, data in zip(paths, files):
        path.write_bytes(data)
    return paths


Run = tuple[np.ndarray, np.ndarray, float, float]  # HU volume, resampled volume, load + HU s, resample s


def fusionline(folder: Path, spacing: tuple[float, float, float]) -> Run:
    started = time.perf_counter()
    series = read_ct_series(folder, "bench")
    loaded = time.perf_counter()
    resampled = resample(series, spacing).volume
    return series.volume, resampled, loaded - started, time.perf_counter() - loaded


def naive(paths: list[Path], spacing: tuple[float, float, float]) -> Run:
    """The same, file by file with pydicom's ``pixel_array``, then ``scipy.ndimage.zoom``."""
    import pydicom
    from scipy.ndimage import zoom

    started = time.perf_counter()
    slices = []
    for path in paths:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        slices.append((float(ds.ImagePositionPatient[2]), hu))
    volume = np.stack([hu for _, hu in sorted(slices, key=lambda s: s[0])])
    loaded = time.perf_counter()
    shape = [max(1, round(n * s / t)) for n, s, t in zip(volume.shape, (SLICE_MM, PIXEL_MM, PIXEL_MM), spacing)]
    resampled = zoom(volume, [m / n for m, n in zip(shape, volume.shape)], order=1)
    return volume, resampled, loaded - started, time.perf_counter() - loaded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=100, help="slices of 512x512 in the series")
    p.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("SLICE", "ROW", "COLUMN"),
                   help="target spacing of the resampling, mm")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds of both paths (median kept)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    watch = MachineWatch()
    spacing = tuple(args.spacing)
    with tempfile.TemporaryDirectory(prefix="ct-ingest-") as tmp:
        paths = write_series(Path(tmp), args.slices)
        fast_hu, fast_volume, _, _ = fusionline(Path(tmp), spacing)  # warm-up: imports, page cache
        slow_hu, slow_volume, _, _ = naive(paths, spacing)
        runs: dict[str, list[tuple[float, float]]] = {"fusionline": [], "naive": []}
        for r in range(args.rounds):
            runs["fusionline"].append(fusionline(Path(tmp), spacing)[2:])
            runs["naive"].append(naive(paths, spacing)[2:])
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {sum(v[-1]):.2f} s" for k, v in runs.items()))

    print(f"\nCT series: {args.slices} slices of {SIDE}x{SIDE} int16 ({args.slices * SIDE * SIDE * 2 / 2**20:.0f} MB), "
          f"{SLICE_MM} x {PIXEL_MM} x {PIXEL_MM} mm -> {' x '.join(f'{s:g}' for s in spacing)} mm "
          f"{'x'.join(map(str, fast_volume.shape))}; {args.threads} torch threads; median of {args.rounds} rounds")
    print(f"{'path':<12} {'load + HU s':>12} {'resample s':>11} {'total s':>8} {'range s':>12}  how")
    how = {"fusionline": "read_ct_series (headers, one array, one rescale) + resample (torch trilinear)",
           "naive": "per file dcmread + pixel_array + rescale, stack, scipy.ndimage.zoom order 1"}
    total = {}
    for name, rounds in runs.items():
        totals = [load + rs for load, rs in rounds]
        total[name] = statistics.median(totals)
        print(f"{name:<12} {statistics.median(load for load, _ in rounds):>12.3f} "
              f"{statistics.median(rs for _, rs in rounds):>11.3f} {total[name]:>8.3f} "
              f"{f'{min(totals):.2f}-{max(totals):.2f}':>12}  {how[name]}")
    differ = np.abs(fast_volume - slow_volume)
    print(f"HU volumes identical: {np.array_equal(fast_hu, slow_hu)}; resampled shapes equal: "
          f"{fast_volume.shape == slow_volume.shape}, |fusionline - naive| mean {differ.mean():.1f} HU (scipy's zoom "
          "puts the end voxels' centres on the edges of the grid, torch keeps voxel centres at (i + 0.5) * spacing)")
    print(f"target: fusionline <= 1 s ({'met' if total['fusionline'] <= 1.0 else 'MISSED'}) and >= 2x naive "
          f"({'met' if total['naive'] >= 2 * total['fusionline'] else 'MISSED'})")
    watch.verdict()
    print(f"ratio: {total['naive'] / total['fusionline']:.2f}")


if __name__ == "__main__":
    main()
