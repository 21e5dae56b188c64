"""The "shaded" factory renderer: parts as height, albedo and roughness maps lit by a reflectance model.

Written independently of the "paint" renderer (:mod:`pipelines.lines.factory.synth`), so that a model can be
trained on one and tested on the other. A part is a signed-distance outline (plate, disc, ring, bracket, gear;
holes, bosses, ribs, pockets, chamfered or filleted edges) standing on a conveyor belt. Its height map carries the
machining (brushed, turned, face-milled, cast), warps, engraved serials and the defects as geometry: scratches are
grooves with a burr, dents smooth depressions, cracks narrow deep gaps with a step across. Its albedo and roughness
maps carry the material (metals, anodised and painted finishes, plastics, rubber, ceramic, cast iron; procedural
noise and scikit-image's CC0 texture photos) and contamination (oil, rust, powder, droplets, fibres). Normals from
the height gradient are lit by one or two lights (Lambert plus an anisotropic Ward lobe, an environment gradient
for metals, cavity occlusion, cast shadows), and the frame passes through a camera: perspective tilt, barrel
distortion, lateral chromatic aberration, defocus, motion blur along the belt, vignetting, a Bayer mosaic with
shot and read noise, white balance, exposure, gamma and JPEG.

Sizes are stated for a 640x480 frame and scale with the frame's shorter side.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from pipelines.lines.factory.synth import DEFECTS, Box

_F = np.float32


# ------------------------------------------------------------------------------------------------------ helpers
def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: float, octaves: int = 3) -> np.ndarray:
    """Smooth fractal noise ``(H, W)`` float32 of roughly unit spread; ``cell`` is the coarsest feature size."""
    h, w = shape
    out = np.zeros(shape, _F)
    for o in range(octaves):
        c = max(cell / 2 ** o, 1.5)
        grid = rng.standard_normal((int(h / c) + 2, int(w / c) + 2), dtype=_F)
        out += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) * _F(0.6 ** o)
    return out


def _profile(rng: np.random.Generator, coord: np.ndarray, period: float, smooth: float = 0.0) -> np.ndarray:
    """A random 1-D profile sampled at ``coord`` (any shape): features ``period`` pixels apart."""
    lo, hi = float(coord.min()), float(coord.max())
    n = int((hi - lo) / period) + 3
    values = rng.standard_normal(n).astype(_F)
    if smooth > 0:
        values = cv2.GaussianBlur(values[None], (0, 0), smooth)[0]
    return np.interp(coord, lo + period * np.arange(n) - period, values).astype(_F)


def warm_up() -> None:
    """Load the texture photos now (before forking workers, which then share them)."""
    _photos()


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-image's CC0 texture photos (brick, grass, gravel, moon), standardised float32 ``(512, 512)``."""
    from skimage import data

    out = []
    for name in ("brick", "grass", "gravel", "moon"):
        img = getattr(data, name)().astype(_F)
        out.append((img - img.mean()) / (img.std() + 1e-6))
    return tuple(out)


def _photo(rng: np.random.Generator, shape: tuple[int, int], zoom: float) -> np.ndarray:
    """A rotated, scaled crop ``(H, W)`` of a random texture photo (``zoom`` photo pixels per frame pixel)."""
    img = _photos()[rng.integers(len(_photos()))]
    h, w = shape
    a = rng.uniform(0, 2 * np.pi)
    rot = zoom * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shift = rng.uniform(0, 512, 2) - rot @ (w / 2, h / 2)  # frame centre looks at a random photo point
    m = np.hstack([rot, shift[:, None]])
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


def _kelvin(t: float) -> np.ndarray:
    """BGR tint of a light of colour temperature ``t`` kelvin (2700..7500), green = 1."""
    x = np.clip((t - 2700) / 4800, 0, 1)
    return np.array([0.55 + 0.55 * x, 1.0, 1.25 - 0.3 * x], _F)


def _hsv_bgr(hue: float, sat: float, val: float) -> np.ndarray:
    px = np.array([[[hue * 179, sat * 255, val * 255]]], np.uint8)
    return (cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0] / 255.0).astype(_F) ** 2.2  # to linear


# ------------------------------------------------------------------------------------------------------ surface
@dataclass
class _Surface:
    """The scene as maps over the working canvas ``(H, W)``: height in pixels, linear albedo ``(H, W, 3)``,
    Ward roughness, metalness, the soft part mask and its signed distance (negative inside), the brushing
    tangent ``(tx, ty)`` with the roughness ratio along/across it, and the part's top height."""

    h: np.ndarray
    albedo: np.ndarray
    rough: np.ndarray
    metal: np.ndarray
    mask: np.ndarray
    sdf: np.ndarray
    tangent: tuple[np.ndarray | float, np.ndarray | float]
    aniso: float
    top: float
    unit: float  # pixels per 640x480 pixel

    @property
    def shape(self) -> tuple[int, int]:
        return self.h.shape  # type: ignore[return-value]

    def roi(self, x: float, y: float, rx: float, ry: float) -> tuple[slice, slice] | None:
        """The canvas region around ``(x, y)`` of half-size ``(rx, ry)``, clipped (None when empty)."""
        h, w = self.shape
        x0, x1 = max(int(x - rx), 0), min(int(np.ceil(x + rx)) + 1, w)
        y0, y1 = max(int(y - ry), 0), min(int(np.ceil(y + ry)) + 1, h)
        return (slice(y0, y1), slice(x0, x1)) if x1 > x0 + 1 and y1 > y0 + 1 else None

    def interior(self, rng: np.random.Generator, margin: float) -> tuple[float, float]:
        """A random point on the part at least ``margin`` pixels inside its outline (or the deepest point)."""
        step = 4
        sub = self.sdf[::step, ::step]
        ys, xs = np.nonzero(sub < -margin)
        if len(xs) == 0:
            ys, xs = np.unravel_index(np.argsort(sub, axis=None)[:16], sub.shape)
        j = rng.integers(len(xs))
        return float(xs[j] * step + rng.uniform(0, step)), float(ys[j] * step + rng.uniform(0, step))


@dataclass
class _Material:
    colour: np.ndarray  # linear BGR
    rough: float
    metal: float
    finish: str  # brushed | turned | milled | cast | smooth
    texture: float  # strength of the photo texture in albedo
    aniso: float


