"""Labelled factory recordings: a part passing the inspection camera, and the machine heard meanwhile.

:func:`synth_factory` writes a recording (format v1, see :mod:`connectors.recording`) whose items each hold a
BGR frame of a part surface and a 1 s, 16 kHz mono clip of the line's machine, with the ground truth
``{"defect", "machine", "box", "boxes"}`` in ``labels.jsonl``.

Frames are built from real texture photos (scikit-image's CC0 ``brick``, ``grass`` and ``gravel``) and
procedural materials (brushed and cast metal, painted plastic, wood), posed on a varied conveyor background,
lit unevenly and passed through a camera model (defocus, motion blur, sensor noise, gamma, JPEG). Defects
have random size, place, orientation, contrast and count. Benign nuisance (part edges, holes, grain, stamped
markings, smudges, specks, glints, shadows) appears on every part whatever its class, so that no single cue
such as "a dark line" or "a rough surface" gives the class away.
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
from scipy.signal import fftconvolve, lfilter
from tqdm import tqdm

from connectors.recording import Manifest, RecordingWriter

DEFECTS = ("good", "scratch", "dent", "crack", "contamination")
MACHINE_STATES = ("normal", "bearing_click", "imbalance_hum")
SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # 1.0 s
# Classes are dealt from shuffled blocks of 20 parts: any 20 consecutive parts hold exactly these counts.
DEFECT_BLOCK = {"good": 8, "scratch": 3, "dent": 3, "crack": 3, "contamination": 3}
MACHINE_BLOCK = {"normal": 14, "bearing_click": 3, "imbalance_hum": 3}
RENDERERS = ("paint", "shaded", "scene", "photo")  # this module's, :mod:`.shaded`'s, :mod:`.scene`'s, :mod:`.photo`'s
HELD_OUT_RENDERERS = ("photo",)  # no model and no study trains on these: renderers every model has never seen
MIXTURES = {"mixed": ("shaded", "paint")}  # named mixtures; "A+B[+C]" mixes any renderers too
MATERIALS = {"brushed": 0.2, "cast": 0.15, "plastic": 0.2, "wood": 0.1, "brick": 0.1, "grass": 0.1, "gravel": 0.15}
Box = list[int]  # [x, y, w, h] in pixels
# a renderer's frame (rng, defect, size, product) -> (BGR frame, boxes) and clip (rng, machine) -> waveform
PartRenderer = Callable[[np.random.Generator, str, tuple[int, int], int | None], tuple[np.ndarray, list[Box]]]
SoundRenderer = Callable[[np.random.Generator, str], np.ndarray]


def synth_factory(
    out: str | Path,
    parts: int,
    seed: int,
    size: tuple[int, int] = (640, 480),
    fps: float = 30.0,
    progress: bool = True,
    image_format: str = "png",
    workers: int | None = None,
    product: int | None = None,
    renderer: str = "paint",
) -> Path:
    """Write a labelled factory recording and return its folder.

    Args:
        out: the recording folder (created if missing).
        parts: number of items, ``part-000000`` onwards; item ``i`` is at ``t = i / fps``.
        seed: non-negative; the same seed gives the same frames, clips and labels, byte for byte. Item ``i``
            depends only on ``(seed, i)``, so a longer recording extends a shorter one.
        size: frame ``(width, height)`` in pixels; defect sizes scale with it (stated for 640x480).
        fps: parts per second on the recorded line.
        progress: show a progress bar.
        image_format: ``"png"`` (lossless) or ``"jpg"``.
        workers: rendering processes; None: 2 for 100 parts or more on a multi-core machine, else 1. The
            output does not depend on it. On Linux they are forked (sharing the texture bank, no ``__main__``
            guard needed), so call this before starting threads of your own, as with any fork.
        product: a one-product line (:func:`render_part`): every part is product ``product`` (non-negative),
            whatever ``seed``, so two recordings of one product (good parts to fit on, a test set) share it.
        renderer: ``"paint"`` (this module), ``"shaded"`` (:mod:`pipelines.lines.factory.shaded`, written
            independently: lit height maps, and :mod:`.shaded_audio`'s machine sounds), ``"scene"``
            (:mod:`pipelines.lines.factory.scene`, written independently of both: 3-D parts under a perspective
            camera, and :mod:`.scene_audio`'s machines), or a mixture: ``"A+B[+C]"`` draws each part's renderer
            from ``(seed, index)``, in equal shares, and ``"mixed"`` is ``"shaded+paint"``. Other than
            ``"paint"``, the manifest's generator and every item's labels name it (``"renderer"``).
    """
    width, height = size
    if parts < 0 or seed < 0:
        raise ValueError(f"parts ({parts}) and seed ({seed}) must be non-negative")
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise ValueError(f"frame size {width}x{height} outside 16..8192 pixels")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if product is not None and product < 0:
        raise ValueError(f"product must be non-negative, got {product}")
    choices = _mixture(renderer)
    manifest = Manifest(
        line="factory",
        fps=fps,
        modalities=["image", "audio"],
        classes={"defect": list(DEFECTS), "machine": list(MACHINE_STATES)},
        generator={"name": "synth.factory", "seed": seed, "size": [width, height],
                   **({"product": product} if product is not None else {}),
                   **({"renderer": renderer} if renderer != "paint" else {})},
    )
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if parts >= 100 else 1
    defects = deal(np.random.default_rng([seed, 0]), DEFECT_BLOCK, parts)
    machines = deal(np.random.default_rng([seed, 1]), MACHINE_BLOCK, parts)
    jobs = [(seed, i, defect, machine, (width, height), product, _part_renderer(choices, seed, i))
            for i, (defect, machine) in enumerate(zip(defects, machines))]
    root = Path(out)
    try:
        with RecordingWriter(root, manifest, image_format=image_format) as rec:
            items = tqdm(_render_all(jobs, workers), total=parts, desc="synth.factory", unit="part",
                         disable=not progress)
            for (_, i, defect, machine, _, _, used), (image, boxes, audio) in zip(jobs, items):
                labels = {"defect": defect, "machine": machine, "box": _union(boxes), "boxes": boxes,
                          **({"renderer": used} if renderer != "paint" else {})}
                rec.add(f"part-{i:06d}", t=i / fps, image=image, audio=(audio, SAMPLE_RATE), labels=labels)
    except BaseException:  # the writer has closed what it wrote: a cut-short recording must not pass for a whole one
        (root / "manifest.json").unlink(missing_ok=True)
        raise
    return root


# seed, index, defect, machine, frame size, product, renderer (one of RENDERERS)
_Job = tuple[int, int, str, str, tuple[int, int], int | None, str]


def _mixture(renderer: str) -> tuple[str, ...]:
    """The renderers ``renderer`` names: one of :data:`RENDERERS`, a named mixture, or ``"A+B[+C]"``."""
    choices = MIXTURES.get(renderer, tuple(renderer.split("+")))
    if not set(choices) <= set(RENDERERS) or len(set(choices)) != len(choices):
        raise ValueError(f"renderer must be one of {RENDERERS}, {tuple(MIXTURES)} or a mixture of distinct "
                         f"renderers such as 'paint+scene', got {renderer!r}")
    return choices


def _part_renderer(choices: tuple[str, ...], seed: int, index: int) -> str:
    """The renderer of part ``index``: the one of ``choices``, or one of them drawn from ``(seed, index)``."""
    if len(choices) == 1:
        return choices[0]
    return choices[int(np.random.default_rng([seed, 4, index]).random() * len(choices))]


def _render_all(jobs: list[_Job], workers: int) -> Iterator[tuple[np.ndarray, list[Box], np.ndarray]]:
    """Each job's frame, boxes and clip, in order; rendered in ``workers`` processes when more than one."""
    if workers <= 1:
        yield from map(_render_item, jobs)
        return
    _texture_bank()  # built once here; forked workers inherit it
    _noise_pool()
    for renderer in {job[6] for job in jobs} - {"paint"}:
        _renderer_modules(renderer)[0].warm_up()
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: deque[Future] = deque()
        for job in jobs:  # a bounded window keeps memory flat whoever is slower
            pending.append(pool.submit(_render_item, job))
            if len(pending) > 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _render_item(job: _Job) -> tuple[np.ndarray, list[Box], np.ndarray]:
    """Item ``index``: it depends only on ``(seed, index)`` and its classes."""
    seed, index, defect, machine, size, product, renderer = job
    image_rng, sound_rng = np.random.default_rng([seed, 2, index]), np.random.default_rng([seed, 3, index])
    draw_part, draw_sound = renderer_functions(renderer)
    try:
        image, boxes = draw_part(image_rng, defect, size, product)
        return image, boxes, draw_sound(sound_rng, machine)
    except Exception as exc:  # a renderer's bug: name the part that reproduces it
        raise RuntimeError(f"part-{index:06d} ({renderer} renderer, seed {seed}, {defect}, {machine}, "
                           f"product {product}) failed to render: {exc!r}") from exc


def renderer_functions(renderer: str) -> tuple[PartRenderer, SoundRenderer]:
    """``renderer``'s frame and clip functions; the other renderers' modules are imported here (they import this
    one): :mod:`.shaded` / :mod:`.shaded_audio` and :mod:`.scene` / :mod:`.scene_audio`."""
    if renderer == "paint":
        return render_part, render_machine_sound
    frames, sounds = _renderer_modules(renderer)
    return getattr(frames, f"render_part_{renderer}"), getattr(sounds, f"render_machine_sound_{renderer}")


def _renderer_modules(renderer: str) -> tuple[ModuleType, ModuleType]:
    """The frame and sound modules of a renderer other than paint, ``pipelines.lines.factory.<renderer>`` and
    ``<renderer>_audio``: the one place that naming convention is written."""
    package = "pipelines.lines.factory"
    return importlib.import_module(f"{package}.{renderer}"), importlib.import_module(f"{package}.{renderer}_audio")


def deal(rng: np.random.Generator, block: dict[str, int], n: int) -> list[str]:
    """``n`` class names dealt from shuffled copies of ``block``."""
    deck = [name for name, count in block.items() for _ in range(count)]
    dealt: list[str] = []
    while len(dealt) < n:
        dealt += [deck[j] for j in rng.permutation(len(deck))]
    return dealt[:n]


def _union(boxes: list[Box]) -> Box | None:
    """The box enclosing all ``boxes`` (None when there are none)."""
    if not boxes:
        return None
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


# --------------------------------------------------------------------------------------------------- images
# Images are built planar, ``(3, H, W)`` float32 BGR in 0..1, and interleaved only for the camera stage.

Region = tuple[slice, slice]  # rows, columns


def render_part(
    rng: np.random.Generator, defect: str, size: tuple[int, int] = (640, 480), product: int | None = None
) -> tuple[np.ndarray, list[Box]]:
    """One inspection frame ``(H, W, 3)`` uint8 BGR of a part with ``defect``, and a box per defect instance.

    The same ``rng`` state gives the same part, pose, light and camera whatever ``defect`` is: only the
    defect differs. With ``product``, a one-product line: the design, material and texture, pose in the
    fixture, background, light and camera settings are product ``product``'s (drawn from its own generator,
    the same for every part), and only the nuisance (smudges, specks, glints, markings), the defects and the
    sensor noise come from ``rng``.
    """
    if defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}")
    width, height = size
    scale = max(min(width / 640, height / 480), 0.1)  # pixel sizes are stated for 640x480
    look = rng if product is None else np.random.default_rng([4, product])
    along_x = bool(look.random() < 0.7)  # the conveyor runs left-right, else top-bottom
    outline = _part_outline(look, width, height, scale)
    albedo, roughness = _part_surface(look, outline, width, height, scale)
    canvas = _Canvas(albedo, outline.sdf, _unit(look), scale, roughness)
    canvas.shade += _edge_relief(look, canvas)
    _add_nuisance(rng, canvas)
    defect_rng = np.random.default_rng(rng.integers(2**63))  # the rest of the frame does not depend on the class
    boxes = [box for box in _PAINTERS[defect](defect_rng, canvas) if box is not None] if defect != "good" else []
    scene = _compose(look, canvas, _background(look, width, height, scale, along_x))
    scene = _illuminate(look, scene, canvas.mask)
    return _camera(look, scene, scale, along_x, noise=rng), boxes


@dataclass
class _Canvas:
    """The part being drawn, in frame coordinates: surface colour, relief shading and outline.

    Painting methods take a coverage ``alpha``: full-frame ``(H, W)``, or a patch placed at region ``at``.
    """

    albedo: np.ndarray  # (3, H, W) float32 surface colour in 0..1
    sdf: np.ndarray  # (H, W) float32 signed distance to the outline in px, negative on the part
    light: np.ndarray  # (2,) float32 unit vector towards the light, image plane
    scale: float  # pixel lengths relative to a 640x480 frame
    roughness: float  # relative contrast of the surface texture
    mask: np.ndarray = field(init=False)  # (H, W) part coverage 0..1
    shade: np.ndarray = field(init=False)  # (H, W) relief shading, multiplies the albedo

    def __post_init__(self) -> None:
        self.mask = np.clip(0.5 - self.sdf, 0.0, 1.0)
        self.shade = np.ones_like(self.sdf)

    @property
    def size(self) -> tuple[int, int]:
        return self.sdf.shape[1], self.sdf.shape[0]

    def blend(self, alpha: np.ndarray, colour: np.ndarray, at: Region | None = None) -> None:
        """Paint ``colour`` (3,) over the part with coverage ``alpha``."""
        alpha, (rows, cols) = _patch(alpha, at)
        patch = self.albedo[:, rows, cols]
        patch += (alpha * self.mask[rows, cols]) * (colour[:, None, None] - patch)

    def tone(self, alpha: np.ndarray, strength: float, bright: bool, at: Region | None = None) -> None:
        """Brighten (towards white) or darken (towards black) the part by ``strength`` times ``alpha``."""
        alpha, (rows, cols) = _patch(alpha, at)
        patch = self.albedo[:, rows, cols]
        amount = alpha * self.mask[rows, cols] * np.float32(strength)
        patch += amount * ((1 - patch) if bright else -patch)

    def box(self, alpha: np.ndarray, threshold: float = 0.1, at: Region | None = None) -> Box | None:
        """Bounding box ``[x, y, w, h]`` of where ``alpha`` shows on the part, or None."""
        alpha, (rows, cols) = _patch(alpha, at)
        x, y, w, h = cv2.boundingRect(((alpha * self.mask[rows, cols]) > threshold).astype(np.uint8))
        return [x + cols.start, y + rows.start, w, h] if w and h else None

    def inside(self, rng: np.random.Generator, margin: float) -> tuple[float, float]:
        """A random point on the part, ``margin`` px clear of its outline and of the frame edge if possible."""
        width, height = self.size
        margin = min(margin, 0.45 * min(width, height))
        for _ in range(64):
            x, y = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
            if self.sdf[int(y), int(x)] < -margin:
                return x, y
        xs, ys = _grid(width, height)
        clearance = np.minimum(np.minimum(-self.sdf, np.minimum(xs, width - 1 - xs)), np.minimum(ys, height - 1 - ys))
        y, x = np.unravel_index(int(np.argmax(clearance)), clearance.shape)
        return float(x), float(y)

    def on_part(self, points: np.ndarray, margin: float) -> bool:
        """Whether every ``(x, y)`` point lies on the part and in the frame, ``margin`` px clear."""
        width, height = self.size
        x, y = points[:, 0], points[:, 1]
        if x.min() < margin or y.min() < margin or x.max() > width - 1 - margin or y.max() > height - 1 - margin:
            return False
        return bool((self.sdf[y.astype(int), x.astype(int)] < -margin).all())

    def local_luminance(self, x: float, y: float, radius: float) -> float:
        rows, cols = _roi(x, y, radius, *self.size)
        return float(_luminance(self.albedo[:, rows, cols].reshape(3, -1).mean(1)))


def _patch(alpha: np.ndarray, at: Region | None) -> tuple[np.ndarray, Region]:
    """``alpha`` as a patch and its region; a full-frame ``alpha`` is cut to where it is non-zero."""
    if at is not None:
        return alpha, at
    x, y, w, h = cv2.boundingRect((alpha > 1e-3).astype(np.uint8))
    at = slice(y, y + h), slice(x, x + w)
    return alpha[at], at


def _region(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> Region:
    """The pixel rectangle ``[x0, x1] x [y0, y1]`` clipped to the frame (at least one pixel)."""
    c0, r0 = min(max(int(x0), 0), width - 1), min(max(int(y0), 0), height - 1)
    c1, r1 = min(int(x1) + 2, width), min(int(y1) + 2, height)
    return slice(r0, max(r1, r0 + 1)), slice(c0, max(c1, c0 + 1))


def _roi(x: float, y: float, radius: float, width: int, height: int) -> Region:
    """The square of half-side ``radius`` around ``(x, y)``, clipped to the frame."""
    r = max(radius, 1.0)
    return _region(x - r, y - r, x + r, y + r, width, height)


@functools.cache
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(xs, ys)``, each ``(H, W)`` float32 (read-only, shared)."""
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def _unit(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(angle), np.sin(angle)], np.float32)


def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    """BGR colour (3,) float32 from hue in degrees, saturation and value in 0..1."""
    return cv2.cvtColor(np.array([[[hue % 360, sat, val]]], np.float32), cv2.COLOR_HSV2BGR)[0, 0]


def _luminance(bgr: np.ndarray) -> np.ndarray:
    """Luminance of planar BGR (channels first)."""
    return bgr[0] * 0.114 + bgr[1] * 0.587 + bgr[2] * 0.299


def _contrasting(colour: np.ndarray, reference: float, min_diff: float) -> np.ndarray:
    """``colour`` shifted so that its luminance differs from ``reference`` by at least ``min_diff``."""
    lum = float(_luminance(colour))
    if abs(lum - reference) >= min_diff:
        return colour
    target = reference - min_diff if reference > 0.5 else reference + min_diff
    return np.clip(colour + (target - lum), 0.0, 1.0).astype(np.float32)


def _rotate(u: np.ndarray, v: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = float(np.cos(angle)), float(np.sin(angle))
    return u * c + v * s, v * c - u * s


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _fractal(rng: np.random.Generator, height: int, width: int, cell: float, octaves: int = 4,
             persistence: float = 0.5) -> np.ndarray:
    """Zero-mean, unit-variance fractal value noise ``(H, W)`` float32; ``cell``: coarsest feature size in px."""
    out = np.zeros((height, width), np.float32)
    amp = 1.0
    for octave in range(octaves):
        step = max(cell / 2**octave, 1.0)
        grid = rng.standard_normal((int(height / step) + 2, int(width / step) + 2), dtype=np.float32)
        out += amp * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        amp *= persistence
    return _standardise(out)


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return (x - x.mean()) / (x.std() + 1e-6)


# ------------------------------------------------------------------------------------- textures and parts


@functools.cache
def _texture_bank() -> dict[str, list[np.ndarray]]:
    """Zero-mean, unit-variance grey textures: CC0 photos from scikit-image and procedural materials."""
    from skimage import data

    rng = np.random.default_rng(20240601)  # fixed: the bank is the same for every seed
    bank = {name: [_standardise(getattr(data, name)())] for name in ("brick", "grass", "gravel")}
    n = 1024
    bank["brushed"] = [_brushed_metal(rng, n) for _ in range(3)]
    bank["cast"] = [_cast_metal(rng, n) for _ in range(3)]
    bank["plastic"] = [_painted_plastic(rng, n) for _ in range(3)]
    bank["wood"] = [_wood(rng, n) for _ in range(3)]
    return bank


def _brushed_metal(rng: np.random.Generator, n: int) -> np.ndarray:
    streaks = cv2.resize(rng.standard_normal((n, n // 64), dtype=np.float32), (n, n))
    fine = cv2.resize(rng.standard_normal((n, n // 8), dtype=np.float32), (n, n))
    return _standardise(streaks + 0.6 * fine + 0.8 * _fractal(rng, n, n, n / 4, 3))


def _cast_metal(rng: np.random.Generator, n: int) -> np.ndarray:
    pores = cv2.GaussianBlur((rng.random((n, n)) < 6e-4).astype(np.float32), (0, 0), 0.8)
    return _standardise(_fractal(rng, n, n, 24, 5, 0.8) - 25 * pores)


def _painted_plastic(rng: np.random.Generator, n: int) -> np.ndarray:
    return _standardise(_fractal(rng, n, n, n / 3, 2) + 0.5 * _fractal(rng, n, n, 5, 2))


def _wood(rng: np.random.Generator, n: int) -> np.ndarray:
    xs, _ = _grid(n, n)
    phase = xs / rng.uniform(18, 40) + 1.2 * _fractal(rng, n, n, n / 3, 2)
    grain = cv2.resize(rng.standard_normal((n // 48, n), dtype=np.float32), (n, n))
    return _standardise(np.sin(2 * np.pi * phase) ** 3 + 0.5 * grain)


def _texture_crop(rng: np.random.Generator, name: str, width: int, height: int, zoom: float) -> np.ndarray:
    """A randomly placed, rotated and zoomed view ``(H, W)`` of a texture from the bank."""
    choices = _texture_bank()[name]
    tex = choices[rng.integers(len(choices))]
    reach = min(0.5 * np.hypot(width, height) / zoom, 0.5 * min(tex.shape))  # stay off the texture's border
    centre = (rng.uniform(reach, tex.shape[1] - reach), rng.uniform(reach, tex.shape[0] - reach))
    matrix = cv2.getRotationMatrix2D(centre, rng.uniform(0, 360), zoom)
    matrix[:, 2] += (width / 2 - centre[0], height / 2 - centre[1])
    return cv2.warpAffine(tex, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


@dataclass
class _Outline:
    """Where the part is in the frame."""

    sdf: np.ndarray  # (H, W) float32 signed distance to the outline in px, negative on the part
    centre: tuple[float, float]
    kind: str  # closeup | plate | disc


def _part_outline(rng: np.random.Generator, width: int, height: int, scale: float) -> _Outline:
    """A posed part: a close-up filling the frame, a rounded plate or a disc, maybe with holes."""
    kind = str(rng.choice(["closeup", "plate", "disc"], p=[0.25, 0.45, 0.30]))
    centre = (width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6))
    if kind == "closeup":
        return _Outline(np.full((height, width), -1e4, np.float32), centre, kind)
    xs, ys = _grid(width, height)
    angle = rng.uniform(-0.45, 0.45) if kind == "plate" else rng.uniform(0, np.pi)
    u, v = _rotate(xs - centre[0], ys - centre[1], angle)
    if kind == "plate":
        a, b = width * rng.uniform(0.3, 0.5), height * rng.uniform(0.3, 0.48)
        corner = rng.uniform(0.03, 0.35) * min(a, b)
        sdf = _rounded_box(u, v, a, b, corner)
        holes = _plate_holes(rng, a, b, corner, scale)
    else:
        radius, squash = height * rng.uniform(0.34, 0.5), rng.uniform(0.85, 1.0)
        sdf = np.sqrt(u * u + (v / squash) ** 2) - radius
        holes = _disc_holes(rng, radius, scale)
    for hx, hy, hr in holes:
        sdf = np.maximum(sdf, hr - np.sqrt((u - hx) ** 2 + (v - hy) ** 2))
    return _Outline(sdf, centre, kind)


def _rounded_box(u: np.ndarray, v: np.ndarray, a: float, b: float, r: float) -> np.ndarray:
    qx, qy = np.abs(u) - (a - r), np.abs(v) - (b - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def _plate_holes(rng: np.random.Generator, a: float, b: float, corner: float,
                 scale: float) -> list[tuple[float, float, float]]:
    """Mounting holes near two or four corners (or none)."""
    if rng.random() < 0.5:
        return []
    r = rng.uniform(6, 16) * scale
    inset = max(2.5 * r, 0.6 * corner + 1.5 * r)
    corners = [(1, 1), (-1, -1), (1, -1), (-1, 1)][: 2 if rng.random() < 0.4 else 4]
    return [(sx * (a - inset), sy * (b - inset), r) for sx, sy in corners]


def _disc_holes(rng: np.random.Generator, radius: float, scale: float) -> list[tuple[float, float, float]]:
    """A centre bore, a bolt circle, or none."""
    roll = rng.random()
    if roll < 0.3:
        return [(0.0, 0.0, radius * rng.uniform(0.08, 0.3))]
    if roll >= 0.6:
        return []
    n, ring, r = int(rng.integers(3, 7)), radius * rng.uniform(0.6, 0.75), rng.uniform(5, 14) * scale
    phase = rng.uniform(0, 2 * np.pi)
    return [(ring * float(np.cos(phase + 2 * np.pi * k / n)), ring * float(np.sin(phase + 2 * np.pi * k / n)), r)
            for k in range(n)]


def _part_surface(rng: np.random.Generator, outline: _Outline, width: int, height: int,
                  scale: float) -> tuple[np.ndarray, float]:
    """Surface colour ``(3, H, W)`` of the part, a tinted material texture with slow colour drift; its roughness."""
    material = str(rng.choice(list(MATERIALS), p=list(MATERIALS.values())))
    photo = material in ("brick", "grass", "gravel")
    zoom = rng.uniform(1.6, 3.0) if photo else rng.uniform(0.8, 1.6)
    tex = _texture_crop(rng, material, width, height, zoom * scale)
    if outline.kind == "disc" and material in ("brushed", "cast") and rng.random() < 0.6:
        tex = 0.6 * tex + _turning_marks(rng, outline.centre, width, height, scale)
    colour, contrast = _material_look(rng, material)
    relief = tex * contrast
    relief += 1
    albedo = np.empty((3, height, width), np.float32)
    drift, small = rng.uniform(0.01, 0.06), (width // 64 + 2, height // 64 + 2)
    for channel, plane in enumerate(albedo):  # slow colour drift around the base colour
        cv2.resize(rng.standard_normal(small[::-1], dtype=np.float32), (width, height), dst=plane)
        plane *= drift * colour[channel]
        plane += colour[channel]
        plane *= relief
    return np.clip(albedo, 0.0, 1.0, out=albedo), contrast


def _turning_marks(rng: np.random.Generator, centre: tuple[float, float], width: int, height: int,
                   scale: float) -> np.ndarray:
    """Concentric lathe marks around ``centre``."""
    xs, ys = _grid(width, height)
    radius = np.sqrt((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2)
    return 0.8 * np.sin(radius * (2 * np.pi / (rng.uniform(2.5, 8) * scale)))


def _material_look(rng: np.random.Generator, material: str) -> tuple[np.ndarray, float]:
    """Base colour and texture contrast of a material."""
    u = rng.uniform
    if material == "brushed":
        return _hsv(u(190, 230) if rng.random() < 0.6 else u(25, 50), u(0, 0.12), u(0.45, 0.85)), u(0.05, 0.14)
    if material == "cast":
        return _hsv(u(0, 360), u(0, 0.15), u(0.3, 0.7)), u(0.08, 0.2)
    if material == "plastic":
        return _hsv(u(0, 360), u(0.2, 0.85), u(0.15, 0.9)), u(0.02, 0.08)
    if material == "wood":
        return _hsv(u(20, 40), u(0.35, 0.7), u(0.35, 0.8)), u(0.06, 0.15)
    return _hsv(u(0, 360), u(0, 0.35), u(0.3, 0.8)), u(0.06, 0.18)


def _edge_relief(rng: np.random.Generator, canvas: _Canvas) -> np.ndarray:
    """Shading of the bevelled outline and hole chamfers: lit on one side, shadowed on the other."""
    width = rng.uniform(2, 10) * canvas.scale
    t = np.clip(canvas.sdf * (-1 / width), 0, 1)
    slope = 4 * t * (1 - t)
    nx = cv2.Sobel(canvas.sdf, cv2.CV_32F, 1, 0, ksize=3)
    ny = cv2.Sobel(canvas.sdf, cv2.CV_32F, 0, 1, ksize=3)
    return slope * (nx * canvas.light[0] + ny * canvas.light[1]) * (-rng.uniform(0.2, 0.6) / 8)


# ------------------------------------------------------------------------------------------------ nuisance


def _add_nuisance(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Benign features that every class shares: smudges, specks, glints, stamped markings."""
    _smudges(rng, canvas)
    _specks(rng, canvas)
    _glints(rng, canvas)
    if rng.random() < 0.35:
        _marking(rng, canvas)


def _smudges(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Large, soft, low-contrast stains (fingerprints, drying marks)."""
    count = int(rng.integers(0, 4))
    if not count:
        return
    width, height = canvas.size
    small = (width // 8 + 1, height // 8 + 1)
    stains = np.zeros(small[::-1], np.float32)
    for _ in range(count):
        blob = np.zeros_like(stains)
        centre = (int(rng.uniform(0, small[0])), int(rng.uniform(0, small[1])))
        axes = (int(rng.uniform(3, 15) * canvas.scale) + 1, int(rng.uniform(3, 15) * canvas.scale) + 1)
        cv2.ellipse(blob, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
        blob *= np.clip(0.6 + 0.5 * _fractal(rng, small[1], small[0], 4, 2), 0, 1)
        stains += rng.choice([-1, 1]) * rng.uniform(0.02, 0.06) * cv2.GaussianBlur(blob, (0, 0), 2)
    canvas.shade *= 1 + cv2.resize(stains, (width, height))


def _specks(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Sparse one-pixel specks of dust or porosity."""
    width, height = canvas.size
    layer = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(0, 40)):
        cv2.circle(layer, (int(rng.uniform(0, width)), int(rng.uniform(0, height))), 1, int(rng.uniform(60, 255)), -1)
    sign = 1 if rng.random() < 0.4 else -1
    canvas.shade *= 1 + layer.astype(np.float32) * (sign * rng.uniform(0.05, 0.2) / 255)


def _glints(rng: np.random.Generator, canvas: _Canvas) -> None:
    """A few small specular glints."""
    for _ in range(rng.integers(0, 4)):
        x, y = canvas.inside(rng, 4)
        sigma = rng.uniform(1.5, 4) * canvas.scale
        spot, at = _spot(canvas, x, y, sigma, sigma * rng.uniform(1, 2), rng.uniform(0, np.pi))
        canvas.tone(spot, rng.uniform(0.3, 0.8), True, at)


def _marking(rng: np.random.Generator, canvas: _Canvas) -> None:
    """A stamped or printed part number."""
    width, height = canvas.size
    text = f"{rng.choice(['SN', 'LOT', 'P/N', 'REV'])} {rng.integers(100, 99999)}{rng.choice(['', '-A', '-B', 'X'])}"
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX]))
    size = rng.uniform(0.5, 1.3) * canvas.scale * (1.6 if font == cv2.FONT_HERSHEY_PLAIN else 1.0)
    thickness = max(1, int(round(rng.uniform(1, 2.5) * canvas.scale)))
    (tw, th), _ = cv2.getTextSize(text, font, size, thickness)
    x, y = canvas.inside(rng, tw / 2 + 4)
    layer = np.zeros((height, width), np.uint8)
    cv2.putText(layer, text, (int(x - tw / 2), int(y + th / 2)), font, size, 255, thickness, cv2.LINE_AA)
    matrix = cv2.getRotationMatrix2D((x, y), rng.uniform(-180, 180), 1.0)
    alpha = cv2.warpAffine(layer, matrix, (width, height)).astype(np.float32) / 255
    canvas.tone(alpha, rng.uniform(0.1, 0.35), bright=canvas.local_luminance(x, y, tw / 2) < 0.4)


