"""Typed records that travel from sources to sinks.

Every record carries the ``item_id`` of the part or case it belongs to; the id is stable from the source
to every sink, so sinks can be idempotent. Payloads may travel *encoded* (PNG/JPEG/WAV bytes, as read
from disk) and be decoded where the compute is (inside a model replica), or *decoded* (pixels, samples)
when a live source such as a camera already produced them.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

MIN_SIDE, MAX_SIDE = 16, 8192  # frame width and height, pixels
MAX_AUDIO_CHANNELS = 64
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 192_000  # Hz: narrow-band telephony to studio recorders
STREAMED_WAV_FRAMES = 0xFFFF_FFFF  # a streaming writer's "length unknown" data size: not a truncation


class InputError(ValueError):
    """An item that cannot be used: names the item and the reason. The item goes to quarantine."""

    def __init__(self, item_id: str, reason: str):
        super().__init__(f"{item_id}: {reason}")
        self.item_id = item_id
        self.reason = reason


def checked_size(path: Path, item_id: str, limit: int, what: str = "file") -> int:
    """``path``'s size in bytes, checked before anything reads it: :class:`InputError` naming the item when the
    file cannot be read or is larger than ``limit``."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(item_id, f"{path.name}: cannot read ({exc.strerror})") from None
    if size > limit:
        raise InputError(item_id, f"{path.name}: {what} of {size} bytes exceeds the {limit}-byte limit")
    return size


@dataclass
class Frame:
    """One camera frame.

    Attributes:
        item_id: the part this frame shows.
        ts: capture time, seconds (recording clock for replays, epoch for live sources).
        encoded: PNG/JPEG bytes, or None when ``pixels`` is given.
        pixels: ``(H, W, 3)`` uint8 BGR (OpenCV order), or None until decoded.
    """

    item_id: str
    ts: float
    encoded: bytes | None = None
    pixels: np.ndarray | None = None
    source: str = ""

    def decode(self) -> np.ndarray:
        """Pixels ``(H, W, 3)`` uint8 BGR; raises :class:`InputError` on a corrupt or empty image."""
        if self.pixels is None:
            if not self.encoded:
                raise InputError(self.item_id, "frame has no image data")
            try:
                width, height = image_size(self.encoded)
            except ValueError as exc:
                raise InputError(self.item_id, f"frame is not a decodable image ({len(self.encoded)} bytes): "
                                               f"{exc}") from None
            check_size(self.item_id, width, height)  # before decoding: a 100000x100000 header allocates nothing
            buf = np.frombuffer(self.encoded, dtype=np.uint8)
            pixels = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            if pixels is None:
                raise InputError(self.item_id, f"frame is not a decodable image ({len(self.encoded)} bytes)")
            self.pixels = pixels
        return check_pixels(self.item_id, self.pixels)


def check_pixels(item_id: str, pixels: np.ndarray) -> np.ndarray:
    """Validate a decoded frame: 3-channel uint8, sane size."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise InputError(item_id, f"frame must be HxWx3 uint8, got shape {pixels.shape} {pixels.dtype}")
    check_size(item_id, pixels.shape[1], pixels.shape[0])
    return pixels


def check_size(item_id: str, width: int, height: int) -> None:
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise InputError(item_id, f"frame size {width}x{height} outside {MIN_SIDE}..{MAX_SIDE} pixels")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4/C8/CC are not


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG or JPEG header, without decoding; ValueError when it is neither."""
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("PNG without an IHDR header")
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        at = 2
        while at + 4 <= len(data):
            if data[at] != 0xFF:
                raise ValueError(f"JPEG marker expected at byte {at}")
            marker = data[at + 1]
            if marker == 0xFF:  # fill byte
                at += 1
                continue
            if marker in JPEG_SOF_MARKERS:
                if at + 9 > len(data):
                    break
                height, width = struct.unpack(">HH", data[at + 5 : at + 9])
                return width, height
            at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
        raise ValueError("JPEG without a frame header")
    raise ValueError("neither PNG nor JPEG")