def _material(rng: np.random.Generator, turned_shape: bool) -> _Material:
    kind = rng.choice(["steel", "aluminium", "brass", "anodised", "painted", "plastic", "rubber", "ceramic",
                       "cast_iron"], p=[0.18, 0.16, 0.05, 0.1, 0.12, 0.14, 0.07, 0.06, 0.12])
    machined = "turned" if turned_shape and rng.random() < 0.7 else rng.choice(["brushed", "milled", "smooth"])
    grey = rng.uniform(0.5, 0.8)
    table: dict[str, tuple[np.ndarray, float, float, str, float]] = {
        "steel": (np.array([grey, grey, grey * rng.uniform(0.95, 1.02)]), _log_uniform(rng, 0.08, 0.3), 1.0,
                  machined, rng.uniform(0, 0.1)),
        "aluminium": (np.array([0.9, 0.88, 0.86]) * rng.uniform(0.85, 1.0), _log_uniform(rng, 0.1, 0.35), 1.0,
                      machined, rng.uniform(0, 0.1)),
        "brass": (np.array([0.35, 0.65, 0.85]) * rng.uniform(0.8, 1.0), _log_uniform(rng, 0.1, 0.3), 1.0,
                  machined, rng.uniform(0, 0.08)),
        "anodised": (_hsv_bgr(rng.choice([0.6, 0.0, 0.08, 0.33, 0.75, 0.12]), rng.uniform(0.5, 0.9),
                              rng.uniform(0.35, 0.85)), rng.uniform(0.15, 0.4), 0.6, machined, rng.uniform(0, 0.06)),
        "painted": (_hsv_bgr(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.3, 0.95)),
                    rng.uniform(0.15, 0.5), 0.0, "smooth", rng.uniform(0, 0.08)),
        "plastic": (_hsv_bgr(rng.uniform(0, 1), rng.uniform(0, 0.8), rng.uniform(0.15, 0.95)),
                    rng.uniform(0.1, 0.5), 0.0, "smooth", rng.uniform(0, 0.05)),
        "rubber": (np.full(3, rng.uniform(0.03, 0.1)), rng.uniform(0.5, 0.8), 0.0, "cast", rng.uniform(0, 0.15)),
        "ceramic": (np.array([0.8, 0.85, 0.88]) * rng.uniform(0.75, 1.0), rng.uniform(0.2, 0.45), 0.0, "smooth",
                    rng.uniform(0.02, 0.1)),
        "cast_iron": (np.full(3, rng.uniform(0.18, 0.35)), rng.uniform(0.35, 0.6), 0.7, "cast",
                      rng.uniform(0.1, 0.3)),
    }
    colour, rough, metal, finish, texture = table[str(kind)]
    aniso = rng.uniform(2.0, 5.0) if finish in ("brushed", "turned") else 1.0
    return _Material(np.asarray(colour, _F), float(rough), metal, str(finish), float(texture), aniso)


