"""Phantom family A: an analytic chest (superellipse body and cavity, implicit lungs) with vessel trees grown
from the hila, airways, fissures, ribs, spine, aorta and heart, nodules and look-alikes, posed on the couch, then
a filtered back-projection scanner.

The volume is built in millimetres: ``x`` patient right to left (columns), ``y`` anterior to posterior (rows),
``z`` feet to head (slices, ``z = 0`` at the lung base, the apex at ``z = lung height``); each case draws where in
the lung its slab of slices lies. Tissue (approximate HU): air -1000, lung -870..-800 (denser posteriorly), fat
-100, mediastinal fat -90, muscle 45, blood / heart 40, cartilage 120, cancellous bone 250, cortical bone 800.
Vessels thicker than a voxel are drawn as tapered tubes with a partial-volume rim; thinner ones by their volume
(trilinear splats along the centre line), so the periphery shows faint dots and lines as on a real scan.

The scanner works slice by slice in the Fourier domain: the kernel's modulation transfer function (soft: blur;
sharp: edge enhancement) and noise with a ramp-shaped power spectrum (``|f| MTF(f)^2``, as filtered back-projection
gives), so noise is correlated in-plane and finer with a sharper kernel; its standard deviation is the case's
``noise_hu``. Slice thickness blurs slightly along z.

Nodule mask: the voxels at least half inside the nodule's body (ellipsoid with lobulated margin, solid core and
ground-glass halo alike; spicules are not in the mask). A juxtapleural nodule's body runs into the chest wall,
where it looks like the wall; its centre is always in the lung.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.fft
from scipy import ndimage

from pipelines.lines.medical.phantoms import CaseSpec, NoduleSpec, Phantom, ScanSpec

NAME = "chest-a"

AIR, FAT, MEDIASTINAL_FAT, MUSCLE, BLOOD, SKIN = -1000.0, -100.0, -90.0, 45.0, 40.0, 20.0
CARTILAGE, CANCELLOUS, CORTICAL, DISC, CSF = 120.0, 250.0, 800.0, 80.0, 10.0
HU_MIN, HU_MAX = -1024, 3071  # what the scanner reconstructs
# kernel -> (Gaussian MTF width in cycles/pixel, edge boost at Nyquist); Nyquist is 0.5 cycles/pixel
KERNEL_MTF = {"soft": (0.2, 0.0), "standard": (0.3, 0.2), "sharp": (0.5, 1.4)}
MAX_TREE_SEGMENTS = 2500  # per tree (two arterial, two venous)

Segment = tuple[np.ndarray, np.ndarray, float, float]  # start, end (x, y, z mm), radius at start, at end


def render(case: CaseSpec, rng: np.random.Generator) -> Phantom:
    """The case's chest CT: ``hu`` ``(slices, size, size)`` int16, the nodule's centre voxel and mask."""
    grid = _Grid.of(case.scan)
    body = _Body.draw(rng, case.body_scale, case.female, fov_mm=case.scan.size * case.scan.pixel_spacing_mm)
    grid.place(body.slab_start(rng, case.scan.slices * case.scan.slice_spacing_mm))
    texture = _smooth_field(rng, grid.shape, cell_vox=(3, 10, 10))
    hu, lung = _draw_anatomy(body, grid, texture)
    trees = [_grow_tree(rng, body, hilum, directions, radius) for hilum, directions, radius in body.tree_roots()]
    arteries = trees[0] + trees[1]
    vessels = [segment for tree in trees for segment in tree]
    thin = [segment for segment in vessels if segment[2] < 0.8 * grid.px]
    _draw_tubes(hu, grid, [segment for segment in vessels if segment[2] >= 0.8 * grid.px], BLOOD)
    _splat_tubes(hu, grid, thin, BLOOD)
    _draw_airways(hu, grid, body, arteries)
    _draw_lookalikes(rng, hu, grid, lung, case.lookalikes)
    center, mask = None, None
    if case.nodule is not None:
        center_mm = _place_nodule(rng, case.nodule, grid, lung, vessels)
        mask = _draw_nodule(rng, hu, grid, case.nodule, center_mm, texture)
        center = grid.to_vox(center_mm)
    hu, mask, center = _pose(rng, hu, mask, center)
    _draw_table(hu, body, grid)
    hu = _scanner(rng, hu, case.scan)
    return Phantom(hu, center, mask)


# ----------------------------------------------------------------------------------------------- geometry


@dataclass
class _Grid:
    """Voxel centres in mm: ``x`` ``(1, 1, S)``, ``y`` ``(1, S, 1)``, ``z`` ``(Z, 1, 1)`` (world z, mm)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    px: float
    dz: float
    z0: float

    @classmethod
    def of(cls, scan: ScanSpec) -> _Grid:
        half = (scan.size - 1) / 2
        axis = ((np.arange(scan.size, dtype=np.float32) - half) * scan.pixel_spacing_mm).astype(np.float32)
        return cls(axis[None, None, :], axis[None, :, None], np.zeros((scan.slices, 1, 1), np.float32),
                   scan.pixel_spacing_mm, scan.slice_spacing_mm, 0.0)

    def place(self, z0: float) -> None:
        """Put slice 0 at world ``z0`` mm."""
        self.z0 = z0
        self.z = (z0 + np.arange(self.shape[0], dtype=np.float32) * self.dz)[:, None, None]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.z.shape[0], self.y.shape[1], self.x.shape[2]

    def to_vox(self, p: np.ndarray) -> np.ndarray:
        """``(k, r, c)`` fractional voxel index of the point ``p = (x, y, z)`` mm."""
        half = (self.shape[1] - 1) / 2
        return np.array([(p[2] - self.z0) / self.dz, p[1] / self.px + half, p[0] / self.px + half])

    def to_mm(self, vox: np.ndarray) -> np.ndarray:
        """``(x, y, z)`` mm of the fractional voxel ``(k, r, c)``."""
        half = (self.shape[1] - 1) / 2
        return np.array([(vox[2] - half) * self.px, (vox[1] - half) * self.px, self.z0 + vox[0] * self.dz])

    def box(self, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering the mm box ``[low, high]`` (``(x, y, z)``), None when it misses the volume."""
        a, b = self.to_vox(low), self.to_vox(high)
        lo, hi = np.floor(np.minimum(a, b)).astype(int), np.ceil(np.maximum(a, b)).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, self.shape)
        if (hi <= lo).any():
            return None
        return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])


@dataclass
class _Body:
    """The patient's anatomy as implicit shapes in mm (see the module docstring for the axes)."""

    a: float  # body half-width
    b: float  # body half-depth (anterior-posterior)
    power: float  # superellipse exponent of the outline (2: ellipse, larger: boxier)
    fat: float  # subcutaneous fat thickness
    wall_lateral: float  # chest wall (muscle and ribs) at the sides
    wall_ap: float  # chest wall front and back
    lung_height: float
    mediastinum: float  # half-width of the mediastinal band
    heart: tuple[float, float, float, float, float]  # centre x, y, semi-axes x, y, peak height (fraction)
    spine_y: float  # vertebral body centre
    vertebra: float  # vertebral body radius
    carina_z: float
    trachea_y: float
    breast: tuple[float, float, float] | None  # x offset, radius, projection when female
    rib_pitch: float
    rib_phase: float
    rib_drop: float  # how much a rib descends from back to front
    dome_right: float  # z of the top of the right diaphragm dome
    dome_left: float
    aorta: tuple[float, float, float] = (0.0, 0.0, 0.0)  # descending aorta: x, y, radius
    wobble: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # outline: 2nd, 3rd harmonic, phases

    @classmethod
    def draw(cls, rng: np.random.Generator, scale: float, female: bool, fov_mm: float) -> _Body:
        """A patient of relative size ``scale``, fitted into the field of view."""
        fov_half = 0.5 * fov_mm
        s = scale * rng.uniform(0.94, 1.06)
        a = min(160 * s * rng.uniform(0.93, 1.07), 0.46 * fov_half * 2)
        b = min(a * rng.uniform(0.62, 0.75), 0.44 * fov_half * 2)
        s = a / 160
        height = 245 * s * rng.uniform(0.9, 1.1)
        body = cls(
            a=a, b=b, power=rng.uniform(2.1, 2.7), fat=rng.uniform(6, 22) * scale ** 2,
            wall_lateral=rng.uniform(14, 20) * s, wall_ap=rng.uniform(16, 24) * s, lung_height=height,
            mediastinum=rng.uniform(15, 22) * s,
            heart=(rng.uniform(12, 28) * s, -rng.uniform(25, 40) * s, rng.uniform(55, 70) * s,
                   rng.uniform(40, 52) * s, rng.uniform(0.15, 0.22)),
            spine_y=0.0, vertebra=rng.uniform(14, 18) * s, carina_z=height * rng.uniform(0.6, 0.68),
            trachea_y=0.0, breast=None, rib_pitch=rng.uniform(24, 30) * s, rib_phase=rng.uniform(0, 30),
            rib_drop=rng.uniform(45, 70) * s, dome_right=height * rng.uniform(0.05, 0.14),
            dome_left=0.0,
        )
        body.dome_left = body.dome_right - rng.uniform(5, 20)
        body.spine_y = b - body.fat - rng.uniform(40, 50) * s  # paraspinal muscles and the arch behind it
        body.trachea_y = body.spine_y - body.vertebra - rng.uniform(14, 22) * s
        body.aorta = (1.5 * body.vertebra + 10 * s, body.spine_y - 0.5 * body.vertebra, rng.uniform(10, 13) * s)
        body.wobble = (rng.uniform(-0.04, 0.04), rng.uniform(-0.03, 0.03), rng.uniform(0, 2 * np.pi),
                       rng.uniform(0, 2 * np.pi))
        if female:
            body.breast = (a * rng.uniform(0.4, 0.55), rng.uniform(45, 75) * s, rng.uniform(20, 55) * s)
        return body

    def slab_start(self, rng: np.random.Generator, extent_mm: float) -> float:
        """Where the scanned slab of ``extent_mm`` begins: somewhere in the lung, clear of the very apex."""
        low, high = -0.05 * self.lung_height, 0.9 * self.lung_height - extent_mm
        return float(rng.uniform(low, high)) if high > low else low

    def cavity_scale(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Width and depth factors of the thoracic cavity at height ``z`` (narrow at the apex)."""
        u = z / self.lung_height
        width = np.sqrt(np.clip(1 - ((u - 0.35) / 0.7) ** 2, 0.05, 1))
        return width, 0.55 + 0.45 * width

    def norm(self, x: np.ndarray, y: np.ndarray, a: float | np.ndarray, b: float | np.ndarray) -> np.ndarray:
        """Superellipse norm: < 1 inside the outline of half-axes ``a``, ``b``."""
        return (np.abs(x / a) ** self.power + np.abs(y / b) ** self.power) ** (1 / self.power)

    def cavity(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        width, depth = self.cavity_scale(z)
        return self.norm(x, y, (self.a - self.wall_lateral) * width, (self.b - self.wall_ap) * depth)

    def heart_norm(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        hx, hy, ax, by, peak = self.heart
        u = z / self.lung_height
        profile = np.sqrt(np.clip(1 - ((u - peak) / 0.36) ** 2, 1e-4, 1))
        return ((x - hx) / (ax * profile)) ** 2 + ((y - hy) / (by * profile)) ** 2

    def lung(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Whether the points (broadcast) lie in a lung."""
        inside = self.cavity(x, y, z) < 1
        front = -self.b
        band = self.mediastinum * (0.6 + 0.4 * np.clip((y - front) / (self.spine_y - front), 0, 1))
        inside &= ~((np.abs(x) < band) & (y < self.spine_y))
        inside &= self.heart_norm(x, y, z) > 1
        # the spine, the muscles behind it, and the descending aorta at its left
        inside &= np.hypot(x, y - self.spine_y) > 1.45 * self.vertebra
        inside &= ~((np.abs(x) < 1.45 * self.vertebra) & (y > self.spine_y))
        ax, ay, ar = self.aorta
        inside &= (np.hypot(x - ax, y - ay) > ar + 2) | (z > self.carina_z + 18 + ar)
        domes = self.a * 0.6
        for side, top in ((-1, self.dome_right), (1, self.dome_left)):
            inside &= ((x - side * 0.45 * self.a) / domes) ** 2 + (y / (1.2 * self.b)) ** 2 \
                + ((z - top + 110) / 110) ** 2 > 1
        return inside

    def tree_roots(self) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Arterial then venous trees, right and left: ``(root point, first branch directions (n, 3), radius)``."""
        roots = []
        for depth_shift, z_shift, radius in ((0.0, -25.0, 4.5), (12.0, -55.0, 4.0)):
            for side in (-1, 1):
                hilum = np.array([side * (self.mediastinum + 4), self.trachea_y + depth_shift,
                                  self.carina_z + z_shift])
                directions = np.array([(side * 0.5, 0.1, 0.85), (side * 0.8, -0.55, 0.2), (side * 0.8, 0.45, 0.1),
                                       (side * 0.6, -0.6, -0.5), (side * 0.5, 0.5, -0.7), (side * 0.4, 0.0, -0.9)])
                roots.append((hilum, directions / np.linalg.norm(directions, axis=1, keepdims=True), radius))
        return roots


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], cell_vox: tuple[int, int, int]) -> np.ndarray:
    """Zero-mean, unit-variance smooth noise of ``shape``, with features about ``cell_vox`` voxels wide (cubic
    in-plane, linear across slices)."""
    slices, rows, cols = shape
    coarse = rng.standard_normal(tuple(n // c + 2 for n, c in zip(shape, cell_vox)), dtype=np.float32)
    planes = np.stack([cv2.resize(plane, (cols, rows), interpolation=cv2.INTER_CUBIC) for plane in coarse])
    where = np.linspace(0, len(planes) - 1.001, slices)
    low = where.astype(int)
    frac = (where - low).astype(np.float32)[:, None, None]
    field_ = planes[low] * (1 - frac) + planes[low + 1] * frac
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


# ------------------------------------------------------------------------------------------------ anatomy


def _draw_anatomy(body: _Body, grid: _Grid, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chest without vessels and airways: ``hu`` float32 and the lung mask, both ``(Z, S, S)``."""
    x, y, z = grid.x, grid.y, grid.z
    hu = np.full(grid.shape, AIR, np.float32)
    radius = np.hypot(x, y)
    second, third, phase2, phase3 = body.wobble
    theta = np.arctan2(y, x)
    outline = body.norm(x, y, body.a, body.b) / (1 + second * np.cos(2 * theta + phase2)
                                                 + third * np.cos(3 * theta + phase3))  # (1, S, S)
    depth = radius * (1 / np.maximum(outline, 1e-3) - 1)  # mm from the skin along the ray from the axis
    inside = outline < 1
    tissue = np.where(depth < 2.0, SKIN, np.where(depth < body.fat, FAT, MUSCLE)).astype(np.float32)
    if body.breast is not None:  # fat with a glandular core, on the front of the chest
        bx, br, bp = body.breast
        for side in (-1, 1):
            breast = ((x - side * bx) / br) ** 2 + ((y + body.b * 0.85) / bp) ** 2
            added = (breast < 1) & (y < 0) & ~inside
            tissue = np.where(added, FAT, tissue)
            tissue = np.where(added & (breast < 0.35), 30.0, tissue)
            inside = inside | added
    hu[:] = np.where(inside, tissue, AIR)
    hu += np.where(inside & (tissue == FAT), 8 * texture, 0)
    hu += np.where(inside & (tissue > 0), 5 * texture, 0)

    cavity = body.cavity(x, y, z)  # (Z, S, S)
    in_cavity = cavity < 1
    _draw_ribs(hu, body, grid, cavity, in_cavity)
    hu[in_cavity] = MEDIASTINAL_FAT
    lung = body.lung(x, y, z)
    heart_norm = body.heart_norm(x, y, z)
    heart = (heart_norm < 1) & in_cavity & ~lung
    hu[heart] = np.where(np.broadcast_to((heart_norm > 0.82) & (y < body.heart[1]), hu.shape)[heart], FAT, BLOOD)
    # parenchyma: denser towards the back (gravity) and the base, with a smooth texture
    half_depth = body.b - body.wall_ap
    parenchyma = -858 + 35 * (y / half_depth) - 12 * (z / body.lung_height - 0.5) + 14 * texture
    hu[lung] = np.broadcast_to(parenchyma, grid.shape)[lung]
    _draw_spine(hu, body, grid)
    _draw_great_vessels(hu, body, grid)
    lung &= hu < -500  # where a great vessel bulges into it, it is vessel
    _draw_fissures(hu, body, grid, lung)
    return hu, lung


def _draw_fissures(hu: np.ndarray, body: _Body, grid: _Grid, lung: np.ndarray) -> None:
    """The interlobar fissures as faint sheets: an oblique one in each lung (high at the back, low at the front)
    and the right lung's horizontal one, in front of the oblique."""
    x, y, z = grid.x, grid.y, grid.z
    height = body.lung_height
    slope = 0.35 * height / body.b
    oblique_z = 0.4 * height + slope * (y + 0.6 * (np.abs(x) - 0.5 * body.a))  # (1, S, S); laterally more anterior
    oblique = np.abs(z - oblique_z) / np.sqrt(1 + 1.36 * slope ** 2)
    horizontal = np.where((x < 0) & (oblique_z < 0.55 * height), np.abs(z - 0.55 * height), np.inf)
    distance = np.minimum(oblique, horizontal)
    voxel = max(grid.px, grid.dz)
    sheet = lung & (distance < voxel)
    hu[sheet] += 0.2 * (1 - distance[sheet] / voxel) * (0 - hu[sheet])


def _draw_ribs(hu: np.ndarray, body: _Body, grid: _Grid, cavity: np.ndarray, in_cavity: np.ndarray) -> None:
    """Ribs as oval bone sections in a band just outside the cavity, descending from the spine to the front;
    costal cartilage near the sternum; the sternum at the front."""
    x, y, z = grid.x, grid.y, grid.z
    radius = np.hypot(x, y)
    outside = radius * (1 - 1 / np.maximum(cavity, 1e-3))  # mm beyond the cavity wall along the ray
    band = (outside > 0.5) & (outside < 11)
    if not band.any():
        return
    angle = np.pi / 2 + np.arctan2(-y, np.abs(x))  # 0 posterior midline ... pi anterior midline
    drop = body.rib_drop * (angle / np.pi) ** 1.3
    phase = (z + drop - body.rib_phase) / body.rib_pitch
    offset = (phase - np.round(phase)) * body.rib_pitch  # mm from the nearest rib's centre line
    section = (offset / 5.5) ** 2 + ((outside - 5.5) / 5.0) ** 2
    rib = band & (section < 1) & (np.abs(x) > 1.8 * body.vertebra)
    cartilage = rib & (angle > 0.8 * np.pi)
    bone = rib & ~cartilage
    hu[bone] = np.where(np.broadcast_to(section, hu.shape)[bone] > 0.55, CORTICAL, CANCELLOUS)
    hu[cartilage] = CARTILAGE
    sternum = band & (np.abs(x) < 18) & (y < 0) & (z > 0.2 * body.lung_height) & ~in_cavity
    hu[sternum] = np.where(np.broadcast_to(outside, hu.shape)[sternum] > 8, CORTICAL, CANCELLOUS)


def _draw_spine(hu: np.ndarray, body: _Body, grid: _Grid) -> None:
    """Vertebral body (cortex, cancellous bone, discs), spinal canal and posterior arch."""
    x, y, z = grid.x, grid.y, grid.z
    r = body.vertebra
    centre = np.hypot(x, y - body.spine_y)
    disc = ((z - body.rib_phase) % (1.15 * body.rib_pitch)) < 5.0
    vertebral = centre < r
    inner = np.broadcast_to(np.where(disc, DISC, CANCELLOUS), hu.shape)
    shell = np.broadcast_to((centre > r - 2.0) & ~disc, hu.shape)
    vert3 = np.broadcast_to(vertebral, hu.shape)
    hu[vert3] = np.where(shell[vert3], CORTICAL, inner[vert3])
    canal = np.hypot(x, y - body.spine_y - r - 8) < 7.5
    arch = (np.hypot(x, y - body.spine_y - r - 8) < 12) & ~canal
    spinous = (np.abs(x) < 4) & (y > body.spine_y + r + 8) & (y < body.b - body.fat - 4)
    hu[np.broadcast_to(arch | spinous, hu.shape)] = 500.0
    hu[np.broadcast_to(canal, hu.shape)] = CSF


def _draw_great_vessels(hu: np.ndarray, body: _Body, grid: _Grid) -> None:
    """Descending aorta by the spine, ascending aorta, the arch over the carina, and the oesophagus."""
    top = body.lung_height * 1.05
    arch_z = body.carina_z + 18
    desc = np.array([body.aorta[0], body.aorta[1], 0.0])
    asc = np.array([-10.0, body.heart[1] * 0.5, body.lung_height * 0.35])
    tubes = [
        (desc, desc + [0, 0, arch_z], body.aorta[2], body.aorta[2]),
        (asc, asc + [0, 0, arch_z - asc[2]], 15.0, 14.0),
        (asc + [0, 0, arch_z - asc[2]], desc + [0, 0, arch_z], 13.0, 12.0),
    ]
    _draw_tubes(hu, grid, [(p, q, r0, r1) for p, q, r0, r1 in tubes], BLOOD)
    oesophagus = np.array([6.0, body.trachea_y + 14, 0.0])
    _draw_tubes(hu, grid, [(oesophagus, oesophagus + [0, 0, top], 7.0, 7.0)], MUSCLE)
    _draw_tubes(hu, grid, [(oesophagus, oesophagus + [0, 0, top], 1.5, 1.5)], AIR, blend="set")


def _pose(rng: np.random.Generator, hu: np.ndarray, mask: np.ndarray | None, center: np.ndarray | None
          ) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int, int] | None]:
    """The patient as positioned on the table: turned up to 4 degrees and off the axis by up to 12 mm
    (the same in every slice); the nodule's mask and centre move with it."""
    size = hu.shape[1]
    half = (size - 1) / 2
    shift = rng.uniform(-0.04, 0.04, 2) * size
    warp = cv2.getRotationMatrix2D((half, half), float(rng.uniform(-4, 4)), 1.0)
    warp[:, 2] += shift
    hu = np.stack([cv2.warpAffine(plane, warp, (size, size), flags=cv2.INTER_LINEAR, borderValue=AIR)
                   for plane in hu])
    if mask is None or center is None:
        return hu, None, None
    mask = np.stack([cv2.warpAffine(plane.view(np.uint8), warp, (size, size), flags=cv2.INTER_NEAREST) > 0
                     if plane.any() else plane for plane in mask])
    k, row, col = center
    col, row = warp @ np.array([col, row, 1.0])
    return hu, mask, _inside_mask((int(round(k)), int(round(row)), int(round(col))), mask)


