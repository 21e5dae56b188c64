"""Phantom families: each renders a drawn case (:class:`CaseSpec`) into a chest CT volume in Hounsfield units.

A family is a module with ``NAME`` and ``render(case, rng) -> Phantom``; :data:`FAMILIES` lists them. The
synthesiser (:mod:`pipelines.lines.medical.synth`) draws the cases, the records and the labels; a family draws
only the image. Two families written independently of each other (anatomy model, noise, reconstruction kernel)
give the line a shift test: train on one, score on the other.

Geometry: ``hu[k, r, c]`` is slice ``k`` (ascending along the slice normal, i.e. feet to head, +z in DICOM's
patient coordinates), row ``r`` (anterior to posterior) and column ``c`` (patient right to left); the writer puts
``ImageOrientationPatient = [1, 0, 0, 0, 1, 0]`` and ``ImagePositionPatient`` z increasing with ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DENSITIES = ("solid", "part-solid", "ground-glass")
SITES = ("intraparenchymal", "juxtapleural", "juxtavascular")
KERNELS = ("soft", "standard", "sharp")


@dataclass(frozen=True)
class NoduleSpec:
    """The nodule a case holds.

    Attributes:
        diameter_mm: mean diameter, 3 to 30 mm.
        density: one of :data:`DENSITIES`.
        site: one of :data:`SITES`: free in the lung, touching the pleura (chest wall), or touching a vessel.
        spiculated: an irregular, spiculated margin (a CT sign of malignancy) instead of a smooth one.
    """

    diameter_mm: float
    density: str
    site: str
    spiculated: bool


@dataclass(frozen=True)
class ScanSpec:
    """How the case is scanned and reconstructed.

    Attributes:
        size: rows = columns of a slice (pixels).
        pixel_spacing_mm: in-plane spacing (square pixels).
        slices: number of slices.
        slice_spacing_mm: distance between slice centres (= slice thickness here).
        kernel: reconstruction kernel, one of :data:`KERNELS` (sharper: crisper edges, more and finer noise).
        noise_hu: standard deviation of the image noise in soft tissue (dose: low-dose screening is noisier).
    """

    size: int
    pixel_spacing_mm: float
    slices: int
    slice_spacing_mm: float
    kernel: str
    noise_hu: float


@dataclass(frozen=True)
class CaseSpec:
    """One case as drawn by the synthesiser, before rendering.

    Attributes:
        nodule: the nodule, or None for a case without one.
        lookalikes: how many nodule look-alikes to add on top of normal anatomy (calcified granulomas, vessel
            cross-sections seen end-on, scars); present in cases with and without a nodule.
        scan: the acquisition.
        body_scale: patient size relative to an average adult (0.8 to 1.2).
        female: the patient's sex as recorded (breast soft tissue in the anatomy model, if the family draws it).
    """

    nodule: NoduleSpec | None
    lookalikes: int
    scan: ScanSpec
    body_scale: float
    female: bool


@dataclass
class Phantom:
    """A rendered case.

    Attributes:
        hu: ``(slices, size, size)`` int16 Hounsfield units (air -1000, lung about -850, soft tissue 40, bone
            400 to 1000), noise and kernel applied.
        nodule_center_vox: ``(slice, row, column)`` of the nodule's centre, or None without a nodule.
        nodule_mask: ``(slices, size, size)`` bool, the nodule's voxels (solid and ground-glass parts), or None.
    """

    hu: np.ndarray
    nodule_center_vox: tuple[int, int, int] | None
    nodule_mask: np.ndarray | None


#: Family name -> its module (imported when a case is rendered).
FAMILIES: dict[str, str] = {
    "chest-a": "pipelines.lines.medical.phantoms.chest_a",
    "chest-b": "pipelines.lines.medical.phantoms.chest_b",
}