# ------------------------------------------------------------------------------------------------------ geometry
def _rounded_box(u: np.ndarray, v: np.ndarray, a: float, b: float, r: float) -> np.ndarray:
    """Signed distance to a rectangle of half-sizes ``(a, b)`` with corner radius ``r``."""
    qx, qy = np.abs(u) - (a - r), np.abs(v) - (b - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def _circle(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
    return np.sqrt((u - cu) ** 2 + (v - cv) ** 2) - r


@dataclass
class _Design:
    """A part in its own frame: signed distance of the outline, raised features (bosses, ribs) and pockets."""

    sdf: np.ndarray
    raised: list[tuple[np.ndarray, float]]  # (signed distance, extra height)
    turned: bool  # rotationally symmetric: turning marks about the centre


def _design(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, size: float) -> _Design:
    """One of plate, disc, ring, bracket or gear of about ``size`` pixels across, with holes and features."""
    shape = rng.choice(["plate", "disc", "ring", "bracket", "gear"], p=[0.3, 0.2, 0.15, 0.2, 0.15])
    raised: list[tuple[np.ndarray, float]] = []
    holes: list[np.ndarray] = []
    if shape in ("plate", "bracket"):
        a, b = size / 2, size / 2 * rng.uniform(0.45, 0.8)
        r = rng.uniform(0.02, 0.3) * b
        sdf = _rounded_box(u, v, a, b, r)
        if shape == "bracket":  # an L: the plate with a corner cut away
            cut = _rounded_box(u - a * 0.55, v - b * 0.5, a * 0.5, b * 0.55, r * 0.5)
            sdf = np.maximum(sdf, -cut)
            corners = [(-0.7 * a, -0.6 * b), (-0.7 * a, 0.6 * b), (0.7 * a, -0.6 * b)]
        else:
            corners = [(sx * 0.78 * a, sy * 0.7 * b) for sx in (-1, 1) for sy in (-1, 1)]
        hole_r = rng.uniform(0.05, 0.12) * b
        for cu, cv in corners:
            if rng.random() < 0.75:
                holes.append(_circle(u, v, cu, cv, hole_r))
        if rng.random() < 0.4:  # a slot
            holes.append(_rounded_box(u - rng.uniform(-0.3, 0.1) * a, v, rng.uniform(0.1, 0.25) * a, hole_r, hole_r))
        if rng.random() < 0.4:  # a boss
            raised.append((_circle(u, v, rng.uniform(-0.4, 0.4) * a, rng.uniform(-0.3, 0.3) * b,
                                   rng.uniform(0.12, 0.25) * b), rng.uniform(0.2, 0.5)))
        if rng.random() < 0.35:  # a rib along the plate
            raised.append((_rounded_box(u, v - rng.uniform(-0.4, 0.4) * b, 0.6 * a, rng.uniform(0.03, 0.07) * b,
                                        2.0), rng.uniform(0.15, 0.4)))
        if rng.random() < 0.25:  # a shallow pocket
            raised.append((_rounded_box(u + 0.2 * a, v, 0.25 * a, 0.3 * b, 0.1 * b), -rng.uniform(0.15, 0.35)))
    else:
        radius = size / 2
        r = np.sqrt(u * u + v * v)
        if shape == "gear":
            teeth = int(rng.integers(12, 40))
            depth = rng.uniform(0.05, 0.1) * radius
            theta = np.arctan2(v, u)
            wave = np.clip(np.cos(teeth * theta) * 2.5, -1, 1)
            sdf = r - (radius - depth + depth * wave)
        else:
            sdf = r - radius
        bore = rng.uniform(0.15, 0.5 if shape == "ring" else 0.3) * radius
        if shape == "ring" or rng.random() < 0.8:
            holes.append(r - bore)
        if shape == "disc" and rng.random() < 0.7:  # a bolt circle
            n = int(rng.integers(3, 9))
            pitch = rng.uniform(0.55, 0.75) * radius
            phase = rng.uniform(0, 2 * np.pi)
            hr = rng.uniform(0.05, 0.09) * radius
            for k in range(n):
                ang = phase + 2 * np.pi * k / n
                holes.append(_circle(u, v, pitch * np.cos(ang), pitch * np.sin(ang), hr))
        if rng.random() < 0.4:  # a hub around the bore
            raised.append((r - bore * rng.uniform(1.4, 1.9), rng.uniform(0.2, 0.5)))
    for hole in holes:
        sdf = np.maximum(sdf, -hole)
    return _Design(sdf.astype(_F), raised, bool(shape in ("disc", "ring", "gear")))


def _layout(rng: np.random.Generator, w: int, h: int) -> tuple[_Surface, float]:
    """The part on its belt, before nuisance and defects; also the belt direction (radians)."""
    unit = min(w, h) / 480
    yy, xx = np.mgrid[0:h, 0:w].astype(_F)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.08, 0.08) * h
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    design = _design(rng, u, v, min(w, h) * rng.uniform(0.55, 0.85))
    mat = _material(rng, design.turned)
    top = rng.uniform(8, 30) * unit
    bevel = rng.uniform(1.5, 8) * unit
    fillet = rng.random() < 0.5
    t = np.clip(-design.sdf / bevel, 0, 1)
    part_h = top * (np.sqrt(1 - (1 - t) ** 2) if fillet else t)
    for dist, extra in design.raised:
        part_h += _F(extra * top) * np.clip(-dist / (bevel * 0.7), 0, 1)
    mask = np.clip(0.5 - design.sdf, 0, 1).astype(_F)

    # machining texture in height, and the tangent the roughness is stretched along
    r = np.sqrt(u * u + v * v)
    tangent: tuple[np.ndarray | float, np.ndarray | float] = (float(c), float(s))
    fine = _F(rng.uniform(0.03, 0.2) * unit)
    if mat.finish == "turned":
        part_h += fine * _profile(rng, r, rng.uniform(0.7, 2.0) * unit, smooth=0.6)
        tangent = ((-v / np.maximum(r, 1)).astype(_F), (u / np.maximum(r, 1)).astype(_F))
    elif mat.finish == "brushed":
        part_h += fine * _profile(rng, v, rng.uniform(0.6, 1.5) * unit)
        part_h += fine * 0.3 * _noise(rng, (h, w), 3 * unit, 2)
    elif mat.finish == "milled":  # face-mill arcs from a cutter centre off the part
        off = min(w, h) * rng.uniform(0.6, 1.5)
        d = np.sqrt((u + off) ** 2 + v ** 2)
        part_h += fine * 2 * np.sin(d * _F(2 * np.pi / (rng.uniform(3, 8) * unit)))
    else:
        part_h += fine * _noise(rng, (h, w), rng.uniform(1.5, 4) * unit, 2) * (3 if mat.finish == "cast" else 0.5)
    if mat.finish == "cast" or rng.random() < 0.3:  # photo texture as fine relief
        part_h += _F(rng.uniform(0.05, 0.2) * unit) * _photo(rng, (h, w), rng.uniform(0.5, 2.0))
    part_h += _F(rng.uniform(0, 2.5) * unit) * _noise(rng, (h, w), min(w, h) / 2, 2)  # a slight warp

    albedo_var = 1 + _F(rng.uniform(0.03, 0.12)) * _noise(rng, (h, w), rng.uniform(20, 120) * unit)
    albedo_var += _F(mat.texture) * np.tanh(_photo(rng, (h, w), rng.uniform(0.4, 1.5)))
    part_albedo = mat.colour[None, None, :] * np.clip(albedo_var, 0.2, 2)[..., None]
    part_rough = mat.rough * np.clip(1 + 0.08 * _noise(rng, (h, w), 30 * unit, 2), 0.7, 1.3)

    belt_h, belt_albedo, belt_rough, belt_metal, belt_dir = _belt(rng, w, h, xx, yy, unit)
    m3 = mask[..., None]
    surface = _Surface(
        h=(belt_h + mask * part_h).astype(_F),
        albedo=(belt_albedo * (1 - m3) + part_albedo * m3).astype(_F),
        rough=(belt_rough * (1 - mask) + part_rough * mask).astype(_F),
        metal=(belt_metal * (1 - mask) + _F(mat.metal) * mask).astype(_F),
        mask=mask, sdf=design.sdf, tangent=tangent, aniso=mat.aniso, top=top, unit=unit,
    )
    return surface, belt_dir


def _belt(rng: np.random.Generator, w: int, h: int, xx: np.ndarray, yy: np.ndarray, unit: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """A conveyor belt (rubber, fabric, PVC or modular plastic) with side rails: height, albedo, roughness,
    metalness and the belt's running direction."""
    along_x = rng.random() < 0.6
    direction = 0.0 if along_x else np.pi / 2
    along, across = (xx, yy) if along_x else (yy, xx)
    extent = h if along_x else w
    kind = rng.choice(["rubber", "fabric", "pvc", "modular"])
    colour = {
        "rubber": np.full(3, rng.uniform(0.02, 0.08)),
        "fabric": _hsv_bgr(rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.25, 0.6)),
        "pvc": _hsv_bgr(rng.choice([0.33, 0.6, 0.0]), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.6)),
        "modular": _hsv_bgr(rng.uniform(0, 1), rng.uniform(0, 0.6), rng.uniform(0.3, 0.9)),
    }[str(kind)]
    height = _F(0.4 * unit) * _noise(rng, (h, w), 2 * unit, 2)
    tone = 1 + _F(0.15) * _noise(rng, (h, w), 40 * unit, 2)
    if kind == "fabric":
        weave = _F(2 * np.pi / (3 * unit))
        height += _F(0.3 * unit) * np.sin(along * weave) * np.sin(across * weave)
    elif kind == "modular":  # plastic links: grooves across the belt
        pitch = rng.uniform(25, 60) * unit
        phase = (along - rng.uniform(0, pitch)) % pitch
        height -= _F(2 * unit) * (phase < 2 * unit)
        tone -= _F(0.2) * (phase < 2 * unit)
    else:
        tone += _F(0.08) * _profile(rng, across, 4 * unit, smooth=1.0)  # wear streaks along the belt
    if rng.random() < 0.4:
        tone += _F(0.3) * _photo(rng, (h, w), rng.uniform(0.5, 2)) * _F(rng.uniform(0.1, 0.5))
    albedo = colour[None, None, :] * np.clip(tone, 0.3, 2)[..., None]
    rough = np.full((h, w), rng.uniform(0.3, 0.7), _F)
    metal = np.zeros((h, w), _F)
    rail = rng.uniform(0, 0.08) * extent  # side rails: brushed steel cylinders along the belt
    if rail > 4:
        for edge in (across, extent - across):
            inside = np.clip(1 - edge / rail, 0, 1)
            height = height + _F(12 * unit) * np.sqrt(np.clip(1 - (1 - inside) ** 2, 0, 1)) * (inside > 0)
            on_rail = inside > 0
            albedo = np.where(on_rail[..., None], _F(0.6), albedo)
            metal = np.maximum(metal, on_rail.astype(_F))
            rough = np.where(on_rail, _F(0.15), rough)
    return height, albedo.astype(_F), rough, metal, direction