def _spot(canvas: _Canvas, x: float, y: float, sx: float, sy: float, angle: float) -> tuple[np.ndarray, Region]:
    """An elliptical Gaussian spot around ``(x, y)``, as a patch and its region."""
    width, height = canvas.size
    at = _roi(x, y, 3 * max(sx, sy), width, height)
    xs, ys = _grid(width, height)
    u, v = _rotate(xs[at] - x, ys[at] - y, angle)
    return np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)), at


# ------------------------------------------------------------------------------------------------- defects


def _instances(rng: np.random.Generator, canvas: _Canvas, draw: Callable[[np.random.Generator, _Canvas], Box | None],
               counts: tuple[float, ...]) -> list[Box | None]:
    """Draw 1, 2, 3... instances of a defect with probabilities ``counts``."""
    n = 1 + int(rng.choice(len(counts), p=counts))
    return [draw(rng, canvas) for _ in range(n)]


def _scratches(rng: np.random.Generator, canvas: _Canvas) -> list[Box | None]:
    return _instances(rng, canvas, _scratch, (0.7, 0.2, 0.1))


def _dents(rng: np.random.Generator, canvas: _Canvas) -> list[Box | None]:
    return _instances(rng, canvas, _dent, (0.7, 0.2, 0.1))


def _cracks(rng: np.random.Generator, canvas: _Canvas) -> list[Box | None]:
    return _instances(rng, canvas, _crack, (0.8, 0.2))


