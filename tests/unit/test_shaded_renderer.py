"""The independently written "shaded" factory renderer (frames and machine sound), and its wiring into
``synth_factory`` and the CLI, with the renderer mixtures."""

from __future__ import annotations

import numpy as np
import pytest

from connectors.recording import Manifest, Replayer, read_labels
from connectors.records import Sample
from pipelines.cli import main
from pipelines.lines.factory.shaded import render_part_shaded
from pipelines.lines.factory.shaded_audio import render_machine_sound_shaded
from pipelines.lines.factory.synth import DEFECTS, MACHINE_STATES, SAMPLE_RATE, synth_factory

SIZE = (320, 240)


def _pair(seed: int, defect: str, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """The good and the ``defect`` frames of one rng state, and the defect's boxes."""
    good, _ = render_part_shaded(np.random.default_rng([seed, 2, 0]), "good", size)
    bad, boxes = render_part_shaded(np.random.default_rng([seed, 2, 0]), defect, size)
    return good, bad, boxes


@pytest.mark.parametrize("defect", DEFECTS)
def test_frames_boxes_and_determinism(defect: str) -> None:
    width, height = SIZE
    for seed in range(3):
        image, boxes = render_part_shaded(np.random.default_rng([seed, 2, 5]), defect, SIZE)
        again, boxes_again = render_part_shaded(np.random.default_rng([seed, 2, 5]), defect, SIZE)
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert np.array_equal(image, again) and boxes == boxes_again
        assert (boxes == []) == (defect == "good")
        assert len(boxes) <= 3
        for x, y, w, h in boxes:
            assert w > 0 and h > 0 and 0 <= x and x + w <= width and 0 <= y and y + h <= height
        assert image.std() > 5  # a scene, not a flat frame


@pytest.mark.parametrize("defect", DEFECTS[1:])
def test_defect_changes_only_its_boxes_and_is_visible_there(defect: str) -> None:
    contrasts = []
    for seed in range(6):
        good, bad, boxes = _pair(seed, defect)
        diff = np.abs(good.astype(np.float32) - bad.astype(np.float32)).mean(2)
        inside = np.zeros(diff.shape, bool)
        for x, y, w, h in boxes:
            inside[max(y - 3, 0):y + h + 3, max(x - 3, 0):x + w + 3] = True  # blur and JPEG blocks spill a little
        assert (diff[~inside] > 12).mean() < 0.01, "pixels outside the defect's boxes changed"
        contrasts.append(diff[inside].mean() - diff[~inside].mean())
    # most defects stand out; some are meant to be subtle
    assert np.median(contrasts) > 3 and sum(c > 1 for c in contrasts) >= 4, contrasts


def test_one_product_keeps_the_scene() -> None:
    a, _ = render_part_shaded(np.random.default_rng(1), "good", SIZE, product=7)
    b, _ = render_part_shaded(np.random.default_rng(2), "good", SIZE, product=7)
    c, _ = render_part_shaded(np.random.default_rng(1), "good", SIZE, product=8)
    ab = np.abs(a.astype(np.float32) - b).mean()
    assert ab < np.abs(a.astype(np.float32) - c).mean() and ab < 12
    assert not np.array_equal(a, b)  # nuisance and noise still vary


def test_unknown_defect_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown defect 'chip'"):
        render_part_shaded(np.random.default_rng(0), "chip", SIZE)


def test_default_renderer_leaves_the_recording_unchanged(tmp_path) -> None:
    root = synth_factory(tmp_path / "paint", 3, 1, size=(64, 48), progress=False)
    assert "renderer" not in Manifest.read(root).generator
    assert all("renderer" not in lab for lab in read_labels(root).values())
    for bad in ("pencil", "paint+pencil", "paint+paint", ""):
        with pytest.raises(ValueError, match="renderer must be one of"):
            synth_factory(tmp_path / "x", 1, 1, renderer=bad, progress=False)


@pytest.mark.parametrize(("mixture", "renderers"),
                         [("mixed", {"paint", "shaded"}), ("paint+scene", {"paint", "scene"})])
def test_mixed_recording_names_each_parts_renderer(tmp_path, mixture: str, renderers: set[str]) -> None:
    root = synth_factory(tmp_path / "mixed", 12, 4, size=(96, 72), progress=False, renderer=mixture)
    assert Manifest.read(root).generator["renderer"] == mixture
    used = [lab["renderer"] for lab in read_labels(root).values()]
    assert set(used) == renderers
    paint = synth_factory(tmp_path / "paint", 12, 4, size=(96, 72), progress=False)
    for i, name in enumerate(used):  # the paint parts of a mixed recording are the paint recording's parts
        same = (root / f"frames/part-{i:06d}.png").read_bytes() == (paint / f"frames/part-{i:06d}.png").read_bytes()
        assert same == (name == "paint")


def test_cli_writes_a_shaded_recording(tmp_path) -> None:
    main(["synth", "factory", "--out", str(tmp_path / "rec"), "--parts", "10", "--seed", "2", "--size", "96x72",
          "--renderer", "shaded"])
    labels = read_labels(tmp_path / "rec")
    assert len(labels) == 10 and {lab["renderer"] for lab in labels.values()} == {"shaded"}
    assert Manifest.read(tmp_path / "rec").generator["renderer"] == "shaded"
    assert all((lab["boxes"] == []) == (lab["defect"] == "good") for lab in labels.values())
    replayed = list(Replayer(tmp_path / "rec"))  # every item decodes as the line reads it
    assert [type(item) for item in replayed] == [Sample] * 10, [getattr(i, "reason", "") for i in replayed]


def _band_share(clip: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(clip)) ** 2
    freqs = np.fft.rfftfreq(len(clip), 1 / SAMPLE_RATE)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def test_machine_sounds_are_clips_and_faults_carry_their_signature() -> None:
    hum, clicks = [], []
    for seed in range(12):
        clips = {m: render_machine_sound_shaded(np.random.default_rng([seed, 3, 0]), m) for m in MACHINE_STATES}
        for name, clip in clips.items():
            assert clip.shape == (1, SAMPLE_RATE) and clip.dtype == np.float32, name  # channels first, as paint's
            assert np.isfinite(clip).all() and 0.05 < np.abs(clip).max() <= 1.0, name
        clips = {name: clip[0] for name, clip in clips.items()}
        normal = clips["normal"]
        hum.append(_band_share(clips["imbalance_hum"], 5, 70) - _band_share(normal, 5, 70))
        clicks.append(_band_share(clips["bearing_click"], 1200, 8000) / _band_share(normal, 1200, 8000))
    assert sum(h > 0.05 for h in hum) >= 9, hum  # a strong once-per-revolution component
    assert np.median(clicks) > 1.15, clicks  # ringing impacts add high-frequency energy
    with pytest.raises(ValueError, match="unknown machine state"):
        render_machine_sound_shaded(np.random.default_rng(0), "squeal")
