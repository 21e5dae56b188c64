"""Synthetic defects drawn onto good parts during training: a third way of drawing each defect class.

A model trained on one renderer's parts learns how *that* renderer draws a scratch or a dent (``docs/model.md``:
paint -> shaded parts 38 %). These generators draw the four defect classes from what the class means, with none of
either renderer's code: a scratch is a thin, long, bright or dark stroke; a crack a dark, jagged line that may
branch; a dent a smooth depression seen only through the shading a light gives it; contamination a blob or specks
of foreign colour. Every parameter (size, width, contrast, light direction, colour) is drawn at random, so the
model sees many drawings of each class and not one renderer's (DRAEM and CutPaste use synthetic anomalies the
same way, for good-vs-defect; here each drawing also carries its class and its box, which train the CAM).

Pure tensors: ``images (B, 3, H, W)`` uint8, boxes ``(B, K, 4)`` ``(x, y, w, h)`` in 0..1 with NaN rows for no box.
Sizes are in pixels of the model's frame (``H x W``, 192 x 256 by default): defects are drawn before the crops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Drawing = tuple[Tensor, Tensor]  # (the image (3, H, W) float in [0, 1] with the defect, its mask (H, W) bool)


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _grid(h: int, w: int) -> tuple[Tensor, Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return xs, ys


def _distance(xs: Tensor, ys: Tensor, at: Tensor) -> Tensor:
    """Distance ``(H, W)`` of every pixel centre (``_grid``'s ``xs``, ``ys``) to the point ``at`` (x, y pixels)."""
    return ((xs - at[0]) ** 2 + (ys - at[1]) ** 2).sqrt()


def polyline_distance(points: Tensor, h: int, w: int) -> Tensor:
    """Distance ``(H, W)`` of every pixel centre to the polyline through ``points`` ``(N, 2)`` (x, y pixels)."""
    xs, ys = _grid(h, w)
    p = torch.stack([xs, ys], -1).view(-1, 1, 2)  # (HW, 1, 2)
    a, b = points[:-1], points[1:]  # (N-1, 2)
    ab = b - a
    t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)  # (HW, N-1)
    nearest = a + t[..., None] * ab
    return (p - nearest).norm(dim=-1).amin(dim=1).view(h, w)


def _stroke(points: Tensor, width: float, h: int, w: int) -> Tensor:
    """Anti-aliased coverage ``(H, W)`` in [0, 1] of a stroke ``width`` pixels wide along ``points``."""
    return (width / 2 + 0.5 - polyline_distance(points, h, w)).clamp(0, 1)


def _lighten_or_darken(image: Tensor, alpha: Tensor, bright: bool, strength: float) -> Tensor:
    target = image + (1 - image) * strength if bright else image * (1 - strength)
    return image + alpha * (target - image)


def draw_scratch(image: Tensor, centre: Tensor, gen: torch.Generator) -> Drawing:
    """One to three near-parallel thin strokes (a gentle curve, 20-80 px), brighter or darker than the surface."""
    _, h, w = image.shape
    length, angle = _u(gen, 20, 80), _u(gen, 0, math.pi)
    direction = torch.tensor([math.cos(angle), math.sin(angle)])
    normal = torch.tensor([-direction[1], direction[0]])
    bend = _u(gen, -0.2, 0.2) * length
    t = torch.linspace(-0.5, 0.5, 24)[:, None]
    spine = centre + t * length * direction + (1 - 4 * t**2) * bend * normal  # a quadratic curve
    bright, strength, width = bool(torch.rand((), generator=gen) < 0.6), _u(gen, 0.3, 0.8), _u(gen, 0.6, 2.0)
    alpha = torch.zeros(h, w)
    for k in range(int(torch.randint(1, 4, (), generator=gen))):
        offset = k * _u(gen, 2.0, 5.0) * normal
        cut = int(torch.randint(0, 6, (), generator=gen))  # parallel strokes differ in length
        alpha = torch.maximum(alpha, _stroke(spine[cut : len(spine) - cut] + offset, width, h, w))
    fade = _u(gen, 0.5, 1.0)  # opacity
    return _lighten_or_darken(image, alpha * fade, bright, strength), alpha > 0.25


def _walk(start: Tensor, heading: float, steps: int, gen: torch.Generator) -> Tensor:
    points, at = [start], start
    for _ in range(steps):
        heading += float(torch.randn((), generator=gen)) * 0.45
        at = at + _u(gen, 2.0, 5.0) * torch.tensor([math.cos(heading), math.sin(heading)])
        points.append(at)
    return torch.stack(points)


def draw_crack(image: Tensor, centre: Tensor, gen: torch.Generator) -> Drawing:
    """A dark, jagged line (a random walk both ways from ``centre``, 15-60 px) with up to two branches."""
    _, h, w = image.shape
    heading, steps = _u(gen, 0, 2 * math.pi), int(torch.randint(3, 9, (), generator=gen))
    one, other = _walk(centre, heading, steps, gen), _walk(centre, heading + math.pi, steps, gen)
    lines = [torch.cat([other.flip(0), one[1:]])]
    for _ in range(int(torch.randint(0, 3, (), generator=gen))):
        root = lines[0][int(torch.randint(0, len(lines[0]), (), generator=gen))]
        side = 1 if torch.rand((), generator=gen) < 0.5 else -1
        lines.append(_walk(root, heading + side * _u(gen, 0.5, 1.3), int(torch.randint(2, 6, (), generator=gen)),
                           gen))
    width = _u(gen, 0.8, 2.4)
    alpha = torch.stack([_stroke(line, width, h, w) for line in lines]).amax(0)
    return _lighten_or_darken(image, alpha, False, _u(gen, 0.45, 0.85)), alpha > 0.25


