"""Camera and audio-file sources on real files: healthy, truncated, empty, not media at all."""

from __future__ import annotations

import gc
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchcodec.decoders import AudioDecoder
from torchcodec.encoders import AudioEncoder

from connectors.audio import AudioFileSource
from connectors.camera import CameraSource, SourceUnavailable
from connectors.records import Quarantined, Sample, encode_wav

FRAMES, W, H, FPS = 12, 64, 48, 10


def write_video(path: Path, fourcc: str) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (W, H))
    assert writer.isOpened(), f"no {fourcc} encoder for {path.suffix}"
    rng = np.random.default_rng(0)
    for i in range(FRAMES):  # noise keeps frames large next to the header, so a cut lands among them
        writer.write((i * 20 + rng.integers(0, 16, (H, W, 3))).astype(np.uint8))
    writer.release()
    return path


def truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def tear_frame(path: Path, k: int) -> Path:
    """Cut an MJPG AVI 16 bytes before the end of frame ``k`` (its ``00dc`` chunk), inside its entropy-coded data:
    FFmpeg's decoder still makes a picture of it. The frames before it stay whole."""
    data = path.read_bytes()
    at = data.index(b"movi") + 4
    for _ in range(k + 1):
        assert data[at : at + 4] == b"00dc"
        size = struct.unpack("<I", data[at + 4 : at + 8])[0]
        at, cut = at + 8 + size + size % 2, at + 8 + size - 16
    path.write_bytes(data[:cut])
    return path


def split(items: list[Sample | Quarantined]) -> tuple[list[Sample], list[Quarantined]]:
    return [i for i in items if isinstance(i, Sample)], [i for i in items if isinstance(i, Quarantined)]


# --- camera ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, fourcc", [(".avi", "MJPG"), (".mp4", "mp4v")])
def test_camera_reads_every_frame_of_a_video_file(tmp_path: Path, suffix: str, fourcc: str) -> None:
    video = write_video(tmp_path / f"line{suffix}", fourcc)
    samples, bad = split(list(CameraSource(video, prefix="part")))
    assert not bad
    assert [s.item_id for s in samples] == [f"part-{i:06d}" for i in range(FRAMES)]
    assert [s.seq for s in samples] == list(range(FRAMES))
    assert [s.ts for s in samples] == pytest.approx([i / FPS for i in range(FRAMES)])
    for i, s in enumerate(samples):
        assert s.frame is not None and s.frame.item_id == s.item_id and s.frame.source == str(video)
        pixels = s.frame.decode()  # validated: (H, W, 3) uint8
        assert pixels.shape == (H, W, 3)
        assert abs(float(pixels.mean()) - (i * 20 + 7.5)) < 8  # lossy codec, right frame in the right place


def test_camera_limit_stops_early_without_quarantine(tmp_path: Path) -> None:
    video = write_video(tmp_path / "line.avi", "MJPG")
    samples, bad = split(list(CameraSource(str(video), limit=5)))
    assert [s.item_id for s in samples] == [f"cam-{i:06d}" for i in range(5)] and not bad


def test_truncated_avi_yields_its_frames_then_a_quarantined_item_naming_file_and_frame(tmp_path: Path) -> None:
    video = truncate(write_video(tmp_path / "cut.avi", "MJPG"), 0.6)
    items = list(CameraSource(video))
    samples, bad = split(items)
    assert 0 < len(samples) < FRAMES
    assert len(bad) == 1 and items[-1] is bad[0]
    q = bad[0]
    k = len(samples)
    assert (q.item_id, q.seq, q.stage) == (f"cam-{k:06d}", k, "source")
    assert str(video) in q.reason and f"frame {k} of {FRAMES}" in q.reason


@pytest.mark.parametrize("k", [5, FRAMES - 1])
def test_a_torn_frame_is_quarantined_never_scored(tmp_path: Path, k: int) -> None:
    """FFmpeg used to make a picture of a frame cut short, and a torn last frame left no shortfall to notice."""
    whole = [s.frame.pixels for s in CameraSource(write_video(tmp_path / "whole.avi", "MJPG"))]
    items = list(CameraSource(tear_frame(write_video(tmp_path / "torn.avi", "MJPG"), k)))
    samples, bad = split(items)
    assert len(samples) == k and all(np.array_equal(s.frame.pixels, whole[i]) for i, s in enumerate(samples))
    assert len(bad) == 1 and items[-1] is bad[0]
    assert bad[0].item_id == f"cam-{k:06d}" and f"frame {k} of {FRAMES} announced (torn" in bad[0].reason