def _draw_table(hu: np.ndarray, body: _Body, grid: _Grid) -> None:
    """The scanner couch: a curved plastic board just under the patient's back."""
    x, y = grid.x[0], grid.y[0]
    rows = np.flatnonzero((hu[:, :, np.abs(x[0]) < 30] > -500).any(axis=(0, 2)))
    top = (rows.max() - (grid.shape[1] - 1) / 2) * grid.px + 3 if len(rows) else body.b + 3
    curve = top + 0.0009 * x ** 2
    board = (y > curve) & (y < curve + 6) & (np.abs(x) < 0.9 * body.a + 40)
    hu[:, board] = np.maximum(hu[:, board], 60.0)


# --------------------------------------------------------------------------------------------------- tubes


def _grow_tree(rng: np.random.Generator, body: _Body, root: np.ndarray, directions: np.ndarray,
               radius: float) -> list[Segment]:
    """A branching vessel tree from ``root``, grown a generation at a time: segments that taper and split in two
    (a child leaving the lung turns and tries again, shorter), until thinner than a voxel can show."""
    segments: list[Segment] = []
    starts = np.repeat(root[None], len(directions), 0)
    radii = radius * rng.uniform(0.85, 1.15, len(directions))
    for generation in range(18):
        length = np.clip(radii * rng.uniform(5, 9, len(radii)), 3.0, 45.0)
        ends = starts + directions * length[:, None]
        inside = np.full(len(radii), generation == 0) | body.lung(*ends.T)
        for _ in range(3):
            retry = ~inside
            if not retry.any():
                break
            directions[retry] = _turn(rng, directions[retry], 0.6)
            length[retry] *= 0.7
            ends[retry] = starts[retry] + directions[retry] * length[retry, None]
            inside[retry] = body.lung(*ends[retry].T)
        starts, ends, directions, radii = starts[inside], ends[inside], directions[inside], radii[inside]
        tapered = radii * rng.uniform(0.9, 0.97, len(radii))
        segments += [(p, q, r0, r1) for p, q, r0, r1 in zip(starts, ends, radii, tapered)]
        outward = ends - root
        outward /= np.linalg.norm(outward, axis=1, keepdims=True) + 1e-9
        n = len(radii)
        shares = np.concatenate([rng.uniform(0.8, 0.92, n), rng.uniform(0.62, 0.82, n)])
        spreads = np.concatenate([rng.uniform(0.2, 0.45, n), rng.uniform(0.5, 1.0, n)])
        children = _turn(rng, np.tile(directions, (2, 1)), spreads) + 0.25 * np.tile(outward, (2, 1))
        directions = children / np.linalg.norm(children, axis=1, keepdims=True)
        starts, radii = np.tile(ends, (2, 1)), np.tile(tapered, 2) * shares
        keep = radii >= 0.4
        starts, directions, radii = starts[keep], directions[keep], radii[keep]
        if not len(radii) or len(segments) >= MAX_TREE_SEGMENTS:
            break
    return segments