# ------------------------------------------------------------------------------------------------------ nuisance
def _nuisance(rng: np.random.Generator, s: _Surface) -> None:
    """Benign marks on every part: an engraved serial, chatter marks, faint stains, specks too small to count."""
    h, w = s.shape
    u = s.unit
    if rng.random() < 0.8:  # engraved serial
        text = "".join(rng.choice(list(string.ascii_uppercase + string.digits), int(rng.integers(3, 9))))
        scale = rng.uniform(0.35, 0.8) * u
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        patch = np.zeros((th * 2 + 4, tw + 4), np.uint8)
        cv2.putText(patch, text, (2, th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, int(u)), cv2.LINE_AA)
        x, y = s.interior(rng, max(tw, th) * 0.6)
        m = cv2.getRotationMatrix2D((tw / 2 + 2, th + 2), rng.uniform(-180, 180), 1.0)
        m[:, 2] += (x - tw / 2 - 2, y - th - 2)
        glyphs = cv2.warpAffine(patch, m, (w, h)).astype(_F) / 255 * s.mask
        s.h -= _F(rng.uniform(0.4, 1.5) * u) * cv2.GaussianBlur(glyphs, (0, 0), 0.6)
        s.albedo *= (1 - _F(rng.uniform(0, 0.3)) * glyphs)[..., None]
    for _ in range(int(rng.integers(0, 3))):  # chatter / tool marks: a patch of fine regular ripples
        x, y = s.interior(rng, 10 * u)
        rx, ry = rng.uniform(15, 70) * u, rng.uniform(10, 40) * u
        roi = s.roi(x, y, rx, ry)
        if roi is None:
            continue
        yy, xx = np.mgrid[roi[0], roi[1]].astype(_F)
        a = rng.uniform(0, np.pi)
        t = (xx - x) * np.cos(a) + (yy - y) * np.sin(a)
        window = np.exp(-((xx - x) ** 2 / rx ** 2 + (yy - y) ** 2 / ry ** 2) * 2)
        ripple = np.sin(t * _F(2 * np.pi / (rng.uniform(2, 5) * u)))
        s.h[roi] += _F(rng.uniform(0.05, 0.25) * u) * ripple * window * s.mask[roi]
    for _ in range(int(rng.integers(0, 3))):  # faint stain: a low-contrast albedo blotch
        x, y = s.interior(rng, 0)
        r = rng.uniform(15, 80) * u
        roi = s.roi(x, y, r, r)
        if roi is None:
            continue
        blob = _blob(rng, roi, x, y, r, r * rng.uniform(0.4, 1), rng.uniform(0, np.pi), 0.5) * s.mask[roi]
        s.albedo[roi] *= (1 + _F(rng.uniform(-0.07, 0.05)) * blob)[..., None]
    n = int(rng.integers(5, 60))  # dust specks, one pixel or so
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    s.albedo[ys, xs] = s.albedo[ys, xs] * _F(0.5) + _F(rng.uniform(0.1, 0.6))


def _blob(rng: np.random.Generator, roi: tuple[slice, slice], x: float, y: float, rx: float, ry: float,
          angle: float, raggedness: float) -> np.ndarray:
    """A soft-edged irregular patch ``(h, w)`` in 0..1 over ``roi``, centred at ``(x, y)``."""
    yy, xx = np.mgrid[roi[0], roi[1]].astype(_F)
    c, s = np.cos(angle), np.sin(angle)
    du, dv = (xx - x) * c + (yy - y) * s, -(xx - x) * s + (yy - y) * c
    g = np.exp(-(du ** 2 / rx ** 2 + dv ** 2 / ry ** 2) * 1.5)
    shape = (roi[0].stop - roi[0].start, roi[1].stop - roi[1].start)
    g = g * (1 + _F(raggedness) * _noise(rng, shape, max(min(rx, ry) / 2, 2), 2))
    return np.clip((g - 0.35) * 4, 0, 1).astype(_F)


# ------------------------------------------------------------------------------------------------------ defects
# A drawer changes the surface around one place and returns the defect's footprint as (x0, y0, x1, y1) in canvas
# pixels, or None when it fell off the part.
_Extent = tuple[float, float, float, float]


def _footprint(roi: tuple[slice, slice], change: np.ndarray, level: float) -> _Extent | None:
    ys, xs = np.nonzero(change > level)
    if len(xs) == 0:
        return None
    return (roi[1].start + xs.min(), roi[0].start + ys.min(), roi[1].start + xs.max() + 1, roi[0].start + ys.max() + 1)


def _curve(rng: np.random.Generator, x: float, y: float, length: float, bend: float) -> np.ndarray:
    """A quadratic Bezier ``(32, 2)`` centred at ``(x, y)``."""
    a = rng.uniform(0, np.pi)
    d = np.array([np.cos(a), np.sin(a)]) * length / 2
    nrm = np.array([-d[1], d[0]])
    p0, p2 = np.array([x, y]) - d, np.array([x, y]) + d
    p1 = np.array([x, y]) + nrm * bend
    t = np.linspace(0, 1, 32)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _distance_to(points: list[np.ndarray], roi: tuple[slice, slice], thickness: int = 1) -> np.ndarray:
    """Distance ``(h, w)`` float32 from each ROI pixel to the polylines ``points`` (canvas coordinates)."""
    shape = (roi[0].stop - roi[0].start, roi[1].stop - roi[1].start)
    lines = np.full(shape, 255, np.uint8)
    off = np.array([roi[1].start, roi[0].start])
    cv2.polylines(lines, [np.round((p - off) * 4).astype(np.int32) for p in points], False, 0, thickness,
                  cv2.LINE_8, shift=2)
    return cv2.distanceTransform(lines, cv2.DIST_L2, 5)


def _scratch(rng: np.random.Generator, s: _Surface) -> _Extent | None:
    u = s.unit
    length = _log_uniform(rng, 12, 220) * u
    x, y = s.interior(rng, 6 * u)
    width = max(rng.uniform(0.6, 1.8) * u, 0.6)
    depth = width * _log_uniform(rng, 0.8, 4.0)
    n = 1 if rng.random() < 0.65 else int(rng.integers(2, 5))
    spacing = rng.uniform(2, 6) * u
    base = _curve(rng, x, y, length, rng.uniform(-0.25, 0.25) * length)
    tang = np.gradient(base, axis=0)
    nrm = np.stack([-tang[:, 1], tang[:, 0]], 1) / (np.linalg.norm(tang, axis=1, keepdims=True) + 1e-6)
    curves = [base + nrm * spacing * (k - (n - 1) / 2) + rng.uniform(-1, 1) * u for k in range(n)]
    pts = np.concatenate(curves)
    pad = 6 * width + 3
    roi = s.roi((pts[:, 0].min() + pts[:, 0].max()) / 2, (pts[:, 1].min() + pts[:, 1].max()) / 2,
                np.ptp(pts[:, 0]) / 2 + pad, np.ptp(pts[:, 1]) / 2 + pad)
    if roi is None:
        return None
    d = _distance_to(curves, roi)
    groove = np.exp(-0.5 * (d / width) ** 2)
    burr = rng.uniform(0, 0.4) * np.exp(-0.5 * ((d - 2.2 * width) / width) ** 2)
    m = s.mask[roi]
    s.h[roi] += _F(depth) * (burr - groove) * m
    s.rough[roi] *= 1 - _F(rng.uniform(-0.3, 0.5)) * groove * m  # burnished or torn groove floor
    s.albedo[roi] *= (1 - _F(rng.uniform(0, 0.35)) * groove * m)[..., None]  # grime caught in the groove
    if rng.random() < 0.3:  # through a coating: the bare substrate shows
        bare = groove * m * _F(rng.uniform(0.2, 0.7))
        s.albedo[roi] += (_F(rng.uniform(0.3, 0.7)) - s.albedo[roi]) * bare[..., None]
    return _footprint(roi, groove * m, 0.3)