def test_truncated_mp4_that_cannot_open_is_quarantined_at_frame_0(tmp_path: Path) -> None:
    video = truncate(write_video(tmp_path / "cut.mp4", "mp4v"), 0.5)  # the index (moov) is at the end: gone
    items = list(CameraSource(video))
    assert len(items) == 1 and isinstance(items[0], Quarantined)
    assert items[0].seq == 0 and str(video) in items[0].reason and "not a readable video" in items[0].reason


def test_missing_file_and_absent_device_raise_naming_the_source(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceUnavailable, match="nope.mp4.*no such file"):
        next(iter(CameraSource(missing)))
    with pytest.raises(SourceUnavailable, match="'rtsp://127.0.0.1:1/stream'"):
        next(iter(CameraSource("rtsp://127.0.0.1:1/stream")))


# --- audio ----------------------------------------------------------------------------------------------

SR = 16000


def write_wav(path: Path, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    wave = np.stack([0.5 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]).astype(np.float32)
    path.write_bytes(encode_wav(wave, SR))
    return AudioDecoder(path).get_all_samples().data.numpy()  # what the file holds (16-bit quantised)


def test_audio_windows_cover_the_file_last_one_zero_padded(tmp_path: Path) -> None:
    wav = tmp_path / "motor.wav"
    held = write_wav(wav, 2.5)
    samples, bad = split(list(AudioFileSource(wav, window_s=1.0, prefix="motor")))
    assert not bad
    assert [s.item_id for s in samples] == ["motor-000000", "motor-000001", "motor-000002"]
    assert [s.ts for s in samples] == [0.0, 1.0, 2.0]
    for s in samples:
        assert s.audio is not None and s.audio.sample_rate == SR and s.audio.source == str(wav)
        assert s.audio.waveform.shape == (1, SR) and s.audio.waveform.dtype == np.float32
        assert s.audio.decode()[0] is s.audio.waveform  # passes the record's own validation
    np.testing.assert_allclose(samples[1].audio.waveform, held[:, SR : 2 * SR], atol=1e-6)
    np.testing.assert_allclose(samples[2].audio.waveform[:, : SR // 2], held[:, 2 * SR :], atol=1e-6)
    assert not samples[2].audio.waveform[:, SR // 2 :].any()


def test_audio_resamples_and_keeps_channels(tmp_path: Path) -> None:
    wav = tmp_path / "stereo.wav"
    write_wav(wav, 1.0, channels=2)
    samples, bad = split(list(AudioFileSource(wav, window_s=0.5, sample_rate=8000)))
    assert not bad and [s.audio.waveform.shape for s in samples] == [(2, 4000), (2, 4000)]
    assert all(s.audio.sample_rate == 8000 for s in samples)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seconds=st.floats(0.05, 3.0),
    window_s=st.sampled_from([0.25, 0.5, 1.0]),
    hop_fraction=st.sampled_from([0.25, 0.5, 1.0, 1.5]),
)
def test_audio_windows_property(tmp_path: Path, seconds: float, window_s: float, hop_fraction: float) -> None:
    """Every window is exactly window_s long, starts at seq*hop, holds the file's samples there (zeros past
    the end), the windows together cover the file up to the gaps a hop > window leaves, and none is redundant."""
    wav = tmp_path / "p.wav"
    held = write_wav(wav, seconds)
    total, window, hop = held.shape[1], round(window_s * SR), round(window_s * hop_fraction * SR)
    samples, bad = split(list(AudioFileSource(wav, window_s=window_s, hop_s=window_s * hop_fraction)))
    assert not bad and samples
    for k, s in enumerate(samples):
        start = k * hop
        assert s.seq == k and s.ts == pytest.approx(start / SR)
        expected = np.zeros((1, window), np.float32)
        part = held[:, start : start + window]
        expected[:, : part.shape[1]] = part
        np.testing.assert_allclose(s.audio.waveform, expected, atol=1e-6)
    last = (len(samples) - 1) * hop
    assert last + window >= total or last + hop >= total  # nothing after the last window but a hop gap
    if len(samples) > 1:
        assert (len(samples) - 2) * hop + window < total  # the last window added audio


def test_empty_wav_is_quarantined_naming_the_file(tmp_path: Path) -> None:
    wav = tmp_path / "empty.wav"
    wav.write_bytes(b"")
    items = list(AudioFileSource(wav))
    assert len(items) == 1 and isinstance(items[0], Quarantined)
    q = items[0]
    assert (q.item_id, q.seq, q.stage) == ("audio-000000", 0, "source")
    assert str(wav) in q.reason and "empty (0 bytes)" in q.reason and q.payload_paths == [str(wav)]


def test_non_audio_wav_is_quarantined_with_the_decoder_reason(tmp_path: Path) -> None:
    wav = tmp_path / "notes.wav"
    wav.write_text("operator remark: belt squeaks\n" * 20)
    items = list(AudioFileSource(wav))
    assert len(items) == 1 and isinstance(items[0], Quarantined)
    assert str(wav) in items[0].reason and "not decodable audio" in items[0].reason
    assert ".cpp" not in items[0].reason  # FFmpeg's words, not torchcodec's source location


def test_truncated_flac_yields_what_decodes_then_quarantine(tmp_path: Path) -> None:
    flac = tmp_path / "long.flac"
    wave = 0.5 * torch.sin(torch.arange(5 * SR) / 10.0).unsqueeze(0)
    AudioEncoder(wave, sample_rate=SR).to_file(str(flac))
    assert len(list(AudioFileSource(flac))) == 5
    truncate(flac, 0.5)
    items = list(AudioFileSource(flac))
    samples, bad = split(items)
    assert 0 < len(samples) < 5 and len(bad) == 1 and items[-1] is bad[0]
    assert bad[0].seq == len(samples) and str(flac) in bad[0].reason


@pytest.mark.parametrize("rate", [5, 384_000])
def test_audio_file_at_an_implausible_rate_is_quarantined_not_resampled(tmp_path: Path, rate: int) -> None:
    wav = tmp_path / "odd.wav"
    wav.write_bytes(encode_wav(np.zeros((1, 8000), np.float32), rate))
    [item] = list(AudioFileSource(wav, sample_rate=SR))
    assert isinstance(item, Quarantined) and item.payload_paths == [str(wav)]
    assert f"{wav}: sample rate {rate} Hz outside 4000..192000 Hz" == item.reason


def test_missing_audio_file_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="gone.wav.*no such file"):
        next(iter(AudioFileSource(tmp_path / "gone.wav")))


def test_looped_replay_keeps_item_ids_unique_per_lap() -> None:
    from connectors.recording import Replayer

    recording = Path(__file__).parents[1] / "data" / "recordings" / "factory-mini"
    laps = list(Replayer(recording, limit=3 * 24, loop=True))
    ids = [item.item_id for item in laps]
    assert all(isinstance(item, Sample) for item in laps)  # a later lap's items are not duplicates
    assert len(set(ids)) == len(ids) == 72
    assert ids[24] == ids[0] + "~2" and ids[48] == ids[0] + "~3"
    assert [item.seq for item in laps] == list(range(72))


def test_replay_closes_the_event_log() -> None:
    from connectors.recording import Replayer

    recording = Path(__file__).parents[1] / "data" / "recordings" / "factory-mini"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert len(list(Replayer(recording))) == 24
        next(iter(Replayer(recording)))  # a replay abandoned after one item
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def _replayed(item: Sample | Quarantined) -> tuple:
    """What a replay says about one event: its identity, position and verdict, and the payload bytes it read."""
    if isinstance(item, Quarantined):
        return ("quarantined", item.item_id, item.seq, item.reason, item.stage)
    payloads = [p.encoded for p in (item.frame, item.audio) if p is not None]
    return ("sample", item.item_id, item.seq, item.ts, payloads, item.record is not None, item.note)


def test_a_replay_from_any_start_gives_the_events_a_full_replay_gives() -> None:
    """The bad-input corpus (duplicate ids, time going backwards, missing and escaping payloads) replayed in slices
    of 3 from every position: each slice is that stretch of the full replay, item for item (ids, seq, reasons)."""
    from connectors.recording import Replayer

    corpus = Path(__file__).parents[1] / "data" / "bad"
    full = [_replayed(item) for item in Replayer(corpus)]
    assert any(r[0] == "quarantined" and "duplicate item_id" in r[3] for r in full)
    assert any(r[0] == "quarantined" and "goes backwards" in r[3] for r in full)
    for start in range(len(full) + 1):
        sliced = Replayer(corpus, start=start, limit=3)
        assert [_replayed(item) for item in sliced] == full[start:start + 3], f"start={start}"
        assert len(sliced) == len(full[start:start + 3])


def test_a_replay_that_starts_late_is_neither_paced_nor_looped() -> None:
    from connectors.recording import Replayer

    recording = Path(__file__).parents[1] / "data" / "recordings" / "factory-mini"
    for kwargs in ({"speed": 1.0}, {"loop": True}):
        with pytest.raises(ValueError, match="neither paced"):
            Replayer(recording, start=1, **kwargs)