def _stains(rng: np.random.Generator, canvas: _Canvas) -> list[Box | None]:
    return _instances(rng, canvas, _stain, (0.6, 0.3, 0.1))


def _strength(rng: np.random.Generator, canvas: _Canvas, low: float, high: float) -> float:
    """A defect contrast in ``low..high``, raised on rough surfaces so that the defect stays visible."""
    return min(rng.uniform(low, high) + 1.5 * canvas.roughness, 0.95)


def _scratch(rng: np.random.Generator, canvas: _Canvas) -> Box | None:
    """A smooth, gently curved groove of even width (60-300 px long, 1.5-5 px wide), dark or bright."""
    s = canvas.scale
    length, angle, bend = _log_uniform(rng, 60, 300) * s, rng.uniform(0, np.pi), rng.uniform(-0.15, 0.15)
    for attempt in range(16):  # shorter and nearer the middle of the part until it fits
        centre = np.array(canvas.inside(rng, (0.3 if attempt < 8 else 0.55) * length), np.float32)
        points = _bezier(centre, angle, length, bend)
        if canvas.on_part(points, 3):
            break
        length = max(0.9 * length, 60 * s)
    width = rng.uniform(1.5, 5) * s
    strands = [(points, width)]
    if rng.random() < 0.25:  # abrasion: a few parallel grooves
        normal = np.array([-np.sin(angle), np.cos(angle)], np.float32)
        gap = rng.uniform(2.5, 6) * s
        for k in range(1, int(rng.integers(2, 5))):
            strands.append((points + normal * gap * k, width * rng.uniform(0.5, 1)))
    alpha, at = _strokes(rng, canvas, strands, 0.5 * max(s, 0.5))
    lum = canvas.local_luminance(*centre, length / 2)
    bright = rng.random() < (0.9 if lum < 0.3 else 0.5 if lum < 0.55 else 0.0)  # the polarity that shows
    canvas.tone(alpha, _strength(rng, canvas, 0.45, 0.85), bright, at)
    return canvas.box(alpha, at=at)