def _turn(rng: np.random.Generator, directions: np.ndarray, angles: float | np.ndarray) -> np.ndarray:
    """Unit ``directions`` ``(n, 3)`` each turned by ``angles`` radians about a random perpendicular axis."""
    helper = np.where(np.abs(directions[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    u = np.cross(directions, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(directions, u)
    phi = rng.uniform(0, 2 * np.pi, (len(directions), 1))
    angles = np.reshape(angles, (-1, 1))
    return np.cos(angles) * directions + np.sin(angles) * (np.cos(phi) * u + np.sin(phi) * v)


def _tube_alpha(grid: _Grid, start: np.ndarray, end: np.ndarray, r0: float, r1: float
                ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Coverage (0..1, partial volume at the wall) of a tapered tube in its bounding box, or None."""
    reach = max(r0, r1) + 1.5 * max(grid.px, grid.dz)
    box = grid.box(np.minimum(start, end) - reach, np.maximum(start, end) + reach)
    if box is None:
        return None
    ks, rs, cs = box
    px = grid.x[0, 0, cs] - start[0]
    py = grid.y[0, rs, 0][:, None] - start[1]
    pz = grid.z[ks, 0, 0][:, None, None] - start[2]
    axis = end - start
    length2 = float(axis @ axis) + 1e-9
    t = np.clip((px * axis[0] + py * axis[1] + pz * axis[2]) / length2, 0, 1)
    dx, dy, dz = px - t * axis[0], py - t * axis[1], pz - t * axis[2]
    distance = np.sqrt(dx * dx + dy * dy + dz * dz)
    wall = r0 + (r1 - r0) * t
    # partial volume: a linear ramp one voxel wide (in-plane size), coverage of a thin tube scaled by its width
    alpha = np.clip((wall - distance) / grid.px + 0.5, 0, 1) * np.minimum(1.0, 2 * wall / grid.px)
    return box, alpha.astype(np.float32)


def _draw_tubes(hu: np.ndarray, grid: _Grid, segments: list[Segment], value: float, blend: str = "max") -> None:
    """Paint tubes of ``value``: ``"max"`` raises darker tissue towards it, ``"set"`` replaces by coverage."""
    for start, end, r0, r1 in segments:
        found = _tube_alpha(grid, start, end, r0, r1)
        if found is None:
            continue
        box, alpha = found
        block = hu[box]
        painted = block + alpha * (value - block)
        hu[box] = np.maximum(block, painted) if blend == "max" else painted


def _splat_tubes(hu: np.ndarray, grid: _Grid, segments: list[Segment], value: float) -> None:
    """Paint tubes thinner than a voxel by their volume: points every half voxel along each segment deposit their
    share of the tube's volume into the 8 voxels around them (trilinear); a voxel's coverage is the volume it got
    over its own."""
    if not segments:
        return
    starts = np.array([s[0] for s in segments])
    ends = np.array([s[1] for s in segments])
    radii = np.array([(s[2] + s[3]) / 2 for s in segments])
    lengths = np.linalg.norm(ends - starts, axis=1)
    counts = np.maximum(np.ceil(lengths / (0.5 * min(grid.px, grid.dz))).astype(int), 1)
    owner = np.repeat(np.arange(len(segments)), counts)
    step = (np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts) + 0.5) / counts[owner]
    points = starts[owner] + (ends - starts)[owner] * step[:, None]
    share = np.pi * radii[owner] ** 2 * lengths[owner] / counts[owner] / (grid.px * grid.px * grid.dz)
    vox = np.stack([(points[:, 2] - grid.z0) / grid.dz, points[:, 1] / grid.px + (grid.shape[1] - 1) / 2,
                    points[:, 0] / grid.px + (grid.shape[2] - 1) / 2], 1)
    base = np.floor(vox).astype(int)
    frac = vox - base
    coverage = np.zeros(int(np.prod(grid.shape)))
    for corner in np.ndindex(2, 2, 2):
        index = base + corner
        weight = share * np.prod(np.where(corner, frac, 1 - frac), axis=1)
        ok = ((index >= 0) & (index < grid.shape)).all(1)
        flat = np.ravel_multi_index(index[ok].T, grid.shape)
        coverage += np.bincount(flat, weight[ok], minlength=len(coverage))
    coverage = np.minimum(coverage.reshape(grid.shape), 1.0).astype(np.float32)
    np.maximum(hu, hu + coverage * (value - hu), out=hu)


def _draw_airways(hu: np.ndarray, grid: _Grid, body: _Body, arteries: list[Segment]) -> None:
    """Trachea, main bronchi and the larger bronchi beside the larger arteries: air in a soft-tissue wall."""
    carina = np.array([0.0, body.trachea_y, body.carina_z])
    trachea_r = body.vertebra * 0.55
    airways: list[Segment] = [(carina, carina + [0, 0, body.lung_height], trachea_r, trachea_r)]
    for start, end, r0, r1 in arteries:
        if r1 < 1.6:
            continue
        offset = np.array([0.0, -1.0, 0.3]) * (r0 + 1.5)
        airways.append((start + offset, end + offset, r0 * 0.85, r1 * 0.85))
    for side, reach, dz in ((-1, body.mediastinum + 6, -24.0), (1, body.mediastinum + 10, -30.0)):
        airways.append((carina, np.array([side * reach, body.trachea_y + 8, body.carina_z + dz]),
                        trachea_r * 0.8, trachea_r * 0.7))
    walls = [(p, q, r0 + 0.6 + 0.15 * r0, r1 + 0.6 + 0.15 * r1) for p, q, r0, r1 in airways]
    _draw_tubes(hu, grid, walls, MUSCLE)
    _draw_tubes(hu, grid, airways, AIR, blend="set")


# ----------------------------------------------------------------------------------------- nodules and mimics


def _place_nodule(rng: np.random.Generator, nodule: NoduleSpec, grid: _Grid, lung: np.ndarray,
                  vessels: list[Segment]) -> np.ndarray:
    """A centre in mm for ``nodule`` at its site, its whole body inside the scanned slab."""
    radius = nodule.diameter_mm / 2
    margin_k = int(np.ceil((radius + 2) / grid.dz))
    margin_rc = int(np.ceil((radius + 2) / grid.px))
    k_lo, k_hi = margin_k, grid.shape[0] - 1 - margin_k
    if k_hi < k_lo:
        k_lo = k_hi = grid.shape[0] // 2
    candidates = np.argwhere(lung[k_lo: k_hi + 1, margin_rc:-margin_rc or None, margin_rc:-margin_rc or None])
    if len(candidates) == 0:
        candidates = np.argwhere(lung)
    else:
        candidates += [k_lo, margin_rc, margin_rc]
    probes = _sphere_directions(26)
    best, best_score = None, -1.0
    for _ in range(300):
        centre = grid.to_mm(candidates[rng.integers(len(candidates))].astype(float))
        if nodule.site == "juxtapleural":
            centre = _toward_pleura(rng, centre, grid, lung, radius)
        elif nodule.site == "juxtavascular":
            centre = _beside_vessel(rng, centre, grid, vessels, radius)
        if centre is None:
            continue
        k = grid.to_vox(centre)[0]
        if not (k_lo - 0.5 <= k <= k_hi + 0.5):
            continue
        clear = radius + 2.0 if nodule.site != "juxtapleural" else 0.3 * radius
        score = _lung_fraction(grid, lung, centre, probes * clear)
        if score > best_score:
            best, best_score = centre, score
        if score >= 0.999 or (nodule.site == "juxtapleural" and score > 0.95):
            break
    if best is None:
        best = grid.to_mm(np.array(grid.shape, float) / 2)
    return best


def _sphere_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread over the sphere (Fibonacci lattice), ``(n, 3)``."""
    i = np.arange(n) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / n), np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], 1)


def _lung_fraction(grid: _Grid, lung: np.ndarray, centre: np.ndarray, offsets: np.ndarray) -> float:
    """Share of the probe points ``centre + offsets`` (mm) that fall in the lung (outside the volume: not)."""
    vox = np.round(np.array([grid.to_vox(centre + o) for o in [np.zeros(3), *offsets]])).astype(int)
    ok = ((vox >= 0) & (vox < grid.shape)).all(1)
    hits = np.zeros(len(vox), bool)
    hits[ok] = lung[vox[ok, 0], vox[ok, 1], vox[ok, 2]]
    return float(hits.mean()) if hits[0] else 0.0


def _toward_pleura(rng: np.random.Generator, start: np.ndarray, grid: _Grid, lung: np.ndarray,
                   radius: float) -> np.ndarray | None:
    """From ``start``, walk outward in the slice plane to the chest wall; the centre sits ``0.6 radius`` inside
    it, so the nodule abuts the pleura."""
    angle = np.arctan2(start[1], start[0]) + rng.normal(0, 0.5)
    step = np.array([np.cos(angle), np.sin(angle), 0.0]) * grid.px * 0.5
    point = start.copy()
    for _ in range(int(4 * grid.shape[1])):
        nxt = point + step
        k, r, c = np.round(grid.to_vox(nxt)).astype(int)
        if not (0 <= r < grid.shape[1] and 0 <= c < grid.shape[2]) or not lung[k, r, c]:
            centre = point - step / np.linalg.norm(step) * 0.6 * radius
            k, r, c = np.round(grid.to_vox(centre)).astype(int)
            return centre if 0 <= k < grid.shape[0] and lung[k, r, c] else None
        point = nxt
    return None


def _beside_vessel(rng: np.random.Generator, near: np.ndarray, grid: _Grid, vessels: list[Segment],
                   radius: float) -> np.ndarray | None:
    """A centre touching a vessel of 1 to 4 mm radius, near ``near``."""
    fitting = [s for s in vessels if 0.8 <= s[3] <= 4.0]
    if not fitting:
        return None
    mids = np.array([(s[0] + s[1]) / 2 for s in fitting])
    order = np.argsort(np.linalg.norm(mids - near, axis=1))[:8]
    start, end, r0, r1 = fitting[int(rng.choice(order))]
    t = rng.uniform(0.2, 0.8)
    point = start + t * (end - start)
    axis = (end - start) / (np.linalg.norm(end - start) + 1e-9)
    side = _turn(rng, axis[None], np.pi / 2)[0]
    return point + side * (radius + 0.3 * (r0 + t * (r1 - r0)))


def _draw_nodule(rng: np.random.Generator, hu: np.ndarray, grid: _Grid, nodule: NoduleSpec, centre: np.ndarray,
                 texture: np.ndarray) -> np.ndarray:
    """Paint the nodule at ``centre`` (mm); returns its mask ``(Z, S, S)`` (voxels at least half covered)."""
    radius = nodule.diameter_mm / 2
    axes = np.exp(rng.normal(0, 0.12, 3))
    axes /= np.prod(axes) ** (1 / 3)  # the ellipsoid's mean diameter is the nodule's
    rotation = _random_rotation(rng)
    lobes = _sphere_directions(7)[rng.permutation(7)[:3]] @ rotation
    lobulation = rng.uniform(0.04, 0.12) * (2.0 if nodule.spiculated else 1.0)
    reach = radius * (2.6 if nodule.spiculated else 1.4) + 2 * max(grid.px, grid.dz)
    box = grid.box(centre - reach, centre + reach)
    mask = np.zeros(grid.shape, bool)
    if box is None:
        return mask
    ks, rs, cs = box
    p = np.stack(np.broadcast_arrays(grid.x[0, 0, cs] - centre[0], grid.y[0, rs, 0][:, None] - centre[1],
                                     grid.z[ks, 0, 0][:, None, None] - centre[2]), -1)
    local = p @ rotation.T / axes  # in the ellipsoid's frame, scaled to a sphere
    distance = np.linalg.norm(local, axis=-1) + 1e-6
    bumps = sum(w * (local @ lobe / distance) ** 4 for w, lobe in zip((1.0, -0.8, 0.6), lobes))
    surface = radius * (1 + lobulation * (bumps - 0.1))
    voxel = (grid.px * grid.px * grid.dz) ** (1 / 3)
    alpha = np.clip((surface - distance) / voxel + 0.5, 0, 1)
    block = hu[box]
    local_texture = texture[box]
    if nodule.density == "solid":
        value = rng.uniform(20, 60) + 8 * local_texture
    else:
        value = rng.uniform(-600, -300) + 35 * local_texture
    painted = block + alpha * (value - block)
    if nodule.density == "part-solid":
        core_r = radius * rng.uniform(0.3, 0.6)
        shift = rng.normal(0, 0.15 * radius, 3)
        core_d = np.linalg.norm(p - shift, axis=-1)
        core_alpha = np.clip((core_r - core_d) / voxel + 0.5, 0, 1)
        painted = painted + core_alpha * (rng.uniform(20, 50) + 6 * local_texture - painted)
    hu[box] = np.maximum(block, painted)
    mask[box] = alpha >= 0.5
    if nodule.spiculated:  # strands radiating from the margin, thick at the base, some kinked
        strand_hu = 30.0 if nodule.density != "ground-glass" else -350.0
        spikes = []
        for direction in _sphere_directions(int(rng.integers(14, 30))) @ _random_rotation(rng):
            base = centre + direction * radius * 0.8
            length = radius * rng.uniform(0.5, 1.5) + rng.uniform(2, 6)
            bend = _turn(rng, direction[None], rng.uniform(0, 0.35))[0]
            middle = base + direction * length * 0.5
            width = max(0.7, 0.13 * radius) * rng.uniform(0.8, 1.3)
            spikes += [(base, middle, width, width * 0.55), (middle, middle + bend * length * 0.5, width * 0.55, 0.25)]
        _draw_tubes(hu, grid, spikes, strand_hu)
    return mask


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _inside_mask(center: tuple[int, int, int], mask: np.ndarray) -> tuple[int, int, int]:
    """``center`` when the mask holds it, else the mask's voxel nearest to it (a strongly lobulated body)."""
    if mask[center]:
        return center
    voxels = np.argwhere(mask)
    if len(voxels) == 0:
        return center
    nearest = voxels[np.argmin(((voxels - np.array(center)) ** 2).sum(1))]
    return tuple(int(v) for v in nearest)


def _draw_lookalikes(rng: np.random.Generator, hu: np.ndarray, grid: _Grid, lung: np.ndarray, count: int) -> None:
    """Nodule mimics: calcified granulomas, vessels seen end-on, small stellate scars."""
    voxels = np.argwhere(lung[:, ::2, ::2]) * [1, 2, 2]
    if len(voxels) == 0:
        return
    for _ in range(count):
        centre = grid.to_mm(voxels[rng.integers(len(voxels))].astype(float))
        kind = rng.choice(["granuloma", "end-on vessel", "scar"], p=[0.4, 0.35, 0.25])
        if kind == "granuloma":
            r = rng.uniform(1.0, 3.0)
            _draw_tubes(hu, grid, [(centre, centre + 0.01, r, r)], float(rng.uniform(250, 900)))
        elif kind == "end-on vessel":
            r = rng.uniform(1.2, 3.2)
            direction = _turn(rng, np.array([[0, 0, 1.0]]), rng.uniform(0, 0.3))[0]
            length = rng.uniform(12, 30)
            _draw_tubes(hu, grid, [(centre - direction * length / 2, centre + direction * length / 2, r, r * 0.9)],
                        BLOOD)
        else:
            arms = []
            for _ in range(int(rng.integers(2, 5))):
                direction = _turn(rng, np.array([[0, 0, 1.0]]), rng.uniform(1.2, 1.9))[0]
                arms.append((centre, centre + direction * rng.uniform(4, 12), rng.uniform(0.5, 1.1), 0.3))
            _draw_tubes(hu, grid, arms, float(rng.uniform(-150, 20)))


# ------------------------------------------------------------------------------------------------- scanner


def _scanner(rng: np.random.Generator, hu: np.ndarray, scan: ScanSpec) -> np.ndarray:
    """Slice thickness blur along z, the kernel's MTF in-plane, correlated FBP noise; int16 HU."""
    hu = ndimage.gaussian_filter1d(hu, sigma=0.45, axis=0, mode="nearest")
    width, boost = KERNEL_MTF[scan.kernel]
    width *= rng.uniform(0.9, 1.1)
    size = hu.shape[1]
    fy = scipy.fft.fftfreq(size).astype(np.float32)[:, None]
    fx = scipy.fft.rfftfreq(size).astype(np.float32)[None, :]
    radial = np.hypot(fy, fx)
    mtf = (1 + boost * (radial / 0.5) ** 2) * np.exp(-((radial / width) ** 2))
    spectrum = scipy.fft.rfft2(hu, workers=1)
    spectrum *= mtf
    image = scipy.fft.irfft2(spectrum, s=hu.shape[1:], workers=1)
    # noise: ramp times the kernel's MTF squared, normalised to noise_hu (over the full spectrum)
    full = np.hypot(scipy.fft.fftfreq(size)[:, None], scipy.fft.fftfreq(size)[None, :])
    full_mtf = (1 + boost * (full / 0.5) ** 2) * np.exp(-((full / width) ** 2))
    nps_rms = float(np.sqrt(np.mean(np.maximum(full, 0.5 / size) * full_mtf ** 2)))
    amplitude = (np.sqrt(np.maximum(radial, 0.5 / size)) * mtf / nps_rms).astype(np.float32)
    white = rng.standard_normal((hu.shape[0], size, fx.shape[1] * 2), dtype=np.float32).view(np.complex64)
    white *= np.float32(np.sqrt(size * size / 2))
    noise = scipy.fft.irfft2(white * amplitude, s=hu.shape[1:], workers=1)
    image += noise * np.float32(scan.noise_hu)
    return np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)
