"""The renderers written independently of the first ("scene", "photo"; each a frame and a sound module): the
contract every renderer keeps, determinism, and a signal in both frames and clips."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import butter, sosfilt

from pipelines.lines.factory import photo, scene
from pipelines.lines.factory.synth import CLIP_SAMPLES, DEFECTS, MACHINE_STATES, renderer_functions

RENDERERS = {"scene": scene, "photo": photo}  # name -> its frame module (with warm_up)


@pytest.fixture(scope="module", params=list(RENDERERS))
def renderer(request):
    """``(render_part, render_machine_sound)`` of one renderer, its texture bank built."""
    RENDERERS[request.param].warm_up()
    return renderer_functions(request.param)


def _grown(boxes: list[list[int]], shape: tuple[int, int], pad: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x, y, w, h in boxes:
        mask[max(y - pad, 0):y + h + pad, max(x - pad, 0):x + w + pad] = True
    return mask


def test_same_seed_same_bytes(renderer) -> None:
    render_part, render_sound = renderer
    a, boxes_a = render_part(np.random.default_rng(11), "crack")
    b, boxes_b = render_part(np.random.default_rng(11), "crack")
    assert a.tobytes() == b.tobytes() and boxes_a == boxes_b
    c, _ = render_part(np.random.default_rng(12), "crack")
    assert a.tobytes() != c.tobytes()
    sa = render_sound(np.random.default_rng(5), "bearing_click")
    assert sa.tobytes() == render_sound(np.random.default_rng(5), "bearing_click").tobytes()


@pytest.mark.parametrize("defect", DEFECTS)
def test_frames_and_boxes(renderer, defect: str) -> None:
    render_part = renderer[0]
    for seed in range(2):
        img, boxes = render_part(np.random.default_rng([seed, 40]), defect)
        assert img.shape == (480, 640, 3) and img.dtype == np.uint8
        assert img.std() > 5  # not blank
        assert (boxes == []) == (defect == "good")
        for box in boxes:
            x, y, w, h = box
            assert all(isinstance(v, int) for v in box)
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= 640 and y + h <= 480


def test_other_size(renderer) -> None:
    render_part = renderer[0]
    img, boxes = render_part(np.random.default_rng(3), "dent", size=(320, 240))
    assert img.shape == (240, 320, 3) and boxes
    assert all(x + w <= 320 and y + h <= 240 for x, y, w, h in boxes)


def test_unknown_names_raise(renderer) -> None:
    render_part, render_sound = renderer
    with pytest.raises(ValueError, match="rust"):
        render_part(np.random.default_rng(0), "rust")
    with pytest.raises(ValueError, match="screech"):
        render_sound(np.random.default_rng(0), "screech")


def test_product_fixes_the_design(renderer) -> None:
    render_part = renderer[0]

    def frame(product: int, seed: int) -> np.ndarray:
        return render_part(np.random.default_rng(seed), "good", product=product)[0].astype(np.float32)

    same = np.abs(frame(3, 1) - frame(3, 2)).mean()
    other = np.abs(frame(3, 1) - frame(5, 1)).mean()
    assert same < 0.5 * other


@pytest.mark.parametrize("defect", DEFECTS[1:])
def test_defect_changes_pixels_inside_its_boxes(renderer, defect: str) -> None:
    render_part = renderer[0]
    changed_inside = []
    for seed in range(2):
        good, _ = render_part(np.random.default_rng([seed, 77]), "good")
        bad, boxes = render_part(np.random.default_rng([seed, 77]), defect)
        diff = np.abs(good.astype(np.int16) - bad.astype(np.int16)).sum(-1) > 24
        assert diff.sum() > 0
        changed_inside.append(diff[_grown(boxes, diff.shape, 16)].sum() / diff.sum())
    assert min(changed_inside) > 0.8


def _features(x: np.ndarray, highpass: np.ndarray) -> list[float]:
    power = np.abs(np.fft.rfft(x)) ** 2
    freq = np.fft.rfftfreq(len(x), 1 / 16000)
    low = power[(freq > 5) & (freq < 70)].sum() / power.sum()
    env = np.abs(sosfilt(highpass, x))
    kurtosis = ((env - env.mean()) ** 4).mean() / env.var() ** 2
    return [np.log(low + 1e-6), np.log(kurtosis)]


def test_audio_clips_and_classes_differ(renderer) -> None:
    render_sound = renderer[1]
    highpass = butter(4, 1000, "hp", fs=16000, output="sos")
    feats, labels = [], []
    for i in range(36):
        clip = render_sound(np.random.default_rng([i, 9]), MACHINE_STATES[i % 3])
        assert clip.shape == (1, CLIP_SAMPLES) and clip.dtype == np.float32
        clip = clip[0]
        assert np.isfinite(clip).all() and np.abs(clip).max() <= 1 and clip.std() > 1e-3
        feats.append(_features(clip.astype(np.float64), highpass))
        labels.append(i % 3)
    z, y = np.array(feats), np.array(labels)
    z = (z - z.mean(0)) / z.std(0)
    correct = 0
    for i in range(len(z)):  # leave-one-out nearest centroid
        rest = np.arange(len(z)) != i
        centroids = np.array([z[rest & (y == c)].mean(0) for c in range(3)])
        correct += int(np.argmin(((centroids - z[i]) ** 2).sum(1)) == y[i])
    assert correct / len(z) > 0.5  # chance is 1/3
