"""Phantom family "chest-b": implicit-surface anatomy, grown vessel trees and a Fourier-domain scanner model.

Written independently of family "chest-a" (the shift test scores a model trained on one with the other); it
shares only the contract in :mod:`pipelines.lines.medical.phantoms`.

Anatomy, all in millimetres around the image centre (``x`` patient right to left, ``y`` anterior to posterior,
``z`` feet to head), drawn afresh per case:

- body: a polar contour, an ellipse times a random Fourier series (harmonics 1 to 6) whose coefficients drift
  along ``z``, flattened on a curved table; skin, subcutaneous fat (thicker at the flanks, breasts in women) and
  a muscle layer (paraspinal bulk behind the spine) by depth under the skin; the rest is the thoracic cavity;
- lungs: implicit surfaces, a deformed bean per side (shrinking to a dome at the apex, a smooth random field
  moving the surface) cut by the chest wall, the mediastinum and two diaphragm domes (right higher);
  parenchyma with a low-frequency texture and a gravity gradient (posterior denser);
- mediastinum: a band narrowing in front, an ellipsoid heart in pericardial fat, the aorta (ascending, arch,
  descending), pulmonary trunk and arteries, veins, superior vena cava, arch branches and oesophagus as tubes;
  liver and spleen under the domes; vertebrae (cortex, cancellous bone, discs, canal, arch, spinous and transverse
  processes), sternum, scapulae, clavicles, and ribs as curved tubes following the chest wall and falling
  forwards (oval cross-sections that move from slice to slice), costal cartilage to the sternum;
- airways: trachea, main bronchi and bronchi split recursively towards the centroids of lung sub-regions, air in
  a soft-tissue wall; pulmonary arteries and veins grown by space colonisation towards attractor points that
  fill each lung, radii by Murray's law (``r_parent^3 = sum r_child^3``);
- the nodule (:class:`NoduleSpec`): a lobulated sphere, spicules as tapered strands, solid / ground-glass /
  solid core in a ground-glass halo, placed free in the lung, against the costal pleura or against a vessel;
  look-alikes: calcified granulomas, vessels running along ``z`` (seen end-on), subpleural scars.

Scanner: each slice averages thin planes across its thickness (partial volume); a mild cupping (beam
hardening); the kernel as a modulation transfer function in the Fourier domain (the sharp kernel overshoots at
edges); noise with a filtered-back-projection power spectrum (ramp times the kernel squared), stronger in the
middle of the body than at its edge, ``ScanSpec.noise_hu`` on average in the body; outside the reconstruction
circle the scanner's padding value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage
from scipy.spatial import cKDTree

from pipelines.lines.medical.phantoms import DENSITIES, KERNELS, SITES, CaseSpec, NoduleSpec, Phantom, ScanSpec

NAME = "chest-b"

HU_MIN, HU_MAX = -1024, 3071
_FINE_Z_MM = 2.0  # thin planes a slice averages are at most this far apart
_MAX_SUB = 4  # at most this many thin planes per slice
_SKIN_MM = 2.0
_HARMONICS = 6  # body contour: Fourier harmonics 1..6
# kernel -> (f0 cycles/mm, boost): MTF(f) = (1 + boost (f/f0)^2) 2^-(f/f0)^2, falling to a half at about 0.30,
# 0.52 and 0.95 cycles/mm; the sharp kernel overshoots by 6 % (edge enhancement)
_KERNEL_MTF = {"soft": (0.30, 0.0), "standard": (0.42, 0.3), "sharp": (0.55, 1.0)}
_HU_AIR, _HU_FAT, _HU_SKIN, _HU_MUSCLE, _HU_BLOOD = -1000.0, -100.0, 20.0, 50.0, 40.0
_HU_MEDIASTINUM, _HU_LIVER, _HU_SPLEEN = -55.0, 60.0, 48.0


# --------------------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class _Grid:
    """Voxel centres in mm; each slice averages ``sub`` thin planes ``zf`` spread over its thickness."""

    x: np.ndarray  # (n,) columns, patient right -> left
    y: np.ndarray  # (n,) rows, anterior -> posterior
    z: np.ndarray  # (slices,) feet -> head
    zf: np.ndarray  # (slices * sub,) thin-plane centres
    dz: float  # slice spacing = thickness, mm
    sub: int
    pixel: float
    aa: float  # edge width of anti-aliased occupancy, mm

    @classmethod
    def of(cls, scan: ScanSpec) -> _Grid:
        n, pixel, dz = scan.size, float(scan.pixel_spacing_mm), float(scan.slice_spacing_mm)
        xy = ((np.arange(n) - (n - 1) / 2) * pixel).astype(np.float32)
        z = ((np.arange(scan.slices) - (scan.slices - 1) / 2) * dz).astype(np.float32)
        sub = int(min(_MAX_SUB, max(1, math.ceil(dz / _FINE_Z_MM - 1e-6))))
        offsets = ((np.arange(sub) + 0.5) / sub - 0.5) * dz
        zf = (z[:, None] + offsets[None, :]).ravel().astype(np.float32)
        return cls(xy, xy.copy(), z, zf, dz, sub, pixel, max(pixel, dz / sub))

    @property
    def fov_radius(self) -> float:
        """Radius of the reconstruction circle, mm."""
        return float(-self.x[0]) + self.pixel / 2

    def fine_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Thin-plane index ranges ``(zf, y, x)`` covering the mm box ``[lo, hi]`` (x, y, z), or None if outside."""
        start, stop = self.index_range(lo[None])[0], self.index_range(hi[None], upper=True)[0]
        if (stop <= start).any():
            return None
        return slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2])

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        return len(self.zf), len(self.y), len(self.x)

    def _fine_units(self, p: np.ndarray) -> np.ndarray:
        """``(N, 3)`` continuous thin-plane indices ``(zf, y, x)`` of the mm points ``p`` ``(N, 3)``."""
        origin = np.array([self.zf[0], self.y[0], self.x[0]])
        return (p[:, ::-1] - origin) / np.array([self.dz / self.sub, self.pixel, self.pixel])

    def index_range(self, p: np.ndarray, upper: bool = False) -> np.ndarray:
        """``(N, 3)`` thin-plane indices ``(zf, y, x)`` at or below (``upper``: past) the mm points ``p`` ``(N, 3)``,
        clipped to the volume."""
        u = self._fine_units(p)
        return np.clip(np.ceil(u) + 1 if upper else np.floor(u), 0, self.fine_shape).astype(int)

    def nearest(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The thin-plane voxel ``(N, 3)`` nearest each mm point ``p`` ``(N, 3)``, and whether it is in the volume."""
        index = np.rint(self._fine_units(p)).astype(int)
        inside = ((index >= 0) & (index < self.fine_shape)).all(1)
        return np.clip(index, 0, np.array(self.fine_shape) - 1), inside

    def window(self, lo: tuple[float, float], hi: tuple[float, float]) -> tuple[slice, slice] | None:
        """Row and column ranges of a plane covering the mm rectangle ``lo..hi`` (x, y), or None if outside."""
        box = self.fine_box(np.array([lo[0], lo[1], self.zf[0]]), np.array([hi[0], hi[1], self.zf[0]]))
        return None if box is None else (box[1], box[2])

    def voxel(self, p: np.ndarray) -> np.ndarray:
        """Continuous ``(slice, row, column)`` index of the mm point ``p`` (x, y, z)."""
        return np.array([(p[2] - self.z[0]) / self.dz, (p[1] - self.y[0]) / self.pixel,
                         (p[0] - self.x[0]) / self.pixel])


class _Field:
    """A smooth Gaussian random field of unit variance: normal weights on a knot lattice (``spacing_mm`` apart)
    blended by Gaussian bumps of that width. ``slices`` evaluates it on every slice plane (two matrix products);
    ``points`` anywhere, interpolated from a lattice four times finer than the knots."""

    def __init__(self, rng: np.random.Generator, grid: _Grid, spacing_mm: float) -> None:
        self.spacing = spacing_mm
        pad = 3 * spacing_mm
        z_span = np.array([grid.zf[0] - 250, grid.zf[-1] + 250])
        self.knots = [np.arange(c.min() - pad, c.max() + pad + spacing_mm, spacing_mm, dtype=np.float32)
                      for c in (grid.x, grid.y, z_span)]
        self.weights = rng.standard_normal([len(k) for k in self.knots[::-1]], dtype=np.float32) / np.pi**0.75
        self.grid = grid
        self._lattice: tuple[np.ndarray, list[np.ndarray]] | None = None

    def _basis(self, coords: np.ndarray, axis: int) -> np.ndarray:
        """``(len(coords), knots)`` bump weights along one axis."""
        u = (np.asarray(coords, np.float32)[:, None] - self.knots[axis]) / self.spacing
        return np.exp(-0.5 * u * u)

    def _evaluate(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``(len(z), len(y), len(x))`` values on the grid of the given axes."""
        bx, by, bz = self._basis(x, 0), self._basis(y, 1), self._basis(z, 2)
        g = np.tensordot(bz, self.weights, 1)  # (Z, ky, kx)
        g = (g.reshape(-1, g.shape[2]) @ bx.T).reshape(len(z), g.shape[1], len(x))  # (Z, ky, X)
        g = by @ g.transpose(1, 0, 2).reshape(g.shape[1], -1)  # (Y, Z * X)
        return np.ascontiguousarray(g.reshape(len(y), len(z), len(x)).transpose(1, 0, 2))

    def slices(self) -> np.ndarray:
        """``(slices, n, n)`` values on the slice planes."""
        return self._evaluate(self.grid.x, self.grid.y, self.grid.z)

    def points(self, p: np.ndarray) -> np.ndarray:
        """``(N,)`` values at the mm points ``p`` ``(N, 3)``."""
        if self._lattice is None:
            step = self.spacing / 4
            axes = [np.arange(k[0], k[-1] + step, step, dtype=np.float32) for k in self.knots]
            self._lattice = self._evaluate(*axes), axes
        values, axes = self._lattice
        index = [(p[:, axis] - axes[axis][0]) / (axes[axis][1] - axes[axis][0]) for axis in (2, 1, 0)]
        return ndimage.map_coordinates(values, index, order=1, mode="nearest")


# --------------------------------------------------------------------------------------------------- tubes


@dataclass
class _Tubes:
    """Capsule segments ``p0 -> p1`` (mm, x y z) of radius ``r``, all of value ``hu``; an optional core of radius
    ``core_r`` and value ``core_hu`` (marrow in a rib, air in a bronchus) inside each."""

    p0: np.ndarray  # (M, 3)
    p1: np.ndarray  # (M, 3)
    r: np.ndarray  # (M,)
    hu: float
    core_r: np.ndarray | None = None  # (M,)
    core_hu: float = 0.0

    @classmethod
    def chain(cls, points: np.ndarray, radius: float | np.ndarray, hu: float, wall: float = 0.0,
              core_hu: float = 0.0) -> _Tubes:
        """Consecutive ``points`` ``(P, 3)`` joined; ``radius`` scalar or per segment; with ``wall`` > 0 a core of
        ``core_hu`` that much inside."""
        points = np.asarray(points, np.float32)
        r = np.broadcast_to(np.asarray(radius, np.float32), (len(points) - 1,)).copy()
        return cls(points[:-1], points[1:], r, float(hu), np.maximum(r - wall, 0) if wall > 0 else None, core_hu)

    def __add__(self, other: _Tubes) -> _Tubes:
        if (self.hu, self.core_hu, self.core_r is None) != (other.hu, other.core_hu, other.core_r is None):
            raise ValueError("only tubes of the same values and kind can be joined")
        core = None if self.core_r is None else np.concatenate([self.core_r, other.core_r])
        return _Tubes(np.concatenate([self.p0, other.p0]), np.concatenate([self.p1, other.p1]),
                      np.concatenate([self.r, other.r]), self.hu, core, self.core_hu)

    def paint(self, volume: np.ndarray, grid: _Grid, raise_only: bool = False) -> None:
        """Composite the tubes into the thin-plane volume ``(slices * sub, n, n)`` HU, anti-aliased.

        The segments' occupancies are merged by maximum (joints are not counted twice), then blended once.
        Segments thinner than the edge width keep their cross-section area (fainter rather than fatter).
        ``raise_only``: a voxel only gets denser (a ground-glass opacity leaves a vessel inside it visible).
        """
        if not len(self.r):
            return
        reach = np.maximum(self.r, grid.aa / 2)[:, None] + grid.aa
        lo, hi = np.minimum(self.p0, self.p1) - reach, np.maximum(self.p0, self.p1) + reach
        box = grid.fine_box(lo.min(0), hi.max(0))
        if box is None:
            return
        target = volume[box]
        origin = np.array([box[0].start, box[1].start, box[2].start])
        occ = np.zeros(target.shape, np.float32)
        core = None if self.core_r is None else np.zeros(target.shape, np.float32)
        start, stop = grid.index_range(lo), grid.index_range(hi, upper=True)
        for chunk in _similar_boxes(stop - start):
            self._occupy(grid, chunk, start[chunk] - origin, stop[chunk] - origin, origin, occ, core)
        _blend(target, occ, self.hu, raise_only)
        if core is not None:
            _blend(target, core, self.core_hu, raise_only)

    def _occupy(self, grid: _Grid, segments: np.ndarray, start: np.ndarray, stop: np.ndarray, origin: np.ndarray,
                occ: np.ndarray, core: np.ndarray | None) -> None:
        """Max-merge the occupancy of ``segments`` into ``occ`` (and their cores into ``core``): each segment on
        its own box of voxels ``start..stop`` (box-relative ``(zf, y, x)`` indices), boxes padded to one shape."""
        k = len(segments)
        shape = (stop - start).max(0)
        axes = []
        for axis, coords in enumerate((grid.zf, grid.y, grid.x)):
            index = start[:, axis, None] + np.arange(shape[axis])  # (K, B)
            valid = index < stop[:, axis, None]
            index = np.minimum(index, occ.shape[axis] - 1)
            axes.append((index, coords[index + origin[axis]], valid))
        (iz, z, vz), (iy, y, vy), (ix, x, vx) = axes
        a, d = self.p0[segments], self.p1[segments] - self.p0[segments]
        length2 = np.maximum((d * d).sum(1), 1e-9)
        col = (k, 1, 1, 1)
        ax = (x - a[:, 0, None]).reshape(k, 1, 1, -1)
        ay = (y - a[:, 1, None]).reshape(k, 1, -1, 1)
        az = (z - a[:, 2, None]).reshape(k, -1, 1, 1)
        dx, dy, dz = (d[:, j].reshape(col) for j in range(3))
        t = np.clip((ax * (dx / length2.reshape(col)) + ay * (dy / length2.reshape(col)))
                    + az * (dz / length2.reshape(col)), 0.0, 1.0)
        ex, ey, ez = ax - t * dx, ay - t * dy, az - t * dz
        dist = np.sqrt(ex * ex + ey * ey + ez * ez)
        valid = vz.reshape(k, -1, 1, 1) & vy.reshape(k, 1, -1, 1) & vx.reshape(k, 1, 1, -1)
        flat = (iz.reshape(k, -1, 1, 1) * occ.shape[1] + iy.reshape(k, 1, -1, 1)) * occ.shape[2]
        flat = np.broadcast_to(flat + ix.reshape(k, 1, 1, -1), dist.shape)
        for radius, out in ((self.r, occ), (self.core_r, core)):
            if out is None:
                continue
            o = _occupancy(dist, radius[segments].reshape(col), grid.aa)
            hit = (o > 0) & valid
            np.maximum.at(out.reshape(-1), flat[hit], o[hit])


def _similar_boxes(shapes: np.ndarray, budget: int = 300_000) -> list[np.ndarray]:
    """Indices of boxes ``(N, 3)`` grouped so that padding each group to its largest shape wastes at most half
    of the work and a group holds at most ``budget`` voxels; empty boxes left out."""
    size = np.prod(shapes, axis=1)
    groups: list[np.ndarray] = []
    current: list[int] = []
    top = np.zeros(3, int)
    needed = 0
    for i in np.argsort(size, kind="stable"):
        if size[i] <= 0:
            continue
        grown = np.maximum(top, shapes[i])
        padded = (len(current) + 1) * int(np.prod(grown))
        if current and (padded > 2 * (needed + size[i]) or padded > budget):
            groups.append(np.array(current))
            current, top, needed, grown = [], np.zeros(3, int), 0, shapes[i]
        current.append(int(i))
        top, needed = grown, needed + int(size[i])
    if current:
        groups.append(np.array(current))
    return groups


def _segment_distance(x: np.ndarray, y: np.ndarray, z: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(z), len(y), len(x))`` distance (mm) from the grid points to the segment ``a -> b``."""
    d = b - a
    length2 = float(d @ d)
    ax, ay, az = x[None, None, :] - a[0], y[None, :, None] - a[1], z[:, None, None] - a[2]
    if length2 < 1e-9:
        return np.sqrt(ax * ax + ay * ay + az * az)
    t = np.clip((ax * (d[0] / length2) + ay * (d[1] / length2)) + az * (d[2] / length2), 0.0, 1.0)
    ex, ey, ez = ax - t * d[0], ay - t * d[1], az - t * d[2]
    return np.sqrt(ex * ex + ey * ey + ez * ez)


def _occupancy(distance: np.ndarray, radius: float | np.ndarray, aa: float) -> np.ndarray:
    """Anti-aliased inside-fraction of a tube or ball of ``radius`` at ``distance`` from its axis or centre;
    below ``aa / 2`` the radius is widened and the value lowered so that the cross-section area is kept."""
    r_eff = np.maximum(radius, aa / 2)
    return np.clip(0.5 + (r_eff - distance) / aa, 0.0, 1.0) * ((radius / r_eff) ** 2)


def _blend(target: np.ndarray, occ: np.ndarray, hu: float | np.ndarray, raise_only: bool) -> None:
    """``target`` moves towards ``hu`` by ``occ`` (in place); with ``raise_only`` only upwards."""
    step = hu - target
    if raise_only:
        np.maximum(step, 0, out=step)
    target += occ * step


def _smooth_clip(u: np.ndarray | float, aa: float) -> np.ndarray:
    """Anti-aliased inside-fraction of a region whose signed distance (mm, negative inside) is ``u``."""
    return np.clip(0.5 - np.asarray(u, np.float32) / aa, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------- anatomy


@dataclass
class _Polar:
    """Polar coordinates about the body centre and the harmonics the contour uses."""

    r: np.ndarray
    harm: np.ndarray  # (2K, ...): cos(k theta) for k = 1..K, then sin(k theta)

    @classmethod
    def of(cls, dx: np.ndarray, dy: np.ndarray) -> _Polar:
        theta = np.arctan2(dy, dx)
        k = np.arange(1, _HARMONICS + 1, dtype=np.float32).reshape((-1,) + (1,) * theta.ndim)
        return cls(np.hypot(dx, dy).astype(np.float32),
                   np.concatenate([np.cos(k * theta), np.sin(k * theta)]).astype(np.float32))

    @property
    def cos1(self) -> np.ndarray:
        return self.harm[0]

    @property
    def cos2(self) -> np.ndarray:
        return self.harm[1]

    @property
    def sin1(self) -> np.ndarray:
        return self.harm[_HARMONICS]


@dataclass
class _Slab:
    """What stays the same across one slice's thin planes: the body outline and chest wall, each on the body's
    window of the plane (:attr:`_Anatomy.window`)."""

    body: np.ndarray  # occupancy
    wall_hu: np.ndarray  # skin, fat and muscle by depth
    cavity: np.ndarray  # occupancy of the thoracic cavity
    cavity_sd: np.ndarray  # mm, negative in the cavity
    scapulae: np.ndarray | None  # occupancy
    centrality: np.ndarray  # 1 - (r / R)^2 in the body (r: distance from its centre, R: to its skin there), else 0
    bones: list[_Bone]  # vertebra and sternum pieces


@dataclass
class _Bone:
    """A piece of bone on a sub-window of the body's window: its occupancy and what fills it."""

    rows: slice
    cols: slice
    occupancy: np.ndarray
    hu: float
    textured: bool = False  # cancellous bone: the soft-tissue texture on top
    disc: bool = False  # a vertebral body's part: an intervertebral disc replaces it between the bodies


def _knotted(rng: np.random.Generator, z_lo: float, z_hi: float, knots: int, mean: float, sd: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """A random piecewise-linear profile along z: ``(knot z, knot values)``."""
    values = mean + sd * rng.standard_normal(knots)
    return np.linspace(z_lo, z_hi, knots, dtype=np.float32), values.astype(np.float32)


def _interp_rows(z: np.ndarray | float, knots: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Rows of ``table`` ``(K, C)`` interpolated linearly between ``knots`` ``(K,)`` at ``z``: ``(C,)`` for a
    scalar, ``(C, N)`` for ``N`` values (held constant beyond the ends)."""
    z = np.asarray(z, np.float32)
    i = np.clip(np.searchsorted(knots, z) - 1, 0, len(knots) - 2)
    w = np.clip((z - knots[i]) / (knots[i + 1] - knots[i]), 0, 1)[..., None]
    return ((1 - w) * table[i] + w * table[i + 1]).T


def _ellipse_sd(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Approximate signed distance (mm) from normalised offsets ``u, v`` (1 on the rim), ``scale`` mm per unit."""
    return (np.sqrt(u * u + v * v) - 1) * scale


class _Anatomy:
    """One patient's chest: shape parameters drawn once, implicit surfaces evaluated on slice planes (``slab``,
    ``plane``) or at points (``lung_sd_points``, used to grow vessels and place nodules)."""

    def __init__(self, rng: np.random.Generator, case: CaseSpec, grid: _Grid) -> None:
        s = float(case.body_scale)
        self.grid, self.scale = grid, s
        z_lo, z_hi = float(grid.zf[0]) - 150, float(grid.zf[-1]) + 150
        # body contour
        self.bx, self.by = rng.normal(0, 4), rng.normal(6, 5)
        self.a0 = 158 * s * (0.93 if case.female else 1.0) * rng.uniform(0.94, 1.06)
        self.b0 = 108 * s * rng.uniform(0.92, 1.08)
        self.a_z = _knotted(rng, z_lo, z_hi, 5, 1.0, 0.03)
        self.b_z = (self.a_z[0], (1 + 0.03 * rng.standard_normal(5) - np.linspace(-0.04, 0.04, 5)).astype(np.float32))
        k = np.arange(1, _HARMONICS + 1)
        self.harm_z = np.linspace(z_lo, z_hi, 4, dtype=np.float32)
        self.harm = (rng.standard_normal((4, 2 * _HARMONICS)) * np.tile(0.03 / k**1.2, 2)).astype(np.float32)
        self.harm[:, 1] += 0.03  # cos 2 theta: back and front flatter than an ellipse's
        self.y_table = self.by + self.b0 * rng.uniform(0.90, 0.96)
        # chest wall layers
        self.fat0 = rng.uniform(5, 16) * s**2.5
        self.muscle0 = rng.uniform(8, 13) * s
        self.spine_bump = rng.uniform(40, 52) * s
        # lungs: apex-to-recess height, and where the scanned range cuts them
        self.height = 245 * s * rng.uniform(0.9, 1.08)
        extent, bottom = grid.dz * len(grid.z), float(grid.z[0]) - grid.dz / 2
        if extent >= self.height + 30:
            self.z_low = bottom + rng.uniform(8, extent - self.height - 12)
        else:  # a slab: the range sits around the middle of the lungs
            self.z_low = -self.height * rng.uniform(0.42, 0.58)
        h, zl = self.height, self.z_low
        if case.female:
            self.breast = (rng.uniform(10, 40) * s, zl + h * rng.uniform(0.35, 0.5), rng.uniform(40, 55) * s)
        else:
            self.breast = (0.0, 0.0, 1.0)
        # diaphragm domes (the right higher) with liver and spleen under them
        peak_r = zl + h * rng.uniform(0.27, 0.36)
        self.domes = [(-0.42 * self.a0, self.by - 0.05 * self.b0, peak_r, 0.75 * self.a0, 0.95 * self.b0),
                      (0.42 * self.a0, self.by - 0.02 * self.b0, peak_r - rng.uniform(10, 22) * s,
                       0.72 * self.a0, 0.92 * self.b0)]
        # lung beans, right (-1) and left (+1)
        self.beans = [dict(side=side, cx=side * self.a0 * rng.uniform(0.44, 0.52),
                           cy=self.by + self.b0 * rng.uniform(0, 0.08), ax=self.a0 * rng.uniform(0.62, 0.7),
                           ay=self.b0 * rng.uniform(1.0, 1.1), p=rng.uniform(1.4, 2.0)) for side in (-1, 1)]
        self.lung_hu0 = rng.uniform(-875, -830)
        self.gravity = rng.uniform(30, 70)  # HU denser at the back than at the front
        # mediastinum
        self.xm_z = _knotted(rng, z_lo, z_hi, 4, 0.0, 3.0)
        self.hw_z = (np.array([zl, zl + 0.45 * h, zl + 0.75 * h, zl + h], np.float32),
                     (np.array([30, 28, 34, 30]) * s * rng.uniform(0.9, 1.1, 4)).astype(np.float32))
        self.y_vb = self.y_table - 0.62 * self.b0
        self.rv = 16 * s * rng.uniform(0.92, 1.08)
        self.heart = dict(x=self.a0 * rng.uniform(0.12, 0.2), y=self.by - self.b0 * rng.uniform(0.3, 0.4),
                          ax=rng.uniform(50, 60) * s, ay=rng.uniform(36, 44) * s, az=rng.uniform(40, 48) * s,
                          phi=rng.uniform(-0.75, -0.35), peri=rng.uniform(2, 6))
        self.heart["z"] = self.domes[1][2] + 0.35 * self.heart["az"]
        self.z_arch = zl + h * rng.uniform(0.74, 0.8)
        self.aorta = self._aorta_chain(rng)
        self.z_hilum = zl + h * rng.uniform(0.52, 0.58)
        # bones, fields, scanner
        self.disc_period = rng.uniform(24, 29) * s
        self.disc_phase = rng.uniform(0, self.disc_period)
        self.deform = _Field(rng, grid, 45.0)
        self.lung_texture = _Field(rng, grid, 12.0)
        self.soft_texture = _Field(rng, grid, 12.0)
        self.deform_mm = rng.uniform(3, 7)
        self.cupping = rng.uniform(4, 14) * s**2  # HU darker in the middle of the body (beam hardening)
        # planes that do not change along z; the body's computations run on its bounding window only
        self.base = self._table(grid.x[None, :], grid.y[:, None])
        self.window = self._body_window()
        self.xw, self.yw = grid.x[self.window[1]], grid.y[self.window[0]]
        x, y = self.xw[None, :], self.yw[:, None]
        self.polar = _Polar.of(x - self.bx, y - self.by)
        self.dome_map = self.dome_z(x, y)
        self.abdomen_hu = _HU_SPLEEN + (_HU_LIVER - _HU_SPLEEN) * np.clip(0.5 - (x - 10) / 25, 0, 1)

    def _body_window(self) -> tuple[slice, slice]:
        """Rows and columns of the plane that the body reaches on any slice (with an edge's margin)."""
        theta = np.linspace(-np.pi, np.pi, 360, endpoint=False, dtype=np.float32)
        theta, z = (a.ravel() for a in np.meshgrid(theta, self.grid.zf[:: self.grid.sub]))
        rim = self.ray_point(theta, z, 0.0)
        margin = 2 * self.grid.aa
        lo = rim[:, :2].min(0) - margin
        hi = np.minimum(rim[:, :2].max(0), [np.inf, self.y_table]) + margin
        window = self.grid.window((float(lo[0]), float(lo[1])), (float(hi[0]), float(hi[1])))
        return window if window is not None else (slice(0, 1), slice(0, 1))

    # ----------------------------------------------------------------------------------------- surfaces
    def xm(self, z: np.ndarray | float) -> np.ndarray:
        """The mediastinum's midline, mm."""
        return np.interp(z, *self.xm_z).astype(np.float32)

    def body_radius(self, pol: _Polar, z: np.ndarray | float) -> np.ndarray:
        """Distance (mm) from the body centre to the skin in each point's direction."""
        a = self.a0 * np.interp(z, *self.a_z)
        b = self.b0 * np.interp(z, *self.b_z)
        c2 = 0.5 + 0.5 * pol.cos2
        ellipse = a * b / np.sqrt(b * b * c2 + a * a * (1 - c2))
        coeff = _interp_rows(z, self.harm_z, self.harm)
        wave = np.tensordot(coeff, pol.harm, 1) if coeff.ndim == 1 else (coeff * pol.harm).sum(0)
        return ellipse * (1 + wave) + self._breasts(pol, z)

    def _breasts(self, pol: _Polar, z: np.ndarray | float) -> np.ndarray | float:
        amp, zb, sz = self.breast
        if amp == 0:
            return 0.0
        vertical = amp * np.exp(-(((np.asarray(z) - zb) / sz) ** 2))
        out = 0.0
        for centre in (-np.pi / 2 - 0.5, -np.pi / 2 + 0.5):  # anterolateral, both sides
            out = out + np.exp((pol.cos1 * math.cos(centre) + pol.sin1 * math.sin(centre) - 1) / 0.06)
        return vertical * out

    def wall(self, pol: _Polar, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Subcutaneous fat and muscle thickness (mm) in each point's direction."""
        fat = self.fat0 * (1 + 0.35 * pol.cos2 + 0.15 * pol.sin1) + self._breasts(pol, z)
        t = (np.asarray(z) - self.z_low) / self.height
        pectoral = 10 * self.scale * np.clip(t * 1.6 - 0.4, 0, 1) * np.exp((-pol.sin1 - 1) / 0.5)
        spine = self.spine_bump * np.exp((pol.sin1 - 1) / 0.045)
        return fat, self.muscle0 + pectoral + spine

    def depth(self, pol: _Polar, y: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        """Depth under the skin (mm), negative outside the body."""
        return np.minimum(self.body_radius(pol, z) - pol.r, self.y_table - y)

    def dome_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height (mm) of the diaphragm above the point: the upper of the two domes."""
        out = None
        for xp, yp, zp, sx, sy in self.domes:
            u, v = (x - xp) / sx, (y - yp) / sy
            dome = zp - (zp - self.z_low + 10) * np.clip(u * u + v * v + 0.3 * v, 0, 1.3)
            out = dome if out is None else np.maximum(out, dome)
        return out.astype(np.float32)

    def beans_sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        """Approximate signed distance (mm) to the union of the two lung beans (shrinking to a dome at the apex)."""
        t = (np.asarray(z, np.float32) - self.z_low) / self.height
        out = None
        for bean in self.beans:
            shrink = np.sqrt(np.clip(1 - np.clip(t, 0, 2) ** bean["p"], 0, 1))
            cx = bean["cx"] - bean["side"] * 0.1 * self.a0 * t * t
            cy = bean["cy"] + 0.2 * self.b0 * t * t
            ax, ay = bean["ax"] * shrink**1.5 + 0.5, bean["ay"] * shrink + 0.5  # a narrow apex
            sd = _ellipse_sd((x - cx) / ax, (y - cy) / ay, np.sqrt(ax * ay))
            out = sd if out is None else np.minimum(out, sd)
        return out

    def _band_sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        """The mediastinal band between the lungs, narrower in front and behind."""
        y_mid = self.by - 0.1 * self.b0
        hw = np.interp(z, *self.hw_z) * (0.4 + 0.6 * np.exp(-(((y - y_mid) / (0.4 * self.b0)) ** 2)))
        return np.abs(x - self.xm(z)) - hw

    def heart_sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        h = self.heart
        dx, dy = x - (self.xm(z) + h["x"]), y - h["y"]
        c, s = math.cos(h["phi"]), math.sin(h["phi"])
        u, v, w = (dx * c + dy * s) / h["ax"], (dy * c - dx * s) / h["ay"], (np.asarray(z) - h["z"]) / h["az"]
        return (np.sqrt(u * u + v * v + w * w) - 1) * (h["ax"] * h["ay"] * h["az"]) ** (1 / 3)

    def _spine_sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float, margin: float = 0.0) -> np.ndarray:
        """The vertebral body, grown by ``margin`` mm."""
        rx, ry = 1.15 * self.rv + margin, self.rv + margin
        return _ellipse_sd((x - self.xm(z)) / rx, (y - self.y_vb) / ry, ry)

    def _aorta_segment_sd(self, i: int, x: np.ndarray, y: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        points, radii = self.aorta
        a, d = points[i], points[i + 1] - points[i]
        t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / float(d @ d), 0, 1)
        ex, ey, ez = x - a[0] - t * d[0], y - a[1] - t * d[1], z - a[2] - t * d[2]
        return np.sqrt(ex * ex + ey * ey + ez * ez) - radii[i]

    def mediastinum_sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm) to the mediastinum at points: band, heart in its fat, aorta, spine."""
        out = np.minimum(self._band_sd(x, y, z), self.heart_sd(x, y, z) - self.heart["peri"])
        out = np.minimum(out, self._spine_sd(x, y, z, 3.0))
        for i in range(len(self.aorta[1])):
            out = np.minimum(out, self._aorta_segment_sd(i, x, y, z))
        return out

    def _mediastinum_plane(self, z: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``mediastinum_sd`` on the plane at ``z``, and the heart's and aorta's own distances there (or None),
        each organ evaluated only in its bounding window."""
        aa = self.grid.aa
        med = self._band_sd(self.xw[None, :], self.yw[:, None], z).astype(np.float32)
        h, xm = self.heart, float(self.xm(z))
        heart = aorta = None
        if abs(z - h["z"]) < h["az"] + h["peri"] + 2 * aa:
            reach = max(h["ax"], h["ay"]) + h["peri"] + 2 * aa
            heart = self._windowed((xm + h["x"] - reach, h["y"] - reach), (xm + h["x"] + reach, h["y"] + reach),
                                   lambda xw, yw: self.heart_sd(xw, yw, z))
            np.minimum(med, heart - h["peri"], out=med)
        spine = 1.15 * self.rv + 3 + 2 * aa
        np.minimum(med, self._windowed((xm - spine, self.y_vb - spine), (xm + spine, self.y_vb + spine),
                                       lambda xw, yw: self._spine_sd(xw, yw, z, 3.0)), out=med)
        points, radii = self.aorta
        for i, r in enumerate(radii):
            a, b = points[i], points[i + 1]
            reach = r + 2 * aa
            if not min(a[2], b[2]) - reach <= z <= max(a[2], b[2]) + reach:
                continue
            lo, hi = np.minimum(a, b) - reach, np.maximum(a, b) + reach
            part = self._windowed((lo[0], lo[1]), (hi[0], hi[1]), lambda xw, yw: self._aorta_segment_sd(i, xw, yw, z))
            aorta = part if aorta is None else np.minimum(aorta, part)
        if aorta is not None:
            np.minimum(med, aorta, out=med)
        return med, heart, aorta

    def _windowed(self, lo: tuple[float, float], hi: tuple[float, float], sd) -> np.ndarray:
        """Signed distances on the body's window: ``sd(x, y)`` within ``lo..hi`` (mm), far outside it."""
        out = np.full((len(self.yw), len(self.xw)), 1e4, np.float32)
        rows, cols = self._sub_window(lo, hi)
        if rows.stop > rows.start and cols.stop > cols.start:
            out[rows, cols] = sd(self.xw[None, cols], self.yw[rows, None])
        return out

    def _sub_window(self, lo: tuple[float, float], hi: tuple[float, float]) -> tuple[slice, slice]:
        """Rows and columns of the body's window within ``lo..hi`` (mm); possibly empty."""
        c0, c1 = np.searchsorted(self.xw, [lo[0], hi[0]])
        r0, r1 = np.searchsorted(self.yw, [lo[1], hi[1]])
        return slice(int(r0), int(max(r0, r1))), slice(int(c0), int(max(c0, c1)))

    def _aorta_chain(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Aortic centreline ``(P, 3)`` mm (root, ascending, arch, descending) and segment radii ``(P - 1,)``."""
        s, h = self.scale, self.heart
        xm, za = float(self.xm(self.z_arch)), self.z_arch
        desc_x, desc_y = xm + rng.uniform(16, 24) * s, self.y_vb - self.rv - 8 * s
        points = np.array([
            (xm + h["x"] * 0.3, h["y"] + 0.2 * h["ay"], h["z"] + 0.6 * h["az"]),
            (xm - 14 * s, self.by - 0.34 * self.b0, za - 30 * s),
            (xm - 10 * s, self.by - 0.30 * self.b0, za),
            (xm + 2 * s, self.by - 0.12 * self.b0, za + 10 * s),
            (desc_x - 2 * s, desc_y - 10 * s, za + 4 * s),
            (desc_x, desc_y, za - 25 * s),
            (desc_x - 4 * s, desc_y - 2 * s, self.z_low - 60),
        ], np.float32)
        radii = np.array([15, 15, 14, 13, 12, 11.5], np.float32) * s * rng.uniform(0.9, 1.15)
        return points, radii

    def _lung_sd(self, beans: np.ndarray, cavity_sd: np.ndarray, mediastinum: np.ndarray, dome_gap: np.ndarray,
                 deform: np.ndarray) -> np.ndarray:
        """The lungs: the deformed beans cut by the chest wall, the mediastinum and the diaphragm."""
        lung = np.maximum(beans + deform, cavity_sd + 1.5)
        lung = np.maximum(lung, 1.5 + 0.5 * deform - mediastinum)
        return np.maximum(lung, dome_gap)

    def lung_sd_points(self, p: np.ndarray) -> np.ndarray:
        """``(N,)`` approximate signed distance (mm, negative inside) to the lungs at mm points ``(N, 3)``."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        return self._lung_sd(self.beans_sd(x, y, z), self.cavity_sd_points(p), self.mediastinum_sd(x, y, z),
                             self.dome_z(x, y) - z, self.deform_mm * self.deform.points(p))

    def cavity_sd_points(self, p: np.ndarray) -> np.ndarray:
        """``(N,)`` signed distance (mm) to the thoracic cavity (positive in the chest wall)."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        pol = _Polar.of(x - self.bx, y - self.by)
        fat, muscle = self.wall(pol, z)
        return _SKIN_MM + fat + muscle - self.depth(pol, y, z)

    def wall_point(self, theta: np.ndarray, z: np.ndarray, offset: np.ndarray | float) -> np.ndarray:
        """``(N, 3)`` points at angle ``theta`` about the body centre, ``offset`` mm outside the cavity wall."""
        theta, z = np.asarray(theta, np.float32), np.asarray(z, np.float32)
        fat, muscle = self.wall(_Polar.of(np.cos(theta), np.sin(theta)), z)
        return self.ray_point(theta, z, _SKIN_MM + fat + muscle - offset)

    def ray_point(self, theta: np.ndarray, z: np.ndarray, depth: np.ndarray | float) -> np.ndarray:
        """``(N, 3)`` points at angle ``theta`` about the body centre, ``depth`` mm under the skin."""
        theta, z = np.asarray(theta, np.float32), np.asarray(z, np.float32)
        rho = self.body_radius(_Polar.of(np.cos(theta), np.sin(theta)), z) - depth
        sin = np.sin(theta)
        table_rho = np.where(sin > 0.05, (self.y_table - self.by - depth) / np.maximum(sin, 0.05), np.inf)
        rho = np.maximum(np.minimum(rho, table_rho), 5.0)
        return np.stack([self.bx + rho * np.cos(theta), self.by + rho * sin, z], 1).astype(np.float32)

    # ----------------------------------------------------------------------------------------- rendering
    def _table(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Air with the patient table: a curved carbon-fibre shell with a foam core under the back."""
        aa = self.grid.aa
        top = self.y_table + 3 + 0.0009 * x * x
        inside = _smooth_clip(np.abs(y - top - 5) - 5, aa) * _smooth_clip(np.abs(x) - 230, aa)
        shell = _smooth_clip(np.abs(np.abs(y - top - 5) - 4.2) - 0.8, aa)
        return (_HU_AIR + inside * (-700 - _HU_AIR) + shell * inside * (250 + 700)).astype(np.float32)

    def slab(self, z: float, soft_texture: np.ndarray) -> _Slab:
        """The body outline and chest wall at the slice centred at ``z``."""
        pol, aa = self.polar, self.grid.aa
        radius = self.body_radius(pol, z)
        depth = np.minimum(radius - pol.r, self.y_table - self.yw[:, None])
        fat, muscle = self.wall(pol, z)
        hu_fat = _HU_FAT + soft_texture * 12
        wall_hu = _HU_SKIN + _smooth_clip(_SKIN_MM - depth, aa) * (hu_fat - _HU_SKIN)
        wall_hu += _smooth_clip(_SKIN_MM + fat - depth, aa) * (_HU_MUSCLE - hu_fat)
        cavity_sd = _SKIN_MM + fat + muscle - depth
        scapulae = None
        t = (z - self.z_low) / self.height
        if 0.55 < t < 0.97:  # thin blades in the posterior muscle, narrowing to the inferior angle
            blade = np.abs(depth - (_SKIN_MM + fat + 0.45 * muscle)) - 2.2 * self.scale
            width = 0.08 + 0.32 * (t - 0.55) / 0.42
            for side in (-1, 1):
                centre = np.pi / 2 - side * 0.85
                cos = pol.cos1 * math.cos(centre) + pol.sin1 * math.sin(centre)
                occ = _smooth_clip(np.maximum(blade, (np.arccos(np.clip(cos, -1, 1)) - width) * pol.r), aa)
                scapulae = occ if scapulae is None else np.maximum(scapulae, occ)
        relative = pol.r / np.maximum(radius, 1.0)
        centrality = np.where(depth > 0, np.clip(1 - relative * relative, 0, 1), 0).astype(np.float32)
        return _Slab(_smooth_clip(-depth, aa), wall_hu.astype(np.float32), _smooth_clip(cavity_sd, aa),
                     cavity_sd.astype(np.float32), scapulae, centrality, self._vertebra(z) + self._sternum(z))

    def plane(self, z: float, slab: _Slab, lung_texture: np.ndarray, soft_texture: np.ndarray,
              deform: np.ndarray) -> np.ndarray:
        """``(n, n)`` float32 HU of the thin plane at ``z``, before tubes, nodule and scanner; the textures and
        ``deform`` (mm) on the body's window."""
        aa = self.grid.aa
        x, y = self.xw[None, :], self.yw[:, None]
        inner = _HU_MEDIASTINUM + 15 * soft_texture
        inner += _smooth_clip(z - self.dome_map, aa) * (self.abdomen_hu + 6 * soft_texture - inner)
        layer = slab.wall_hu + slab.cavity * (inner - _HU_MUSCLE)
        out = self.base.copy()
        hu = out[self.window]
        hu += slab.body * (layer - hu)
        mediastinum, heart, aorta = self._mediastinum_plane(z)
        lung_sd = self._lung_sd(self.beans_sd(x, y, z), slab.cavity_sd, mediastinum, self.dome_map - z, deform)
        lung_hu = self.lung_hu0 + self.gravity * (y - self.by) / self.b0 + 18 * lung_texture
        _blend(hu, _smooth_clip(lung_sd, aa), lung_hu, False)
        if heart is not None:  # in its pericardial fat
            _blend(hu, _smooth_clip(heart - self.heart["peri"], aa), _HU_FAT + 15 * soft_texture, False)
            _blend(hu, _smooth_clip(heart, aa), _HU_BLOOD + 4 * soft_texture, False)
        if aorta is not None:
            _blend(hu, _smooth_clip(aorta, aa), _HU_BLOOD + 2, False)
        if slab.scapulae is not None:
            _blend(hu, slab.scapulae, 600.0, False)
        gap = abs((z - self.disc_phase) % self.disc_period - self.disc_period / 2)  # from the nearest disc's middle
        disc = float(np.clip(0.5 + (3.5 * self.scale - gap) / aa, 0, 1))
        for bone in slab.bones:
            value = bone.hu + (80.0 - bone.hu) * disc if bone.disc else bone.hu
            if bone.textured:
                value = value + 40 * soft_texture[bone.rows, bone.cols]
            _blend(hu[bone.rows, bone.cols], bone.occupancy, value, False)
        return out

    def _vertebra(self, z: float) -> list[_Bone]:
        """Vertebra at height ``z``: body (cortex round cancellous bone), arch, spinous and transverse processes,
        and the canal."""
        aa, s = self.grid.aa, self.scale
        xm = float(self.xm(z))
        rows, cols = self._sub_window((xm - 50 * s, self.y_vb - self.rv - 8), (xm + 50 * s, self.y_table + 5))
        x, y = self.xw[None, cols] - xm, self.yw[rows, None]
        if x.size == 0 or y.size == 0:
            return []
        body = self._spine_sd(x + xm, y, z)
        y_canal = self.y_vb + self.rv + 9 * s
        canal = np.sqrt(x * x + (y - y_canal) ** 2)
        on_plane = np.zeros(1, np.float32)
        posterior = np.abs(canal - 10.5 * s) - 2.8 * s  # the arch round the canal
        spinous = _segment_distance(x[0], y[:, 0], on_plane, np.array([0, y_canal + 10 * s, 0]),
                                    np.array([0, self.y_table - 14 * s, 0]))[0] - 4 * s
        np.minimum(posterior, spinous, out=posterior)
        for side in (-1, 1):
            transverse = _segment_distance(x[0], y[:, 0], on_plane, np.array([0, y_canal, 0]),
                                           np.array([side * 27 * s, y_canal + 2 * s, 0]))[0] - 5 * s
            np.minimum(posterior, transverse, out=posterior)
        return [_Bone(rows, cols, _smooth_clip(body, aa), 700.0, disc=True),
                _Bone(rows, cols, _smooth_clip(body + 1.5, aa), 230.0, textured=True, disc=True),
                _Bone(rows, cols, _smooth_clip(posterior, aa), 520.0, textured=True),
                _Bone(rows, cols, _smooth_clip(canal - 8 * s, aa), 15.0)]

    def _sternum(self, z: float) -> list[_Bone]:
        """Sternum in the front chest wall: its body below, the wider manubrium above."""
        t = (z - self.z_low) / self.height
        if not 0.28 < t < 0.9:
            return []
        aa, s = self.grid.aa, self.scale
        xm = float(self.xm(z))
        front = _Polar.of(np.zeros(1, np.float32), -np.ones(1, np.float32))
        fat = float(self.wall(front, z)[0][0])
        yc = float(self.by - self.body_radius(front, z)[0]) + _SKIN_MM + fat + 8 * s
        half_w, half_h = (13 + 12 * float(np.clip((t - 0.72) / 0.1, 0, 1))) * s, 6.5 * s
        rows, cols = self._sub_window((xm - half_w - 2 * aa, yc - half_h - 2 * aa),
                                      (xm + half_w + 2 * aa, yc + half_h + 2 * aa))
        if rows.stop == rows.start or cols.stop == cols.start:
            return []
        sd = _ellipse_sd((self.xw[None, cols] - xm) / half_w, (self.yw[rows, None] - yc) / half_h, half_h)
        return [_Bone(rows, cols, _smooth_clip(sd, aa), 650.0), _Bone(rows, cols, _smooth_clip(sd + 1.3, aa), 220.0)]


# --------------------------------------------------------------------------------------------------- trees


def _sample_lung(rng: np.random.Generator, anatomy: _Anatomy, count: int, z_range: tuple[float, float],
                 margin: float = 1.0) -> np.ndarray:
    """Up to ``count`` uniform random points ``(N, 3)`` at least ``margin`` mm inside the lungs within ``z_range``."""
    lo = np.array([anatomy.bx - 1.1 * anatomy.a0, anatomy.by - 1.1 * anatomy.b0, z_range[0]], np.float32)
    hi = np.array([anatomy.bx + 1.1 * anatomy.a0, anatomy.y_table, z_range[1]], np.float32)
    found: list[np.ndarray] = []
    total = 0
    for _ in range(8):
        p = (lo + (hi - lo) * rng.random((count * 3, 3), dtype=np.float32)).astype(np.float32)
        p = p[anatomy.lung_sd_points(p) < -margin]
        found.append(p)
        total += len(p)
        if total >= count:
            break
    return np.concatenate(found)[:count]


def _grow_tree(rng: np.random.Generator, in_lung: Callable[[np.ndarray], np.ndarray], root: np.ndarray,
               stem: np.ndarray, attractors: np.ndarray, step: float = 4.5, influence: float = 28.0, kill: float = 7.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Space colonisation: from ``root`` along ``stem``, nodes step towards the attractors near them until all
    are reached. Returns node positions ``(M, 3)`` and parent indices ``(M,)`` (-1 at the root)."""
    nodes = [root + stem * step * i for i in range(3)]
    parents = [-1, 0, 1]
    positions = np.array(nodes, np.float32)
    alive = np.ones(len(attractors), bool)
    for _ in range(160):
        live = np.flatnonzero(alive)
        if not len(live):
            break
        tree = cKDTree(positions)
        dist, nearest = tree.query(attractors[live], distance_upper_bound=influence)
        alive[live[dist < kill]] = False
        act = (dist >= kill) & np.isfinite(dist)
        if not act.any():
            break
        owner = nearest[act]
        pull = attractors[live[act]] - positions[owner]
        pull /= np.linalg.norm(pull, axis=1, keepdims=True)
        growing = np.unique(owner)
        total = np.stack([np.bincount(owner, pull[:, j], len(positions))[growing] for j in range(3)], 1)
        total += rng.normal(0, 0.08, total.shape) * np.linalg.norm(total, axis=1, keepdims=True).clip(1e-3)
        fresh = positions[growing] + step * total / np.linalg.norm(total, axis=1, keepdims=True).clip(1e-6)
        fresh = fresh.astype(np.float32)
        keep = tree.query(fresh)[0] > 0.45 * step
        near_root = np.linalg.norm(fresh - root, axis=1) < 30
        keep &= near_root | in_lung(fresh)
        if not keep.any():
            break
        positions = np.concatenate([positions, fresh[keep]])
        parents.extend(growing[keep].tolist())
    return positions, np.asarray(parents)


def _tree_tubes(positions: np.ndarray, parents: np.ndarray, leaf_radius: float, hu: float
                ) -> tuple[_Tubes, np.ndarray]:
    """Segments of a grown tree with radii by Murray's law, its plain runs smoothed (every other node dropped),
    and the radius at each node ``(M,)``."""
    count = len(positions)
    cubed = np.zeros(count)
    children = np.bincount(parents[parents >= 0], minlength=count)
    run = np.flatnonzero((children == 1) & (parents >= 0))  # nodes inside a plain run: one parent, one child
    child = np.zeros(count, int)
    child[parents[1:]] = np.arange(1, count)  # the only child where there is one
    positions = positions.copy()
    for _ in range(3):
        positions[run] = 0.5 * positions[run] + 0.25 * (positions[parents[run]] + positions[child[run]])
    cubed[children == 0] = leaf_radius**3
    for i in range(count - 1, 0, -1):  # children come after their parents
        cubed[parents[i]] += cubed[i]
    radius = np.cbrt(cubed).astype(np.float32)
    generation = np.zeros(count, int)
    for i in range(1, count):
        generation[i] = generation[parents[i]] + 1
    dropped = (children == 1) & (generation % 2 == 1) & (parents >= 0)
    ends = np.flatnonzero(~dropped & (parents >= 0))
    starts = parents[ends]
    starts = np.where(dropped[starts], parents[starts], starts)
    tubes = _Tubes(positions[starts], positions[ends], radius[ends], hu)
    return tubes, radius


def _airways(rng: np.random.Generator, start: np.ndarray, points: np.ndarray, radius: float, generations: int,
             in_lung: Callable[[np.ndarray], np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Bronchi from ``start`` (mm): the lung region ``points`` split in two along its long axis, one branch
    towards each half's centroid (shortened to end in the lung), recursively. Returns ``(from, to, lumen
    radius)`` per bronchus."""
    if generations == 0 or len(points) < 12 or radius < 1.0:
        return []
    centred = points - points.mean(0)
    axis = np.linalg.svd(centred[:: max(1, len(points) // 200)], full_matrices=False)[2][0]
    side = centred @ axis > 0
    out = []
    for half in (points[side], points[~side]):
        if len(half) < 6:
            continue
        ends = start + np.array([[0.45], [0.3], [0.15]]) * rng.uniform(0.8, 1.1) * (half.mean(0) - start)
        fits = in_lung(ends.astype(np.float32))
        if not fits.any():
            continue
        end = ends[int(np.argmax(fits))]
        child = radius * 2 ** (-1 / 3) * rng.uniform(0.9, 1.05)
        out.append((start, end, child))
        out += _airways(rng, end, half, child, generations - 1, in_lung)
    return out


# --------------------------------------------------------------------------------------------------- nodule


def _sphere_dirs(count: int = 48) -> np.ndarray:
    """``(count, 3)`` unit vectors spread over the sphere (Fibonacci lattice)."""
    i = np.arange(count) + 0.5
    phi = np.arccos(1 - 2 * i / count)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1).astype(np.float32)


@dataclass
class _Ball:
    """A lobulated ball: ``radius(u) = R (1 + sum_j a_j (exp(k_j (u . d_j - 1)) - mean))``."""

    centre: np.ndarray  # (3,) mm
    radius: float
    dirs: np.ndarray  # (J, 3)
    amps: np.ndarray  # (J,)
    kappas: np.ndarray  # (J,)

    @classmethod
    def draw(cls, rng: np.random.Generator, centre: np.ndarray, radius: float, lobes: int, amp: float,
             kappa: tuple[float, float]) -> _Ball:
        dirs = rng.standard_normal((lobes, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        return cls(centre.astype(np.float32), radius, dirs.astype(np.float32),
                   rng.uniform(0.3, 1.0, lobes) * amp, rng.uniform(*kappa, lobes))

    def sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm) on the broadcast grid ``z (Z,1,1), y (1,Y,1), x (1,1,X)``."""
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        dist = np.sqrt(dx * dx + dy * dy + dz * dz)
        inv = 1 / np.maximum(dist, 1e-3)
        shape = np.zeros_like(dist)
        for d, a, k in zip(self.dirs, self.amps, self.kappas):
            cos = (dx * d[0] + dy * d[1] + dz * d[2]) * inv
            shape += a * (np.exp(k * (cos - 1)) - (1 - math.exp(-2 * k)) / (2 * k))
        return dist - self.radius * (1 + shape)


def _ball_occupancy(ball: _Ball, grid: _Grid, box: tuple[slice, slice, slice]) -> np.ndarray:
    z, y, x = grid.zf[box[0]][:, None, None], grid.y[box[1]][None, :, None], grid.x[box[2]][None, None, :]
    return _smooth_clip(ball.sd(x, y, z), grid.aa)


@dataclass
class _NoduleDrawing:
    """What :func:`_draw_nodule` reports: the mask at slice resolution and the centre voxel."""

    mask: np.ndarray  # (slices, n, n) bool
    center_vox: tuple[int, int, int]


def _nodule_centre(rng: np.random.Generator, spec: NoduleSpec, anatomy: _Anatomy, grid: _Grid,
                   structures: _Structures) -> np.ndarray:
    """A centre (mm) for the nodule at its site: the whole ball in the lung except where it meets the pleura;
    against a lung vessel for a juxtavascular one, clear of vessels and airways of 1 mm or more for an
    intraparenchymal one."""
    radius, vessels, lung_points = spec.diameter_mm / 2, structures.vessels, structures.lung_points
    dirs = _sphere_dirs()
    candidates = _in_window(lung_points, grid, radius)
    if spec.site == "juxtapleural":
        theta = np.arctan2(candidates[:, 1] - anatomy.by, candidates[:, 0] - anatomy.bx)
        wall = anatomy.wall_point(theta, candidates[:, 2], -1.5)
        inward = np.stack([-np.cos(theta), -np.sin(theta), np.zeros_like(theta)], 1)
        candidates = wall + inward * (radius * rng.uniform(0.72, 0.9, (len(wall), 1)))
    elif spec.site == "juxtavascular":
        big = np.flatnonzero(vessels.r >= 0.9)
        pick = rng.choice(big, size=min(len(big), 400), replace=False) if len(big) else np.zeros(0, int)
        t = rng.random((len(pick), 1))
        axis_point = vessels.p0[pick] + t * (vessels.p1[pick] - vessels.p0[pick])
        axis = vessels.p1[pick] - vessels.p0[pick]
        perp = np.cross(axis, rng.standard_normal(axis.shape))
        perp /= np.linalg.norm(perp, axis=1, keepdims=True).clip(1e-6)
        gap = vessels.r[pick, None] + radius * rng.uniform(0.8, 0.95, (len(pick), 1))
        candidates = _in_window(axis_point + perp * gap, grid, radius)
    candidates = candidates[rng.permutation(len(candidates))][:300]
    if not len(candidates):
        candidates = _in_window(lung_points, grid, radius)[:300]
    if not len(candidates):
        raise ValueError(f"no lung inside the scanned field (scan.size x scan.pixel_spacing_mm = "
                         f"{2 * grid.fov_radius:.0f} mm across, {len(grid.z)} slices of {grid.dz} mm) to hold a "
                         f"nodule of {spec.diameter_mm} mm")
    shell = candidates[:, None, :] + radius * 1.08 * dirs[None]
    lung = anatomy.lung_sd_points(shell.reshape(-1, 3)).reshape(len(candidates), -1)
    if spec.site == "juxtapleural":
        wall = anatomy.cavity_sd_points(shell.reshape(-1, 3)).reshape(len(candidates), -1)
        fine = ((lung < 0) | (wall > -3)).all(1) & (wall > -1.5).any(1)
        fine &= anatomy.lung_sd_points(candidates) < -0.3 * radius
    else:
        fine = (lung < -0.5).all(1)
        if spec.site == "intraparenchymal":
            fine &= _clearance(candidates, structures.obstacles, 1.0) > radius + 2
    if fine.any():
        return candidates[np.flatnonzero(fine)[0]]
    depth = (-lung).min(1)  # no candidate fits: the one most inside the lung
    return candidates[int(np.argmax(depth))]


def _clearance(points: np.ndarray, tubes: list[_Tubes], min_radius: float) -> np.ndarray:
    """``(N,)`` distance (mm) from each point to the surface of the nearest tube of radius ``min_radius`` or more."""
    p0 = np.concatenate([t.p0[t.r >= min_radius] for t in tubes])
    p1 = np.concatenate([t.p1[t.r >= min_radius] for t in tubes])
    r = np.concatenate([t.r[t.r >= min_radius] for t in tubes])
    if not len(r):
        return np.full(len(points), np.inf)
    d = p1 - p0
    rel = points[:, None, :] - p0[None]
    t = np.clip((rel * d).sum(2) / np.maximum((d * d).sum(1), 1e-9), 0, 1)
    return (np.linalg.norm(rel - t[..., None] * d, axis=2) - r).min(1)


def _in_window(points: np.ndarray, grid: _Grid, radius: float) -> np.ndarray:
    """The points whose ball of ``radius`` stays in the scanned slab (or at least its middle half along z) and in
    the reconstruction circle."""
    lo, hi = float(grid.z[0]) - grid.dz / 2, float(grid.z[-1]) + grid.dz / 2
    z_margin = min(radius, 0.25 * (hi - lo))
    keep = (points[:, 2] >= lo + z_margin) & (points[:, 2] <= hi - z_margin)
    keep &= np.hypot(points[:, 0], points[:, 1]) < grid.fov_radius - radius - 4
    return points[keep]


def _draw_nodule(rng: np.random.Generator, spec: NoduleSpec, centre: np.ndarray, anatomy: _Anatomy, grid: _Grid,
                 volume: np.ndarray) -> _NoduleDrawing:
    """Composite the nodule into the thin-plane volume; its mask at slice resolution and its centre voxel."""
    radius = spec.diameter_mm / 2
    spicule_len = radius * 1.2 + 3 if spec.spiculated else 0.0
    reach = radius * 1.4 + spicule_len + 2 * grid.aa
    box = grid.fine_box(centre - reach, centre + reach)
    if spec.spiculated:
        ball = _Ball.draw(rng, centre, radius, int(rng.integers(10, 18)), 0.22, (6, 14))
    else:
        ball = _Ball.draw(rng, centre, radius, int(rng.integers(3, 7)), rng.uniform(0.03, 0.16), (1.5, 4))
    occ = _ball_occupancy(ball, grid, box)
    zb, yb, xb = grid.zf[box[0]], grid.y[box[1]], grid.x[box[2]]
    points = np.stack(np.broadcast_arrays(xb[None, None, :], yb[None, :, None], zb[:, None, None]), -1)
    lung = anatomy.lung_sd_points(points.reshape(-1, 3).astype(np.float32)).reshape(occ.shape)
    occ *= _smooth_clip(lung - 1.0, grid.aa)  # a juxtapleural nodule stops at the pleura
    texture = rng.standard_normal(occ.shape).astype(np.float32)
    solid_hu = rng.normal(30, 12)
    ggo_hu = rng.uniform(-680, -420)
    target = volume[box]
    if spec.density == "solid":
        _blend(target, occ, solid_hu + 6 * texture, True)
    else:
        _blend(target, occ, ggo_hu + 30 * texture, True)
        if spec.density == "part-solid":
            shift = rng.normal(0, 0.12 * radius, 3).astype(np.float32)
            core = _Ball.draw(rng, centre + shift, radius * rng.uniform(0.3, 0.6), 4, 0.12, (1.5, 4))
            _blend(target, _ball_occupancy(core, grid, box) * occ, solid_hu + 6 * texture, True)
    if spec.spiculated:
        strands = _spicules(rng, ball, ggo_hu if spec.density == "ground-glass" else solid_hu, spicule_len)
        strands.paint(volume, grid, raise_only=True)
    # the mask: slice voxels the nodule fills at least half of, and the one holding its centre
    sub = grid.sub
    k0 = box[0].start // sub
    k1 = -(-box[0].stop // sub)
    full = np.zeros(((k1 - k0) * sub,) + occ.shape[1:], np.float32)
    full[box[0].start - k0 * sub: box[0].stop - k0 * sub] = occ
    fraction = full.reshape(k1 - k0, sub, *occ.shape[1:]).mean(1)
    mask = np.zeros((len(grid.z), len(grid.y), len(grid.x)), bool)
    mask[k0:k1, box[1], box[2]] = fraction >= 0.5
    held = np.clip(np.round(grid.voxel(centre)).astype(int), 0, np.array(mask.shape) - 1)
    mask[tuple(held)] = True
    cells = np.argwhere(mask)
    centroid = cells.mean(0)
    nearest = cells[np.argmin(((cells - centroid) ** 2).sum(1))]
    return _NoduleDrawing(mask, tuple(int(v) for v in nearest))


def _spicules(rng: np.random.Generator, ball: _Ball, hu: float, length: float) -> _Tubes:
    """Thin strands radiating from the ball's surface, tapering in three steps."""
    count = int(rng.integers(6, 16))
    dirs = rng.standard_normal((count, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    p0, p1, radii = [], [], []
    for d in dirs:
        reach = length * rng.uniform(0.4, 1.0)
        base = min(0.9, 0.12 * ball.radius + 0.35)
        start = ball.centre + d * ball.radius * 0.8
        for j in range(3):
            bend = rng.normal(0, 0.15, 3)
            end = start + (d + bend) * reach / 3
            p0.append(start)
            p1.append(end)
            radii.append(base * (1 - 0.28 * j))
            start = end
    return _Tubes(np.array(p0, np.float32), np.array(p1, np.float32), np.array(radii, np.float32), hu)


def _lookalikes(rng: np.random.Generator, count: int, anatomy: _Anatomy, grid: _Grid, lung_points: np.ndarray,
                avoid: np.ndarray | None, avoid_mm: float, volume: np.ndarray) -> None:
    """Composite ``count`` nodule look-alikes: calcified granulomas, vessels seen end-on, subpleural scars; each
    placed more than ``avoid_mm`` from ``avoid`` (the nodule's centre) when given."""
    pool = _in_window(lung_points, grid, 6.0)
    if avoid is not None:
        pool = pool[np.linalg.norm(pool - avoid, axis=1) > avoid_mm]
    if not len(pool):
        return
    for _ in range(count):
        kind = rng.choice(("granuloma", "end-on vessel", "scar"))
        p = pool[int(rng.integers(len(pool)))]
        if kind == "granuloma":
            ball = _Ball.draw(rng, p, rng.uniform(1.0, 3.0), 3, 0.05, (1.5, 3))
            box = grid.fine_box(p - 5, p + 5)
            if box is not None:
                _blend(volume[box], _ball_occupancy(ball, grid, box), rng.uniform(350, 1000), True)
        elif kind == "end-on vessel":
            axis = np.array([rng.normal(0, 0.2), rng.normal(0, 0.2), 1.0], np.float32)
            half = rng.uniform(10, 25) * axis / np.linalg.norm(axis)
            _Tubes.chain(np.stack([p - half, p + half]), rng.uniform(1.2, 2.8), _HU_BLOOD).paint(volume, grid, True)
        else:  # a scar: a thin irregular band running from the pleura into the lung
            theta = math.atan2(p[1] - anatomy.by, p[0] - anatomy.bx)
            start = anatomy.wall_point(np.array([theta]), np.array([p[2]]), -1.0)[0]
            inward = np.array([-math.cos(theta), -math.sin(theta), 0], np.float32)
            sideways = np.array([-inward[1], inward[0], rng.normal(0, 0.3)], np.float32)
            points = [start]
            for _ in range(3):
                points.append(points[-1] + inward * rng.uniform(4, 8) + sideways * rng.normal(0, 3))
            _Tubes.chain(np.stack(points), rng.uniform(0.7, 1.5), rng.uniform(-150, 20)).paint(volume, grid, True)


# --------------------------------------------------------------------------------------------------- scanner


def _kernel_mtf(freq: np.ndarray, kernel: str) -> np.ndarray:
    """Modulation transfer function of the reconstruction kernel at ``freq`` cycles/mm (see :data:`_KERNEL_MTF`)."""
    f0, boost = _KERNEL_MTF[kernel]
    u = (freq / f0) ** 2
    return ((1 + boost * u) * np.exp(-math.log(2) * u)).astype(np.float32)


def _scanner(rng: np.random.Generator, slices: np.ndarray, centrality: np.ndarray, cupping: float, scan: ScanSpec,
             grid: _Grid) -> np.ndarray:
    """The scanner: the ideal ``slices`` ``(slices, n, n)`` HU -> int16 HU with cupping (``cupping`` HU deeper
    where ``centrality`` is 1, the body's middle), the kernel's blur, noise shaped like filtered back-projection
    noise (power spectrum: ramp times kernel squared), ``scan.noise_hu`` on average in the body and stronger in its
    middle, and the padding value outside the reconstruction circle."""
    n = scan.size
    slices -= cupping * centrality
    freq = np.hypot(fft.fftfreq(n, scan.pixel_spacing_mm)[:, None], fft.rfftfreq(n, scan.pixel_spacing_mm)[None, :])
    mtf = _kernel_mtf(freq, scan.kernel)
    out = fft.irfft2(fft.rfft2(slices, workers=1) * mtf, s=(n, n), workers=1)
    if scan.noise_hu > 0:
        white = rng.standard_normal((2,) + out.shape[:1] + mtf.shape, dtype=np.float32)
        noise = fft.irfft2((white[0] + 1j * white[1]) * (np.sqrt(freq) * mtf), s=(n, n), workers=1)
        del white
        spread = max(float(noise[:, ::3, ::3].std()), 1e-12)  # of the stationary noise, before the gain
        gain = np.exp(0.45 * centrality)
        body_rms = float(np.sqrt(np.mean(np.square(gain[centrality > 0])))) if (centrality > 0).any() else 1.0
        noise *= gain
        noise *= np.float32(scan.noise_hu / (spread * body_rms))
        out += noise
    out[:, np.hypot(grid.x[None, :], grid.y[:, None]) > grid.fov_radius] = HU_MIN
    np.rint(out, out=out)
    return np.clip(out, HU_MIN, HU_MAX).astype(np.int16)


# --------------------------------------------------------------------------------------------------- render


def _check(case: CaseSpec) -> None:
    scan = case.scan
    if scan.kernel not in KERNELS:
        raise ValueError(f"scan.kernel {scan.kernel!r} is not one of {KERNELS}")
    if scan.size < 16 or scan.slices < 1:
        raise ValueError(f"scan.size ({scan.size}) must be >= 16 and scan.slices ({scan.slices}) >= 1")
    if not (scan.pixel_spacing_mm > 0 and scan.slice_spacing_mm > 0 and scan.noise_hu >= 0):
        raise ValueError(f"scan spacings ({scan.pixel_spacing_mm}, {scan.slice_spacing_mm}) must be positive and "
                         f"scan.noise_hu ({scan.noise_hu}) non-negative")
    if not 0.5 <= case.body_scale <= 1.5:
        raise ValueError(f"body_scale {case.body_scale} outside 0.5..1.5")
    if case.lookalikes < 0:
        raise ValueError(f"lookalikes ({case.lookalikes}) must be non-negative")
    nodule = case.nodule
    if nodule is not None:
        if nodule.density not in DENSITIES or nodule.site not in SITES:
            raise ValueError(f"nodule density {nodule.density!r} / site {nodule.site!r} not in {DENSITIES} / {SITES}")
        if not 1.0 <= nodule.diameter_mm <= 40.0:
            raise ValueError(f"nodule diameter_mm {nodule.diameter_mm} outside 1..40")


def render(case: CaseSpec, rng: np.random.Generator) -> Phantom:
    """Render ``case`` as a chest CT volume ``(slices, size, size)`` int16 HU with its nodule's mask and centre.

    The same ``rng`` state gives the same volume. The nodule mask holds the slice voxels its body (solid and
    ground-glass parts, not the spicules) fills at least half of, plus the voxel holding its centre;
    ``nodule_center_vox`` is the mask voxel nearest the mask's centroid.
    """
    _check(case)
    grid = _Grid.of(case.scan)
    anatomy = _Anatomy(rng, case, grid)
    n, sub, window = len(grid.x), grid.sub, anatomy.window
    volume = np.empty((len(grid.zf), n, n), np.float32)
    centrality = np.zeros((len(grid.z), n, n), np.float32)
    lung_texture = anatomy.lung_texture.slices()[(slice(None),) + window]
    soft_texture = anatomy.soft_texture.slices()[(slice(None),) + window]
    deform = anatomy.deform.slices()[(slice(None),) + window]
    deform *= anatomy.deform_mm
    for k, z in enumerate(grid.z):
        slab = anatomy.slab(float(z), soft_texture[k])
        centrality[k][window] = slab.centrality
        for j in range(k * sub, (k + 1) * sub):
            volume[j] = anatomy.plane(float(grid.zf[j]), slab, lung_texture[k], soft_texture[k], deform[k])
    structures = _structures(rng, anatomy, grid, _lung_test(anatomy, grid, volume))
    structures.paint(volume, grid)
    nodule = case.nodule
    centre = None if nodule is None else _nodule_centre(rng, nodule, anatomy, grid, structures)
    keep_off = 0.0 if nodule is None else nodule.diameter_mm / 2 + 28  # look-alikes stay clear of the nodule
    _lookalikes(rng, case.lookalikes, anatomy, grid, structures.lung_points, centre, keep_off, volume)
    drawing = None if nodule is None else _draw_nodule(rng, nodule, centre, anatomy, grid, volume)
    slices = volume.reshape(len(grid.z), sub, n, n).mean(1)
    del volume
    hu = _scanner(rng, slices, centrality, anatomy.cupping, case.scan, grid)
    if drawing is None:
        return Phantom(hu, None, None)
    return Phantom(hu, drawing.center_vox, drawing.mask)


def _lung_test(anatomy: _Anatomy, grid: _Grid, volume: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Whether mm points ``(N, 3)`` lie in the lungs: read off the rendered thin planes (lung parenchyma is the
    only tissue below -500 HU inside the body before airways are drawn) where they fall in the volume, from the
    implicit surfaces elsewhere."""

    def in_lung(p: np.ndarray) -> np.ndarray:
        index, inside = grid.nearest(p)
        out = volume[index[:, 0], index[:, 1], index[:, 2]] < -500
        out &= np.hypot(p[:, 0], p[:, 1]) < grid.fov_radius  # not the air round the body
        if not inside.all():
            out[~inside] = anatomy.lung_sd_points(p[~inside]) < 1.0
        return out

    return in_lung


@dataclass
class _Structures:
    """The tubes drawn over the anatomy (in painting order) and the random lung points ``(N, 3)`` mm that nodules
    and look-alikes are placed from."""

    mediastinal: _Tubes  # pulmonary trunk and arteries, veins to the left atrium, superior vena cava, arch branches
    oesophagus: _Tubes
    vessels: _Tubes  # the lungs' arteries and veins
    airways: _Tubes
    cartilage: _Tubes
    bones: _Tubes  # ribs, clavicles
    lung_points: np.ndarray

    def paint(self, volume: np.ndarray, grid: _Grid) -> None:
        for layer in (self.mediastinal, self.oesophagus, self.vessels, self.airways, self.cartilage, self.bones):
            layer.paint(volume, grid)

    @property
    def obstacles(self) -> list[_Tubes]:
        """What an intraparenchymal nodule keeps clear of."""
        return [self.mediastinal, self.oesophagus, self.vessels, self.airways]


def _structures(rng: np.random.Generator, anatomy: _Anatomy, grid: _Grid, in_lung: Callable[[np.ndarray], np.ndarray]
                ) -> _Structures:
    """Vessels, airways, oesophagus and bones of the case, from hilar roots found on the implicit surfaces."""
    window = (min(float(grid.zf[0]) - 40, anatomy.z_hilum - 60), max(float(grid.zf[-1]) + 40, anatomy.z_hilum + 60))
    lung_points = _sample_lung(rng, anatomy, 2400, window)
    xm = float(anatomy.xm(anatomy.z_hilum))
    sides = {side: lung_points[np.sign(lung_points[:, 0] - xm) == side] for side in (-1, 1)}
    roots = {}  # hilar roots: the first lung point going out from the midline, a little back in the mediastinum
    for side in (-1, 1):
        for kind, dz, dy in (("artery", 8 + 10 * (side > 0), 0.02), ("vein", -24, -0.12)):
            z = anatomy.z_hilum + dz * anatomy.scale
            y = anatomy.by + dy * anatomy.b0
            xs = xm + side * np.arange(5, 0.9 * anatomy.a0, 2, dtype=np.float32)
            probe = np.stack([xs, np.full_like(xs, y), np.full_like(xs, z)], 1)
            first = int(np.argmax(anatomy.lung_sd_points(probe) < -3))
            roots[side, kind] = probe[first] - np.array([side * 6, 0, 0], np.float32)
    vessels, trunk_radius = _pulmonary_trees(rng, roots, sides, in_lung)
    cartilage, bones = _ribs(rng, anatomy)
    airways = _airway_tree(rng, anatomy, grid, roots, sides, in_lung)
    return _Structures(_mediastinal_vessels(anatomy, grid, roots, trunk_radius), _oesophagus(rng, anatomy, grid),
                       vessels, airways, cartilage, bones, lung_points)


def _pulmonary_trees(rng: np.random.Generator, roots: dict[tuple[int, str], np.ndarray],
                     sides: dict[int, np.ndarray], in_lung: Callable[[np.ndarray], np.ndarray]
                     ) -> tuple[_Tubes, dict[tuple[int, str], float]]:
    """An arterial and a venous tree per lung, each grown towards its own half of the lung's points; the
    segments and each tree's radius at its root."""
    vessels: _Tubes | None = None
    trunk_radius = {}
    for side in (-1, 1):
        half = rng.random(len(sides[side])) < 0.5
        for kind, attractors in (("artery", sides[side][half]), ("vein", sides[side][~half])):
            stem = np.array([side, rng.normal(0.1, 0.2), -0.2], np.float32)
            positions, parents = _grow_tree(rng, in_lung, roots[side, kind], stem / np.linalg.norm(stem), attractors)
            tree, radius = _tree_tubes(positions, parents, rng.uniform(0.45, 0.6), _HU_BLOOD)
            trunk_radius[side, kind] = float(radius[0])
            vessels = tree if vessels is None else vessels + tree
    return vessels, trunk_radius


def _mediastinal_vessels(anatomy: _Anatomy, grid: _Grid, roots: dict[tuple[int, str], np.ndarray],
                         trunk_radius: dict[tuple[int, str], float]) -> _Tubes:
    """Pulmonary trunk and arteries to the hilar roots, veins from them to the left atrium, superior vena cava and
    the three arch branches, up out of the scanned range."""
    s, h, by, b0 = anatomy.scale, anatomy.heart, anatomy.by, anatomy.b0
    xm, z_top = float(anatomy.xm(anatomy.z_hilum)), float(grid.zf[-1]) + 60
    heart = np.array([xm + h["x"], h["y"], h["z"]], np.float32)
    trunk_top = np.array([xm + 10 * s, by - 0.12 * b0, anatomy.z_hilum + 22 * s], np.float32)
    outflow = heart + np.array([-0.1 * h["ax"], -0.6 * h["ay"], 0.6 * h["az"]], np.float32)
    atrium = heart + np.array([-0.25 * h["ax"], 0.65 * h["ay"], 0.25 * h["az"]], np.float32)
    tubes = _Tubes.chain(np.stack([outflow, trunk_top]), 13 * s, _HU_BLOOD)
    for side in (-1, 1):
        tubes += _Tubes.chain(np.stack([trunk_top, roots[side, "artery"]]),
                              max(trunk_radius[side, "artery"], 7 * s), _HU_BLOOD)
        tubes += _Tubes.chain(np.stack([roots[side, "vein"], atrium]),
                              max(trunk_radius[side, "vein"], 5 * s), _HU_BLOOD)
    svc = np.array([[xm - 28 * s, by - 0.25 * b0, h["z"] + 0.5 * h["az"]], [xm - 26 * s, by - 0.2 * b0, z_top]])
    tubes += _Tubes.chain(svc, 9 * s, _HU_BLOOD)
    x_arch, y_arch = float(anatomy.xm(anatomy.z_arch)), by - 0.12 * b0
    for dx, dy, r in ((-6, -8, 6), (4, -2, 5), (12, 6, 5)):
        branch = np.array([[x_arch + dx * s, y_arch + dy * s, anatomy.z_arch + 8 * s],
                           [x_arch + 1.3 * dx * s, y_arch + dy * s, z_top]])
        tubes += _Tubes.chain(branch, r * s, _HU_BLOOD)
    return tubes


def _oesophagus(rng: np.random.Generator, anatomy: _Anatomy, grid: _Grid) -> _Tubes:
    """Behind the trachea, then left and forwards to the stomach; a little air in it now and then."""
    s, xm = anatomy.scale, float(anatomy.xm(anatomy.z_hilum))
    y = anatomy.y_vb - anatomy.rv - 10 * s
    path = np.array([[xm + 4 * s, y, float(grid.zf[-1]) + 60], [xm + 8 * s, y - 4 * s, anatomy.z_hilum - 30],
                     [xm + 16 * s, y - 14 * s, anatomy.domes[1][2] - 20]])
    return _Tubes.chain(path, 7 * s, 38.0, wall=5 * s if rng.random() < 0.4 else 0.0, core_hu=_HU_AIR)


def _airway_tree(rng: np.random.Generator, anatomy: _Anatomy, grid: _Grid, roots: dict[tuple[int, str], np.ndarray],
                 sides: dict[int, np.ndarray], in_lung: Callable[[np.ndarray], np.ndarray]) -> _Tubes:
    """Trachea, main bronchi to the hila, then bronchi split recursively (:func:`_airways`): air in a
    soft-tissue wall."""
    s, xm = anatomy.scale, float(anatomy.xm(anatomy.z_hilum))
    y = anatomy.y_vb - anatomy.rv - 24 * s
    carina = np.array([xm, y + 4, anatomy.z_hilum + 0.12 * anatomy.height], np.float32)
    trachea = np.array([[xm - 2, y - 4, float(grid.zf[-1]) + 60], carina])
    airways = _Tubes.chain(trachea, 10 * s, 45.0, 2.0 * s, _HU_AIR)
    for side in (-1, 1):
        hilum = roots[side, "artery"] + np.array([side * 4, 8, -10 * s], np.float32)
        main = 7.0 * s if side < 0 else 6.0 * s
        airways += _Tubes.chain(np.stack([carina, hilum]), main + 1.5, 45.0, 1.5, _HU_AIR)
        for start, end, r in _airways(rng, hilum, sides[side], main, 6, in_lung):
            wall = max(0.6, 0.22 * r)
            airways += _Tubes.chain(np.stack([start, end]), r + wall, 45.0, wall, _HU_AIR)
    return airways


def _ribs(rng: np.random.Generator, anatomy: _Anatomy) -> tuple[_Tubes, _Tubes]:
    """Costal cartilage, and bones: twelve pairs of ribs (cortex round marrow) following the chest wall from the
    spine and falling forwards, and the clavicles."""
    s, h, zl = anatomy.scale, anatomy.height, anatomy.z_low
    u = np.linspace(0, 1, 16, dtype=np.float32)
    spacing = rng.uniform(0.078, 0.088)
    cortex_hu, marrow_hu, cartilage_hu = rng.uniform(750, 1100), rng.uniform(180, 300), rng.uniform(90, 160)
    bones: _Tubes | None = None
    cartilage: _Tubes | None = None
    for i in range(12):
        z_back = zl + h * (0.95 - spacing * i) + rng.normal(0, 2)
        # angle from the back's midline where the bony rib ends: near the sternum for true ribs (1-7),
        # short of it for false ones (8-10), at the flank for floating ones (11-12)
        reach = np.pi - (0.35 + 0.03 * i if i < 7 else (0.9 if i < 10 else np.pi / 2 - 0.3))
        drop = h * (0.3 + 0.012 * i) * reach / 2.6
        radius = (3.2 if i == 0 else 4.2) * s * rng.uniform(0.9, 1.1)
        for side in (-1, 1):
            theta = np.pi / 2 + side * (0.3 + u * (reach - 0.3))
            z = z_back + 4 * s * np.sin(u * np.pi * 0.5) - drop * u**1.2
            rib = _Tubes.chain(anatomy.wall_point(theta, z, radius + 0.8), radius, cortex_hu, 1.3 * s, marrow_hu)
            bones = rib if bones is None else bones + rib
            if i < 7:  # costal cartilage on to the sternum's edge, rising a little
                ct = np.linspace(float(theta[-1]), np.pi / 2 + side * (np.pi - 0.13), 5, dtype=np.float32)
                cz = np.linspace(float(z[-1]), float(z[-1]) + h * 0.02 * i, 5, dtype=np.float32)
                piece = _Tubes.chain(anatomy.wall_point(ct, cz, radius + 0.5), radius * 0.9, cartilage_hu)
                cartilage = piece if cartilage is None else cartilage + piece
    for side in (-1, 1):  # clavicles: from the manubrium outwards, in front of the first ribs
        ct = np.pi / 2 + side * np.linspace(np.pi * 0.95, np.pi * 0.55, 8, dtype=np.float32)
        cz = zl + h * np.linspace(0.86, 0.93, 8, dtype=np.float32)
        radius = 6.5 * s
        bones += _Tubes.chain(anatomy.wall_point(ct, cz, radius + 10 * s), radius, cortex_hu, 1.8 * s, marrow_hu)
    return cartilage, bones