@dataclass
class AudioClip:
    """A mono or multi-channel audio clip.

    Attributes:
        encoded: WAV bytes, or None when ``waveform`` is given.
        waveform: ``(channels, samples)`` float32 in [-1, 1], or None until decoded.
        sample_rate: Hz (0 until decoded when only ``encoded`` is known).
    """

    item_id: str
    ts: float
    encoded: bytes | None = None
    waveform: np.ndarray | None = None
    sample_rate: int = 0
    source: str = ""

    def decode(self) -> tuple[np.ndarray, int]:
        """``(waveform (C, T) float32, sample_rate)``; raises :class:`InputError` on empty or non-audio data, or a
        sample rate outside ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``."""
        if self.waveform is None:
            if not self.encoded:
                raise InputError(self.item_id, "audio clip is empty (0 bytes)")
            self.waveform, self.sample_rate = decode_audio(self.item_id, self.encoded)
        check_sample_rate(self.item_id, self.sample_rate)
        wav = self.waveform
        if wav.ndim != 2 or wav.shape[1] == 0:
            raise InputError(self.item_id, f"audio clip has no samples (shape {wav.shape})")
        if not np.isfinite(wav).all():
            raise InputError(self.item_id, "audio clip contains NaN or Inf samples")
        return wav, self.sample_rate