def draw_dent(image: Tensor, centre: Tensor, gen: torch.Generator) -> Drawing:
    """A smooth elliptical depression (4-14 px across each way) shown by a light from a random side: one flank
    brighter, the other darker, and nothing painted."""
    _, h, w = image.shape
    xs, ys = _grid(h, w)
    angle, sx, sy = _u(gen, 0, math.pi), _u(gen, 4, 14), _u(gen, 4, 14)
    dx, dy = xs - centre[0], ys - centre[1]
    u = (dx * math.cos(angle) + dy * math.sin(angle)) / sx
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / sy
    bowl = torch.exp(-(u**2 + v**2) / 2)  # depth profile, 1 at the bottom
    gy, gx = torch.gradient(-bowl)
    light = _u(gen, 0, 2 * math.pi)
    shade = gx * math.cos(light) + gy * math.sin(light)
    shade = shade / shade.abs().amax().clamp_min(1e-6)  # -1..1: facing the light or turned away
    shade = shade * ((bowl - 0.02) / 0.1).clamp(0, 1)  # nothing past ~2.8 sigma: the dent stays in its box
    out = (image * (1 + _u(gen, 0.3, 0.7) * shade)).clamp(0, 1)
    return out, bowl > 0.05


def draw_contamination(image: Tensor, centre: Tensor, gen: torch.Generator) -> Drawing:
    """A blob of foreign colour (dark oil, a stain of any colour or pale residue, 4-16 px) or a cluster of specks."""
    _, h, w = image.shape
    xs, ys = _grid(h, w)
    if torch.rand((), generator=gen) < 0.3:  # specks
        cover = torch.zeros(h, w)
        for _ in range(int(torch.randint(3, 11, (), generator=gen))):
            at = centre + (torch.rand(2, generator=gen) - 0.5) * 30
            r = _u(gen, 0.8, 2.5)
            cover = torch.maximum(cover, (r + 0.5 - _distance(xs, ys, at)).clamp(0, 1))
    else:  # a blob: a few overlapping round lobes with a soft edge
        field = torch.zeros(h, w)
        radius = _u(gen, 4, 16)
        for _ in range(int(torch.randint(1, 5, (), generator=gen))):
            at = centre + (torch.rand(2, generator=gen) - 0.5) * radius
            r = radius * _u(gen, 0.4, 0.9)
            field = torch.maximum(field, 1 - _distance(xs, ys, at) / r)
        cover = (field * _u(gen, 2, 6)).clamp(0, 1)
    kind = int(torch.randint(0, 3, (), generator=gen))
    if kind == 0:  # dark oil, a little brown
        colour = torch.tensor([0.25, 0.2, 0.15]) * _u(gen, 0.3, 1.2)
    elif kind == 1:  # any colour
        colour = torch.rand(3, generator=gen)
    else:  # pale residue
        colour = 0.75 + 0.25 * torch.rand(3, generator=gen)
    texture = 1 + 0.15 * torch.randn(1, h, w, generator=gen)
    alpha = cover * _u(gen, 0.55, 1.0)
    out = (image + alpha * (colour.view(3, 1, 1) * texture - image)).clamp(0, 1)
    return out, cover > 0.25


DRAWERS: dict[str, Callable[[Tensor, Tensor, torch.Generator], Drawing]] = {
    "scratch": draw_scratch,
    "crack": draw_crack,
    "dent": draw_dent,
    "contamination": draw_contamination,
}


def mask_box(mask: Tensor) -> Tensor:
    """The ``(x, y, w, h)`` box (0..1) around a non-empty ``(H, W)`` mask."""
    h, w = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    x0, x1, y0, y1 = xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1
    return torch.tensor([x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h])


def synthesise_defects(
    images: Tensor, boxes: Tensor, labels: Tensor, classes: list[str], eligible: Tensor, p: float,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw a random defect onto a share ``p`` of the ``eligible`` ``(B,)`` items (good parts with a frame).

    Each chosen item gets one defect of a class drawn uniformly from those of ``DRAWERS`` that ``classes`` names,
    somewhere on the part (6-32 % of the frame's height from its centre, where the part is), its label set to that
    class and its boxes to the defect's box. Returns new ``images``, ``boxes`` and ``labels``; the inputs are not
    changed. ``p = 0`` or no drawable class returns them as they are.
    """
    names = [name for name in DRAWERS if name in classes]
    chosen = torch.nonzero(eligible.cpu() & (torch.rand(len(labels), generator=gen) < p)).flatten()
    if not names or not len(chosen):
        return images, boxes, labels
    images, boxes, labels = images.clone(), boxes.clone(), labels.clone()
    _, _, h, w = images.shape
    for i in chosen.tolist():
        name = names[int(torch.randint(0, len(names), (), generator=gen))]
        radius, angle = _u(gen, 0.06, 0.32) * h, _u(gen, 0, 2 * math.pi)
        centre = torch.tensor([w / 2 + radius * math.cos(angle), h / 2 + radius * math.sin(angle)])
        image, mask = DRAWERS[name](images[i].cpu().float() / 255.0, centre, gen)
        if not mask.any():
            continue
        images[i] = (image * 255.0).round().clamp(0, 255).to(images.dtype).to(images.device)
        boxes[i] = float("nan")
        boxes[i, 0] = mask_box(mask)
        labels[i] = classes.index(name)
    return images, boxes, labels