def _bezier(centre: np.ndarray, angle: float, length: float, bend: float, n: int = 32) -> np.ndarray:
    """``n`` points of a quadratic curve through ``centre``, ``length`` long along ``angle``, bowed by ``bend``."""
    direction = np.array([np.cos(angle), np.sin(angle)], np.float32)
    normal = np.array([-direction[1], direction[0]], np.float32)
    p0, p2 = centre - direction * length / 2, centre + direction * length / 2
    p1 = centre + normal * bend * length * 2
    t = np.linspace(0, 1, n, dtype=np.float32)[:, None]
    return ((1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2).astype(np.float32)


def _strokes(rng: np.random.Generator, canvas: _Canvas, strokes: list[tuple[np.ndarray, float]],
             blur: float) -> tuple[np.ndarray, Region]:
    """Coverage of antialiased polylines ``(points (N, 2), width)``, as a patch and its region."""
    corners = np.concatenate([points for points, _ in strokes])
    pad = 4 + max(width for _, width in strokes) + 3 * blur
    (x0, y0), (x1, y1) = corners.min(0) - pad, corners.max(0) + pad
    at = _region(x0, y0, x1, y1, *canvas.size)
    layer = np.zeros((at[0].stop - at[0].start, at[1].stop - at[1].start), np.uint8)
    origin = np.array([at[1].start, at[0].start], np.float32)
    for points, width in strokes:
        _stroke(rng, layer, points - origin, width)
    return cv2.GaussianBlur(layer.astype(np.float32) / 255, (0, 0), blur), at


def _stroke(rng: np.random.Generator, layer: np.ndarray, points: np.ndarray, width: float) -> None:
    """Draw a tapered polyline with slowly varying intensity onto a uint8 ``layer``."""
    n = len(points)
    t = np.linspace(0, 1, n)
    taper = np.sin(np.pi * np.clip(t, 0.02, 0.98)) ** 0.3
    wobble = 0.75 + 0.25 * np.interp(t, np.linspace(0, 1, 5), rng.uniform(-1, 1, 5))
    pts = np.round(points * 16).astype(np.int32)  # 4 fractional bits
    for k in range(n - 1):
        thickness = max(1, int(round(width * (0.6 + 0.4 * taper[k]))))
        cv2.line(layer, tuple(pts[k]), tuple(pts[k + 1]), int(255 * taper[k] * wobble[k]), thickness, cv2.LINE_AA, 4)


def _crack(rng: np.random.Generator, canvas: _Canvas) -> Box | None:
    """A thin, jagged, branching fracture (60-250 px), dark (stress-whitened on dark parts)."""
    s = canvas.scale
    length, angle = rng.uniform(60, 250) * s, rng.uniform(0, 2 * np.pi)
    step = rng.uniform(3, 6) * s
    for attempt in range(16):
        centre = np.array(canvas.inside(rng, (0.25 if attempt < 8 else 0.55) * length), np.float32)
        trunk = np.concatenate([_jagged(rng, centre, angle + np.pi, length / 2, step)[::-1],
                                _jagged(rng, centre, angle, length / 2, step)[1:]])
        if canvas.on_part(trunk, 3):
            break
        length = max(0.9 * length, 60 * s)
    width = rng.uniform(1.5, 3.2) * s
    strokes = [(trunk, width)]
    for _ in range(rng.choice(4, p=[0.25, 0.35, 0.25, 0.15])):
        root = trunk[rng.integers(len(trunk) // 5, 4 * len(trunk) // 5)]
        heading = angle + rng.choice([-1, 1]) * rng.uniform(0.35, 1.1) + rng.choice([0, np.pi])
        branch = _jagged(rng, root, heading, length * rng.uniform(0.15, 0.45), step)
        strokes.append((branch, width * rng.uniform(0.5, 0.8)))
    alpha, at = _strokes(rng, canvas, strokes, 0.4 * max(s, 0.5))
    bright = canvas.local_luminance(*centre, length / 2) < 0.25
    canvas.tone(alpha, _strength(rng, canvas, 0.5, 0.85), bright, at)
    return canvas.box(alpha, at=at)


def _jagged(rng: np.random.Generator, start: np.ndarray, angle: float, length: float, step: float) -> np.ndarray:
    """Points of a random walk from ``start`` that keeps heading roughly along ``angle``."""
    n = max(int(length / step), 2)
    heading = angle + lfilter([1.0], [1.0, -0.6], rng.normal(0, 0.5, n))
    steps = step * rng.uniform(0.6, 1.4, n)[:, None] * np.stack([np.cos(heading), np.sin(heading)], 1)
    return np.concatenate([start[None], start + np.cumsum(steps, 0)]).astype(np.float32)


def _dent(rng: np.random.Generator, canvas: _Canvas) -> Box | None:
    """A round or oval impact dent or pit (radius 12-45 px), shaded light on one side and dark on the other."""
    width, height = canvas.size
    radius = _log_uniform(rng, 12, 45) * canvas.scale
    x, y = canvas.inside(rng, radius + 30 * canvas.scale)  # clear of edges, where mounting holes sit
    minor = radius * rng.uniform(0.6, 1.0)
    at = _roi(x, y, 1.5 * radius, width, height)
    xs, ys = _grid(width, height)
    u, v = _rotate(xs[at] - x, ys[at] - y, rng.uniform(0, np.pi))
    rho = np.sqrt((u / radius) ** 2 + (v / minor) ** 2)
    relief = -0.5 * (1 + np.cos(np.pi * np.minimum(rho, 1))) + rng.uniform(0, 0.4) * np.exp(-(((rho - 1) / 0.18) ** 2))
    gy, gx = np.gradient(relief)
    slope = gx * canvas.light[0] + gy * canvas.light[1]
    slope *= 1 / (float(np.abs(slope).max()) + 1e-6)
    occlusion = rng.uniform(0, 0.12) * np.clip(1 - rho**2, 0, None)
    canvas.shade[at] += (_strength(rng, canvas, 0.3, 0.7) * slope - occlusion) * canvas.mask[at]
    canvas.tone(np.clip(slope, 0, None), rng.uniform(0.05, 0.4), True, at)  # the lit flank catches the light
    if rng.random() < 0.25:  # a pit: darker crater floor
        canvas.tone(np.clip((rng.uniform(0.2, 0.4) - rho) / 0.1, 0, 1), rng.uniform(0.15, 0.4), False, at)
    return canvas.box((rho < 1.05).astype(np.float32), 0.5, at)


def _stain(rng: np.random.Generator, canvas: _Canvas) -> Box | None:
    """An irregular stain of oil, dust, paint or rust (18-70 px radius), in a colour that stands out."""
    radius = _log_uniform(rng, 18, 70) * canvas.scale
    x, y = canvas.inside(rng, 0.8 * radius)
    kind, u = rng.choice(["oil", "dust", "paint", "rust"]), rng.uniform
    if kind == "oil":  # dark, translucent, soft-edged
        alpha, at = _blob(rng, canvas, x, y, radius, u(0.08, 0.25))
        colour, alpha = _hsv(u(15, 45), u(0.3, 0.9), u(0.02, 0.18)), alpha * u(0.6, 0.9)
    elif kind == "dust":  # light and granular
        alpha, at = _blob(rng, canvas, x, y, radius, u(0.1, 0.3))
        grains = np.clip(0.75 + 0.5 * _fractal(rng, *alpha.shape, u(1.5, 4) * canvas.scale, 2), 0, 1)
        colour, alpha = _hsv(u(0, 360), u(0, 0.2), u(0.65, 0.95)), alpha * grains * u(0.7, 0.95)
    elif kind == "paint":  # any colour, opaque, sharp-edged, with spatter
        alpha, at = _blob(rng, canvas, x, y, radius, u(0.02, 0.06))
        colour = _hsv(u(0, 360), u(0.5, 1), u(0.35, 1))
        alpha = np.maximum(alpha, _droplets(rng, alpha.shape, at, x, y, radius, canvas.scale)) * u(0.85, 1)
    else:  # rust: orange-brown, mottled
        alpha, at = _blob(rng, canvas, x, y, radius, u(0.06, 0.2))
        mottle = np.clip(0.7 + 0.5 * _fractal(rng, *alpha.shape, u(3, 8) * canvas.scale, 2), 0, 1)
        colour, alpha = _hsv(u(8, 28), u(0.55, 0.9), u(0.25, 0.55)), alpha * mottle
    canvas.blend(alpha, _contrasting(colour, canvas.local_luminance(x, y, radius), 0.25), at)
    return canvas.box(alpha, 0.15, at)


def _blob(rng: np.random.Generator, canvas: _Canvas, x: float, y: float, radius: float,
          softness: float) -> tuple[np.ndarray, Region]:
    """Coverage of an irregular blob of about ``radius`` px around ``(x, y)``, as a patch and its region."""
    width, height = canvas.size
    at = _roi(x, y, 1.9 * radius, width, height)
    xs, ys = _grid(width, height)
    u, v = _rotate(xs[at] - x, ys[at] - y, rng.uniform(0, np.pi))
    rho = np.sqrt(u**2 + (v / rng.uniform(0.5, 1.0)) ** 2) * (1 / radius)
    edge = 1 - rho + rng.uniform(0.15, 0.4) * _fractal(rng, *rho.shape, max(radius * 0.6, 2), 3)
    return np.clip(edge * (1 / softness) + 0.5, 0, 1), at


def _droplets(rng: np.random.Generator, shape: tuple[int, int], at: Region, x: float, y: float, radius: float,
              scale: float) -> np.ndarray:
    """Spatter around a paint stain, as a patch of ``shape`` at region ``at``."""
    layer = np.zeros(shape, np.uint8)
    for _ in range(rng.integers(0, 7)):
        angle, dist = rng.uniform(0, 2 * np.pi), radius * rng.uniform(1.0, 1.6)
        centre = (int(x + dist * np.cos(angle)) - at[1].start, int(y + dist * np.sin(angle)) - at[0].start)
        cv2.circle(layer, centre, max(1, int(rng.uniform(1.5, 5) * scale)), 255, -1, cv2.LINE_AA)
    return layer.astype(np.float32) / 255


_PAINTERS = {"scratch": _scratches, "dent": _dents, "crack": _cracks, "contamination": _stains}


# --------------------------------------------------------------------------------------- scene and camera


def _background(rng: np.random.Generator, width: int, height: int, scale: float, along_x: bool) -> np.ndarray:
    """What surrounds the part ``(3, H, W)``: a rubber belt with cleats, steel rollers, a table or a rough floor."""
    kind = rng.choice(["belt", "rollers", "table", "rough"])
    along = np.arange(width if along_x else height, dtype=np.float32)  # position along the conveyor
    if kind == "belt":
        grey = 1 + 0.12 * _texture_crop(rng, "cast", width, height, rng.uniform(0.5, 1.2) * scale)
        period = rng.uniform(60, 200) * scale
        offset = (along + rng.uniform(0, period)) % period - period / 2
        grey *= _across(1 - 0.5 * np.exp(offset**2 * (-0.5 / (2.5 * scale) ** 2)), along_x)  # cleats
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.2), rng.uniform(0.06, 0.3))
    elif kind == "rollers":
        period = rng.uniform(30, 90) * scale
        phase = ((along + rng.uniform(0, period)) % period) * (1 / period)
        grey = 1 + 0.08 * _texture_crop(rng, "brushed", width, height, scale)
        grey *= _across(np.sin(np.pi * phase) ** rng.uniform(0.5, 2), along_x)
        colour = _hsv(rng.uniform(180, 240), rng.uniform(0, 0.1), rng.uniform(0.3, 0.7))
    else:
        name = "brushed" if kind == "table" else str(rng.choice(["gravel", "grass", "brick"]))
        grey = 1 + rng.uniform(0.08, 0.25) * _texture_crop(rng, name, width, height, rng.uniform(1.0, 2.0) * scale)
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.25), rng.uniform(0.1, 0.5))
    return _tinted(grey, colour)