def check_sample_rate(item_id: str, rate: int) -> int:
    """``rate`` when it is a plausible recording rate (``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE`` Hz), else
    :class:`InputError`: a clip claiming a few Hz would otherwise be resampled into something and decided."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(item_id, f"sample rate {rate} Hz outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    return rate


def decode_audio(item_id: str, data: bytes) -> tuple[np.ndarray, int]:
    """Decode audio bytes to ``(waveform (C, T) float32, sample_rate)``.

    PCM WAV (the recording format's audio) is parsed directly; anything else goes through torchaudio's
    FFmpeg-backed decoder (torchcodec), whose libraries take seconds to load the first time.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            return _decode_pcm_wav(item_id, data)
        except InputError:
            raise
        except (wave.Error, EOFError, ValueError):
            pass  # a WAV codec `wave` does not read (float, A-law, ...): let FFmpeg try
    from torchcodec.decoders import AudioDecoder

    try:
        samples = AudioDecoder(data).get_all_samples()
    except Exception as exc:  # torchcodec raises RuntimeError/ValueError with FFmpeg's text
        raise InputError(item_id, f"audio is not decodable: {decoder_message(exc)}") from None
    wav = samples.data.numpy().astype(np.float32, copy=False)
    if wav.size == 0:
        raise InputError(item_id, "audio clip has no samples")
    return wav, int(samples.sample_rate)


def decoder_message(exc: Exception) -> str:
    """FFmpeg's words from a torchcodec error, without the C++ source location."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"^.*?\.cpp:\d+, ", "", first)[:200]


def _decode_pcm_wav(item_id: str, data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        width, channels, rate, frames = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
        if not 1 <= channels <= MAX_AUDIO_CHANNELS:
            raise InputError(item_id, f"WAV header announces {channels} channels (limit: {MAX_AUDIO_CHANNELS})")
        raw = w.readframes(frames)
    if width not in (1, 2, 4):
        raise ValueError(f"unsupported PCM layout: {width} bytes x {channels} channels at {rate} Hz")
    if len(raw) < frames * width * channels and frames < STREAMED_WAV_FRAMES // (width * channels):
        raise InputError(item_id, f"WAV truncated: header announces {frames} frames, the file holds "
                                  f"{len(raw) // (width * channels)}")
    if width == 1:
        pcm = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        dtype, scale = ("<i2", 32768.0) if width == 2 else ("<i4", 2147483648.0)
        pcm = np.frombuffer(raw, dtype).astype(np.float32) / scale
    frames = len(pcm) // channels
    return np.ascontiguousarray(pcm[: frames * channels].reshape(frames, channels).T), rate


@dataclass
class CTSeries:
    """A CT series: its DICOM files (as a source found them), and once decoded the volume they assemble.

    Attributes:
        files: one DICOM file per slice, in any order (a recording's ``ct/<item_id>/`` folder, or the instances
            a PACS sent, spooled to disk); the replica decodes them (:meth:`decode`).
        volume: ``(slices, H, W)`` float32 in Hounsfield units, slices ordered along the slice normal; None until
            decoded.
        spacing_mm: ``(slice, row, column)`` spacing in millimetres; None until decoded.
        study_uid / series_uid: DICOM identifiers (kept for the audit trail, never logged with PHI).
        source: where the files are (a folder), for quarantine and the dashboard.
    """

    item_id: str
    ts: float
    files: list[str] = field(default_factory=list)
    volume: np.ndarray | None = None
    spacing_mm: tuple[float, float, float] | None = None
    study_uid: str = ""
    series_uid: str = ""
    source: str = ""

    def decode(self) -> CTSeries:
        """The decoded series (:func:`connectors.dicom.read_ct_series`), this one when already decoded; raises
        :class:`InputError` naming the file and the reason when the series is unusable."""
        if self.volume is not None:
            return self
        from connectors.dicom import read_ct_series

        if not self.files:
            raise InputError(self.item_id, "CT series has no files")
        series = read_ct_series(self.files, self.item_id, self.ts)
        series.source = self.source or series.source
        return series


@dataclass
class ClinicalRecord:
    """A FHIR resource (usually a Bundle) describing the patient or case, as parsed JSON.

    Attributes:
        resource: the resource as parsed (holds PHI: never log it).
        observations: numeric observation values by code (``system|code``, e.g. ``http://loinc.org|8867-4``).
        conditions: condition codes (``system|code``) present for the patient.
    """

    item_id: str
    ts: float
    resource: dict[str, Any]
    source: str = ""
    observations: dict[str, float] = field(default_factory=dict)
    conditions: list[str] = field(default_factory=list)


@dataclass
class Note:
    """Free text attached to an item: an operator remark, a clinical note, a transcript."""

    item_id: str
    ts: float
    text: str
    source: str = ""


@dataclass
class Sample:
    """Everything known about one item at one moment: the unit a pipeline processes.

    ``seq`` is the position in the source's order; sinks see decisions in ``seq`` order.
    Any modality may be missing (None); the model's router masks it.
    """

    item_id: str
    seq: int
    ts: float
    frame: Frame | None = None
    audio: AudioClip | None = None
    ct: CTSeries | None = None
    record: ClinicalRecord | None = None
    note: Note | None = None
    ingest_time: float = field(default_factory=time.perf_counter)

    def digest(self) -> str:
        """SHA-256 over the encoded payloads (or raw pixels/samples): the input's identity for audit and cache."""
        h = hashlib.sha256()
        for part in (self.frame, self.audio):
            if part is None:
                h.update(b"\0")
            elif part.encoded is not None:
                h.update(part.encoded)
            else:
                arr = part.pixels if isinstance(part, Frame) else part.waveform
                h.update(np.ascontiguousarray(arr).tobytes())
        if self.note is not None:
            h.update(self.note.text.encode())
        if self.ct is not None:
            if self.ct.volume is not None:
                h.update(np.ascontiguousarray(self.ct.volume).tobytes())
            for path in sorted(self.ct.files):  # the files as the source saw them (~10 ms for a 100-slice series)
                try:
                    h.update(hashlib.sha256(Path(path).read_bytes()).digest())
                except OSError:
                    h.update(b"\0missing")
        if self.record is not None:
            h.update(repr(sorted(self.record.resource.items())).encode())
        return h.hexdigest()


@dataclass
class Decision:
    """What the model decided about one item, and what the controllers did with it.

    Attributes:
        label: the decided class (e.g. ``good``, ``scratch``); ``reject`` says whether the part is rejected.
        confidence: probability of ``label``.
        modality_weights: router attention per modality (sums to 1 over present modalities).
        extra: other heads' outputs, e.g. ``{"machine": "bearing_click"}``.
        latency_ms: ingest to decision.
        decision_id: stable id (:func:`decision_id`): the same line, source and item give the same id in every
            run, so controllers can ignore a decision they already acted on ("" = none).
        acks: controller acknowledgements by sink name, e.g. ``{"plc": "ok", "mqtt": "ok"}``.
    """

    item_id: str
    seq: int
    label: str
    confidence: float
    reject: bool
    modality_weights: dict[str, float]
    model_version: str
    latency_ms: float
    input_digest: str
    extra: dict[str, Any] = field(default_factory=dict)
    decision_id: str = ""
    acks: dict[str, str] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


def decision_id(line: str, source_id: str, seq: int, item_id: str) -> str:
    """The stable id of a decision: 16 hex digits (64 bits) of SHA-256 over line, source, position and item.

    Replaying the same recording gives the same ids (``source_id`` names the recording, ``seq`` tells the
    loops of a looped replay apart); a live source's ``source_id`` names its session, so ids never repeat.
    """
    return hashlib.sha256(f"{line}\0{source_id}\0{seq}\0{item_id}".encode()).hexdigest()[:16]


@dataclass
class Quarantined:
    """An item that could not be processed, with the reason; never silently dropped."""

    item_id: str
    seq: int
    reason: str
    stage: str
    payload_paths: list[str] = field(default_factory=list)
    ts: float = field(default_factory=time.time)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a BGR uint8 image."""
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode_wav(waveform: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes of a ``(C, T)`` float waveform in [-1, 1]; ValueError for any other shape."""
    if waveform.ndim != 2 or not 1 <= waveform.shape[0] <= 64:
        raise ValueError(f"waveform of shape {waveform.shape}: expected (channels, samples) with 1-64 channels")
    pcm = (np.clip(waveform, -1.0, 1.0) * 32767.0).round().astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(pcm.shape[0])
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.T.tobytes())
    return out.getvalue()