def _dent(rng: np.random.Generator, s: _Surface) -> _Extent | None:
    u = s.unit
    radius = _log_uniform(rng, 8, 60) * u
    x, y = s.interior(rng, radius * 0.5)
    stretch = 1 if rng.random() < 0.6 else rng.uniform(1.3, 3)
    rx, ry = radius * stretch, radius
    roi = s.roi(x, y, rx * 1.4, rx * 1.4)
    if roi is None:
        return None
    yy, xx = np.mgrid[roi[0], roi[1]].astype(_F)
    a = rng.uniform(0, np.pi)
    du = ((xx - x) * np.cos(a) + (yy - y) * np.sin(a)) / rx
    dv = (-(xx - x) * np.sin(a) + (yy - y) * np.cos(a)) / ry
    q = du ** 2 + dv ** 2
    depth = radius * _log_uniform(rng, 0.15, 0.8)
    bowl = np.exp(-2.5 * q) if rng.random() < 0.5 else np.clip(1 - q, 0, 1) ** 1.5  # gaussian or spherical-cap-ish
    rim = rng.uniform(0, 0.25) * np.exp(-((np.sqrt(q) - 1.05) / 0.2) ** 2)
    m = s.mask[roi]
    s.h[roi] += _F(depth) * (rim - bowl) * m
    s.rough[roi] *= 1 - _F(rng.uniform(0, 0.3)) * bowl * m
    return _footprint(roi, bowl * m, 0.1)


def _jagged(rng: np.random.Generator, start: np.ndarray, angle: float, steps: int, step: float) -> np.ndarray:
    heading = angle + np.cumsum(rng.normal(0, 0.45, steps))
    heading = angle + 0.6 * (heading - angle)  # keep a general direction
    moves = np.stack([np.cos(heading), np.sin(heading)], 1) * step * rng.uniform(0.6, 1.4, (steps, 1))
    return start + np.concatenate([[[0, 0]], np.cumsum(moves, 0)])


def _crack(rng: np.random.Generator, s: _Surface) -> _Extent | None:
    u = s.unit
    step = rng.uniform(2, 5) * u
    steps = int(_log_uniform(rng, 5, 50))
    x, y = s.interior(rng, 4 * u)
    angle = rng.uniform(0, 2 * np.pi)
    main = _jagged(rng, np.array([x, y]), angle, steps, step)
    lines = [main]
    for _ in range(int(rng.integers(0, 4))):  # branches
        at = main[rng.integers(len(main))]
        lines.append(_jagged(rng, at, angle + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2),
                             max(2, int(steps * rng.uniform(0.2, 0.6))), step * 0.8))
    pts = np.concatenate(lines)
    gap = rng.uniform(0.4, 1.5) * u
    pad = gap + 6 * u + 2
    roi = s.roi((pts[:, 0].min() + pts[:, 0].max()) / 2, (pts[:, 1].min() + pts[:, 1].max()) / 2,
                np.ptp(pts[:, 0]) / 2 + pad, np.ptp(pts[:, 1]) / 2 + pad)
    if roi is None:
        return None
    d = _distance_to(lines, roi)
    m = s.mask[roi]
    opening = np.clip(gap + 0.5 - d, 0, 1) * m
    halo = np.exp(-d / (rng.uniform(0.8, 3) * u)) * m
    yy, xx = np.mgrid[roi[0], roi[1]].astype(_F)
    side = ((xx - x) * -np.sin(angle) + (yy - y) * np.cos(angle)) > 0  # one lip stands higher
    s.h[roi] -= _F(rng.uniform(2, 6) * u) * opening
    s.h[roi] += _F(rng.uniform(0, 0.6) * u) * side * halo
    s.albedo[roi] *= (1 - _F(rng.uniform(0.75, 0.97)) * opening - _F(rng.uniform(0, 0.25)) * halo)[..., None]
    return _footprint(roi, opening, 0.3)


_RUST = np.array([0.03, 0.12, 0.35], _F)


