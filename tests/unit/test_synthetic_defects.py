"""The training-time defect drawings (``model/synthetic_defects.py``): where they draw, what they label."""

from __future__ import annotations

import pytest
import torch

from model.config import DEFAULT_CLASSES
from model.synthetic_defects import DRAWERS, mask_box, polyline_distance, synthesise_defects

CLASSES = DEFAULT_CLASSES["defect"]


def test_polyline_distance_is_the_distance_to_the_nearest_segment():
    d = polyline_distance(torch.tensor([[2.0, 2.0], [12.0, 2.0], [12.0, 8.0]]), 10, 16)
    assert d[2, 5] == 0 and d[5, 12] == 0  # on the first and the second segment
    assert d[6, 5] == pytest.approx(4.0) and d[0, 0] == pytest.approx(8**0.5)


@pytest.mark.parametrize("name", list(DRAWERS))
def test_each_drawing_changes_the_part_only_around_its_mask(name):
    """Over 20 draws: the mask is not empty, and the pixels that changed lie within a few pixels of its box."""
    gen = torch.Generator().manual_seed(0)
    image = 0.3 + 0.4 * torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(1))
    for _ in range(20):
        drawn, mask = DRAWERS[name](image, torch.tensor([64.0, 48.0]), gen)
        assert drawn.shape == image.shape and 0 <= drawn.min() and drawn.max() <= 1
        assert mask.any()
        changed = torch.nonzero((drawn - image).abs().amax(0) > 0.02)
        x, y, w, h = (mask_box(mask) * torch.tensor([128, 96, 128, 96])).tolist()
        margin = 6
        assert changed[:, 1].min() >= x - margin and changed[:, 1].max() <= x + w + margin, name
        assert changed[:, 0].min() >= y - margin and changed[:, 0].max() <= y + h + margin, name


def test_synthesise_defects_labels_and_boxes_only_the_chosen_good_parts():
    n = 200
    images = torch.full((n, 3, 96, 128), 120, dtype=torch.uint8)
    boxes = torch.full((n, 2, 4), float("nan"))
    labels = torch.zeros(n, dtype=torch.int64)
    eligible = torch.arange(n) % 2 == 0
    out, new_boxes, new_labels = synthesise_defects(images, boxes, labels, CLASSES, eligible, 0.5,
                                                    torch.Generator().manual_seed(0))
    assert torch.equal(images, torch.full_like(images, 120)) and labels.eq(0).all()  # inputs untouched
    drawn = new_labels != 0
    assert not drawn[~eligible].any() and 30 <= drawn.sum() <= 70  # half of the eligible half
    assert set(new_labels[drawn].tolist()) == {1, 2, 3, 4}  # every defect class is drawn
    changed = (out != images).flatten(1).any(1)
    assert torch.equal(changed, drawn)
    assert torch.isfinite(new_boxes[drawn, 0]).all() and torch.isnan(new_boxes[drawn, 1]).all()
    assert torch.isnan(new_boxes[~drawn]).all()
    again = synthesise_defects(images, boxes, labels, CLASSES, eligible, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out) and torch.equal(again[2], new_labels)  # a seed gives the same batch


def test_synthesise_defects_does_nothing_without_a_share_or_a_drawable_class():
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    boxes, labels = torch.full((4, 1, 4), float("nan")), torch.zeros(4, dtype=torch.int64)
    everyone = torch.ones(4, dtype=torch.bool)
    for classes, p in ((CLASSES, 0.0), (["ok", "blemish"], 1.0)):
        out = synthesise_defects(images, boxes, labels, classes, everyone, p, torch.Generator().manual_seed(0))
        assert out[0] is images and out[1] is boxes and out[2] is labels
