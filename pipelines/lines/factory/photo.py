"""The "photo" renderer: inspection frames composited in image space from photo textures, for held-out tests.

Design note. A fixed industrial camera looks down on a tray, belt or fixture. The part is a flat 2-D
silhouette (plate with holes, disc or ring, gear, L-bracket, irregular casting, PCB, labelled box, bottle cap)
rasterised with anti-aliasing and filled with a material synthesised from scikit-image's CC0 photos
(``skimage.data``: brick, grass, gravel, camera, moon, coins, ...) high-passed, rotated, zoomed and re-coloured,
blended with blotch and brushing noise. Lighting is purely image-space: a light ramp, edge bevels from the
silhouette's gradient, a drop shadow, a glare band or blob, shadows of objects out of view. Defects and
benign nuisance (printed codes, screws, specks, machining marks, smudges, reflections) edit the part's
albedo, shade and specular layers locally; each defect's changed pixels give its tight box. A camera model
adds exposure, white balance, vignetting, defocus or motion blur, colour fringes, slight perspective, shot
and read noise, gamma and JPEG. Written without reading the project's other renderers' code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from skimage import data as skdata

from pipelines.lines.factory.synth import DEFECTS, Box

_PHOTOS = ("brick", "grass", "gravel", "moon", "camera", "coins", "rocket", "coffee", "astronaut", "chelsea", "clock")
_FAMILIES = ("plate", "ring", "gear", "bracket", "casting", "pcb", "box", "cap")
_METALS = ((0.55, 0.55, 0.56), (0.72, 0.72, 0.74), (0.25, 0.5, 0.65), (0.3, 0.42, 0.7), (0.12, 0.12, 0.14),
           (0.5, 0.28, 0.12), (0.26, 0.26, 0.27))  # BGR, linear
_PAINTS = ((0.8, 0.8, 0.78), (0.05, 0.05, 0.05), (0.1, 0.1, 0.6), (0.1, 0.6, 0.75), (0.6, 0.3, 0.1),
           (0.2, 0.45, 0.15), (0.35, 0.35, 0.35), (0.05, 0.3, 0.8))
_BOARDS = ((0.12, 0.33, 0.08), (0.45, 0.2, 0.05), (0.05, 0.06, 0.05))
_CARDBOARD = (0.33, 0.48, 0.6)
_WORK_WIDTH = 400
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX)


@functools.cache
def _bank() -> tuple[np.ndarray, ...]:
    """High-passed, unit-variance grey crops of the bundled photos."""
    out = []
    for name in _PHOTOS:
        img = getattr(skdata, name)()
        grey = (cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img).astype(np.float32)
        grey = cv2.resize(grey, (384, 384), interpolation=cv2.INTER_AREA)
        detail = grey - cv2.GaussianBlur(grey, (0, 0), 12)
        out.append(np.clip(detail / (detail.std() + 1e-6), -3, 3))
    return tuple(out)


def warm_up() -> None:
    """Load the texture bank before worker processes fork."""
    _bank()


@functools.cache
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx, yy


def _warp(src: np.ndarray, h: int, w: int, angle: float, zoom: tuple[float, float], offset: np.ndarray,
          border: int = cv2.BORDER_REFLECT) -> np.ndarray:
    """``src`` sampled on an (h, w) grid rotated by ``angle`` and magnified by ``zoom`` (along, across)."""
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, s], [-s, c]]) / np.array(zoom)[:, None]
    shift = offset - m @ np.array([w / 2, h / 2])
    inverse = np.hstack([m, shift[:, None]]).astype(np.float32)
    return cv2.warpAffine(src, inverse, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)


def _texture(g: np.random.Generator, h: int, w: int, zoom: float, photo: float, brushed: float, pool: int = 0
             ) -> np.ndarray:
    """A zero-mean detail field: a crop of one of the first ``pool`` photos (0: any) blended with blotch noise
    and, for metals, brushing streaks."""
    bank = _bank()
    photo_crop = bank[g.integers(pool or len(bank))]
    crop = _warp(photo_crop, h, w, g.uniform(0, 2 * np.pi), (zoom, zoom), g.uniform(60, 320, 2))
    blotch = cv2.resize(g.normal(size=(h // 24 + 2, w // 24 + 2)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    tex = photo * crop + (1 - photo) * blotch
    if brushed > 0:
        noise = g.normal(size=(128, 128)).astype(np.float32)
        tex += brushed * 2 * _warp(noise, h, w, g.uniform(0, np.pi), (60.0, 0.7), np.array([64.0, 64.0]),
                                   cv2.BORDER_WRAP)
    return tex / (tex[::7, ::7].std() + 1e-6)


def _jitter(g: np.random.Generator, colour: tuple[float, float, float], amount: float = 0.12) -> np.ndarray:
    return np.clip(np.array(colour, np.float32) * g.uniform(1 - amount, 1 + amount, 3), 0.01, 0.95).astype(np.float32)


def _loguniform(g: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(g.uniform(np.log(lo), np.log(hi))))


@dataclass
class _Part:
    """Image-space layers of a frame before the camera: background, part coverage and the part's surface."""

    s: float
    light: np.ndarray  # unit vector towards the light, image coordinates
    bg: np.ndarray  # (H, W, 3) background radiance
    alpha: np.ndarray  # (H, W) part coverage
    albedo: np.ndarray  # (H, W, 3)
    shade: np.ndarray  # (H, W) multiplies the albedo
    spec: np.ndarray  # (H, W) adds the light's colour
    spec_colour: np.ndarray
    ambient: np.ndarray  # (H, W) light ramp and shadows over the whole frame
    inside: tuple[np.ndarray, np.ndarray]  # (ys, xs) of pixels well inside the part

    def compose(self) -> np.ndarray:
        a = self.alpha[..., None]
        part = self.albedo * self.shade[..., None] + self.spec[..., None] * self.spec_colour
        return (self.bg * (1 - a) + part * a) * self.ambient[..., None]