def _tinted(grey: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``colour`` (3,) times a grey image ``(H, W)``, planar ``(3, H, W)``."""
    out = np.empty((3, *grey.shape), np.float32)
    for channel, plane in enumerate(out):
        np.multiply(grey, colour[channel], out=plane)
    return out


def _across(profile: np.ndarray, along_x: bool) -> np.ndarray:
    """A profile along the conveyor, shaped to broadcast over the frame."""
    return profile[None, :] if along_x else profile[:, None]


def _compose(rng: np.random.Generator, canvas: _Canvas, background: np.ndarray) -> np.ndarray:
    """The shaded part over the background, with its drop shadow, ``(3, H, W)``."""
    width, height = canvas.size
    small = cv2.resize(canvas.mask, (width // 4 + 1, height // 4 + 1), interpolation=cv2.INTER_AREA)
    shift = -canvas.light * rng.uniform(1, 4)
    matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    shadow = cv2.GaussianBlur(cv2.warpAffine(small, matrix, small.shape[::-1]), (0, 0), rng.uniform(1, 5))
    background *= 1 - rng.uniform(0.3, 0.7) * cv2.resize(shadow, (width, height))
    scene = canvas.albedo  # reused in place: the canvas is done
    scene *= canvas.shade
    scene -= background
    scene *= canvas.mask
    scene += background
    return scene


def _illuminate(rng: np.random.Generator, scene: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Uneven light: gradient, vignetting, a cast shadow, specular highlights, then auto-exposure."""
    height, width = mask.shape
    sw, sh = width // 8 + 1, height // 8 + 1
    x = np.linspace(-1, 1, sw, dtype=np.float32)[None, :]
    y = np.linspace(-1, 1, sh, dtype=np.float32)[:, None]
    direction = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0, 0.5) * (float(np.cos(direction)) * x + float(np.sin(direction)) * y)
    light = gradient * (1 - rng.uniform(0, 0.55) * (x**2 + y**2) / 2)
    if rng.random() < 0.3:
        light *= 1 - rng.uniform(0.25, 0.55) * _cast_shadow(rng, sw, sh)
    gloss = np.zeros_like(light)
    for _ in range(rng.choice(4, p=[0.3, 0.35, 0.25, 0.1])):
        cx, cy, sx, sy = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4)
        gloss += rng.uniform(0.1, 0.6) * np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))
    light, gloss = cv2.resize(light, (width, height)), cv2.resize(gloss, (width, height)) * (0.3 + 0.7 * mask)
    scene *= light
    scene += gloss
    scene *= _exposure(rng, scene, mask)
    return scene