def _contamination(rng: np.random.Generator, s: _Surface) -> _Extent | None:
    u = s.unit
    kind = rng.choice(["oil", "rust", "powder", "droplets", "fibre"], p=[0.25, 0.25, 0.2, 0.15, 0.15])
    radius = _log_uniform(rng, 10, 80) * u
    x, y = s.interior(rng, radius * 0.3)
    if kind == "fibre":
        pts = _curve(rng, x, y, radius * 2.5, rng.uniform(-0.5, 0.5) * radius)
        pts += np.cumsum(rng.normal(0, 0.4 * u, pts.shape), 0)
        roi = s.roi(x, y, np.ptp(pts[:, 0]) / 2 + 6 * u, np.ptp(pts[:, 1]) / 2 + 6 * u)
        if roi is None:
            return None
        centre = np.array([(pts[:, 0].min() + pts[:, 0].max()) / 2, (pts[:, 1].min() + pts[:, 1].max()) / 2])
        roi = s.roi(*centre, np.ptp(pts[:, 0]) / 2 + 6 * u, np.ptp(pts[:, 1]) / 2 + 6 * u)
        assert roi is not None
        cover = np.exp(-0.5 * (_distance_to([pts], roi) / (rng.uniform(0.4, 1.0) * u)) ** 2)
        tint = np.full(3, rng.choice([0.02, 0.6]) * rng.uniform(0.5, 1.5), _F)
        lift, rough = 0.8 * u, 0.6
    elif kind == "droplets":
        roi = s.roi(x, y, radius * 1.3, radius * 1.3)
        if roi is None:
            return None
        yy, xx = np.mgrid[roi[0], roi[1]].astype(_F)
        cover = np.zeros_like(yy)
        for _ in range(int(rng.integers(1, 12))):
            dx, dy = rng.normal(0, radius * 0.4, 2)
            rr = rng.uniform(1.5, 8) * u
            q = ((xx - x - dx) ** 2 + (yy - y - dy) ** 2) / rr ** 2
            cover = np.maximum(cover, np.sqrt(np.clip(1 - q, 0, 1)))
        tint = s.albedo[roi].mean((0, 1)) * _F(rng.uniform(0.5, 0.9))
        lift, rough = rng.uniform(1, 3) * u, 0.03
    elif kind == "powder":
        roi = s.roi(x, y, radius * 1.3, radius * 1.3)
        if roi is None:
            return None
        shape = (roi[0].stop - roi[0].start, roi[1].stop - roi[1].start)
        n = int(rng.integers(30, 400))
        dots = np.zeros(shape, _F)
        xs = np.clip(rng.normal(x - roi[1].start, radius * 0.4, n), 0, shape[1] - 1).astype(int)
        ys = np.clip(rng.normal(y - roi[0].start, radius * 0.4, n), 0, shape[0] - 1).astype(int)
        dots[ys, xs] = 1
        cover = np.clip(cv2.GaussianBlur(dots, (0, 0), rng.uniform(0.6, 1.5) * u) * 4, 0, 1)
        cover = np.maximum(cover, 0.5 * _blob(rng, roi, x, y, radius * 0.6, radius * 0.5, 0, 0.8))
        tint = _hsv_bgr(rng.uniform(0.05, 0.15), rng.uniform(0, 0.3), rng.uniform(0.5, 0.95))
        lift, rough = 0.5 * u, 0.9
    else:  # oil film or rust
        ry = radius * rng.uniform(0.4, 1)
        roi = s.roi(x, y, radius * 1.2, radius * 1.2)
        if roi is None:
            return None
        cover = _blob(rng, roi, x, y, radius, ry, rng.uniform(0, np.pi), 0.6 if kind == "oil" else 1.0)
        if kind == "oil":
            cover = cv2.GaussianBlur(cover, (0, 0), max(1.0, radius * 0.08))
            tint = s.albedo[roi].mean((0, 1)) * _F(rng.uniform(0.2, 0.7))
            lift, rough = 0.2 * u, 0.03
        else:
            shape = cover.shape
            tint = _RUST * np.clip(1 + 0.4 * _noise(rng, shape, 3 * u, 2), 0.3, 2)[..., None]
            lift, rough = 0.0, 0.85
            s.h[roi] += _F(0.6 * u) * _noise(rng, shape, 1.5 * u, 2) * cover * s.mask[roi]
    strength = _F(rng.uniform(0.45, 1.0))
    cover = cover * s.mask[roi] * strength
    c3 = cover[..., None]
    s.albedo[roi] = s.albedo[roi] * (1 - c3) + tint * c3
    s.rough[roi] += (_F(rough) - s.rough[roi]) * cover
    s.metal[roi] *= 1 - cover
    s.h[roi] += _F(lift) * cover
    return _footprint(roi, cover, 0.15)


_DRAWERS: dict[str, Callable[[np.random.Generator, _Surface], _Extent | None]] = {
    "scratch": _scratch, "dent": _dent, "crack": _crack, "contamination": _contamination,
}


# ------------------------------------------------------------------------------------------------------ light
@dataclass
class _Light:
    direction: np.ndarray  # unit (x, y, z) from the frame centre, z towards the camera
    distance: float  # in frame diagonals: a near light's direction and strength vary across the frame
    colour: np.ndarray  # BGR
    casts: bool  # casts the part's shadow on the belt


@dataclass
class _Lighting:
    lights: list[_Light]
    ambient: np.ndarray  # BGR
    spec: float  # specular strength
    env_dir: np.ndarray  # environment gradient's bright direction in the image plane
    env: float  # environment reflection strength for metals
    env_edge: float  # where the bright side of the environment starts
    camera_height: float  # in frame diagonals: the view direction tilts towards the frame's edges
    falloff: tuple[float, float, float]  # linear gradient (x, y) and radial falloff across the frame
    fixture: tuple[float, float, float, float]  # fixture shadow: angle, offset, width, darkness


def _lighting(rng: np.random.Generator) -> _Lighting:
    def light(elev_deg: tuple[float, float], power: float, casts: bool = True) -> _Light:
        az, el = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(*elev_deg))
        d = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)], _F)
        return _Light(d, _log_uniform(rng, 0.6, 4.0), _kelvin(rng.uniform(2700, 7500)) * _F(power), casts)

    setup = rng.choice(["key", "two", "ring", "dome", "raking"], p=[0.3, 0.25, 0.15, 0.15, 0.15])
    if setup == "key":
        lights, ambient = [light((30, 70), rng.uniform(0.8, 1.2))], rng.uniform(0.1, 0.3)
    elif setup == "two":
        lights = [light((30, 70), rng.uniform(0.6, 1.0)), light((15, 60), rng.uniform(0.2, 0.6))]
        ambient = rng.uniform(0.08, 0.2)
    elif setup == "ring":
        lights, ambient = [light((75, 89), rng.uniform(0.6, 0.9))], rng.uniform(0.2, 0.4)
    elif setup == "dome":
        lights, ambient = [light((60, 89), rng.uniform(0.3, 0.5), casts=False)], rng.uniform(0.45, 0.7)
    else:
        lights, ambient = [light((8, 25), rng.uniform(1.0, 1.6))], rng.uniform(0.1, 0.25)
    return _Lighting(
        lights=lights,
        ambient=_kelvin(rng.uniform(3500, 7000)) * _F(ambient),
        spec=rng.uniform(0.3, 1.0),
        env_dir=np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)], _F),
        env=rng.uniform(0.3, 1.0),
        env_edge=rng.uniform(-0.3, 0.3),
        camera_height=rng.uniform(0.8, 2.5),
        falloff=(rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0, 0.5)),
        fixture=(rng.uniform(0, np.pi), rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.25),
                 rng.uniform(0.3, 0.8) if rng.random() < 0.4 else 0.0),
    )