def _polar(radius: np.ndarray) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, len(radius), endpoint=False)
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _circle(cx: float, cy: float, r: float, n: int = 40) -> np.ndarray:
    return _polar(np.full(n, r)) + (cx, cy)


def _rounded_rect(hw: float, hh: float, r: float) -> np.ndarray:
    t = np.linspace(0, np.pi / 2, 8)
    corners = [(hw - r, hh - r, 0), (-hw + r, hh - r, 1), (-hw + r, -hh + r, 2), (hw - r, -hh + r, 3)]
    return np.vstack([np.stack([x + r * np.cos(t + k * np.pi / 2), y + r * np.sin(t + k * np.pi / 2)], 1)
                      for x, y, k in corners])


def _outline(g: np.random.Generator, family: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """The part's outer contour and holes in unit coordinates (radius about 1)."""
    t = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    holes: list[np.ndarray] = []
    if family in ("ring", "cap"):
        rim = 0.015 * np.sign(np.sin(t * g.integers(60, 120))) if family == "cap" else 0
        outer = _polar(np.ones_like(t) + rim)
        if family == "ring":
            if g.random() < 0.8:
                holes.append(_circle(0, 0, g.uniform(0.2, 0.55)))
            if g.random() < 0.6:
                n, r = g.integers(3, 9), g.uniform(0.68, 0.82)
                holes += [_circle(r * np.cos(a), r * np.sin(a), g.uniform(0.05, 0.1), 20)
                          for a in np.linspace(0, 2 * np.pi, n, endpoint=False)]
    elif family == "gear":
        teeth, depth = g.integers(8, 30), g.uniform(0.08, 0.2)
        outer = _polar(1 - depth * (1 - np.clip(1.8 * np.sin(teeth * t), -1, 1)) / 2)
        holes.append(_circle(0, 0, g.uniform(0.12, 0.35)))
    elif family == "casting":
        radius = np.ones_like(t)
        for k in range(2, 6):
            radius += g.uniform(0, 0.14) / k * np.sin(k * t + g.uniform(0, 2 * np.pi))
        outer = _polar(radius)
        holes += [_circle(*g.uniform(-0.35, 0.35, 2), g.uniform(0.06, 0.16)) for _ in range(g.integers(0, 3))]
    elif family == "bracket":
        a, b = g.uniform(0.3, 0.55), g.uniform(0.3, 0.55)
        outer = np.array([(-1, -1), (1, -1), (1, -1 + a), (-1 + b, -1 + a), (-1 + b, 1), (-1, 1)], np.float64)
        holes += [_circle(x, -1 + a / 2, a * 0.22, 20) for x in (0.2, 0.7)]
        holes += [_circle(-1 + b / 2, y, b * 0.22, 20) for y in (0.2, 0.7)][: g.integers(1, 3)]
    else:  # plate, pcb, box
        hh = g.uniform(0.45, 0.85)
        outer = _rounded_rect(1, hh, g.uniform(0.01, 0.12 if family == "box" else 0.25))
        if family != "box":
            r, inset = (0.04, 0.1) if family == "pcb" else (g.uniform(0.05, 0.12), 0.2)
            holes += [_circle(sx * (1 - inset), sy * (hh - inset), r, 20) for sx in (-1, 1) for sy in (-1, 1)]
            if family == "plate" and g.random() < 0.5:
                holes.append(_circle(0, 0, g.uniform(0.1, 0.3)))
    return outer, holes


def _raster(shape: tuple[int, int], polys: list[np.ndarray], centre: np.ndarray, radius: float, angle: float,
            hole_polys: list[np.ndarray]) -> np.ndarray:
    """Anti-aliased coverage (0-1 float) of the posed outline minus its holes."""
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mask = np.zeros(shape, np.uint8)

    def fix(p: np.ndarray) -> list[np.ndarray]:
        return [np.round((p @ rot.T * radius + centre) * 8).astype(np.int32)]

    for p in polys:
        cv2.fillPoly(mask, fix(p), 255, cv2.LINE_AA, shift=3)
    for p in hole_polys:
        cv2.fillPoly(mask, fix(p), 0, cv2.LINE_AA, shift=3)
    return mask.astype(np.float32) / 255


def _blend(arr: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float) -> None:
    """Paint ``colour`` over ``arr`` through a uint8 ``mask``, only within the mask's bounding rectangle."""
    x, y, w, h = cv2.boundingRect(mask)
    if w:
        m = mask[y:y + h, x:x + w, None].astype(np.float32) * (alpha / 255)
        arr[y:y + h, x:x + w] += (colour - arr[y:y + h, x:x + w]) * m


def _text(g: np.random.Generator, shape: tuple[int, int], at: tuple[float, float], s: float, angle: float,
          lines: int = 1) -> np.ndarray:
    """A uint8 mask of a short stamped code (letters and digits) at ``at``, turned by ``angle`` radians."""
    mask = np.zeros(shape, np.uint8)
    font, scale = _FONTS[g.integers(len(_FONTS))], g.uniform(0.35, 0.7) * s
    for i in range(lines):
        chars = "".join(g.choice(list("ABCDEFGHJKLMNPRSTUVXZ0123456789-/ "), g.integers(4, 11)))
        org = (int(at[0]), int(at[1] + i * 16 * scale * 1.6))
        cv2.putText(mask, chars, org, font, scale, 255, 1, cv2.LINE_AA)
    turn = cv2.getRotationMatrix2D((float(at[0]), float(at[1])), float(-np.degrees(angle)), 1.0)
    return cv2.warpAffine(mask, turn, (shape[1], shape[0]))


def _build(design: np.random.Generator, jitter: np.random.Generator, w: int, h: int, s: float) -> _Part:
    """The product's part on its background, lit; pose jitter comes from ``jitter``."""
    xx, yy = _grid(h, w)
    family = _FAMILIES[design.integers(len(_FAMILIES))]
    phi = design.uniform(0, 2 * np.pi)
    light = np.array([np.cos(phi), np.sin(phi)], np.float32)
    # background: belt, perforated tray, painted fixture or cloth
    kind = design.integers(4)
    base = _jitter(design, [(0.07, 0.07, 0.08), (0.45, 0.46, 0.48), _PAINTS[design.integers(len(_PAINTS))],
                            (0.3, 0.35, 0.3)][kind], 0.3)
    bg_tex = _texture(design, h, w, design.uniform(0.3, 1.5) * s, design.uniform(0.3, 1), 0.5 * (kind == 1), 4)
    bg_level = 1 + design.uniform(0.05, 0.3) * bg_tex
    if kind == 0:  # belt: longitudinal ribs and seams
        period = design.uniform(4, 12) * s
        axis = xx if design.random() < 0.5 else yy
        bg_level *= 1 + 0.08 * np.sin(axis * (2 * np.pi / period))
        seam = np.abs((xx + yy - axis) % (design.uniform(150, 400) * s) - 20 * s) < 1.5 * s
        bg_level[seam] *= 0.5
    elif kind == 1:  # perforated tray
        p, r = design.uniform(14, 30) * s, design.uniform(0.15, 0.3)
        d = np.hypot((xx % p) / p - 0.5, (yy % p) / p - 0.5)
        bg_level *= 0.1 + 0.9 * np.clip((d - r) * p, 0, 1)
    bg = base * bg_level[..., None]
    # the part
    family_scale = design.uniform(0.28, 0.42) * min(w, h)
    centre = np.array([w, h]) / 2 + design.uniform(-0.12, 0.12, 2) * (w, h) + jitter.normal(0, 3 * s, 2)
    angle = design.uniform(0, 2 * np.pi) + jitter.normal(0, 0.03)
    outer, holes = _outline(design, family)
    alpha = _raster((h, w), [outer], centre, family_scale, angle, holes)
    if family == "pcb":
        colour = _jitter(design, _BOARDS[design.integers(len(_BOARDS))])
    elif family == "box":
        colour = _jitter(design, _CARDBOARD if design.random() < 0.7 else _PAINTS[0])
    elif family == "cap" or design.random() < 0.3:
        colour = _jitter(design, _PAINTS[design.integers(len(_PAINTS))])
    else:
        colour = _jitter(design, _METALS[design.integers(len(_METALS))])
    metal = bool(family in ("plate", "ring", "gear", "bracket", "casting") and design.random() < 0.75)
    gain = design.uniform(0.08, 0.35) if family in ("casting", "box") else design.uniform(0.02, 0.15)
    tex = _texture(design, h, w, design.uniform(0.5, 3) * s, design.uniform(0.2, 0.9), design.uniform(0, 1) * metal)
    albedo = colour * np.clip(1 + gain * tex, 0.2, 2)[..., None]
    shade = np.ones((h, w), np.float32)
    _details(design, family, albedo, shade, centre, family_scale, angle, s)
    # bevel from the silhouette's gradient, and a drop shadow
    soft = cv2.GaussianBlur(alpha, (0, 0), design.uniform(1.2, 4) * s)
    gx, gy = cv2.Sobel(soft, cv2.CV_32F, 1, 0), cv2.Sobel(soft, cv2.CV_32F, 0, 1)
    slope = -(gx * light[0] + gy * light[1]) * (design.uniform(0.5, 2.5) / max(s, 0.5))
    shade *= np.clip(1 + slope, 0.2, 3)
    off = -light * design.uniform(3, 16) * s
    moved = cv2.warpAffine(alpha, np.float32([[1, 0, off[0]], [0, 1, off[1]]]), (w, h))
    bg *= (1 - design.uniform(0.3, 0.75) * cv2.GaussianBlur(moved, (0, 0), design.uniform(2, 12) * s))[..., None]
    # glare: a band or a blob, stronger on metals
    shine = design.uniform(0.3, 1.0) if metal else design.uniform(0.02, 0.4) * (family != "box")
    gc = centre + design.normal(0, 0.3, 2) * family_scale
    if design.random() < 0.5:
        beta = design.uniform(0, np.pi)
        d = (xx - gc[0]) * np.cos(beta) + (yy - gc[1]) * np.sin(beta)
        width = design.uniform(0.05, 0.3) * family_scale
    else:
        d, width = np.hypot(xx - gc[0], yy - gc[1]), design.uniform(0.15, 0.6) * family_scale
    spec = shine * np.exp(-(d / width) ** 2) * np.clip(1 + 0.4 * tex, 0, 2) + np.clip(slope, 0, None) * shine * 0.5
    spec_colour = (1 - 0.5 * metal) * _jitter(design, (1, 1, 1), 0.08) + 0.5 * metal * colour
    ramp = design.uniform(0, 0.6) * ((xx - w / 2) * light[0] + (yy - h / 2) * light[1]) / max(w, h)
    inner = cv2.erode((alpha > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(int(4 * s), 1))
    ys, xs = np.nonzero(inner[::3, ::3])
    return _Part(s, light, bg.astype(np.float32), alpha, albedo.astype(np.float32), shade,
                 spec.astype(np.float32), spec_colour.astype(np.float32), (1 + ramp).astype(np.float32),
                 (ys * 3, xs * 3))


def _details(g: np.random.Generator, family: str, albedo: np.ndarray, shade: np.ndarray, centre: np.ndarray,
             radius: float, angle: float, s: float) -> None:
    """The product's own printed, etched and machined features (the same on every part of the product)."""
    h, w = shade.shape
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def at(u: float, v: float) -> tuple[float, float]:
        p = rot @ np.array([u, v]) * radius + centre
        return float(p[0]), float(p[1])

    mask = np.zeros((h, w), np.uint8)
    if family == "pcb":
        for _ in range(g.integers(6, 20)):  # traces
            pts = np.array([at(*g.uniform(-0.9, 0.9, 2))])
            for _ in range(3):
                step = np.array(at(*g.uniform(-0.9, 0.9, 2))) - pts[-1]
                pts = np.vstack([pts, pts[-1] + (step * (np.arange(2) == g.integers(2)))])
            cv2.polylines(mask, [pts.astype(np.int32)], False, 255, max(int(g.uniform(1, 3) * s), 1), cv2.LINE_AA)
        _blend(albedo, mask, albedo[int(centre[1]), int(centre[0])] * 1.5, 0.6)
        for _ in range(g.integers(2, 7)):  # chips and pads
            chip = np.zeros((h, w), np.uint8)
            (cx, cy), size = at(*g.uniform(-0.7, 0.7, 2)), g.uniform(0.08, 0.25, 2) * radius
            box = cv2.boxPoints(((cx, cy), (float(size[0]), float(size[1])), float(np.degrees(angle))))
            cv2.fillPoly(chip, [box.astype(np.int32)], 255, cv2.LINE_AA)
            tone = np.float32((0.04, 0.04, 0.04)) if g.random() < 0.6 else np.float32((0.35, 0.6, 0.7))
            _blend(albedo, chip, tone, 1.0)
        _blend(albedo, _text(g, (h, w), at(-0.8, 0.75), s, angle, 2), np.float32((0.85, 0.85, 0.85)), 0.9)
    elif family == "box":
        band = np.zeros((h, w), np.uint8)
        a, b = at(-1.1, g.uniform(-0.2, 0.2)), at(1.1, 0)
        cv2.line(band, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 255, int(g.uniform(0.15, 0.35) * radius))
        _blend(albedo, band, albedo[int(centre[1]), int(centre[0])] * 1.15, 0.8)
        label = np.zeros((h, w), np.uint8)
        (cx, cy), size = at(*g.uniform(-0.4, 0.4, 2)), g.uniform(0.35, 0.6, 2) * radius
        box = cv2.boxPoints(((cx, cy), (float(size[0]), float(size[1])), float(np.degrees(angle))))
        cv2.fillPoly(label, [box.astype(np.int32)], 255, cv2.LINE_AA)
        _blend(albedo, label, np.float32((0.85, 0.85, 0.82)), 1.0)
        corner = box.min(0) + 6 * s
        _blend(albedo, _text(g, (h, w), (corner[0], corner[1] + 8 * s), s, 0.0, 3), np.float32((0.03,) * 3), 1.0)
    elif family in ("ring", "cap", "gear"):
        xx, yy = _grid(h, w)
        r = np.hypot(xx - centre[0], yy - centre[1]) / radius
        if family == "cap":
            shade *= 1 - 0.25 * np.exp(-((r - g.uniform(0.7, 0.9)) / 0.02) ** 2)
            _blend(albedo, _text(g, (h, w), at(-0.35, 0.05), s * 1.4, angle), np.float32((0.9, 0.9, 0.9)), 0.8)
        else:
            shade *= 1 + g.uniform(0.01, 0.06) * np.sin(r * radius * g.uniform(0.8, 2.5))
    elif g.random() < 0.6:  # plate, bracket, casting: an etched part number
        _blend(albedo, _text(g, (h, w), at(-0.5, 0.3), s, angle), albedo[int(centre[1]), int(centre[0])] * 0.5, 0.7)


def _add_nuisance(g: np.random.Generator, part: _Part) -> None:
    """Benign marks on every part: lot codes, screws, specks, machining marks, smudges, glints, shadows."""
    h, w = part.shade.shape
    s, xx, yy = part.s, *_grid(h, w)
    ys, xs = part.inside
    if g.random() < 0.6:
        i = g.integers(len(ys))
        ink = np.float32((0.03, 0.03, 0.03)) if g.random() < 0.6 else np.float32((0.85, 0.85, 0.8))
        _blend(part.albedo, _text(g, (h, w), (xs[i], ys[i]), s, g.uniform(0, 2 * np.pi)), ink, g.uniform(0.3, 0.9))
    for _ in range(g.integers(0, 4)):  # screws in the fixture or the part
        cx, cy, r = g.uniform(0, w), g.uniform(0, h), g.uniform(4, 9) * s
        head, slot = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
        cv2.circle(head, (int(cx), int(cy)), int(r), 255, -1, cv2.LINE_AA)
        a = g.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)]) * r * 0.8
        cv2.line(slot, (int(cx - d[0]), int(cy - d[1])), (int(cx + d[0]), int(cy + d[1])), 255, max(int(s), 1))
        for layer in (part.albedo, part.bg):
            _blend(layer, head, _jitter(g, _METALS[0], 0.3), 1.0)
            _blend(layer, slot, np.float32((0.02, 0.02, 0.02)), 0.9)
    specks = np.zeros((h, w), np.uint8)
    for _ in range(g.integers(0, 30)):
        cv2.circle(specks, (int(g.uniform(0, w)), int(g.uniform(0, h))), int(g.uniform(0, 2) * s), 255, -1)
    tone = _jitter(g, (0.5, 0.5, 0.5), 0.8)
    _blend(part.albedo, specks, tone, g.uniform(0.2, 0.7))
    _blend(part.bg, specks, tone, g.uniform(0.2, 0.7))
    if g.random() < 0.4:  # machining marks over the whole part
        beta, period = g.uniform(0, np.pi), g.uniform(2, 8) * s
        part.shade *= 1 + g.uniform(0.01, 0.05) * np.sin((xx * np.cos(beta) + yy * np.sin(beta)) * (2 * np.pi / period))
    for _ in range(g.integers(0, 3)):  # smudges and glints
        i = g.integers(len(ys))
        blob = np.exp(-(np.hypot(xx - xs[i], yy - ys[i]) / (g.uniform(8, 40) * s)) ** 2)
        if g.random() < 0.5:
            part.spec += g.uniform(0.05, 0.3) * blob
        else:
            part.shade *= 1 - g.uniform(0.02, 0.08) * blob
    if g.random() < 0.35:  # the shadow of something out of view
        quad = np.zeros((h, w), np.uint8)
        corner = np.array([w, h]) * g.integers(0, 2, 2)
        pts = np.vstack([corner, corner + g.uniform(-0.8, 0.8, (3, 2)) * (w, h)]).astype(np.int32)
        cv2.fillPoly(quad, [cv2.convexHull(pts)], 255)
        soft = cv2.GaussianBlur(quad.astype(np.float32) / 255, (0, 0), g.uniform(5, 30) * s)
        part.ambient *= 1 - g.uniform(0.15, 0.5) * soft


