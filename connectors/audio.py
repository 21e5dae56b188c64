"""Audio from files and bytes: fixed-length windows cut from a file (WAV, or anything FFmpeg decodes) via torchcodec,
and spoken messages decoded for speech recognition (mono 16 kHz, loudness-normalised) and cut into streaming chunks.

Example:
    >>> for item in AudioFileSource("motor.wav", window_s=1.0, hop_s=0.5, sample_rate=16000):
    ...     print(item.item_id, item.ts, item.audio.waveform.shape)   # audio-000000 0.0 (1, 16000)
    >>> wave, rate = decode_speech("T00001", Path("complaint.ogg").read_bytes())   # (samples,) float32, 16000
    >>> [len(chunk) for chunk in speech_chunks(wave, rate, seconds=1.0)]           # [16000, 16000, 7040]
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from connectors.camera import SourceUnavailable
from connectors.records import (
    AudioClip,
    InputError,
    Quarantined,
    Sample,
    check_sample_rate,
    decode_audio,
    decoder_message,
)

log = logging.getLogger("fusionline.audio")

# A file counts as truncated when it ends this much before the duration its header announces.
SHORTFALL_TOLERANCE_S = 0.1
SHORTFALL_TOLERANCE_FRACTION = 0.02

#: What speech recognition is given: mono at this rate (the acoustic model's), loudness-normalised to this level.
SPEECH_RATE = 16_000
SPEECH_LOUDNESS_LUFS = -23.0  # EBU R 128 programme loudness
SPEECH_PEAK = 0.95  # the gain never lifts a sample above this
MIN_SPEECH_S = 0.4  # one ITU-R BS.1770 loudness block; shorter holds no word
MAX_SPEECH_S = 300.0  # a voice message longer than five minutes is not a complaint
SILENCE_LUFS = -70.0  # BS.1770's absolute gate: quieter than this is silence
FULL_SCALE = 0.999  # a sample this close to +-1 is at full scale
MAX_CLIPPED_SHARE = 0.01  # more samples than this at full scale: the recording is clipped


def shortfall_tolerance(announced_s: float | None) -> float:
    """How much earlier than its header announces (seconds) a stream may end without counting as truncated."""
    return max(SHORTFALL_TOLERANCE_S, SHORTFALL_TOLERANCE_FRACTION * (announced_s or 0.0))


class AudioFileSource:
    """Yields one :class:`Sample` per window, each with an :class:`AudioClip` of exactly ``window_s``.

    Args:
        path: the audio file.
        window_s: window length, seconds.
        hop_s: start-to-start distance of windows (default ``window_s``: no overlap).
        prefix: item ids are ``<prefix>-<seq:06d>``.
        limit: stop after this many windows.
        sample_rate, num_channels: resample / remix to these (default: the file's own).

    Windows are decoded one at a time (long files are not held in memory). The last window is padded with
    zeros when the file ends inside it; a window that would add no new audio is not emitted. A missing
    file raises :class:`SourceUnavailable`; an empty or non-audio file, or one whose own sample rate is outside
    ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE`` (checked before any resampling), yields one :class:`Quarantined`
    (with the file in ``payload_paths``), as does a file that stops decoding, or ends more than
    ``max(0.1 s, 2 %)`` before the duration its header announces, after the windows read so far.
    """

    def __init__(
        self,
        path: str | Path,
        window_s: float = 1.0,
        hop_s: float | None = None,
        prefix: str = "audio",
        limit: int | None = None,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ):
        hop_s = window_s if hop_s is None else hop_s
        if window_s <= 0 or hop_s <= 0:
            raise ValueError(f"window_s and hop_s must be > 0, got {window_s} and {hop_s}")
        self.path = Path(path)
        self.window_s, self.hop_s = window_s, hop_s
        self.prefix = prefix
        self.limit = limit
        self.sample_rate, self.num_channels = sample_rate, num_channels

    def __iter__(self) -> Iterator[Sample | Quarantined]:
        from torchcodec.decoders import AudioDecoder

        if not self.path.is_file():
            raise SourceUnavailable(f"audio source {str(self.path)!r} cannot be opened: no such file")
        if self.path.stat().st_size == 0:
            yield self._quarantine(0, "audio file is empty (0 bytes)")
            return
        try:
            decoder = AudioDecoder(self.path, sample_rate=self.sample_rate, num_channels=self.num_channels)
        except (RuntimeError, ValueError) as exc:
            yield self._quarantine(0, f"not decodable audio: {decoder_message(exc)}")
            return
        meta = decoder.metadata
        try:
            check_sample_rate(self._item_id(0), int(meta.sample_rate or 0))
        except InputError as exc:
            yield self._quarantine(0, exc.reason)
            return
        sr = self.sample_rate or int(meta.sample_rate)
        t0 = meta.begin_stream_seconds or 0.0  # e.g. an MP3's encoder delay: the first sample's time
        announced = meta.duration_seconds
        tolerance = shortfall_tolerance(announced)
        window, hop = round(self.window_s * sr), round(self.hop_s * sr)
        log.info(
            "audio opened source=%s sample_rate=%d duration_s=%s window=%d hop=%d",
            self.path, sr, announced, window, hop,
        )
        seq, covered = 0, 0  # windows emitted; samples covered by them
        while self.limit is None or seq < self.limit:
            start = seq * hop
            at = t0 + start / sr
            if announced is not None and at >= announced:
                return
            try:
                data = decoder.get_samples_played_in_range(at, at + window / sr).data.numpy()
            except RuntimeError as exc:
                if seq > 0 and (announced is None or at >= announced - tolerance):
                    return  # the announced length was a little long (or unknown): this is the end
                reason = f"decoding failed at {start / sr:.3f} s (window {seq}): {decoder_message(exc)}"
                yield self._quarantine(seq, reason)
                return
            n = min(data.shape[1], window)
            if n < window and seq > 0 and start + n <= covered:
                return
            wav = np.zeros((data.shape[0], window), dtype=np.float32)
            wav[:, :n] = data[:, :n]
            item_id = self._item_id(seq)
            clip = AudioClip(item_id, start / sr, waveform=wav, sample_rate=sr, source=str(self.path))
            yield Sample(item_id=item_id, seq=seq, ts=start / sr, audio=clip)
            seq, covered = seq + 1, start + n
            if n < window:
                ends = t0 + covered / sr
                if announced is not None and announced - ends > tolerance:
                    reason = f"audio ends at {ends:.3f} s, header announces {announced:.3f} s (truncated)"
                    yield self._quarantine(seq, reason)
                return

    def _quarantine(self, seq: int, reason: str) -> Quarantined:
        log.warning("audio quarantined source=%s window=%d reason=%s", self.path, seq, reason)
        return Quarantined(self._item_id(seq), seq, f"{self.path}: {reason}", "source", [str(self.path)])

    def _item_id(self, seq: int) -> str:
        return f"{self.prefix}-{seq:06d}"


def decode_speech(item_id: str, data: bytes) -> tuple[np.ndarray, int]:
    """A spoken message (WAV, FLAC, MP3, OGG or anything FFmpeg decodes) as speech recognition takes it:
    ``(samples (T,) float32, SPEECH_RATE)``, mono (channels averaged), resampled, loudness-normalised to
    :data:`SPEECH_LOUDNESS_LUFS` (ITU-R BS.1770, the gain capped so no sample exceeds :data:`SPEECH_PEAK`).

    Raises :class:`InputError` naming the item and the reason for: empty data; data that is not audio; a stream
    that ends before the length its header announces (truncated); a sample rate outside the plausible range
    (:func:`~connectors.records.check_sample_rate`); NaN or infinite samples; audio shorter than
    :data:`MIN_SPEECH_S` or longer than :data:`MAX_SPEECH_S`; more than :data:`MAX_CLIPPED_SHARE` of the samples at
    full scale (clipped); loudness below :data:`SILENCE_LUFS` (silent).
    """
    import torch
    import torchaudio.functional as F

    if not data:
        raise InputError(item_id, "audio is empty (0 bytes)")
    wave, rate = decode_audio(item_id, data)
    check_sample_rate(item_id, rate)
    seconds = wave.shape[1] / rate
    if not data.startswith(b"RIFF"):  # a PCM WAV's length was checked against its header while parsing it
        _check_announced_length(item_id, data, seconds)
    if not np.isfinite(wave).all():
        raise InputError(item_id, "audio contains NaN or infinite samples")
    if not MIN_SPEECH_S <= seconds <= MAX_SPEECH_S:
        raise InputError(item_id, f"audio lasts {seconds:.2f} s; speech is taken from {MIN_SPEECH_S} to "
                                  f"{MAX_SPEECH_S:.0f} s")
    clipped = float(np.mean(np.abs(wave) >= FULL_SCALE))
    if clipped > MAX_CLIPPED_SHARE:
        raise InputError(item_id, f"audio is clipped: {clipped:.1%} of the samples at full scale "
                                  f"(at most {MAX_CLIPPED_SHARE:.0%})")
    mono = torch.from_numpy(np.ascontiguousarray(wave.mean(axis=0), dtype=np.float32))
    if rate != SPEECH_RATE:
        mono = F.resample(mono, rate, SPEECH_RATE)
    loudness = float(F.loudness(mono[None], SPEECH_RATE))
    if not loudness >= SILENCE_LUFS:  # NaN or -inf when every block is gated away
        raise InputError(item_id, f"audio is silent (quieter than {SILENCE_LUFS:.0f} LUFS)")
    peak = float(mono.abs().max())
    gain = min(10.0 ** ((SPEECH_LOUDNESS_LUFS - loudness) / 20.0), SPEECH_PEAK / peak)
    return (mono * gain).numpy(), SPEECH_RATE


def _check_announced_length(item_id: str, data: bytes, decoded_s: float) -> None:
    """:class:`InputError` when a compressed stream decodes to less than the duration its header announces."""
    from torchcodec.decoders import AudioDecoder

    meta = AudioDecoder(data).metadata
    announced, begins = meta.duration_seconds, meta.begin_stream_seconds or 0.0
    if announced is not None and announced - (begins + decoded_s) > shortfall_tolerance(announced):
        raise InputError(item_id, f"audio ends at {begins + decoded_s:.3f} s, its header announces "
                                  f"{announced:.3f} s (truncated)")


def speech_chunks(wave: np.ndarray, rate: int, seconds: float) -> Iterator[np.ndarray]:
    """Consecutive chunks of ``seconds`` of a ``(T,)`` waveform at ``rate`` Hz, in order, for streaming; the last
    one holds what is left (shorter, never empty). Chunks are views of ``wave``."""
    size = round(seconds * rate)
    if size <= 0:
        raise ValueError(f"a chunk of {seconds} s at {rate} Hz holds no sample")
    for start in range(0, len(wave), size):
        yield wave[start : start + size]