def _shade(s: _Surface, lit: _Lighting) -> np.ndarray:
    """Linear radiance ``(H, W, 3)`` float32 of the surface under ``lit`` seen from straight above."""
    h, w = s.shape
    gy, gx = np.gradient(s.h)
    nz = 1 / np.sqrt(gx * gx + gy * gy + 1)
    nx, ny = -gx * nz, -gy * nz
    cavity = cv2.GaussianBlur(s.h, (0, 0), 6 * s.unit) - s.h
    ao = np.exp(-np.maximum(cavity, 0) / (4 * s.unit))
    yy, xx = np.ogrid[0:h, 0:w]
    fx, fy, fr = lit.falloff
    cx, cy = (xx / w - 0.5).astype(_F), (yy / h - 0.5).astype(_F)
    spot = (1 + fx * cx + fy * cy) * (1 - fr * (cx * cx + cy * cy))
    angle, offset, width, dark = lit.fixture
    if dark > 0:  # the shadow of a fixture bar across the frame
        t = cx * np.cos(angle) + cy * np.sin(angle) - (offset - 0.5)
        spot = spot * (1 - dark * np.clip(1 - np.abs(t) / width, 0, 1) ** 0.5)
    diffuse = np.zeros((h, w, 3), _F)
    specular = np.zeros((h, w, 3), _F)
    tx, ty = s.tangent
    alpha = np.maximum(s.rough, 0.02)
    at, ab = alpha / np.sqrt(s.aniso), alpha * np.sqrt(s.aniso)
    px, py = (xx - w / 2).astype(_F), (yy - h / 2).astype(_F)
    diag = float(np.hypot(w, h))
    cam = lit.camera_height * diag  # the camera looks down from above the frame centre
    vnorm = np.sqrt(px * px + py * py + cam * cam)
    vx, vy, vz = -px / vnorm, -py / vnorm, cam / vnorm
    nv = np.maximum(nx * vx + ny * vy + nz * vz, 0.05)
    for light in lit.lights:
        pos = light.direction * light.distance * diag  # the light, from the frame centre
        lx, ly, lz = pos[0] - px, pos[1] - py, np.full((1, 1), pos[2], _F)
        norm = np.sqrt(lx * lx + ly * ly + lz * lz)
        falloff = (light.distance * diag / norm) ** 2
        lx, ly, lz = lx / norm, ly / norm, lz / norm
        nl = np.maximum(nx * lx + ny * ly + nz * lz, 0)
        vis = spot * falloff
        if light.casts:  # the part's shadow on the belt, thrown away from the light
            dx, dy, dz = light.direction
            shift = s.top / max(float(dz), 0.2)
            m = np.float32([[1, 0, -dx * shift], [0, 1, -dy * shift]])
            shadow = cv2.warpAffine(s.mask, m, (w, h), borderMode=cv2.BORDER_CONSTANT)
            shadow = cv2.GaussianBlur(shadow, (0, 0), 1 + 0.1 * shift)
            vis = vis * (1 - 0.85 * shadow * (1 - s.mask))
        hx, hy, hz = lx + vx, ly + vy, lz + vz
        norm = np.sqrt(hx * hx + hy * hy + hz * hz)
        hx, hy, hz = hx / norm, hy / norm, hz / norm
        nh = np.maximum(nx * hx + ny * hy + nz * hz, 0.05)
        ht, hb = hx * tx + hy * ty, -hx * ty + hy * tx
        ward = np.exp(-((ht / at) ** 2 + (hb / ab) ** 2) / (nh * nh)) / (
            4 * np.pi * at * ab * np.sqrt(np.maximum(nl, 0.05) * nv))
        diffuse += (nl * vis)[..., None] * light.colour
        specular += (np.minimum(ward, 50) * (nl > 0) * vis)[..., None] * light.colour
    f0 = _F(0.04) + (s.albedo - _F(0.04)) * s.metal[..., None]
    # a near, uneven environment (softboxes, walls): what a mirror sees depends on where it is and how it tilts
    ex, ey = lit.env_dir
    tilt = cv2.GaussianBlur(nz * (nx * ex + ny * ey), (0, 0), 1.0)  # a rough mirror blurs fine relief
    seen = (px * ex + py * ey) / diag + tilt
    env = lit.env * (0.15 + 0.85 / (1 + np.exp(-8 * (seen - lit.env_edge)))) * np.exp(-2 * s.rough)
    out = s.albedo * (1 - s.metal)[..., None] * (diffuse + lit.ambient * ao[..., None])
    out += f0 * (specular * _F(lit.spec) + (env * ao * spot)[..., None])
    return out.astype(_F)


# ------------------------------------------------------------------------------------------------------ camera
@dataclass
class _Camera:
    tilt: np.ndarray  # corner shifts (4, 2) as fractions of the frame
    barrel: float  # k1 on radius normalised by the half-diagonal
    aberration: float  # red/blue magnification difference
    defocus: float  # gaussian sigma in pixels (at 640x480)
    motion: float  # blur length in pixels along the belt
    vignette: float
    white: np.ndarray  # BGR gains
    exposure: float
    gamma: float
    shot: float  # shot noise: variance per unit signal
    read: float  # read noise sigma
    bayer: bool
    jpeg: int  # quality, 0 for none


def _camera_settings(rng: np.random.Generator) -> _Camera:
    barrel = rng.uniform(-0.04, 0.08)
    outward = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])  # corners pushed out: the frame sees inside the canvas
    return _Camera(
        tilt=outward * (max(barrel, 0) + rng.uniform(0.005, 0.06, (4, 2))),
        barrel=barrel,
        aberration=rng.uniform(0, 0.004),
        defocus=_log_uniform(rng, 0.3, 1.5),
        motion=rng.uniform(0, 5) if rng.random() < 0.4 else 0.0,
        vignette=rng.uniform(0, 0.45),
        white=np.array([rng.uniform(0.8, 1.25), 1.0, rng.uniform(0.8, 1.25)], _F),
        exposure=_log_uniform(rng, 0.5, 1.3),
        gamma=round(rng.uniform(1.8, 2.6), 2),  # few tone curves to cache
        shot=_log_uniform(rng, 2e-4, 4e-3),
        read=_log_uniform(rng, 0.002, 0.015),
        bayer=bool(rng.random() < 0.6),
        jpeg=int(rng.integers(55, 96)) if rng.random() < 0.7 else 0,
    )