def _spot(g: np.random.Generator, part: _Part) -> tuple[float, float]:
    i = g.integers(len(part.inside[0]))
    return float(part.inside[1][i] + g.uniform(-1, 1)), float(part.inside[0][i] + g.uniform(-1, 1))


def _walk(g: np.random.Generator, start: np.ndarray, heading: float, steps: int, step: float, wiggle: float
          ) -> np.ndarray:
    turns = heading + np.cumsum(g.normal(0, wiggle, steps))
    return np.vstack([start, start + np.cumsum(np.stack([np.cos(turns), np.sin(turns)], 1) * step, 0)])


def _strokes(part: _Part, paths: list[np.ndarray], widths: list[int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """Anti-aliased polylines as a float mask (on the part only) within their bounding rectangle."""
    canvas = np.zeros(part.shade.shape, np.uint8)
    for path, width in zip(paths, widths):
        cv2.polylines(canvas, [np.round(path * 8).astype(np.int32)], False, 255, width, cv2.LINE_AA, shift=3)
    x, y, w, h = cv2.boundingRect(canvas)
    sl = (slice(y, y + h), slice(x, x + w))
    return sl, canvas[sl].astype(np.float32) / 255 * part.alpha[sl]


def _patch(part: _Part, cx: float, cy: float, r: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    h, w = part.shade.shape
    x0, x1, y0, y1 = max(int(cx - r), 0), min(int(cx + r) + 2, w), max(int(cy - r), 0), min(int(cy + r) + 2, h)
    xx, yy = _grid(h, w)
    return (slice(y0, y1), slice(x0, x1)), xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy


def _blob(g: np.random.Generator, dx: np.ndarray, dy: np.ndarray, r: float, rough: float) -> np.ndarray:
    """A soft irregular elliptical blob of radius about ``r`` on a patch grid."""
    a, squash = g.uniform(0, np.pi), g.uniform(0.4, 1)
    u = (dx * np.cos(a) + dy * np.sin(a)) / r
    v = (-dx * np.sin(a) + dy * np.cos(a)) / (r * squash)
    noise = cv2.resize(g.normal(size=(7, 7)).astype(np.float32), dx.shape[::-1], interpolation=cv2.INTER_CUBIC)
    return np.clip((1 - np.hypot(u, v) - rough * noise) / 0.3, 0, 1).astype(np.float32)


def _mark(part: _Part, sl: tuple[slice, slice], changed: np.ndarray) -> np.ndarray:
    mask = np.zeros(part.shade.shape, np.uint8)
    mask[sl] = changed & (part.alpha[sl] > 0.02)
    return mask


def _scratch(g: np.random.Generator, part: _Part) -> np.ndarray:
    cx, cy = _spot(g, part)
    length, heading, bend = g.uniform(12, 170) * part.s, g.uniform(0, np.pi), g.uniform(-0.2, 0.2)
    d, n = np.array([np.cos(heading), np.sin(heading)]), np.array([-np.sin(heading), np.cos(heading)])
    paths = []
    count = 1 if g.random() < 0.65 else int(g.integers(2, 5))
    spacing = g.uniform(2, 7) * part.s
    for k in range(count):
        t = np.linspace(-0.5, 0.5, 32)[:, None] * g.uniform(0.5, 1) + g.uniform(-0.1, 0.1)
        path = (cx, cy) + t * length * d + (bend * length * (0.25 - t * t) + k * spacing) * n
        if g.random() < 0.3:  # broken into pieces
            cuts = np.sort(g.choice(np.arange(4, 28), 4, replace=False))
            paths += [piece for piece in np.split(path, cuts)[::2] if len(piece) > 1]
        else:
            paths.append(path)
    sl, m = _strokes(part, paths, [1 if g.random() < 0.75 else 2] * len(paths))
    contrast = _loguniform(g, 0.1, 0.7)
    if g.random() < 0.5 or part.albedo[int(cy), int(cx)].mean() < 0.12:  # dark scratches vanish on dark paint
        part.spec[sl] += contrast * m
    else:
        part.shade[sl] *= 1 - contrast * m
    return _mark(part, sl, m * contrast > 0.01)


def _dent(g: np.random.Generator, part: _Part) -> np.ndarray:
    cx, cy = _spot(g, part)
    r = g.uniform(5, 26) * part.s
    sl, dx, dy = _patch(part, cx, cy, 2.6 * r)
    stretch = g.uniform(1, 2.2)  # dents from a blunt edge are long
    a = g.uniform(0, np.pi)
    u, v = (dx * np.cos(a) + dy * np.sin(a)) / stretch, -dx * np.sin(a) + dy * np.cos(a)
    bump = np.exp(-(u * u + v * v) / (r * r))
    shading = _loguniform(g, 0.15, 0.9) * (dx * part.light[0] + dy * part.light[1]) * bump * (2 / r)
    shading *= part.alpha[sl]
    part.shade[sl] *= 1 + shading
    pull = g.uniform(0.15, 0.6) * bump
    mx, my = (cx + dx * (1 - pull)).astype(np.float32), (cy + dy * (1 - pull)).astype(np.float32)
    warped = cv2.remap(part.albedo, mx, my, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT)
    part.albedo[sl] += (warped - part.albedo[sl]) * part.alpha[sl][..., None]
    rim = g.uniform(0, 0.25) * np.clip(shading, 0, None)
    part.spec[sl] += rim
    return _mark(part, sl, (np.abs(shading) > 0.01) | (pull * np.hypot(dx, dy) > 0.5))


def _crack(g: np.random.Generator, part: _Part) -> np.ndarray:
    start = np.array(_spot(g, part))
    heading, step = g.uniform(0, 2 * np.pi), g.uniform(1.5, 3.5) * part.s
    steps = int(g.integers(5, 35))
    main = np.vstack([_walk(g, start, heading, steps, step, 0.45)[::-1], _walk(g, start, heading + np.pi,
                                                                              steps, step, 0.45)])
    paths, widths = [main], [max(int(g.uniform(1, 3.2) * part.s), 1)]
    for _ in range(g.integers(0, 4)):
        root = main[g.integers(len(main))]
        paths.append(_walk(g, root, heading + g.choice([-1, 1]) * g.uniform(0.5, 1.3), int(g.integers(3, 15)),
                           step, 0.5))
        widths.append(1)
    sl, m = _strokes(part, paths, widths)
    contrast = g.uniform(0.3, 0.9)
    part.shade[sl] *= 1 - contrast * m
    changed = m * contrast > 0.01
    if g.random() < 0.4:  # the lit lip of the crack
        shifted = np.roll(m, (int(round(part.light[1])), int(round(part.light[0]))), (0, 1)) * (1 - m)
        part.spec[sl] += g.uniform(0.1, 0.4) * shifted
        changed |= shifted > 0.05
    return _mark(part, sl, changed)


def _contamination(g: np.random.Generator, part: _Part) -> np.ndarray:
    cx, cy = _spot(g, part)
    kind = g.integers(6)
    s = part.s
    if kind in (3, 4):  # a fibre, or a paint drip with a round end
        heading = g.uniform(0, 2 * np.pi)
        if kind == 3:
            path = _walk(g, np.array([cx, cy]), heading, int(g.integers(10, 40)), 2 * s, 0.2)
            sl, m = _strokes(part, [path], [1])
            colour = _jitter(g, _PAINTS[g.integers(len(_PAINTS))], 0.3)
        else:
            end = np.array([cx, cy]) + np.array([np.cos(heading), np.sin(heading)]) * g.uniform(8, 45) * s
            sl, m = _strokes(part, [np.array([[cx, cy], end])] * 2, [max(int(g.uniform(2, 5) * s), 1),
                                                                         max(int(g.uniform(5, 10) * s), 2)])
            colour = _jitter(g, _PAINTS[g.integers(len(_PAINTS))], 0.1)
            part.spec[sl] += g.uniform(0.1, 0.5) * m ** 4
        alpha = m * g.uniform(0.6, 1)
    else:
        r = g.uniform(5, 35) * s
        sl, dx, dy = _patch(part, cx, cy, 1.8 * r)
        if kind == 2:  # a cluster of dust
            specks = np.zeros(dx.shape, np.uint8)
            for p in g.normal(0, r / 2.5, (int(g.integers(8, 60)), 2)):
                cv2.circle(specks, (int(p[0] - dx[0, 0]), int(p[1] - dy[0, 0])), int(g.uniform(0, 2.2) * s), 255,
                           -1, cv2.LINE_AA)
            alpha, colour = specks.astype(np.float32) / 255 * g.uniform(0.5, 1), _jitter(g, (0.45, 0.5, 0.55), 0.6)
        else:
            blob = _blob(g, dx, dy, r, g.uniform(0.1, 0.5))
            if kind == 0:  # a stain, sometimes with a darker tide line
                colour = _jitter(g, [(0.1, 0.2, 0.3), (0.2, 0.2, 0.2), (0.1, 0.4, 0.5)][g.integers(3)], 0.3)
                alpha = blob * g.uniform(0.15, 0.6) + g.uniform(0, 0.8) * blob * (1 - blob) * 2
            elif kind == 1:  # oil: dark, with thin-film colours
                phase = 3 * np.hypot(dx, dy) / r + blob
                rainbow = 0.5 + 0.5 * np.cos(2 * np.pi * (phase[..., None] + np.float32([0, 0.33, 0.67])))
                colour = (part.albedo[sl] * 0.5 * (0.6 + 0.8 * rainbow)).astype(np.float32)
                alpha = blob * g.uniform(0.3, 0.8)
                part.spec[sl] += g.uniform(0, 0.15) * blob
            else:  # rust: orange-brown, blotchy
                grain = cv2.resize(g.random((9, 9)).astype(np.float32), dx.shape[::-1], interpolation=cv2.INTER_LINEAR)
                colour = _jitter(g, (0.04, 0.16, 0.4), 0.25)
                alpha = blob * (0.3 + 0.7 * grain) * g.uniform(0.4, 1)
                part.shade[sl] *= 1 - 0.2 * alpha
    alpha = alpha * part.alpha[sl]
    part.albedo[sl] += (colour - part.albedo[sl]) * alpha[..., None]
    return _mark(part, sl, alpha > 0.02)


_PAINTERS = {"scratch": _scratch, "dent": _dent, "crack": _crack, "contamination": _contamination}


def _camera(look: np.random.Generator, sensor: np.random.Generator, img: np.ndarray, masks: list[np.ndarray],
            s: float, size: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Exposure, white balance, flare, vignetting, blur, fringes and perspective at the working resolution; then
    upscaling to ``size``, noise, gamma and JPEG."""
    h, w = img.shape[:2]
    xx, yy = _grid(h, w)
    img = img * (look.uniform(0.6, 1.5) * look.uniform(0.85, 1.15, 3)).astype(np.float32)
    if look.random() < 0.15:  # flare: a bright blob and its ghost across the centre
        p = look.uniform(0, 1, 2) * (w, h)
        for q, k in ((p, 0.8), ((w, h) - p, 0.25)):
            img += (look.uniform(0.2, 0.6) * k * np.exp(-(np.hypot(xx - q[0], yy - q[1]) / (60 * s)) ** 2))[..., None]
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    img *= (1 - look.uniform(0, 0.45) * r2)[..., None]
    if look.random() < 0.25:
        kernel = np.zeros((9, 9), np.float32)
        cv2.line(kernel, (4, 4), tuple(int(4 + v) for v in look.uniform(-4, 4, 2)), 1.0, 1)
        img = cv2.filter2D(img, -1, kernel / kernel.sum())
    else:
        img = cv2.GaussianBlur(img, (0, 0), look.uniform(0.3, 1.4) * s)
    if look.random() < 0.4:  # lateral chromatic aberration: red and blue scaled apart
        k = look.uniform(0.001, 0.004)
        for c, z in ((0, 1 - k), (2, 1 + k)):
            m = cv2.getRotationMatrix2D((w / 2, h / 2), 0, z)
            img[..., c] = cv2.warpAffine(img[..., c], m, (w, h), borderMode=cv2.BORDER_REFLECT)
    if look.random() < 0.3:  # slight rotation and perspective of a not quite square camera
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        warp = cv2.getPerspectiveTransform(src, src + (look.normal(0, 0.015, (4, 2)) * (w, h)).astype(np.float32))
        img = cv2.warpPerspective(img, warp, (w, h), borderMode=cv2.BORDER_REFLECT)
        masks = [cv2.warpPerspective(m, warp, (w, h), flags=cv2.INTER_NEAREST) for m in masks]
    if (w, h) != size:
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        masks = [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in masks]
    shot, read = look.uniform(0.004, 0.03), look.uniform(0.002, 0.012)
    noise = sensor.standard_normal((size[1], size[0], 3), dtype=np.float32)
    img = img + noise * (shot * np.sqrt(np.clip(img, 0, None)) + read)
    lut = (np.linspace(0, 1, 4096) ** (1 / look.uniform(1.8, 2.5)) * 255 + 0.5).astype(np.uint8)
    out = lut[np.clip(img * 4095, 0, 4095).astype(np.uint16)]
    quality = int(look.integers(35, 96))
    out = cv2.imdecode(cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)
    return out, masks


def _box(mask: np.ndarray) -> Box | None:
    x, y, w, h = cv2.boundingRect(mask)
    if not w:
        return None
    x0, y0 = max(x - 1, 0), max(y - 1, 0)
    x1, y1 = min(x + w + 1, mask.shape[1]), min(y + h + 1, mask.shape[0])
    return [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]


def render_part_photo(rng: np.random.Generator, defect: str, size: tuple[int, int] = (640, 480),
                      product: int | None = None) -> tuple[np.ndarray, list[Box]]:
    """One inspection frame ``(H, W, 3)`` uint8 BGR of a part with ``defect``, and a box per defect instance.

    The same ``rng`` state gives the same part whatever ``defect`` is. With ``product``, the design,
    material, pose, background, light and camera are product ``product``'s; only the pose jitter, the
    nuisance, the defects and the sensor noise come from ``rng``.
    """
    if defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}")
    seeds = rng.integers(0, 2**31, size=5)
    design = np.random.default_rng(seeds[0] if product is None else [product, 104729])
    jitter, nuisance, flaws, sensor = (np.random.default_rng(int(v)) for v in seeds[1:])
    work = min(1.0, _WORK_WIDTH / size[0])  # the scene is drawn at most this wide, then upscaled
    w, h = max(round(size[0] * work), 16), max(round(size[1] * work), 16)
    s = max(min(w / 640, h / 480), 0.05)  # pixel sizes are stated for 640x480
    part = _build(design, jitter, w, h, s)
    _add_nuisance(nuisance, part)
    count = 0 if defect == "good" else 1 + int(flaws.random() < 0.3) + int(flaws.random() < 0.1)
    masks = [_PAINTERS[defect](flaws, part) for _ in range(count)]
    img, masks = _camera(design, sensor, part.compose(), masks, s, size)
    return img, [box for box in map(_box, masks) if box is not None]
