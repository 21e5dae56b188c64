"""Fixed-length audio windows cut from a file (WAV, or anything FFmpeg decodes), via torchcodec.

Example:
    >>> for item in AudioFileSource("motor.wav", window_s=1.0, hop_s=0.5, sample_rate=16000):
    ...     print(item.item_id, item.ts, item.audio.waveform.shape)   # audio-000000 0.0 (1, 16000)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from connectors.camera import SourceUnavailable
from connectors.records import AudioClip, InputError, Quarantined, Sample, check_sample_rate, decoder_message

log = logging.getLogger("fusionline.audio")

# A file counts as truncated when it ends this much before the duration its header announces.
SHORTFALL_TOLERANCE_S = 0.1
SHORTFALL_TOLERANCE_FRACTION = 0.02


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
        tolerance = max(SHORTFALL_TOLERANCE_S, SHORTFALL_TOLERANCE_FRACTION * (announced or 0.0))
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