def _exposure(rng: np.random.Generator, lit: np.ndarray, mask: np.ndarray) -> float:
    """Auto-exposure gain: the part's mean brightness to a target, without clipping most of its highlights."""
    lum, on_part = _luminance(lit[:, ::8, ::8]), mask[::8, ::8] > 0.5
    part = lum[on_part] if on_part.sum() > 16 else lum.ravel()
    return min(rng.uniform(0.3, 0.6) / (float(part.mean()) + 1e-3), 0.92 / (float(np.percentile(part, 95)) + 1e-3))


def _cast_shadow(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A soft polygonal shadow (a bracket or a sensor over the belt), ``(height, width)`` in 0..1."""
    layer = np.zeros((height, width), np.float32)
    corner = np.array([rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height])
    extent = np.array([width, height]) * rng.uniform(0.2, 0.7, 2)
    quad = corner + extent * np.array([[0, 0], [1, rng.uniform(-0.2, 0.2)], [1, 1], [rng.uniform(-0.2, 0.2), 1]])
    cv2.fillPoly(layer, [quad.astype(np.int32)], 1.0)
    return cv2.GaussianBlur(layer, (0, 0), rng.uniform(0.8, 4))


def _camera(rng: np.random.Generator, scene: np.ndarray, scale: float, along_x: bool,
            noise: np.random.Generator) -> np.ndarray:
    """Sensor and optics on a planar scene: white balance, defocus, motion blur, noise, tone curve, mono, JPEG.

    ``rng`` sets the camera, ``noise`` draws the frame's sensor noise.
    """
    white_balance = rng.uniform(0.9, 1.1, 3)
    image = cv2.merge([plane * float(gain) for plane, gain in zip(scene, white_balance)])
    if rng.random() < 0.6:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2) * max(scale, 0.5))
    if rng.random() < 0.3:
        k = int(rng.uniform(2, 5) * scale) + 1
        image = cv2.blur(image, (k, 1) if along_x else (1, k))
    np.clip(image, 0, 1, out=image)
    sigma = np.sqrt(rng.uniform(2e-4, 3e-3) * image + rng.uniform(0.004, 0.02) ** 2)  # shot and read noise
    image += sigma * _gaussian_noise(noise, image.shape)
    image *= 255
    codes = np.clip(image, 0, 255, out=image).astype(np.uint8)  # the noise dithers away banding
    image = cv2.LUT(codes, _tone_curve(round(rng.uniform(0.75, 1.35), 2)))
    if rng.random() < 0.2:  # a monochrome camera
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < 0.2:
        _, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(30, 75))])
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return image


@functools.cache
def _noise_pool() -> np.ndarray:
    return np.random.default_rng(7).standard_normal(1 << 22, dtype=np.float32)


def _gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise: a random window of a fixed pool (fast), or fresh draws when the pool is too small."""
    pool, n = _noise_pool(), int(np.prod(shape))
    if n > pool.size:
        return rng.standard_normal(shape, dtype=np.float32)
    start = int(rng.integers(0, pool.size - n + 1))
    return pool[start : start + n].reshape(shape)


@functools.cache
def _tone_curve(gamma: float) -> np.ndarray:
    """Linear 8-bit code to output code through ``x ** (1 / gamma)``."""
    return np.round(255 * (np.arange(256) / 255) ** (1 / gamma)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- audio


def render_machine_sound(rng: np.random.Generator, machine: str) -> np.ndarray:
    """A 1 s, 16 kHz mono clip ``(1, 16000)`` float32 in [-1, 1] of the line's machine in state ``machine``."""
    t = np.arange(CLIP_SAMPLES, dtype=np.float32) / SAMPLE_RATE
    shaft = rng.uniform(20, 60)  # rotation frequency, Hz
    noise_level = 10 ** (-rng.uniform(6, 30) / 20)
    hum = _motor_hum(rng, t)
    rest = noise_level * _coloured_noise(rng) + _conveyor(rng) + _factory_background(rng, t)
    rest += rng.uniform(0, 0.15) * np.sin(2 * np.pi * shaft * t + rng.uniform(0, 2 * np.pi))  # healthy 1x line
    if machine == "bearing_click":
        rest += _bearing_clicks(rng, noise_level)
    elif machine == "imbalance_hum":
        modulation, tone = _imbalance(rng, t, shaft)
        hum, rest = hum * modulation, rest + tone
    elif machine != "normal":
        raise ValueError(f"unknown machine state {machine!r}")
    mix = hum + rest
    return (mix * (rng.uniform(0.1, 0.9) / np.abs(mix).max())).astype(np.float32)[None, :]


def _motor_hum(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Motor hum, RMS 1: a 40-120 Hz fundamental with slowly wobbling pitch and 4-12 harmonics."""
    f0 = rng.uniform(40, 120) * (1 + rng.uniform(0, 0.004) * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t))
    phase = (2 * np.pi / SAMPLE_RATE) * np.cumsum(f0, dtype=np.float64)
    k = np.arange(1, rng.integers(4, 13) + 1)
    amps = (rng.uniform(0.2, 1, len(k)) * k ** -rng.uniform(0.4, 1.4)).astype(np.float32)
    offsets = rng.uniform(0, 2 * np.pi, len(k)).astype(np.float32)[:, None]
    hum = amps @ np.sin(k.astype(np.float32)[:, None] * phase.astype(np.float32)[None, :] + offsets)
    return hum / np.sqrt(np.mean(hum**2))


def _coloured_noise(rng: np.random.Generator) -> np.ndarray:
    """Broadband noise, RMS 1, between white and brown."""
    white = rng.standard_normal(CLIP_SAMPLES, dtype=np.float32)
    pole = rng.uniform(0, 0.98)
    low = lfilter([1 - pole], [1, -pole], white)
    brown = rng.uniform(0, 1)
    noise = (1 - brown) * white + brown * low / (low.std() + 1e-9)
    return noise / noise.std()


def _ringing(rng: np.random.Generator, freq: tuple[float, float], decay_ms: tuple[float, float],
             length_s: float, noise: float = 0.3) -> np.ndarray:
    """A damped resonance impulse response, peak 1."""
    tk = np.arange(int(length_s * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = np.exp(-tk / (rng.uniform(*decay_ms) / 1000))
    kernel = envelope * (np.sin(2 * np.pi * rng.uniform(*freq) * tk) + noise * rng.standard_normal(len(tk)))
    return kernel / np.abs(kernel).max()


def _impulses(onsets_s: np.ndarray, kernel: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """``kernel`` struck at each onset (s) with its peak amplitude, cut to the clip."""
    train = np.zeros(CLIP_SAMPLES)
    idx = (onsets_s * SAMPLE_RATE).astype(int)
    keep = (idx >= 0) & (idx < CLIP_SAMPLES)
    np.add.at(train, idx[keep], peaks[keep])
    return fftconvolve(train, kernel)[:CLIP_SAMPLES]


def _conveyor(rng: np.random.Generator) -> np.ndarray:
    """Conveyor rattle: irregular low thuds, and now and then an isolated metallic clank."""
    n = rng.poisson(rng.uniform(2, 15))
    thuds = _impulses(rng.uniform(0, 1, n), _ringing(rng, (120, 700), (5, 25), 0.12),
                      rng.uniform(0.3, 1, n) * rng.uniform(0.02, 0.3))
    if rng.random() < 0.3:
        n = int(rng.integers(1, 3))
        thuds += _impulses(rng.uniform(0, 1, n), _ringing(rng, (500, 1500), (10, 40), 0.2, 0.1),
                           rng.uniform(0.1, 0.5, n))
    return thuds


def _factory_background(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Other machines far away, and sometimes a compressed-air hiss."""
    out = np.zeros_like(t)
    for _ in range(rng.integers(0, 4)):
        f = rng.uniform(50, 400)
        level = rng.uniform(0.02, 0.2)
        for h in (1, 2, 3):
            out += (level / h) * np.sin(2 * np.pi * h * f * t + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.25:
        hiss = lfilter([1, -1], [1, -0.5], rng.standard_normal(len(t)))  # high-passed noise
        start, length = rng.uniform(0, 0.8), rng.uniform(0.1, 0.6)
        envelope = np.clip(np.minimum(t - start, start + length - t) / 0.03, 0, 1)
        out += rng.uniform(0.05, 0.3) * envelope * hiss / hiss.std()
    return out


def _bearing_clicks(rng: np.random.Generator, noise_level: float) -> np.ndarray:
    """A damaged bearing: 1-4 ms bursts ringing at 1.8-6 kHz, at a steady 5-40 Hz with a little jitter."""
    rate = rng.uniform(5, 40)
    intervals = (1 / rate) * (1 + rng.uniform(0.01, 0.1) * rng.standard_normal(int(rate) + 3))
    onsets = rng.uniform(0, 1 / rate) + np.concatenate([[0], np.cumsum(intervals)])
    level = max(rng.uniform(0.6, 2.0), rng.uniform(8, 15) * noise_level)
    peaks = level * rng.uniform(0.6, 1, len(onsets))
    return _impulses(onsets, _ringing(rng, (1800, 6000), (1.0, 4.0), 0.02, 0.5), peaks)


def _imbalance(rng: np.random.Generator, t: np.ndarray, shaft: float) -> tuple[np.ndarray, np.ndarray]:
    """An unbalanced rotor: a strong 1x rotation tone beating with a near neighbour, and the hum pulsing with it.

    Returns the hum's amplitude modulation and the added low-frequency tone; both swell together.
    """
    beat, phase = rng.uniform(1.5, 8), rng.uniform(0, 2 * np.pi)
    drift = 2 * np.pi * beat * t + phase  # phase of the neighbour against the 1x tone
    modulation = 1 + rng.uniform(0.4, 0.9) * np.cos(drift)
    neighbour = rng.uniform(0.6, 1) * np.sin(2 * np.pi * shaft * t + drift)
    return modulation, rng.uniform(1.0, 3.0) * (np.sin(2 * np.pi * shaft * t) + neighbour)