def _lens_maps(cam: _Camera, w: int, h: int, src: tuple[int, int]
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Where each frame pixel looks in the canvas of size ``src``, per colour plane (lateral chromatic
    aberration): x and y maps ``(h, w)`` float32 for B, G, R; and the homography ``(3, 3)`` from canvas to the
    undistorted frame. The maps are smooth, so they are computed every 4 pixels and interpolated."""
    sw, sh = src
    corners = np.float32([[0, 0], [sw, 0], [sw, sh], [0, sh]])
    frame = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    homography = cv2.getPerspectiveTransform(corners, frame + (cam.tilt * (w, h)).astype(_F))
    gw, gh = -(-w // 4), -(-h // 4)
    xs = (np.arange(gw) + 0.5) * (w / gw) - 0.5  # the sample points cv2.resize assumes
    ys = (np.arange(gh) + 0.5) * (h / gh) - 0.5
    xx, yy = np.meshgrid(xs, ys)
    maps = []
    for k in (cam.aberration, 0.0, -cam.aberration):
        px, py = _distort(cam, xx, yy, w, h, cam.barrel + k)
        mx, my = (cv2.perspectiveTransform(np.stack([px, py], -1)[None].reshape(1, -1, 2), np.linalg.inv(homography))
                  [0].reshape(gh, gw, 2).transpose(2, 0, 1))
        maps.append((cv2.resize(mx.astype(_F), (w, h)), cv2.resize(my.astype(_F), (w, h))))
    return maps, homography


def _distort(cam: _Camera, x: np.ndarray, y: np.ndarray, w: int, h: int, k: float | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Radial lens mapping: a frame point ``(x, y)`` sees the ideal point at radius ``r (1 + k r^2)``."""
    k = cam.barrel if k is None else k
    half = np.hypot(w, h) / 2
    dx, dy = (x - w / 2) / half, (y - h / 2) / half
    f = 1 + k * (dx * dx + dy * dy)
    return w / 2 + dx * f * half, h / 2 + dy * f * half


def _frame_points(cam: _Camera, homography: np.ndarray, points: np.ndarray, w: int, h: int) -> np.ndarray:
    """Canvas points ``(N, 2)`` to frame pixels: the homography, then the lens mapping inverted by iteration."""
    ideal = cv2.perspectiveTransform(points[None].astype(np.float64), homography)[0]
    q = ideal.copy()
    for _ in range(20):
        px, py = _distort(cam, q[:, 0], q[:, 1], w, h)
        q += ideal - np.stack([px, py], 1)
    return q


def _photograph(rng: np.random.Generator, radiance: np.ndarray, cam: _Camera, belt_dir: float, size: tuple[int, int],
                unit: float) -> tuple[np.ndarray, np.ndarray]:
    """The camera's uint8 BGR frame ``(H, W, 3)`` of the canvas ``radiance``, and the canvas-to-frame homography.
    The optics (defocus, motion blur along the belt, vignetting, exposure, white balance) act on the canvas
    (``unit`` canvas pixels per 640x480 pixel), the lens maps it onto the sensor, which adds noise."""
    w, h = size
    ch, cw = radiance.shape[:2]
    img = radiance
    if cam.defocus * unit > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), cam.defocus * unit)
    length = int(round(cam.motion * unit))
    if length >= 2:
        kernel = np.zeros((length, length), _F)
        c = (length - 1) / 2
        dx, dy = np.cos(belt_dir) * c, np.sin(belt_dir) * c
        cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0)
        img = cv2.filter2D(img, -1, kernel / kernel.sum())
    yy, xx = np.ogrid[0:ch, 0:cw]
    r2 = (((xx - cw / 2) / (cw / 2)) ** 2 / 2).astype(_F) + (((yy - ch / 2) / (ch / 2)) ** 2 / 2).astype(_F)
    img = img * ((1 - _F(cam.vignette) * r2) * _F(cam.exposure))[..., None] * cam.white
    maps, homography = _lens_maps(cam, w, h, (cw, ch))
    planes = [cv2.remap(img[..., c], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
              for c, (mx, my) in enumerate(maps)]
    if cam.bayer:  # one colour per photosite (R G / G B), noise on the raw, then demosaic
        raw = np.empty((h, w), _F)
        raw[0::2, 0::2] = planes[2][0::2, 0::2]
        raw[0::2, 1::2] = planes[1][0::2, 1::2]
        raw[1::2, 0::2] = planes[1][1::2, 0::2]
        raw[1::2, 1::2] = planes[0][1::2, 1::2]
        raw = _sensor_noise(rng, raw, cam)
        linear = cv2.cvtColor(_codes(raw), cv2.COLOR_BayerBG2BGR)
    else:
        linear = _codes(_sensor_noise(rng, cv2.merge(planes), cam))
    out = _tone_curve(cam.gamma)[linear]
    if cam.jpeg:
        out = cv2.imdecode(cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg])[1], cv2.IMREAD_COLOR)
    return out, homography


_LEVELS = 4096  # the sensor's linear 12-bit code values


def _codes(linear: np.ndarray) -> np.ndarray:
    """Linear light in 0..1 to 12-bit sensor codes (uint16), clipped."""
    return (np.clip(linear, 0, 1) * (_LEVELS - 1) + 0.5).astype(np.uint16)


@functools.cache
def _tone_curve(gamma: float) -> np.ndarray:
    """12-bit linear codes to uint8 through a ``1/gamma`` power curve, a lookup table ``(4096,)``."""
    return (np.linspace(0, 1, _LEVELS) ** (1 / gamma) * 255 + 0.5).astype(np.uint8)


def _sensor_noise(rng: np.random.Generator, signal: np.ndarray, cam: _Camera) -> np.ndarray:
    """Shot noise (variance proportional to the signal) plus read noise."""
    sigma = np.sqrt(np.maximum(signal, 0) * _F(cam.shot) + _F(cam.read ** 2))
    return signal + sigma * rng.standard_normal(signal.shape, dtype=_F)


# ------------------------------------------------------------------------------------------------------ entry
def render_part_shaded(
    rng: np.random.Generator, defect: str, size: tuple[int, int] = (640, 480), product: int | None = None
) -> tuple[np.ndarray, list[Box]]:
    """One inspection frame ``(H, W, 3)`` uint8 BGR of a part with ``defect``, and a box ``[x, y, w, h]`` per
    defect instance (none for a good part), in frame pixels.

    The same ``rng`` state gives the same part, belt, light and camera whatever ``defect`` is: the defects are drawn
    from a child generator seeded at a fixed point. With ``product``, a one-product line: design, material, pose,
    belt, light and camera come from ``np.random.default_rng([5, product])``; the nuisance, defects and sensor
    noise from ``rng``.
    """
    if defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; expected one of {DEFECTS}")
    width, height = size
    design = np.random.default_rng([5, product]) if product is not None else rng
    canvas = min(1.0, float(np.sqrt(320 * 240 / (width * height))))  # the scene is lit at 320x240 or less
    cw, ch = max(16, round(width * canvas)), max(16, round(height * canvas))
    surface, belt_dir = _layout(design, cw, ch)
    lighting = _lighting(design)
    cam = _camera_settings(design)
    _nuisance(rng, surface)
    defect_rng = np.random.default_rng(rng.integers(0, 2 ** 63, 2))
    extents: list[_Extent] = []
    if defect != "good":
        count = 1 + int(defect_rng.choice(3, p=[0.6, 0.28, 0.12]))
        for _ in range(20):
            if len(extents) == count:
                break
            extent = _DRAWERS[defect](defect_rng, surface)
            if extent is not None:
                extents.append(extent)
        if not extents:
            raise RuntimeError(f"could not place a {defect} on the part (size {size})")
    image, homography = _photograph(rng, _shade(surface, lighting), cam, belt_dir, (width, height), surface.unit)
    boxes = []
    for x0, y0, x1, y1 in extents:
        q = _frame_points(cam, homography, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float), width, height)
        bx0, by0 = np.clip(np.floor(q.min(0)), 0, (width, height)).astype(int)
        bx1, by1 = np.clip(np.ceil(q.max(0)), 0, (width, height)).astype(int)
        if bx1 > bx0 and by1 > by0:
            boxes.append([int(bx0), int(by0), int(bx1 - bx0), int(by1 - by0)])
    return image, boxes
