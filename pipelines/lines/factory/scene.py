"""Third factory part renderer ("scene"): a small 3-D ray-caster of parts on a conveyor.

Written independently of the ``paint`` (:mod:`.synth`) and ``shaded`` (:mod:`.shaded`) renderers -- it shares
only their constants and interface -- so that a model trained on two renderers can be tested on the third.

Geometry: each part (plate, flange, washer, bracket, pipe, stepped shaft, housing) is a union of analytic solids
lying on the conveyor plane ``z = 0`` (millimetres): prisms extruded from 2-D signed-distance profiles (rounded
rectangles, discs, rings, bolt circles, holes, bevelled top edges), axis-aligned slabs and cylinders. A perspective
pinhole camera, tilted up to 35 degrees, casts one ray per pixel; the rays are intersected with every solid in
numpy (prism caps exactly, prism walls by bracketing the profile's sign between a few height levels, slabs and
cylinders in closed form) and the nearest hit is kept.

Shading in linear RGB: Lambert plus anisotropic GGX specular (Schlick Fresnel, Smith shadowing) for one to three
lights of different kinds and colour temperatures (ring light at the lens, dome, raking, spot, key), glossy
reflections of a procedural studio / factory environment map blurred by roughness, soft cast shadows marched
through the solids' 3-D distance fields at quarter resolution, and ambient occlusion in holes and at the belt.
Materials are procedural or built from scikit-image's CC0 photos, mapped through each surface's (u, v)
parameterisation in millimetres. The part is shaded per pixel; the matte belt (rubber, fabric, rollers, mesh or
slats, with side rails and sometimes a tray) at half resolution for its albedo and quarter resolution for its light.

Defects and benign marks are *decals* in the part's primary surface (u, v) space -- height, colour, roughness and
metalness layers -- so that they foreshorten, shade and glint with the surface: a dent bends the normals and the
reflections, a scratch is a groove that exposes bare material, a crack a deep dark fissure with a lit lip,
contamination a foreign layer with its own colour, gloss and height. Boxes come from the rendered instance masks.

The camera works in linear light: exposure, white-balance error, vignetting, barrel/pincushion distortion with
lateral chromatic aberration and rolling-shutter skew, defocus and motion blur, an RGGB mosaic with shot and read
noise, demosaicing, a tone curve and JPEG re-encoding.

Random streams: :func:`render_part_scene` draws five seeds from ``rng`` first -- design, pose jitter, nuisance,
defects, sensor -- so the same ``rng`` state rendered as "good" and as a defect gives the same part, marks and
noise, and only the defect differs. With ``product=K`` the design (shape, material, pose, belt, lights, camera)
comes from ``default_rng([K, 7919])`` instead and ``rng`` only moves the part a little.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from skimage import data as skdata

from pipelines.lines.factory.synth import DEFECTS, Box

Sdf2 = Callable[[np.ndarray, np.ndarray], np.ndarray]
F32 = np.float32
_TEX = 512  # texture bank tile size
_KINDS = ("plate", "flange", "washer", "bracket", "pipe", "shaft", "housing")
_MATERIALS = {"machined": 0.12, "brushed": 0.1, "cast": 0.1, "anodised": 0.08, "galvanised": 0.07, "painted": 0.13,
              "powder": 0.08, "plastic": 0.1, "rubber": 0.04, "ceramic": 0.05, "wood": 0.04, "pcb": 0.03,
              "photo": 0.06}
_BELTS = ("rubber", "fabric", "rollers", "mesh", "slats")


# ----------------------------------------------------------------------------------------------------------------
# Texture bank


def _spectral(rng: np.random.Generator, beta: float, stretch: float = 1.0) -> np.ndarray:
    """Tileable (512, 512) float32 noise, zero mean and unit std, power ~ 1/f^(2 beta); ``stretch`` streaks it in x."""
    fx = np.fft.fftfreq(_TEX)[None, :] * stretch
    fy = np.fft.fftfreq(_TEX)[:, None]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    spec = (rng.standard_normal((_TEX, _TEX)) + 1j * rng.standard_normal((_TEX, _TEX))) / f**beta
    spec[0, 0] = 0.0
    img = np.fft.ifft2(spec).real
    return ((img - img.mean()) / img.std()).astype(F32)


def _photo(name: str) -> np.ndarray:
    """A CC0 scikit-image photo as a mirrored, tileable (512, 512) float32 detail map, zero mean and unit std."""
    img = getattr(skdata, name)()
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    img = cv2.resize(img.astype(F32) / 255.0, (_TEX // 2, _TEX // 2), interpolation=cv2.INTER_AREA)
    tile = np.block([[img, img[:, ::-1]], [img[::-1], img[::-1, ::-1]]])
    return ((tile - tile.mean()) / (tile.std() + 1e-6)).astype(F32)


@functools.cache
def _bank() -> dict[str, np.ndarray]:
    """Shared (512, 512) float32 detail maps: photos, spectral noises, galvanised spangle and PCB traces."""
    rng = np.random.default_rng(20_251_107)
    bank = {name: _photo(name) for name in ("brick", "grass", "gravel", "moon", "camera", "text")}
    bank["fbm"] = _spectral(rng, 1.0)
    bank["fine"] = _spectral(rng, 0.55)
    bank["blotch"] = _spectral(rng, 1.5)
    bank["brushed"] = _spectral(rng, 0.8, stretch=40.0)
    cells = cv2.resize(rng.standard_normal((20, 20)).astype(F32), (_TEX, _TEX), interpolation=cv2.INTER_NEAREST)
    grid = np.mgrid[0:_TEX, 0:_TEX].astype(F32)
    bank["cells"] = cv2.remap(cells, grid[1] + 9 * bank["blotch"], grid[0] + 9 * bank["fbm"], cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_WRAP)
    pcb = np.zeros((_TEX, _TEX), np.uint8)
    for _ in range(60):
        x, y = rng.integers(0, _TEX, 2)
        pts = [(x, y)]
        for _ in range(3):
            dx, dy = [(1, 0), (0, 1)][rng.integers(2)]
            run = rng.integers(20, 120)
            pts.append((pts[-1][0] + dx * run, pts[-1][1] + dy * run))
        cv2.polylines(pcb, [np.array(pts, np.int32)], False, 255, int(rng.integers(3, 8)))
        cv2.circle(pcb, pts[-1], int(rng.integers(4, 8)), 255, -1)
    bank["pcb"] = pcb.astype(F32) / 255.0
    for name in list(bank):  # relief slopes (per texel) of each map, for bump mapping
        tex = bank[name]
        bank[name + "/slope"] = np.dstack([np.roll(tex, -1, 1) - np.roll(tex, 1, 1),
                                           np.roll(tex, -1, 0) - np.roll(tex, 1, 0)]) / 2
    return bank


def warm_up() -> None:
    """Build the shared texture bank once (cheap when already built), e.g. before forking worker processes."""
    _bank()


def _sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Bilinear lookup of a tiled texture at (h, w) surface coordinates ``(u, v)`` (mm) times ``scale`` (texels/mm)."""
    mx = np.mod(u * scale, _TEX).astype(F32)
    my = np.mod(v * scale, _TEX).astype(F32)
    return cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def _to_linear(rgb: np.ndarray) -> np.ndarray:
    """sRGB-ish colour(s) in [0, 1] to linear."""
    return np.asarray(rgb, F32) ** 2.2


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """A linear RGB (3,) colour from hue [0, 1), saturation and value."""
    rgb = cv2.cvtColor(np.array([[[h * 180, s * 255, v * 255]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0] / 255.0
    return _to_linear(rgb)


def _kelvin(k: float) -> np.ndarray:
    """Linear RGB (3,) of a black body at ``k`` kelvin, mean 1."""
    t = k / 100.0
    r = 255.0 if t <= 66 else 329.7 * (t - 60) ** -0.1332
    g = 99.47 * np.log(t) - 161.12 if t <= 66 else 288.12 * (t - 60) ** -0.0755
    b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.52 * np.log(t - 10) - 305.04)
    lin = _to_linear(np.clip([r, g, b], 1, 255) / 255.0)
    return lin / lin.mean()


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at ``e0`` to 1 at ``e1``."""
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


def _norm(v: np.ndarray) -> np.ndarray:
    """Unit vectors along axis 0 of (3, ...) arrays."""
    return v / np.sqrt(np.maximum((v * v).sum(0), 1e-12))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product of (3, ...) arrays (or (3, 1, 1) broadcasts) along axis 0."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


# ----------------------------------------------------------------------------------------------------------------
# Geometry: solids in the part frame (mm, z up, resting on the belt at z = 0)


@dataclass
class _Hit:
    """Nearest-hit buffers over an (h, w) pixel window; ``cls`` 0 none, 1 primary surface, 2 other surface."""

    t: np.ndarray
    n: np.ndarray  # (3, h, w) part-frame normal
    u: np.ndarray
    v: np.ndarray
    tv: np.ndarray  # (3, h, w) surface direction of increasing v
    cls: np.ndarray
    ao: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> _Hit:
        z = np.zeros(shape, F32)
        return cls(np.full(shape, np.inf, F32), np.zeros((3, *shape), F32), z.copy(), z.copy(),
                   np.zeros((3, *shape), F32), np.zeros(shape, np.uint8), np.ones(shape, F32))

    def take(self, other: _Hit, win: tuple[slice, slice]) -> None:
        """Keep ``other``'s hits, cast over the sub-window ``win``, where they are nearer."""
        m = other.t < self.t[win]
        for name in ("t", "u", "v", "cls", "ao"):
            np.copyto(getattr(self, name)[win], getattr(other, name), where=m)
        np.copyto(self.n[:, win[0], win[1]], other.n, where=m)
        np.copyto(self.tv[:, win[0], win[1]], other.tv, where=m)


def _sd_round_rect(hx: float, hy: float, r: float, cx: float = 0.0, cy: float = 0.0) -> Sdf2:
    """Signed distance to a rounded rectangle of half sizes ``hx, hy`` and corner radius ``r``."""
    def sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        qx, qy = np.abs(x - cx) - hx + r, np.abs(y - cy) - hy + r
        return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r
    return sdf


def _sd_with_holes(outer: Sdf2, holes: list[tuple[float, float, float]], corners: tuple[float, float, float] | None,
                   bolt: tuple[int, float, float] | None) -> Sdf2:
    """``outer`` minus round holes ``(cx, cy, r)``, four mirrored corner holes ``(|cx|, |cy|, r)`` and a bolt circle
    ``(count, radius, hole radius)``."""
    if bolt is not None:
        count, radius, bolt_r = bolt
        angles = 2 * np.pi * np.arange(count) / count
        centres_x, centres_y = (radius * np.cos(angles)).astype(F32), (radius * np.sin(angles)).astype(F32)

    def sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        s = outer(x, y)
        for cx, cy, r in holes:
            s = np.maximum(s, r - np.hypot(x - cx, y - cy))
        if corners is not None:
            cx, cy, r = corners
            s = np.maximum(s, r - np.hypot(np.abs(x) - cx, np.abs(y) - cy))
        if bolt is not None:  # the nearest hole by angle
            k = np.rint(np.arctan2(y, x) * (count / (2 * np.pi))).astype(np.intp) % count
            s = np.maximum(s, bolt_r - np.hypot(x - centres_x[k], y - centres_y[k]))
        return s
    return sdf


@dataclass
class _Prism:
    """A 2-D profile extruded over ``z0..z1``; caps exact, walls bracketed between ``levels`` height steps."""

    sdf: Sdf2
    z0: float
    z1: float
    xy: tuple[float, float, float, float]  # footprint bounds x0, x1, y0, y1
    bevel: float = 0.0
    levels: int = 1
    primary: bool = True

    @property
    def box(self) -> tuple[float, float, float, float, float]:
        return (*self.xy, self.z1)

    def sdf3(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(self.sdf(x, y), np.maximum(z - self.z1, self.z0 - z))

    def _grad(self, x: np.ndarray, y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = 0.05
        gx, gy = (self.sdf(x + e, y) - s) / e, (self.sdf(x, y + e) - s) / e
        g = np.sqrt(gx * gx + gy * gy) + 1e-6
        return gx / g, gy / g

    def trace(self, o: np.ndarray, d: np.ndarray) -> _Hit:
        hit = _Hit.empty(d.shape[1:])
        done = np.zeros(d.shape[1:], bool)
        t_prev = s_prev = None
        for k, z in enumerate(np.linspace(self.z1, self.z0, self.levels + 1)):
            t = (z - o[2]) / d[2]
            x, y = o[0] + t * d[0], o[1] + t * d[1]
            s = self.sdf(x, y)
            if k == 0:
                done = s < 0
                hit.t[done], hit.u[done], hit.v[done] = t[done], x[done], y[done]
                hit.n[2][done] = 1.0
                hit.tv[1][done] = 1.0
                hit.cls[done] = 1 if self.primary else 2
                edge = done & (s > -self.bevel)
                if edge.any():
                    xe, ye, se = x[edge], y[edge], s[edge]
                    gx, gy = self._grad(xe, ye, se)
                    tilt = (1 + se / self.bevel) * 0.8
                    hit.n[0][edge], hit.n[1][edge], hit.n[2][edge] = gx * np.sin(tilt), gy * np.sin(tilt), np.cos(tilt)
            else:
                wall = ~done & (s < 0)
                if wall.any():
                    a = s_prev[wall] / (s_prev[wall] - s[wall])
                    tw = t_prev[wall] + a * (t[wall] - t_prev[wall])
                    xw, yw = o[0] + tw * d[0][wall], o[1] + tw * d[1][wall]
                    zw = o[2] + tw * d[2][wall]
                    gx, gy = self._grad(xw, yw, self.sdf(xw, yw))
                    hit.t[wall], hit.u[wall], hit.v[wall] = tw, xw - yw, zw
                    hit.n[0][wall], hit.n[1][wall] = gx, gy
                    hit.tv[2][wall] = 1.0
                    hit.cls[wall] = 2
                    hit.ao[wall] = 0.45 + 0.55 * np.clip((zw - self.z0) / max(self.z1 - self.z0, 1e-3), 0, 1)
                    done |= wall
            t_prev, s_prev = t, s
        return hit


@dataclass
class _Slab:
    """An axis-aligned box ``lo..hi`` (3,) in the part frame."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def box(self) -> tuple[float, float, float, float, float]:
        return float(self.lo[0]), float(self.hi[0]), float(self.lo[1]), float(self.hi[1]), float(self.hi[2])

    def sdf3(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        c, h = (self.lo + self.hi) / 2, (self.hi - self.lo) / 2
        return np.maximum(np.maximum(np.abs(x - c[0]) - h[0], np.abs(y - c[1]) - h[1]), np.abs(z - c[2]) - h[2])

    def trace(self, o: np.ndarray, d: np.ndarray) -> _Hit:
        hit = _Hit.empty(d.shape[1:])
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (self.lo[:, None, None] - o[:, None, None]) / d
            t2 = (self.hi[:, None, None] - o[:, None, None]) / d
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        tn, tf = tmin.max(0), tmax.min(0)
        ok = (tn < tf) & (tn > 0)
        axis = tmin.argmax(0)
        hit.t[ok] = tn[ok]
        p = o[:, None, None] + tn * d
        for i in range(3):
            m = ok & (axis == i)
            hit.n[i][m] = -np.sign(d[i][m])
        hit.u[ok] = (p[0] + p[1])[ok]
        hit.v[ok] = np.where(axis == 2, p[1] - p[0], p[2])[ok]
        hit.tv[2][ok] = 1.0
        hit.cls[ok] = 2
        return hit


@dataclass
class _Cylinder:
    """A cylinder along part x over ``x0..x1``, axis at ``(yc, zc)``, radius ``r``, bore ``ri`` (0: solid)."""

    x0: float
    x1: float
    yc: float
    zc: float
    r: float
    ri: float = 0.0
    vscale: float = 1.0  # v = vscale * angle from the top (mm at the largest radius)

    @property
    def box(self) -> tuple[float, float, float, float, float]:
        return self.x0, self.x1, self.yc - self.r, self.yc + self.r, self.zc + self.r

    def sdf3(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(np.hypot(y - self.yc, z - self.zc) - self.r, np.maximum(self.x0 - x, x - self.x1))

    def trace(self, o: np.ndarray, d: np.ndarray) -> _Hit:
        hit = _Hit.empty(d.shape[1:])
        oy, oz = o[1] - self.yc, o[2] - self.zc
        a = d[1] * d[1] + d[2] * d[2] + 1e-12
        bh = oy * d[1] + oz * d[2]
        disc = bh * bh - a * (oy * oy + oz * oz - self.r**2)
        t = (-bh - np.sqrt(np.maximum(disc, 0))) / a
        x = o[0] + t * d[0]
        side = (disc > 0) & (x >= self.x0) & (x <= self.x1) & (t > 0)
        if self.ri > 0:  # the bore's far wall, seen through an open end
            disc_i = bh * bh - a * (oy * oy + oz * oz - self.ri**2)
            ti = (-bh + np.sqrt(np.maximum(disc_i, 0))) / a
            xi = o[0] + ti * d[0]
            bore = (disc_i > 0) & (xi >= self.x0) & (xi <= self.x1) & ~side
            yb, zb = oy + ti[bore] * d[1][bore], oz + ti[bore] * d[2][bore]
            hit.t[bore], hit.u[bore], hit.v[bore] = ti[bore], xi[bore], np.arctan2(yb, zb) * self.ri
            hit.n[1][bore], hit.n[2][bore] = -yb / self.ri, -zb / self.ri
            hit.tv[0][bore] = 1.0
            hit.cls[bore], hit.ao[bore] = 2, 0.25
        for xc, sign in ((self.x0, -1.0), (self.x1, 1.0)):
            with np.errstate(divide="ignore", invalid="ignore"):
                tc = (xc - o[0]) / d[0]
            yy, zz = oy + tc * d[1], oz + tc * d[2]
            rr = yy * yy + zz * zz
            cap = (rr < self.r**2) & (rr >= self.ri**2) & (tc > 0) & (sign * d[0] < 0) & (tc < hit.t)
            hit.t[cap], hit.u[cap], hit.v[cap] = tc[cap], yy[cap], zz[cap]
            hit.n[:, cap] = 0.0
            hit.n[0][cap] = sign
            hit.tv[:, cap] = 0.0
            hit.tv[2][cap] = 1.0
            hit.cls[cap], hit.ao[cap] = 2, 1.0
        ys, zs = oy + t[side] * d[1][side], oz + t[side] * d[2][side]
        hit.t[side], hit.u[side] = t[side], x[side]
        hit.v[side] = np.arctan2(ys, zs) * self.vscale
        hit.n[:, side] = 0.0
        hit.n[1][side], hit.n[2][side] = ys / self.r, zs / self.r
        hit.tv[:, side] = 0.0
        hit.tv[1][side], hit.tv[2][side] = zs / self.r, -ys / self.r
        hit.cls[side], hit.ao[side] = 1, 1.0
        return hit


@dataclass
class _Part:
    """A part's solids and the extent ``(u0, u1, v0, v1)`` (mm) of its primary surface's decal space."""

    kind: str
    solids: list
    extent: tuple[float, float, float, float]
    bounds: tuple[float, float, float, float]  # x0, x1, y0, y1 of the footprint
    height: float
    radius: float  # bounding radius in the xy plane
    grain: str  # machining-mark direction: "linear", "radial" (turned face) or "around" (turned shaft)


def _design_part(rng: np.random.Generator) -> _Part:
    """A random part of one of the kinds in ``_KINDS``, sized 60..170 mm."""
    kind = str(rng.choice(_KINDS, p=[0.2, 0.16, 0.1, 0.14, 0.12, 0.12, 0.16]))
    size = rng.uniform(60, 170)
    if kind in ("plate", "bracket", "housing"):
        hx, hy = size / 2, size / 2 * rng.uniform(0.45, 1.0)
        thick = rng.uniform(3, 10) if kind != "housing" else rng.uniform(18, 45)
        holes: list[tuple[float, float, float]] = []
        corners = None
        if kind != "housing" and rng.random() < 0.75:
            m = rng.uniform(0.12, 0.2)
            corners = (hx * (1 - m * 1.4), hy * (1 - m * 2), rng.uniform(2.5, 7))
        if kind == "plate" and rng.random() < 0.4:
            hole = rng.uniform(5, max(5.0, 0.3 * hy))  # a narrow plate's: 5 mm
            holes.append((rng.uniform(-0.3, 0.3) * hx, rng.uniform(-0.3, 0.3) * hy, hole))
        corner = rng.uniform(0.5, 0.35 * hy)
        outline = _sd_with_holes(_sd_round_rect(hx, hy, corner), holes, corners, None)
        base = _Prism(outline, 0.0, thick, (-hx, hx, -hy, hy), bevel=rng.uniform(0.6, 2.5),
                      levels=1 if thick < 12 else 4)
        solids: list = [base]
        if kind == "bracket":
            w = rng.uniform(3, 8)
            tall = rng.uniform(0.3, 0.7) * size
            sides = (-1, 1) if rng.random() < 0.4 else (1,)
            for sx in sides:
                x_in = sx * hx - sx * w
                solids.append(_Slab(np.array([min(x_in, sx * hx), -hy, 0], F32),
                                    np.array([max(x_in, sx * hx), hy, tall], F32)))
        elif kind == "housing" or rng.random() < 0.35:
            r = rng.uniform(0.12, 0.3) * min(hx, hy)
            cx, cy = rng.uniform(-0.4, 0.4) * hx, rng.uniform(-0.3, 0.3) * hy
            boss = _sd_round_rect(r, r, r, cx, cy) if rng.random() < 0.6 else _sd_round_rect(r * 1.6, r, 2, cx, cy)
            box = (cx - 1.6 * r, cx + 1.6 * r, cy - r, cy + r)
            solids.append(_Prism(boss, 0.0, thick + rng.uniform(4, 15), box, bevel=1.0, levels=3))
        top = max(s.z1 if isinstance(s, _Prism) else float(s.hi[2]) for s in solids)
        return _Part(kind, solids, (-hx, hx, -hy, hy), (-hx, hx, -hy, hy), top, float(np.hypot(hx, hy)), "linear")
    if kind in ("flange", "washer"):
        rad = size / 2
        bore = rng.uniform(0.15, 0.3) * rad if kind == "flange" else rng.uniform(0.35, 0.65) * rad
        thick = rng.uniform(4, 14) if kind == "flange" else rng.uniform(1.5, 5)
        bolt = (int(rng.integers(3, 9)), rad * rng.uniform(0.68, 0.8), rad * rng.uniform(0.05, 0.09))
        ring = lambda x, y: np.maximum(np.hypot(x, y) - rad, bore - np.hypot(x, y))  # noqa: E731
        solids = [_Prism(_sd_with_holes(ring, [], None, bolt if kind == "flange" else None), 0.0, thick,
                         (-rad, rad, -rad, rad), bevel=rng.uniform(0.6, 2.0), levels=1)]
        if kind == "flange" and rng.random() < 0.7:
            hub = rng.uniform(bore + 6, 0.55 * rad)
            hub_sdf = lambda x, y: np.maximum(np.hypot(x, y) - hub, bore - np.hypot(x, y))  # noqa: E731
            solids.append(_Prism(hub_sdf, 0.0, thick + rng.uniform(6, 25), (-hub, hub, -hub, hub), bevel=1.0,
                                 levels=3))
        top = max(s.z1 for s in solids)
        return _Part(kind, solids, (-rad, rad, -rad, rad), (-rad, rad, -rad, rad), top, rad, "radial")
    length = size
    if kind == "pipe":
        r = rng.uniform(0.12, 0.3) * length
        solids = [_Cylinder(-length / 2, length / 2, 0.0, r, r, r * rng.uniform(0.7, 0.9), vscale=r)]
        return _Part(kind, solids, (-length / 2, length / 2, -np.pi * r, np.pi * r), (-length / 2, length / 2, -r, r),
                     2 * r, float(np.hypot(length / 2, r)), "around")
    cuts = np.sort(rng.uniform(-length / 2, length / 2, int(rng.integers(1, 4))))
    edges = np.concatenate([[-length / 2], cuts, [length / 2]])
    radii = rng.uniform(0.1, 0.24, len(edges) - 1) * length
    rmax = float(radii.max())
    solids = [_Cylinder(float(a), float(b), 0.0, rmax, float(r), vscale=rmax)
              for a, b, r in zip(edges[:-1], edges[1:], radii)]
    return _Part(kind, solids, (-length / 2, length / 2, -np.pi * rmax, np.pi * rmax),
                 (-length / 2, length / 2, -rmax, rmax), 2 * rmax,
                 float(np.hypot(length / 2, rmax)), "around")


# ----------------------------------------------------------------------------------------------------------------
# Materials, lights, environment, camera


@dataclass
class _Material:
    """Surface appearance: linear albedo (3,), metalness, GGX roughness, anisotropy and detail maps."""

    name: str
    albedo: np.ndarray
    metal: float
    rough: float
    aniso: float
    tex: str  # bank map varying the albedo
    tex_amp: float
    tex_scale: float  # texels per mm
    bump_amp: float  # slope of the micro-relief
    under: np.ndarray  # colour exposed by a scratch
    under_metal: float


def _design_material(rng: np.random.Generator) -> _Material:
    """A random material from ``_MATERIALS``."""
    name = str(rng.choice(list(_MATERIALS), p=list(_MATERIALS.values())))
    grey = lambda lo, hi: np.full(3, rng.uniform(lo, hi), F32) * rng.uniform(0.96, 1.04, 3).astype(F32)  # noqa: E731
    steel = grey(0.5, 0.7)
    paint = _hsv(rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.3, 0.85))
    m = dict(name=name, albedo=paint, metal=0.0, rough=0.4, aniso=0.0, tex="fbm", tex_amp=0.05,
             tex_scale=rng.uniform(1.5, 4), bump_amp=0.02, under=steel, under_metal=1.0)
    if name == "machined":
        m.update(albedo=grey(0.55, 0.8), metal=1.0, rough=rng.uniform(0.12, 0.3), aniso=rng.uniform(0.5, 0.85),
                 tex="brushed", tex_amp=0.05, bump_amp=0.015, under=grey(0.75, 0.9))
    elif name == "brushed":
        m.update(albedo=grey(0.5, 0.75), metal=1.0, rough=rng.uniform(0.2, 0.4), aniso=rng.uniform(0.7, 0.95),
                 tex="brushed", tex_amp=0.12, bump_amp=0.03, under=grey(0.75, 0.9))
    elif name == "cast":
        m.update(albedo=grey(0.3, 0.5), metal=1.0, rough=rng.uniform(0.45, 0.75),
                 tex=str(rng.choice(["gravel", "moon"])), tex_amp=0.15, tex_scale=rng.uniform(1, 2.5), bump_amp=0.06,
                 under=grey(0.6, 0.8))
    elif name == "anodised":
        tint = [_hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.8)), grey(0.03, 0.07), grey(0.6, 0.75)]
        m.update(albedo=tint[rng.integers(3)], metal=1.0, rough=rng.uniform(0.25, 0.45), aniso=rng.uniform(0, 0.5),
                 tex="fine", tex_amp=0.04, under=grey(0.7, 0.85))
    elif name == "galvanised":
        m.update(albedo=grey(0.5, 0.7), metal=1.0, rough=rng.uniform(0.25, 0.45), tex="cells", tex_amp=0.18,
                 tex_scale=rng.uniform(1, 3), bump_amp=0.02, under=grey(0.35, 0.5))
    elif name in ("painted", "powder"):
        m.update(rough=rng.uniform(0.2, 0.45) if name == "painted" else rng.uniform(0.55, 0.8),
                 tex="fine", tex_amp=0.03, bump_amp=0.03 if name == "painted" else 0.07)
    elif name == "plastic":
        m.update(rough=rng.uniform(0.3, 0.6), tex="fine", tex_amp=0.03, under=np.clip(paint * 1.8 + 0.15, 0, 1),
                 under_metal=0.0)
    elif name == "rubber":
        m.update(albedo=grey(0.02, 0.06), rough=rng.uniform(0.65, 0.9), tex="gravel", tex_amp=0.2, bump_amp=0.05,
                 under=grey(0.12, 0.2), under_metal=0.0)
    elif name == "ceramic":
        m.update(albedo=_to_linear(np.array([0.92, 0.9, 0.85]) * rng.uniform(0.85, 1.0)), rough=rng.uniform(0.08, 0.7),
                 tex="fine", tex_amp=0.02, under=grey(0.8, 0.9), under_metal=0.0)
    elif name == "wood":
        m.update(albedo=_hsv(rng.uniform(0.05, 0.1), rng.uniform(0.4, 0.7), rng.uniform(0.45, 0.8)),
                 rough=rng.uniform(0.5, 0.75), tex="brushed", tex_amp=0.35, tex_scale=rng.uniform(0.5, 1.2),
                 under=_hsv(0.09, 0.35, 0.85), under_metal=0.0)
    elif name == "pcb":
        m.update(albedo=_hsv(rng.uniform(0.3, 0.4), rng.uniform(0.6, 0.9), rng.uniform(0.25, 0.5)), tex="pcb",
                 tex_amp=0.9, tex_scale=rng.uniform(2, 4), rough=rng.uniform(0.25, 0.4),
                 under=_hsv(0.1, 0.3, 0.8), under_metal=0.0)
    else:  # photo-textured composite / sintered surface
        m.update(albedo=_hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.35, 0.8)),
                 tex=str(rng.choice(["brick", "grass", "gravel", "moon", "camera", "text"])),
                 tex_amp=rng.uniform(0.15, 0.35), tex_scale=rng.uniform(1, 4), rough=rng.uniform(0.4, 0.8),
                 bump_amp=0.05, under=grey(0.7, 0.85), under_metal=0.0)
    m["albedo"] = np.asarray(m["albedo"], F32)
    m["under"] = np.asarray(m["under"], F32)
    return _Material(**m)


@dataclass
class _Light:
    """A light in world coordinates: ``kind`` "dir" (``vec`` towards it), "point"/"spot" (``vec`` its position),
    "ring" (at the lens) or "dome" (sky); ``rgb`` its linear colour times intensity."""

    kind: str
    vec: np.ndarray
    rgb: np.ndarray
    aim: np.ndarray | None = None  # spot axis (unit, from the light)
    cone: float = 0.0  # spot half angle cosine
    soft: float = 0.05  # shadow penumbra per mm of occluder distance


def _design_lights(rng: np.random.Generator, cam_pos: np.ndarray, scale: float) -> list[_Light]:
    """One to three lights of different kinds and colour temperatures around a part of size ``scale`` mm."""
    kinds = rng.choice(["ring", "dome", "raking", "spot", "key"], size=int(rng.integers(1, 4)), replace=False,
                       p=[0.22, 0.2, 0.2, 0.16, 0.22])
    lights = []
    for i, kind in enumerate(kinds):
        rgb = _kelvin(rng.uniform(2700, 7500)) * rng.uniform(0.6, 1.0) * (1.0 if i == 0 else rng.uniform(0.25, 0.7))
        az = rng.uniform(0, 2 * np.pi)
        if kind in ("raking", "key"):
            el = np.radians(rng.uniform(6, 22) if kind == "raking" else rng.uniform(35, 80))
            vec = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)], F32)
            lights.append(_Light("dir", vec, rgb * 2.5, soft=rng.uniform(0.01, 0.08)))
        elif kind == "spot":
            pos = np.array([np.cos(az) * scale * 2, np.sin(az) * scale * 2, scale * rng.uniform(3, 6)], F32)
            aim = -pos / np.linalg.norm(pos) + rng.normal(0, 0.08, 3).astype(F32)
            lights.append(_Light("spot", pos, rgb * 3.0, aim / np.linalg.norm(aim), np.cos(np.radians(
                rng.uniform(12, 30))), soft=rng.uniform(0.02, 0.06)))
        elif kind == "ring":
            lights.append(_Light("ring", cam_pos.astype(F32), rgb * 2.2))
        else:
            lights.append(_Light("dome", np.zeros(3, F32), rgb * 0.7))
    return lights


def _environment(rng: np.random.Generator) -> list[np.ndarray]:
    """A procedural lat-long (64, 128, 3) studio or factory environment and three blurrier copies."""
    h, w = 64, 128
    theta = ((np.arange(h) + 0.5) / h * np.pi)[:, None]
    up = np.cos(theta)
    sky, floor = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0, 0.3), rng.uniform(0.3, 0.7)), _hsv(
        rng.random(), rng.uniform(0, 0.4), rng.uniform(0.1, 0.35))
    env = (sky * (0.25 + 0.75 * np.clip(up, 0, 1))[..., None] + floor * np.clip(-up, 0, 1)[..., None]).astype(F32)
    env = np.broadcast_to(env, (h, w, 3)).copy()
    factory = rng.random() < 0.5
    for _ in range(int(rng.integers(2, 7)) if not factory else int(rng.integers(6, 16))):
        r0 = int(rng.integers(2, 26))
        c0 = int(rng.integers(0, w))
        rh, cw = (int(rng.integers(1, 3)), int(rng.integers(6, 20))) if factory else (int(rng.integers(4, 14)),
                                                                                      int(rng.integers(5, 18)))
        cols = np.arange(c0, c0 + cw) % w
        env[r0:r0 + rh, cols] += _kelvin(rng.uniform(3000, 7000)) * rng.uniform(2, 8)
    for _ in range(int(rng.integers(0, 5))):  # dark structures: gantries, people, machines
        r0, c0 = int(rng.integers(10, 40)), int(rng.integers(0, w))
        env[r0:r0 + int(rng.integers(3, 20)), np.arange(c0, c0 + int(rng.integers(3, 30))) % w] *= rng.uniform(0.1, 0.5)
    levels = [env]
    for sigma in (1.5, 4.0, 10.0):
        wrap = np.concatenate([env[:, -32:], env, env[:, :32]], axis=1)
        levels.append(cv2.GaussianBlur(wrap, (0, 0), sigma)[:, 32:-32].copy())
    return levels


@dataclass
class _Optics:
    """Camera settings drawn with the design."""

    exposure: float  # scene key mapped to this mid-grey
    wb: np.ndarray  # (3,) white-balance error gains
    vignette: float
    k1: float  # radial distortion
    chroma: float  # lateral chromatic aberration (relative scale of red vs blue)
    skew: float  # rolling-shutter shear, px per row
    defocus: float
    motion: float  # px along the belt
    motion_angle: float
    gamma: float
    contrast: float
    gain: float  # shot noise per unit signal
    read: float


def _design_optics(rng: np.random.Generator) -> _Optics:
    """Random camera settings."""
    return _Optics(
        exposure=float(0.2 * 2 ** rng.uniform(-0.9, 1.0) * (2.5 if rng.random() < 0.08 else 1.0)),
        wb=(1 + rng.normal(0, 0.07, 3)).astype(F32), vignette=rng.uniform(0, 0.5), k1=rng.uniform(-0.12, 0.08),
        chroma=rng.uniform(0, 0.004), skew=rng.uniform(-0.03, 0.03) if rng.random() < 0.3 else 0.0,
        defocus=rng.uniform(0, 1.3) if rng.random() < 0.6 else rng.uniform(1.3, 2.2),
        motion=rng.uniform(0, 5) if rng.random() < 0.35 else 0.0, motion_angle=rng.uniform(0, np.pi),
        gamma=rng.uniform(1.8, 2.5), contrast=rng.uniform(0.85, 1.3), gain=rng.uniform(0.0005, 0.004),
        read=rng.uniform(0.001, 0.006))


@dataclass
class _Scene:
    """Everything drawn before the defects: part, pose, material, belt, lights, environment and camera."""

    part: _Part
    material: _Material
    yaw: float
    place: np.ndarray  # (2,) part origin on the belt (mm)
    cam_pos: np.ndarray
    cam_rot: np.ndarray  # columns: right, down, forward (world)
    focal: float
    lights: list[_Light]
    env: list[np.ndarray]
    belt: dict
    optics: _Optics
    ambient: float  # environment / sky level relative to the lights


def _design_scene(rng: np.random.Generator, size: tuple[int, int]) -> _Scene:
    """A random scene for a frame of ``size`` (width, height)."""
    width, height = size
    part = _design_part(rng)
    material = _design_material(rng)
    focal = width * rng.uniform(0.9, 1.7)
    span = rng.uniform(0.45, 0.8) * width
    dist = focal * 2 * part.radius / span
    tilt, az, roll = np.radians(rng.uniform(0, 35)), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
    crop = 0.35 if rng.random() < 0.15 else 0.15
    target = np.array([*rng.uniform(-crop, crop, 2) * part.radius, part.height / 2], F32)
    cam_pos = target + dist * np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az), np.cos(tilt)], F32)
    fwd = (target - cam_pos) / np.linalg.norm(target - cam_pos)
    right = np.cross(fwd, [np.cos(roll), np.sin(roll), 0.0])
    right /= np.linalg.norm(right)
    cam_rot = np.stack([right, np.cross(fwd, right), fwd], axis=1).astype(F32)
    belt_kind = str(rng.choice(_BELTS, p=[0.3, 0.2, 0.15, 0.15, 0.2]))
    belt = dict(kind=belt_kind, albedo=_hsv(rng.random(), rng.uniform(0, 0.5) * (rng.random() < 0.4),
                                            rng.uniform(0.08, 0.6)),
                pitch=rng.uniform(3, 8) if belt_kind in ("fabric", "mesh") else rng.uniform(25, 60),
                seam=rng.uniform(200, 600), half=part.radius * rng.uniform(1.3, 3),
                rail=_hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.3, 0.7)),
                tray=rng.random() < 0.15, tray_rgb=_hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.1, 0.5)),
                tray_half=part.radius * rng.uniform(1.1, 1.4), offset=rng.uniform(0, 500, 2))
    return _Scene(part, material, rng.uniform(0, 2 * np.pi), np.zeros(2, F32), cam_pos, cam_rot, focal,
                  _design_lights(rng, cam_pos, part.radius), _environment(rng), belt, _design_optics(rng),
                  rng.uniform(0.15, 0.5))


# ----------------------------------------------------------------------------------------------------------------
# Decals: defects and benign marks in the primary surface's (u, v) space


class _Decal:
    """Layers over the decal space ``extent`` at ``rho`` texels per mm: height (mm), premultiplied colour and
    coverage, premultiplied roughness and metalness, and defect instance ids (uint8)."""

    def __init__(self, extent: tuple[float, float, float, float], rho: float) -> None:
        u0, u1, v0, v1 = extent
        self.u0, self.v1, self.rho = u0, v1, rho
        shape = (int(np.ceil((v1 - v0) * rho)) + 2, int(np.ceil((u1 - u0) * rho)) + 2)
        self.height = np.zeros(shape, F32)
        self.paint = np.zeros((*shape, 4), F32)  # r, g, b (premultiplied), coverage
        self.mat = np.zeros((*shape, 2), F32)  # roughness, metalness (premultiplied)
        self.ids = np.zeros(shape, np.uint8)

    def texel(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decal column and row of surface point(s) ``(u, v)``; rows run down ``v`` so that text reads right."""
        return (u - self.u0) * self.rho, (self.v1 - v) * self.rho

    def roi(self, cx: float, cy: float, r: float) -> tuple[tuple[slice, slice], int, int, tuple[int, int]]:
        """The window of radius ``r`` around ``(cx, cy)``: its slices, origin x, y and shape (h, w)."""
        h, w = self.height.shape
        x0, y0 = max(int(cx - r), 0), max(int(cy - r), 0)
        x1, y1 = min(int(cx + r) + 2, w), min(int(cy + r) + 2, h)
        return (slice(y0, y1), slice(x0, x1)), x0, y0, (max(y1 - y0, 0), max(x1 - x0, 0))

    def apply(self, sl: tuple[slice, slice], cover: np.ndarray | None = None, rgb: np.ndarray | None = None,
              rough: float = 0.5, metal: float = 0.0, height: np.ndarray | None = None, inst: int = 0) -> None:
        """Lay a layer with coverage ``cover`` (window-shaped) and/or add ``height`` (mm); mark instance ``inst``."""
        if height is not None:
            self.height[sl] += height
        if cover is not None:
            a = cover[..., None]
            self.paint[sl] = self.paint[sl] * (1 - a) + np.array([*rgb, 1.0], F32) * a
            self.mat[sl] = self.mat[sl] * (1 - a) + np.array([rough, metal], F32) * a
        if inst:
            sig = np.zeros(self.height[sl].shape, F32) if cover is None else cover
            if height is not None:
                sig = np.maximum(sig, np.abs(height) / (np.abs(height).max() + 1e-9))
            self.ids[sl][sig > 0.2] = inst

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(h, w, 4) colour + coverage and (h, w, 4) height slope du, dv, roughness, metalness for sampling."""
        gu = cv2.Sobel(self.height, cv2.CV_32F, 1, 0, ksize=3) * (self.rho / 8)
        gv = cv2.Sobel(self.height, cv2.CV_32F, 0, 1, ksize=3) * (-self.rho / 8)
        return self.paint, np.dstack([gu, gv, self.mat])


def _noise_patch(rng: np.random.Generator, shape: tuple[int, int], cells: float, name: str = "blotch") -> np.ndarray:
    """A (h, w) crop of a bank noise scaled so ``cells`` features span it, zero mean, about unit std."""
    tex = _bank()[name]
    n = int(np.clip(_TEX / cells, 8, _TEX - 1))
    x, y = rng.integers(0, _TEX - n, 2)
    return cv2.resize(tex[y:y + n, x:x + n], (max(shape[1], 1), max(shape[0], 1)), interpolation=cv2.INTER_LINEAR)


def _curve(rng: np.random.Generator, cx: float, cy: float, length: float, bend: float, angle: float) -> np.ndarray:
    """(n, 2) points of a quadratic Bezier of ``length`` centred at ``(cx, cy)``, sagging by ``bend`` x length."""
    d = np.array([np.cos(angle), np.sin(angle)])
    p0, p2 = np.array([cx, cy]) - d * length / 2, np.array([cx, cy]) + d * length / 2
    p1 = (p0 + p2) / 2 + np.array([-d[1], d[0]]) * bend * length
    s = np.linspace(0, 1, 24)[:, None]
    return (1 - s) ** 2 * p0 + 2 * s * (1 - s) * p1 + s * s * p2


def _stroke(shape: tuple[int, int], lines: list[np.ndarray], width: float, x0: int, y0: int) -> np.ndarray:
    """A (h, w) float mask of anti-aliased polylines (window coordinates from ``x0, y0``), softened by ``width``."""
    mask = np.zeros(shape, np.uint8)
    for pts in lines:
        p = np.round((pts - [x0, y0]) * 4).astype(np.int32)
        cv2.polylines(mask, [p], False, 255, max(int(round(width)), 1), cv2.LINE_AA, shift=2)
    out = mask.astype(F32) / 255
    return cv2.GaussianBlur(out, (0, 0), max(width / 3, 0.5))


def _scratch(dec: _Decal, rng: np.random.Generator, cx: float, cy: float, k: float, mat: _Material, inst: int) -> None:
    """A groove: straight, curved or a cluster of parallel strokes, exposing bare material."""
    length = rng.uniform(40, 220) * k
    width = rng.uniform(1.3, 3.2) * k
    angle = rng.uniform(0, np.pi)
    sl, x0, y0, shape = dec.roi(cx, cy, length * 0.65 + 12 * k)
    style = rng.choice(["straight", "curved", "cluster"], p=[0.4, 0.35, 0.25])
    lines = [_curve(rng, cx, cy, length, rng.uniform(-0.2, 0.2) if style == "curved" else rng.uniform(-0.03, 0.03),
                    angle)]
    if style == "cluster":
        normal = np.array([-np.sin(angle), np.cos(angle)])
        for j in range(int(rng.integers(1, 5))):
            off = normal * (j + 1) * rng.uniform(2, 6) * k + rng.normal(0, 4 * k, 2)
            lines.append(_curve(rng, *(np.array([cx, cy]) + off), length * rng.uniform(0.4, 0.9),
                                rng.uniform(-0.03, 0.03), angle + rng.normal(0, 0.03)))
        width *= 0.7
    mask = _stroke(shape, lines, width, x0, y0)
    contrast = rng.uniform(0.2, 0.45) if rng.random() < 0.2 else rng.uniform(0.5, 1.0)
    bright = float(mat.albedo.mean()) > 0.35 and mat.under_metal == 0
    under = mat.under * rng.uniform(0.6, 1.3) if rng.random() < 0.75 and not bright else mat.albedo * 0.3
    dec.apply(sl, cover=mask * contrast, rgb=np.clip(under, 0, 1), rough=rng.uniform(0.1, 0.35),
              metal=mat.under_metal, height=-rng.uniform(0.04, 0.25) * mask, inst=inst)


def _dent(dec: _Decal, rng: np.random.Generator, cx: float, cy: float, k: float, mm: float, inst: int) -> None:
    """A smooth depression: round, elongated or a crease; ``mm`` is millimetres per decal texel."""
    sigma = rng.uniform(7, 30) * k
    style = rng.choice(["round", "long", "crease"], p=[0.45, 0.35, 0.2])
    ratio = 1.0 if style == "round" else rng.uniform(2, 4) if style == "long" else rng.uniform(5, 9)
    if style == "crease":
        sigma *= 0.4
    sl, x0, y0, shape = dec.roi(cx, cy, 3 * sigma * ratio)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(F32)
    a = rng.uniform(0, np.pi)
    du, dv = xx + x0 - cx, yy + y0 - cy
    p, q = du * np.cos(a) + dv * np.sin(a), -du * np.sin(a) + dv * np.cos(a)
    r2 = (p / (2.2 * sigma * ratio)) ** 2 + (q / (2.2 * sigma)) ** 2
    prof = np.clip(1 - r2, 0, 1) ** 2  # a cup whose steepest slope is 1.54 / radius
    slope = rng.uniform(0.15, 0.3) if rng.random() < 0.2 else rng.uniform(0.3, 0.8)
    depth = slope * 2.2 * sigma * mm / 1.54
    dec.apply(sl, height=-depth * prof.astype(F32), inst=inst)


def _crack(dec: _Decal, rng: np.random.Generator, cx: float, cy: float, k: float, inst: int) -> None:
    """A jagged, branching fissure: a dark deep core with a lit lip on one side."""
    total = rng.uniform(50, 220) * k
    step = rng.uniform(3, 6) * k
    angle = rng.uniform(0, 2 * np.pi)
    walks = []
    starts = [(np.array([cx, cy]), angle, total)]
    while starts:
        p, a, left = starts.pop()
        pts = [p]
        while left > 0:
            a += rng.normal(0, 0.45)
            pts.append(pts[-1] + step * np.array([np.cos(a), np.sin(a)]))
            left -= step
            if len(walks) < 3 and rng.random() < 0.04:
                starts.append((pts[-1], a + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1), left * rng.uniform(0.3, 0.6)))
        walks.append(np.array(pts))
    every = np.concatenate(walks)
    c = (every.min(0) + every.max(0)) / 2
    sl, x0, y0, shape = dec.roi(c[0], c[1], np.abs(every - c).max() + 10 * k)
    width = rng.uniform(1.6, 3.6) * k
    core = _stroke(shape, walks, width, x0, y0)
    lip = _stroke(shape, [w + width * 0.8 for w in walks], width * 0.6, x0, y0)
    dec.apply(sl, height=0.08 * lip)
    dec.apply(sl, cover=core * rng.uniform(0.7, 0.95), rgb=np.full(3, rng.uniform(0.005, 0.03), F32), rough=0.95,
              height=-0.5 * core, inst=inst)


def _contamination(dec: _Decal, rng: np.random.Generator, cx: float, cy: float, k: float, mat: _Material,
                   inst: int) -> None:
    """Foreign matter on the surface: oil, particles or swarf, rust, a paint drip, fibres or a glue blob, mostly
    of a colour that stands out from the material's."""
    dark_part = float(mat.albedo.mean()) < 0.12
    kind = rng.choice(["oil", "particles", "rust", "drip", "fibres", "glue"], p=[0.22, 0.18, 0.2, 0.14, 0.12, 0.14])
    radius = rng.uniform(12, 60) * k
    sl, x0, y0, shape = dec.roi(cx, cy, radius * 2.2)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(F32)
    a, ratio = rng.uniform(0, np.pi), rng.uniform(1, 2.5)
    du, dv = xx + x0 - cx, yy + y0 - cy
    r = np.hypot((du * np.cos(a) + dv * np.sin(a)) / ratio, -du * np.sin(a) + dv * np.cos(a)) / radius
    blob = _smoothstep(0.15, -0.15, r - 1 + 0.35 * _noise_patch(rng, shape, rng.uniform(3, 8)))
    if kind == "oil":
        phase = 3 * blob + np.array([0, 0.33, 0.67], F32)[:, None, None]
        rim = (4 * blob * (1 - blob))[None]
        base = np.array([0.3, 0.2, 0.06] if dark_part else rng.choice([[0.05, 0.035, 0.01], [0.02, 0.02, 0.02]]), F32)
        col = base[:, None, None] + 0.35 * rim * (0.5 + 0.5 * np.cos(2 * np.pi * phase))
        cover = blob * rng.uniform(0.55, 0.9)
        rgb = (col * cover).sum((1, 2)) / (cover.sum() + 1e-6)
        dec.apply(sl, cover=cover, rgb=rgb, rough=0.05, height=0.02 * blob, inst=inst)
    elif kind == "particles":
        mask = np.zeros(shape, np.uint8)
        n = int(rng.integers(15, 80))
        pts = rng.normal(0, radius * 0.5, (n, 2)) + [cx - x0, cy - y0]
        swarf = rng.random() < (0.7 if dark_part else 0.3)
        for (px, py), rad in zip(pts, rng.uniform(0.8, 2.6, n) * k):
            if swarf:
                cv2.ellipse(mask, (int(px), int(py)), (int(rad * 3) + 1, int(rad) + 1), rng.uniform(0, 180), 0,
                            rng.uniform(120, 300), 255, max(int(rad * 0.6), 1), cv2.LINE_AA)
            else:
                cv2.circle(mask, (int(px), int(py)), int(rad) + 1, 255, -1, cv2.LINE_AA)
        cover = mask.astype(F32) / 255
        rgb = np.full(3, 0.7, F32) if swarf else np.array([0.35, 0.3, 0.25] if dark_part else [0.02, 0.02, 0.02], F32)
        dec.apply(sl, cover=cover, rgb=rgb, rough=0.2 if swarf else 0.9, metal=float(swarf), height=0.15 * cover,
                  inst=inst)
    elif kind == "rust":
        speck = _smoothstep(0.6, 1.2, _noise_patch(rng, shape, rng.uniform(12, 30), "fine"))
        cover = np.clip(blob * (0.6 + 0.4 * speck), 0, 1)
        rgb = _to_linear(np.array(rng.choice([[0.55, 0.25, 0.08], [0.4, 0.16, 0.06], [0.65, 0.35, 0.12]]))
                         * rng.uniform(0.8, 1.1))
        dec.apply(sl, cover=cover, rgb=rgb, rough=0.95, height=0.05 * cover, inst=inst)
    elif kind == "drip":
        tail = np.clip(1 - np.abs(du * np.sin(a) - dv * np.cos(a)) / (radius * 0.35), 0, 1) * (
            du * np.cos(a) + dv * np.sin(a) > 0) * _smoothstep(radius * 3, radius, np.hypot(du, dv))
        mask = np.maximum(_smoothstep(1.05, 0.85, np.hypot(du, dv) / (radius * 0.6)), tail)
        dome = cv2.GaussianBlur(mask.astype(F32), (0, 0), max(radius * 0.15, 1))
        value = rng.uniform(0.6, 0.95) if dark_part else rng.uniform(0.15, 0.45)
        dec.apply(sl, cover=mask.astype(F32), rgb=_hsv(rng.random(), rng.uniform(0.5, 1), value),
                  rough=0.12, height=0.5 * dome, inst=inst)
    elif kind == "fibres":
        lines = [_curve(rng, cx + rng.normal(0, radius / 2), cy + rng.normal(0, radius / 2), rng.uniform(1, 3) * radius,
                        rng.uniform(-0.4, 0.4), rng.uniform(0, np.pi)) for _ in range(int(rng.integers(1, 5)))]
        sl, x0, y0, shape = dec.roi(cx, cy, radius * 2.5)
        cover = _stroke(shape, lines, rng.uniform(1.2, 2.2) * k, x0, y0)
        rgb = np.array([0.8, 0.8, 0.78] if dark_part else rng.choice([[0.02, 0.02, 0.03], [0.03, 0.05, 0.3]]), F32)
        dec.apply(sl, cover=cover, rgb=rgb, rough=0.8, height=0.1 * cover, inst=inst)
    else:
        dome = cv2.GaussianBlur(blob.astype(F32), (0, 0), max(radius * 0.2, 1))
        rgb = _to_linear(np.array([0.9, 0.8, 0.45] if dark_part else [0.55, 0.35, 0.08]) * rng.uniform(0.8, 1.0))
        dec.apply(sl, cover=blob * rng.uniform(0.6, 0.85), rgb=rgb, rough=0.06, height=0.8 * dome, inst=inst)


_MARKS = ("LOT", "SN", "P/N", "QC", "REV", "MADE IN", "ID", "BATCH")


def _nuisance(dec: _Decal, rng: np.random.Generator, part: _Part, mat: _Material, k: float) -> None:
    """Benign marks on every part: printed or engraved text, a label, screw heads, faint smudges, a parting line."""
    h, w = dec.height.shape
    cx, cy = w / 2, h / 2
    for _ in range(int(rng.integers(0, 3))):  # markings
        text = f"{rng.choice(_MARKS)} {rng.integers(10, 99999)}"
        scale = rng.uniform(0.35, 0.9) * k
        x, y = cx + rng.uniform(-0.35, 0.35) * w, cy + rng.uniform(-0.3, 0.3) * h
        sl, x0, y0, shape = dec.roi(x, y, 140 * scale + 10)
        mask = np.zeros(shape, np.uint8)
        cv2.putText(mask, text, (int(x - x0 - 60 * scale), int(y - y0)), cv2.FONT_HERSHEY_SIMPLEX, scale, 255,
                    max(int(2 * scale), 1), cv2.LINE_AA)
        mask = mask.astype(F32) / 255
        if rng.random() < 0.5:
            dec.apply(sl, cover=mask * 0.9, rgb=np.full(3, rng.choice([0.02, 0.8]), F32), rough=0.5)
        else:
            dec.apply(sl, cover=mask * 0.4, rgb=mat.albedo * 0.4, rough=0.6, height=-0.05 * mask)
    if part.kind in ("plate", "housing", "pipe", "bracket") and rng.random() < 0.3:  # label
        lw, lh = rng.uniform(0.15, 0.35) * w, rng.uniform(0.1, 0.25) * h
        x, y = cx + rng.uniform(-0.2, 0.2) * w, cy + rng.uniform(-0.2, 0.2) * h
        sl, x0, y0, shape = dec.roi(x, y, max(lw, lh))
        mask = np.zeros(shape, np.uint8)
        box = cv2.boxPoints(((x - x0, y - y0), (lw, lh), rng.normal(0, 4)))
        cv2.fillPoly(mask, [box.astype(np.int32)], 255, cv2.LINE_AA)
        paper = _to_linear(np.array(rng.choice([[0.95, 0.95, 0.92], [0.95, 0.85, 0.2], [0.8, 0.8, 0.82]])))
        dec.apply(sl, cover=mask.astype(F32) / 255, rgb=paper, rough=0.55, height=0.08 * mask.astype(F32) / 255)
        ink = np.zeros(shape, np.uint8)
        for j in range(int(lw * 0.5 / 3)):
            if rng.random() < 0.6:
                bx = int(x - x0 - lw * 0.4 + j * 3)
                cv2.line(ink, (bx, int(y - y0 - lh * 0.35)), (bx, int(y - y0)), 255, 1 + int(rng.random() < 0.3))
        cv2.putText(ink, f"{rng.integers(100000, 999999)}", (int(x - x0 - lw * 0.4), int(y - y0 + lh * 0.3)),
                    cv2.FONT_HERSHEY_PLAIN, max(lh / 30, 0.6), 255, 1, cv2.LINE_AA)
        dec.apply(sl, cover=ink.astype(F32) / 255 * 0.9, rgb=np.full(3, 0.02, F32), rough=0.6)
    if part.kind in ("plate", "housing", "bracket") and rng.random() < 0.4:  # screw heads
        r = rng.uniform(2.5, 5) * dec.rho
        for _ in range(int(rng.integers(1, 5))):
            x, y = cx + rng.uniform(-0.4, 0.4) * w, cy + rng.uniform(-0.35, 0.35) * h
            sl, x0, y0, shape = dec.roi(x, y, r * 1.3)
            yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(F32)
            rr = np.hypot(xx + x0 - x, yy + y0 - y) / r
            head = _smoothstep(1.05, 0.9, rr)
            dec.apply(sl, cover=head, rgb=np.full(3, 0.55, F32), rough=0.3, metal=1.0,
                      height=1.2 * np.sqrt(np.clip(1 - rr * rr, 0, 1)))
            slot = np.zeros(shape, np.uint8)
            a = rng.uniform(0, np.pi)
            for b in (a, a + np.pi / 2) if rng.random() < 0.6 else (a,):
                d = np.array([np.cos(b), np.sin(b)]) * r * 0.7
                cv2.line(slot, tuple(np.int32([x - x0, y - y0] - d)), tuple(np.int32([x - x0, y - y0] + d)), 255,
                         max(int(r * 0.25), 1))
            dec.apply(sl, cover=slot.astype(F32) / 255 * head, rgb=np.full(3, 0.05, F32), rough=0.5)
    for _ in range(int(rng.integers(0, 3))):  # faint smudges and water spots
        x, y = cx + rng.uniform(-0.4, 0.4) * w, cy + rng.uniform(-0.4, 0.4) * h
        r = rng.uniform(8, 25) * k
        sl, x0, y0, shape = dec.roi(x, y, r * 1.5)
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(F32)
        rr = np.hypot(xx + x0 - x, (yy + y0 - y) * rng.uniform(1, 1.6)) / r
        spot = _smoothstep(1.0, 0.6, rr) * (1 - 0.5 * _smoothstep(0.5, 0.9, rr) if rng.random() < 0.5 else 1)
        dec.apply(sl, cover=spot * rng.uniform(0.04, 0.1), rgb=mat.albedo * 0.8, rough=min(mat.rough + 0.3, 1))
    if mat.name in ("plastic", "rubber", "ceramic") and rng.random() < 0.5:  # mould parting line, edge to edge
        sl = (slice(0, h), slice(0, w))
        line = np.zeros((h, w), np.uint8)
        y = int(cy + rng.uniform(-0.3, 0.3) * h)
        cv2.line(line, (0, y), (w - 1, y), 255, 1)
        dec.apply(sl, height=0.015 * line.astype(F32) / 255)


# ----------------------------------------------------------------------------------------------------------------
# Ray casting and shading


def _rz(a: float) -> np.ndarray:
    """(3, 3) rotation by ``a`` about z."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], F32)


@dataclass
class _Frame:
    """Per-pixel geometry: belt hits (H, W), the part's pixel window and its hits."""

    belt_x: np.ndarray
    belt_y: np.ndarray
    win: tuple[slice, slice]
    hit: _Hit
    origin: np.ndarray  # (3,) camera in the part frame
    dirs: np.ndarray  # (3, h, w) part-frame rays in the window
    to_part: np.ndarray  # (3, 3) world -> part rotation
    place3: np.ndarray  # (3,) part origin in the world


def _trace(sc: _Scene, size: tuple[int, int]) -> _Frame:
    """Cast every pixel's ray at the belt and, inside the part's projected bounding box, at its solids."""
    width, height = size
    xs = (np.arange(width, dtype=F32) - (width - 1) / 2) / sc.focal
    ys = (np.arange(height, dtype=F32) - (height - 1) / 2) / sc.focal
    rot = sc.cam_rot
    rays = _norm(rot[:, 0, None, None] * xs[None, None] + rot[:, 1, None, None] * ys[None, :, None]
                 + rot[:, 2, None, None])
    t = -sc.cam_pos[2] / np.minimum(rays[2], -1e-4)
    belt_x, belt_y = sc.cam_pos[0] + t * rays[0], sc.cam_pos[1] + t * rays[1]
    to_part, place3 = _rz(-sc.yaw), np.array([*sc.place, 0.0], F32)

    def window(box: tuple[float, float, float, float, float]) -> tuple[int, int, int, int]:
        """Pixel bounds x0, x1, y0, y1 of a part-frame box ``x0, x1, y0, y1, top`` (and the belt under it)."""
        corners = np.array([[x, y, z] for x in box[:2] for y in box[2:4] for z in (0, box[4])], F32)
        cam = (corners @ to_part + place3 - sc.cam_pos) @ rot  # to_part.T == _rz(yaw)
        px = sc.focal * cam[:, :2] / cam[:, 2:] + [(width - 1) / 2, (height - 1) / 2]
        x0, y0 = np.clip(np.floor(px.min(0)).astype(int) - 2, 0, [width - 1, height - 1])
        x1, y1 = np.clip(np.ceil(px.max(0)).astype(int) + 3, [x0 + 1, y0 + 1], [width, height])
        return int(x0), int(x1), int(y0), int(y1)

    x0, x1, y0, y1 = window((*sc.part.bounds, sc.part.height))
    win = (slice(y0, y1), slice(x0, x1))
    origin = to_part @ (sc.cam_pos - place3)
    dirs = np.einsum("ij,jhw->ihw", to_part, rays[:, win[0], win[1]])
    hit = _Hit.empty(dirs.shape[1:])
    for solid in sc.part.solids:  # each cast over its own bounding window only
        sx0, sx1, sy0, sy1 = window(solid.box)
        top, left = min(max(sy0, y0), y1 - 1), min(max(sx0, x0), x1 - 1)
        sub = (slice(top - y0, max(min(sy1, y1), top + 1) - y0), slice(left - x0, max(min(sx1, x1), left + 1) - x0))
        hit.take(solid.trace(origin, dirs[:, sub[0], sub[1]]), sub)
    return _Frame(belt_x, belt_y, win, hit, origin, dirs, to_part, place3)


_QUARTER = (slice(2, None, 4), slice(2, None, 4))


def _occlusion(solids: list, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance to the nearest solid (negative inside)."""
    return functools.reduce(np.minimum, (s.sdf3(x, y, z) for s in solids))


def _shadows(sc: _Scene, fr: _Frame) -> tuple[list[np.ndarray | None], np.ndarray]:
    """At quarter resolution (every 4th pixel): per light, a visibility map (1 lit, 0 in the part's shadow; None for
    lights that cast no visible shadow) marched through the solids' distance fields, and the ambient occlusion of
    the belt around the part."""
    q = _QUARTER
    bx, by = fr.belt_x[q] - fr.place3[0], fr.belt_y[q] - fr.place3[1]
    pos = np.stack([fr.to_part[0, 0] * bx + fr.to_part[0, 1] * by, fr.to_part[1, 0] * bx + fr.to_part[1, 1] * by,
                    np.zeros_like(bx)])
    hit = fr.hit.cls > 0
    yy, xx = np.nonzero(hit[(2 - fr.win[0].start) % 4::4, (2 - fr.win[1].start) % 4::4])
    if len(yy):
        wy, wx = yy * 4 + (2 - fr.win[0].start) % 4, xx * 4 + (2 - fr.win[1].start) % 4
        qy, qx = (wy + fr.win[0].start - 2) // 4, (wx + fr.win[1].start - 2) // 4
        t = fr.hit.t[wy, wx]
        pos[:, qy, qx] = fr.origin[:, None] + t * fr.dirs[:, wy, wx]
    solids = sc.part.solids
    occ0 = _occlusion(solids, pos[0], pos[1], np.full_like(pos[0], 1.5))
    ao = 1 - 0.6 * np.exp(-np.maximum(occ0, 0) / (0.05 * sc.part.radius + 2)) * (pos[2] < 0.5)
    maps = []
    for light in sc.lights:
        if light.kind in ("ring", "dome"):
            maps.append(None)
            continue
        if light.kind == "dir":
            to_light = (fr.to_part @ light.vec)[:, None, None] * np.ones((1, *pos.shape[1:]), F32)
        else:
            to_light = _norm((fr.to_part @ (light.vec - fr.place3))[:, None, None] - pos)
        reach = float(np.clip((sc.part.height + 2) / max(float(np.min(to_light[2])), 0.12), 6, 4 * sc.part.radius))
        vis = np.ones(pos.shape[1:], F32)
        for s in np.geomspace(1.5, reach, 7):
            p = pos + s * to_light
            pen = 0.3 + s * light.soft
            vis *= _smoothstep(-pen, pen, _occlusion(solids, p[0], p[1], p[2]))
        maps.append(vis)
    return maps, ao.astype(F32)


def _light_at(light: _Light, p: np.ndarray, ref: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit direction (3, ...) towards ``light`` from points ``p`` (3, ...) and its (...) intensity factor;
    point-like lights fall off as ``(ref / distance)**2``."""
    shape = (3, *([1] * (p.ndim - 1)))
    if light.kind == "dir":
        return light.vec.reshape(shape), np.ones(p.shape[1:], F32)
    delta = light.vec.reshape(shape) - p
    dist = np.sqrt((delta * delta).sum(0))
    to_light = delta / dist
    fall = (ref / dist) ** 2
    if light.kind == "spot":
        fall = fall * _smoothstep(light.cone, light.cone + 0.06, -_dot(to_light, light.aim.reshape(shape)))
    return to_light, fall


def _lookup(img: np.ndarray, mx: np.ndarray, my: np.ndarray, interp: int = cv2.INTER_LINEAR,
            border: int = cv2.BORDER_WRAP) -> np.ndarray:
    """``img`` sampled at 1-D texel coordinates ``mx, my`` (n,): (n,) or (n, channels)."""
    n, cols = mx.size, 1024
    rows = max(-(-n // cols), 1)
    grid = [np.pad(m.astype(F32), (0, rows * cols - n)).reshape(rows, cols) for m in (mx, my)]
    return cv2.remap(img, grid[0], grid[1], interp, borderMode=border).reshape(rows * cols, *img.shape[2:])[:n]


def _env_lookup(env: list[np.ndarray], r: np.ndarray, rough: np.ndarray) -> np.ndarray:
    """(3, n) environment radiance along world directions ``r`` (3, n), blurred by roughness (n,)."""
    h, w = env[0].shape[:2]
    my = np.arccos(np.clip(r[2], -1, 1)) * (h / np.pi) - 0.5
    mx = np.mod(np.arctan2(r[1], r[0]), 2 * np.pi) * (w / (2 * np.pi)) - 0.5
    level = np.clip(rough * 5.0, 0, 2.999)
    lo = int(np.clip(np.median(level), 0, 2))
    a, b = (_lookup(env[i], mx, my) for i in (lo, lo + 1))
    f = np.clip(level - lo, 0, 1)[:, None]
    return (a * (1 - f) + b * f).T


def _pow5(x: np.ndarray) -> np.ndarray:
    """``x ** 5`` by multiplication."""
    x2 = x * x
    return x2 * x2 * x


def _shade_part(sc: _Scene, fr: _Frame, dec: _Decal, vis: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Linear radiance (3, h, w) of the part window (0 off the part) and its defect instance ids (h, w); shaded on
    the hit pixels only, as 1-D arrays."""
    hit, mat, bank = fr.hit, sc.material, _bank()
    on = hit.cls > 0
    u, v, tv, ao, primary = hit.u[on], hit.v[on], hit.tv[:, on], hit.ao[on], hit.cls[on] == 1
    view = -fr.dirs[:, on]
    p = fr.origin[:, None] - hit.t[on] * view
    mx, my = np.mod(u * mat.tex_scale, _TEX), np.mod(v * mat.tex_scale, _TEX)
    tex = _lookup(bank[mat.tex], mx, my)
    fine = _lookup(bank["fine"], np.mod(mx * 1.7, _TEX), np.mod(my * 1.7, _TEX))
    relief = _lookup(bank[mat.tex + "/slope"], mx, my)
    if mat.name == "pcb":
        albedo = mat.albedo[:, None] * (1 + 0.6 * tex)
    else:
        albedo = mat.albedo[:, None] * np.clip(1 + mat.tex_amp * tex, 0.2, 2)
    rough = np.clip(mat.rough * (1 + 0.2 * fine), 0.03, 1)
    du, dv = dec.texel(u, v)
    du, dv = np.where(primary, du, -100), np.where(primary, dv, -100)
    paint, slope = (_lookup(m, du, dv, border=cv2.BORDER_CONSTANT).T for m in dec.maps())
    ids = _lookup(dec.ids, du, dv, cv2.INTER_NEAREST, cv2.BORDER_CONSTANT)
    cover = paint[3]
    albedo = albedo * (1 - cover) + paint[:3]
    rough = np.clip(rough * (1 - cover) + slope[2], 0.03, 1)
    metal = mat.metal * (1 - cover) + slope[3]
    n = hit.n[:, on]
    n[0] -= slope[0] + mat.bump_amp * relief[:, 0]
    n = _norm(n - (slope[1] + mat.bump_amp * relief[:, 1]) * tv)
    alpha = np.maximum(rough * rough, 0.002)
    if mat.aniso > 0:  # machining marks: the grain runs along x, around a turned face, or around a shaft
        if sc.part.grain == "linear":
            tangent = np.broadcast_to(np.array([1, 0, 0], F32)[:, None], n.shape)
        elif sc.part.grain == "radial":
            tangent = np.stack([-p[1], p[0], np.zeros_like(p[0])])
        else:
            tangent = tv
        tangent = _norm(tangent - _dot(tangent, n) * n + 1e-4)
        bitan = np.cross(n, tangent, axis=0)
        aspect = np.sqrt(1 - 0.9 * mat.aniso * (1 - cover))
        ax, ay = alpha * aspect, alpha / aspect
    f0 = 0.04 * (1 - metal) + albedo * metal
    diffuse = albedo * (1 - metal)
    nv = np.clip(_dot(n, view), 1e-3, 1)
    kg = (rough + 1) ** 2 / 8
    gv = nv / (nv * (1 - kg) + kg)
    out = np.zeros_like(albedo)
    for light, shadow in zip(sc.lights, vis):
        if light.kind == "dome":
            out += light.rgb[:, None] * diffuse * (0.55 + 0.45 * n[2]) * ao
            continue
        vec = fr.origin if light.kind == "ring" else fr.to_part @ (light.vec if light.kind == "dir" else
                                                                   light.vec - fr.place3)
        aim = None if light.aim is None else fr.to_part @ light.aim
        to_light, fall = _light_at(_Light(light.kind, vec, light.rgb, aim, light.cone), p, float(np.linalg.norm(vec)))
        if shadow is not None:
            fall = fall * shadow[fr.win][on]
        nl = np.clip(_dot(n, to_light), 0, 1)
        half = _norm(to_light + view)
        nh, vh = _dot(n, half), np.clip(_dot(view, half), 0, 1)
        if mat.aniso > 0:  # anisotropic GGX
            th, bh = _dot(tangent, half) / ax, _dot(bitan, half) / ay
            dd = 1 / (np.pi * ax * ay * (th * th + bh * bh + nh * nh) ** 2)
        else:
            a2 = alpha * alpha
            dd = a2 / (np.pi * (nh * nh * (a2 - 1) + 1) ** 2)
        fres = f0 + (1 - f0) * _pow5(1 - vh)
        spec = np.minimum(np.pi * dd * (nl / (nl * (1 - kg) + kg) * gv) / (4 * nv), 60.0) * fres
        out += light.rgb[:, None] * fall * (diffuse * nl + spec)
    world = fr.to_part.T @ (2 * nv * n - view)
    env = _env_lookup(sc.env, world, rough)
    fres_env = f0 + (1 - f0) * _pow5(1 - nv) * (1 - rough) ** 2
    sky = sc.env[3][: sc.env[3].shape[0] // 2].mean((0, 1))[:, None]
    out += sc.ambient * ao * (fres_env * env + diffuse * sky * (0.5 + 0.5 * n[2]))
    rgb = np.zeros((3, *on.shape), F32)
    rgb[:, on] = out
    id_map = np.zeros(on.shape, np.uint8)
    id_map[on] = ids
    return rgb, id_map


def _belt_albedo(sc: _Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(3, H, W) linear albedo of the conveyor (and its rails, and a tray) at belt points ``x, y`` (mm)."""
    b, bank = sc.belt, _bank()
    bx, by = x + b["offset"][0], y + b["offset"][1]  # the belt runs along world x
    pitch = b["pitch"]
    noise = _sample(bank["fine"], bx, by, 2.0)
    if b["kind"] == "rubber":
        streak = _sample(bank["brushed"], bx, by, 0.8)
        seam = 1 - 0.6 * (np.abs(np.mod(bx, b["seam"]) - b["seam"] / 2) < 1.5)
        tone = (1 + 0.1 * noise + 0.08 * streak) * seam
    elif b["kind"] == "fabric":
        tone = 0.75 + 0.3 * np.sin(2 * np.pi * bx / pitch) * np.sin(2 * np.pi * by / pitch) + 0.06 * noise
    elif b["kind"] == "rollers":
        ph = np.abs(np.mod(bx, pitch) / pitch - 0.5) / 0.42
        tone = np.where(ph < 1, 0.35 + 0.9 * np.cos(np.minimum(ph, 1) * np.pi / 2) ** 2, 0.08) * (1 + 0.05 * noise)
    elif b["kind"] == "mesh":
        wire = (np.abs(np.mod(bx, pitch) / pitch - 0.5) > 0.38) | (np.abs(np.mod(by, pitch) / pitch - 0.5) > 0.38)
        tone = np.where(wire, 1.1 + 0.1 * noise, 0.12)
    else:  # slats
        index = np.floor(bx / pitch)
        tone = (0.9 + 0.1 * np.sin(index * 12.9898) + 0.05 * noise) * np.where(np.mod(bx, pitch) / pitch > 0.95, 0.3, 1)
    albedo = b["albedo"][:, None, None] * tone.astype(F32)
    side = np.abs(y) - b["half"]
    rail = b["rail"][:, None, None] * (1 + 0.1 * noise) * np.where(side < 12, 0.1, 1.0)
    albedo = np.where(side > 0, rail, albedo)
    if b["tray"]:
        local = np.maximum(np.abs(x - sc.place[0]), np.abs(y - sc.place[1])) - b["tray_half"]
        tray = b["tray_rgb"][:, None, None] * np.where(np.abs(local) < 3, 1.6, 1.0) * (1 + 0.04 * noise)
        albedo = np.where(local < 3, tray, albedo)
    return albedo


def _shade_belt(sc: _Scene, fr: _Frame, vis: list[np.ndarray | None], ao: np.ndarray) -> np.ndarray:
    """(H, W, 3) linear radiance of the matte belt: albedo at half resolution, light at quarter resolution like the
    shadow maps ``vis`` and occlusion ``ao``."""
    height, width = fr.belt_x.shape
    albedo = _belt_albedo(sc, fr.belt_x[::2, ::2], fr.belt_y[::2, ::2])
    albedo = cv2.resize(np.ascontiguousarray(np.moveaxis(albedo, 0, -1), F32), (width, height))
    p = np.stack([fr.belt_x[_QUARTER], fr.belt_y[_QUARTER], np.zeros_like(fr.belt_x[_QUARTER])])
    sky = sc.env[3][: sc.env[3].shape[0] // 2].mean((0, 1))[:, None, None]
    light = sc.ambient * sky * ao
    ref = float(np.linalg.norm(sc.cam_pos))
    for lt, shadow in zip(sc.lights, vis):
        if lt.kind == "dome":
            light = light + lt.rgb[:, None, None] * ao
            continue
        to_light, fall = _light_at(lt, p, ref if lt.kind == "ring" else float(np.linalg.norm(lt.vec)))
        if shadow is not None:
            fall = fall * shadow
        light = light + lt.rgb[:, None, None] * (np.clip(to_light[2], 0, 1) * fall)
    return albedo * cv2.resize(np.ascontiguousarray(np.moveaxis(light, 0, -1), F32), (width, height))


# ----------------------------------------------------------------------------------------------------------------
# Camera


def _image_nuisance(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W) multiplicative shading: a soft shadow of some object out of view and dust specks on the lens."""
    width, height = size
    shade = np.ones((height // 4, width // 4), F32)
    if rng.random() < 0.3:
        poly = (rng.uniform(-0.3, 1.3, (int(rng.integers(3, 6)), 2)) * [width // 4, height // 4]).astype(np.int32)
        cv2.fillPoly(shade, [poly], float(rng.uniform(0.45, 0.8)))
        shade = cv2.GaussianBlur(shade, (0, 0), rng.uniform(3, 12))
    shade = cv2.resize(shade, size, interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.4 else 0):
        spot = np.zeros((height, width), F32)
        cv2.circle(spot, (int(rng.integers(0, width)), int(rng.integers(0, height))), int(rng.integers(3, 10)), 1, -1)
        shade *= 1 - rng.uniform(0.03, 0.1) * cv2.GaussianBlur(spot, (0, 0), 3)
    return shade


@functools.cache
def _lens_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Pixel offsets (H, W) from the centre in half-diagonals, their squared radius, and the half-diagonal."""
    yy, xx = np.mgrid[0:height, 0:width].astype(F32)
    half = float(np.hypot(width, height) / 2)
    xn, yn = (xx - (width - 1) / 2) / half, (yy - (height - 1) / 2) / half
    return xn, yn, xn * xn + yn * yn, half


def _camera(opt: _Optics, linear: np.ndarray, focus: np.ndarray, ids: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Expose linear RGB (H, W, 3), metered on the ``focus`` mask (the part) outside the defect ids (H, W), and record
    it: returns the (H, W, 3) uint8 BGR frame and the ids warped like it."""
    height, width = ids.shape
    luma = linear[::4, ::4].mean(-1) + 1e-4
    clean = ids[::4, ::4] == 0  # metering ignores the defects, so a defect changes no other pixel
    part = luma[focus[::4, ::4] & clean] if (focus[::4, ::4] & clean).any() else luma
    key = np.sqrt(np.exp(np.log(part).mean()) * np.median(luma[clean]))
    linear = linear * (opt.exposure / key) * opt.wb
    xn, yn, r2, half = _lens_grid(width, height)
    linear *= (1 / (1 + opt.vignette * r2) ** 2)[..., None]
    bend = 1 + opt.k1 * r2
    warped = []
    for channel, scale in ((0, 1 + opt.chroma), (1, 1.0), (2, 1 - opt.chroma)):
        mx = ((width - 1) / 2 + xn * (bend * F32(scale * half)) + yn * F32(opt.skew * half)).astype(F32)
        my = ((height - 1) / 2 + yn * (bend * F32(scale * half))).astype(F32)
        warped.append(cv2.remap(linear[..., channel], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
        if channel == 1:
            ids = cv2.remap(ids, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    img = np.dstack(warped)
    if opt.defocus > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), opt.defocus)
    if opt.motion > 1:
        n = int(np.ceil(opt.motion)) * 2 + 1
        kernel = np.zeros((n, n), F32)
        d = np.array([np.cos(opt.motion_angle), np.sin(opt.motion_angle)]) * opt.motion / 2
        cv2.line(kernel, tuple(np.int32(n // 2 - d)), tuple(np.int32(n // 2 + d)), 1.0, 1)
        img = cv2.filter2D(img, -1, kernel / kernel.sum())
    raw = np.empty((height, width), F32)
    raw[0::2, 0::2], raw[0::2, 1::2] = img[0::2, 0::2, 0], img[0::2, 1::2, 1]
    raw[1::2, 0::2], raw[1::2, 1::2] = img[1::2, 0::2, 1], img[1::2, 1::2, 2]
    raw += np.sqrt(np.maximum(raw, 0) * opt.gain + opt.read**2) * rng.standard_normal((height, width), F32)
    raw16 = (np.clip(raw, 0, 1) * 65535).astype(np.uint16)
    bgr16 = cv2.cvtColor(raw16, cv2.COLOR_BayerBG2BGR)
    x = np.linspace(0, 1, 4096) ** (1 / opt.gamma)
    lut = np.clip(0.5 + (x - 0.5) * opt.contrast + 0.15 * (opt.contrast - 1) * np.sin(2 * np.pi * x), 0, 1)
    bgr = (lut * 255 + 0.5).astype(np.uint8)[bgr16 >> 4]
    quality = int(rng.integers(55, 97))
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR), ids


def _boxes(ids: np.ndarray, count: int) -> list[Box]:
    """``[x, y, w, h]`` of each instance ``1..count`` present in the (H, W) id map."""
    boxes = []
    for i in range(1, count + 1):
        mask = (ids == i).astype(np.uint8)
        if mask.sum() >= 3:
            x, y, w, h = cv2.boundingRect(mask)
            boxes.append([int(x), int(y), int(w), int(h)])
    return boxes


# ----------------------------------------------------------------------------------------------------------------
# Entry point


def _place_defects(dec: _Decal, rng: np.random.Generator, defect: str, sc: _Scene, fr: _Frame,
                   size: tuple[int, int]) -> int:
    """Draw 1..3 instances of ``defect`` centred on visible primary-surface pixels; returns how many."""
    width, height = size
    primary = np.zeros((height, width), np.uint8)
    primary[fr.win] = fr.hit.cls == 1
    inner = cv2.erode(primary, np.ones((7, 7), np.uint8))
    inner[:16], inner[-16:], inner[:, :16], inner[:, -16:] = 0, 0, 0, 0
    if not inner.any():
        inner = primary
    ys, xs = np.nonzero(inner)
    count = int(rng.choice([1, 2, 3], p=[0.6, 0.27, 0.13]))
    scale = width / 640
    mm_px = float(np.linalg.norm(sc.cam_pos - fr.place3)) / sc.focal  # mm per image pixel at the part
    k = dec.rho * mm_px * scale  # decal texels per (640-wide) image pixel
    for inst in range(1, count + 1):
        j = int(rng.integers(len(ys)))
        wy, wx = ys[j] - fr.win[0].start, xs[j] - fr.win[1].start
        cx, cy = dec.texel(fr.hit.u[wy, wx], fr.hit.v[wy, wx])
        if defect == "scratch":
            _scratch(dec, rng, cx, cy, k, sc.material, inst)
        elif defect == "dent":
            _dent(dec, rng, cx, cy, k, 1 / dec.rho, inst)
        elif defect == "crack":
            _crack(dec, rng, cx, cy, k, inst)
        else:
            _contamination(dec, rng, cx, cy, k, sc.material, inst)
    return count


def render_part_scene(rng: np.random.Generator, defect: str, size: tuple[int, int] = (640, 480),
                      product: int | None = None) -> tuple[np.ndarray, list[Box]]:
    """Render one part on the line.

    Args:
        rng: the part's random stream; five seeds are drawn from it first (design, pose jitter, nuisance, defects,
            sensor), so the same state rendered with any ``defect`` gives the same part, marks and noise.
        defect: one of ``DEFECTS``.
        size: frame ``(width, height)``.
        product: a one-product line: shape, material, pose, belt, lights and camera come from product ``product``
            alone; ``rng`` then only jitters the pose and draws the marks, defects and noise.

    Returns:
        The (H, W, 3) uint8 BGR frame and one ``[x, y, w, h]`` box per defect instance (none for "good").
    """
    if defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; expected one of {DEFECTS}")
    width, height = size
    design, jitter, nuisance, flaws, sensor = (np.random.default_rng(s) for s in rng.integers(0, 2**63, 5))
    if product is not None:
        design = np.random.default_rng([product, 7919])
    sc = _design_scene(design, size)
    sc.yaw += jitter.normal(0, 0.04)
    sc.place = jitter.normal(0, 0.02 * sc.part.radius, 2).astype(F32)
    fr = _trace(sc, size)
    u0, u1, v0, v1 = sc.part.extent
    px_mm = sc.focal / float(np.linalg.norm(sc.cam_pos - fr.place3))
    dec = _Decal(sc.part.extent, min(1.4 * px_mm, 900 / max(u1 - u0, v1 - v0)))
    _nuisance(dec, nuisance, sc.part, sc.material, dec.rho / px_mm * width / 640)
    count = 0 if defect == "good" else _place_defects(dec, flaws, defect, sc, fr, size)
    vis, ao = _shadows(sc, fr)
    linear = _shade_belt(sc, fr, vis, ao)
    part_rgb, part_ids = _shade_part(sc, fr, dec, [None if v is None else cv2.resize(v, size) for v in vis])
    on = fr.hit.cls > 0
    linear[fr.win] = np.where(on[..., None], np.moveaxis(part_rgb, 0, -1), linear[fr.win])
    ids, focus = np.zeros((height, width), np.uint8), np.zeros((height, width), bool)
    ids[fr.win], focus[fr.win] = part_ids, on
    linear *= _image_nuisance(nuisance, size)[..., None]
    image, ids = _camera(sc.optics, linear, focus, ids, sensor)
    return image, _boxes(ids, count)
