"""The recorded-data format (version 1) and its reader, writer and replayer.

A recording is a folder::

    manifest.json    header: format, version, line, count, fps, modalities, classes, generator
    events.jsonl     the timestamped event log, one JSON object per item, in source order
    labels.jsonl     ground truth, kept apart from the inputs (absent for unlabelled recordings)
    frames/ audio/ video/ ct/ records/   payloads in standard formats (PNG/JPEG, WAV, MP4, DICOM, FHIR JSON)

See ``docs/recording-format.md`` for every field. Paths in events are relative to the folder and may not
escape it. A bad event never stops a replay: it comes out as :class:`~connectors.records.Quarantined`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from connectors.fhir import parse_fhir
from connectors.records import (
    AudioClip,
    CTSeries,
    Frame,
    InputError,
    Note,
    Quarantined,
    Sample,
    encode_png,
    encode_wav,
)

FORMAT = "fusionline.recording"
VERSION = 1
PAYLOAD_KEYS = ("image", "audio", "record", "ct")
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024  # one frame, clip or record; a larger file is refused unread
MAX_ITEM_ID_CHARS = 256
MAX_RECORDING_S = 365 * 24 * 3600.0  # an event time beyond a year is a broken clock, not a recording
PACE_SLICE_S = 3600.0  # the longest single sleep while pacing (time.sleep overflows near 2**63 ns)


class RecordingError(ValueError):
    """The recording as a whole cannot be read (no manifest, wrong format or version)."""


@dataclass
class Manifest:
    """``manifest.json``: what a recording holds."""

    line: str
    count: int = 0
    fps: float = 10.0
    modalities: list[str] = field(default_factory=list)
    classes: dict[str, list[str]] = field(default_factory=dict)
    generator: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT
    version: int = VERSION

    @classmethod
    def read(cls, root: Path) -> Manifest:
        path = root / "manifest.json"
        if not path.is_file():
            raise RecordingError(f"{root}: not a recording (no manifest.json)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RecordingError(f"{path}: malformed JSON ({exc})") from None
        if data.get("format") != FORMAT:
            raise RecordingError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
        if data.get("version") != VERSION:
            raise RecordingError(f"{path}: version {data.get('version')} unsupported (this reader: {VERSION})")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, root: Path) -> None:
        (root / "manifest.json").write_text(json.dumps(self.__dict__, indent=2) + "\n")


def resolve_payload(root: Path, rel: str) -> Path:
    """The payload's path inside ``root``; raises ValueError when ``rel`` is absolute or escapes the folder."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        raise ValueError(f"payload path {rel!r} is not a relative path")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"payload path {rel!r} escapes the recording folder")
    return path


class RecordingWriter:
    """Writes a recording; use as a context manager.

    Example:
        >>> with RecordingWriter(out, Manifest(line="factory", fps=30)) as rec:
        ...     rec.add("part-000001", t=0.0, image=pixels, audio=(wave, 16000), labels={"defect": "good"})
    """

    def __init__(self, root: str | Path, manifest: Manifest, image_format: str = "png"):
        self.root = Path(root)
        self.manifest = manifest
        self.image_format = image_format
        self.root.mkdir(parents=True, exist_ok=True)
        self._events = (self.root / "events.jsonl").open("w")
        self._labels = (self.root / "labels.jsonl").open("w")
        self._count = 0

    def add(
        self,
        item_id: str,
        t: float,
        image: np.ndarray | bytes | None = None,
        audio: tuple[np.ndarray, int] | bytes | None = None,
        note: str | None = None,
        record: dict[str, Any] | None = None,
        ct: Sequence[bytes] | None = None,
        labels: dict[str, Any] | None = None,
    ) -> None:
        """Append one item; arrays are encoded (PNG/JPEG, 16-bit WAV), bytes are written as given; ``ct`` is a
        series as one DICOM file's bytes per slice, written to ``ct/<item_id>/NNNN.dcm``."""
        event: dict[str, Any] = {"seq": self._count, "t": round(float(t), 6), "item_id": item_id}
        if image is not None:
            data = image if isinstance(image, bytes) else _encode_image(image, self.image_format)
            event["image"] = self._write(f"frames/{item_id}.{self.image_format}", data)
        if audio is not None:
            data = audio if isinstance(audio, bytes) else encode_wav(*audio)
            event["audio"] = self._write(f"audio/{item_id}.wav", data)
        if record is not None:
            event["record"] = self._write(f"records/{item_id}.json", json.dumps(record).encode())
        if ct is not None:
            for k, data in enumerate(ct):
                self._write(f"ct/{item_id}/{k:04d}.dcm", data)
            event["ct"] = f"ct/{item_id}"
        if note is not None:
            event["note"] = note
        self._events.write(json.dumps(event) + "\n")
        if labels is not None:
            self._labels.write(json.dumps({"item_id": item_id, **labels}) + "\n")
        self._count += 1

    def _write(self, rel: str, data: bytes) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return rel

    def close(self) -> None:
        self._events.close()
        self._labels.close()
        self.manifest.count = self._count
        self.manifest.created = self.manifest.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.manifest.write(self.root)

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode_image(pixels: np.ndarray, fmt: str) -> bytes:
    if fmt == "png":
        return encode_png(pixels)
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def read_labels(root: str | Path) -> dict[str, dict[str, Any]]:
    """Ground truth by item id (empty when the recording has no labels)."""
    path = Path(root) / "labels.jsonl"
    if not path.is_file():
        return {}
    labels = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            labels[row.pop("item_id")] = row
    return labels


def count_events(root: str | Path) -> int:
    """The events a full replay of the recording yields, ``seq`` ``0 .. count - 1`` (one per non-blank line of
    ``events.jsonl``, whatever the manifest's ``count`` says), counted without reading a payload."""
    with (Path(root) / "events.jsonl").open("rb") as events:
        return sum(1 for line in events if line.strip())


class Replayer:
    """Plays a recording back as :class:`Sample` records, deterministically, in event order.

    Args:
        root: the recording folder.
        speed: 1.0 plays at recorded time, N plays N times faster, 0 (default) as fast as possible.
        limit: stop after this many events (None: all).
        loop: start again at the end (for soak runs and dashboards); ``seq`` keeps increasing, and from the
            second lap on item ids get a ``~<lap>`` suffix (``part-000001~2``), so every item of the run stays
            unique for the audit trail and the controllers' idempotency.
        start: replay from the event numbered ``start`` (its ``seq``) on, for batch work over a slice of the
            recording. The events before it are not replayed and their frames and sounds are not read, yet they
            count as in a full replay (in ``seq``, the duplicate-id check and the time-order check), so every
            event comes out exactly as a full replay gives it. Not with ``speed`` or ``loop``.

    Payloads are read as bytes here and decoded where the compute is. Events that cannot be used
    (malformed JSON, missing fields, a time that is not finite, out of ``0..MAX_RECORDING_S`` or before the
    last replayed event's, an ``item_id`` an earlier line of the lap already used, missing payloads, paths
    escaping the folder) come out as :class:`Quarantined` with the reason, and the replay goes on.
    """

    def __init__(self, root: str | Path, speed: float = 0.0, limit: int | None = None, loop: bool = False,
                 start: int = 0):
        if start < 0:
            raise ValueError(f"start {start} is negative")
        if start and (speed > 0 or loop):
            raise ValueError("a replay that starts past the first event is neither paced (speed) nor looped")
        self.root = Path(root)
        self.manifest = Manifest.read(self.root)
        self.speed = speed
        self.limit = limit
        self.loop = loop
        self.start = start

    def __len__(self) -> int:
        left = max(0, self.manifest.count - self.start)
        return min(left, self.limit) if self.limit is not None else left

    @property
    def source_id(self) -> str:
        """The recording's identity: SHA-256 (16 hex digits) of its manifest and event list."""
        h = hashlib.sha256()
        for name in ("manifest.json", "events.jsonl"):
            h.update((self.root / name).read_bytes())
        return "recording:" + h.hexdigest()[:16]

    def __iter__(self) -> Iterator[Sample | Quarantined]:
        seq = 0
        began = time.perf_counter()
        offset = 0.0
        lap = 1
        while True:
            last_t = 0.0
            seen: dict[str, int] = {}  # item id -> the line that first used it, this lap
            with (self.root / "events.jsonl").open("rb") as events:
                for lineno, line in enumerate(events, start=1):
                    if self.limit is not None and seq >= self.start + self.limit:
                        return
                    if not line.strip():
                        continue
                    replayed = seq >= self.start
                    item = self._parse(lineno, line, seq, last_t, seen, read_media=replayed)
                    if isinstance(item, Sample):
                        last_t = item.ts
                    if not replayed:
                        seq += 1
                        continue
                    if isinstance(item, Sample):
                        self._pace(began, offset + item.ts)
                        item.ts += offset
                        item.ingest_time = time.perf_counter()
                    if lap > 1:
                        item.item_id = f"{item.item_id}~{lap}"
                    yield item
                    seq += 1
            if not self.loop or seq == 0:
                return
            offset += last_t + 1.0 / max(self.manifest.fps, 1e-6)
            lap += 1

    def _pace(self, began: float, t: float) -> None:
        """Wait until recording time ``t`` is due at this speed (the replay began at ``began``), in sleeps of at most
        ``PACE_SLICE_S``."""
        if self.speed > 0:
            due = began + t / self.speed
            while (delay := due - time.perf_counter()) > 0:
                time.sleep(min(delay, PACE_SLICE_S))

    def _parse(self, lineno: int, line: bytes, seq: int, after: float, seen: dict[str, int],
               read_media: bool = True) -> Sample | Quarantined:
        """One event line (raw bytes) into a :class:`Sample`, or a :class:`Quarantined` saying why not.

        ``after`` is the time of the last event replayed (this one's may not be earlier); ``seen`` maps the item
        ids used so far to their line, and gets this event's id: the first line to use an id owns it.
        ``read_media=False`` checks the image and audio files as readable without reading them (their payloads
        stay empty): the verdict is the same, for an event counted but not replayed.
        """
        where = f"events.jsonl line {lineno}"
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            return Quarantined(f"line-{lineno}", seq, f"{where}: malformed JSON ({exc.msg})", "source")
        except UnicodeDecodeError:
            return Quarantined(f"line-{lineno}", seq, f"{where}: not UTF-8 text", "source")
        except RecursionError:
            return Quarantined(f"line-{lineno}", seq, f"{where}: JSON nested too deeply", "source")
        except ValueError as exc:  # an integer of thousands of digits
            return Quarantined(f"line-{lineno}", seq, f"{where}: malformed JSON ({str(exc)[:80]})", "source")
        if not isinstance(event, dict) or not isinstance(event.get("item_id"), str) or not event["item_id"]:
            return Quarantined(f"line-{lineno}", seq, f"{where}: event has no item_id", "source")
        item_id = event["item_id"]
        if len(item_id) > MAX_ITEM_ID_CHARS or not item_id.isprintable():
            return Quarantined(f"line-{lineno}", seq, f"{where}: item_id is not a printable string of at most "
                                                      f"{MAX_ITEM_ID_CHARS} characters", "source")
        first = seen.setdefault(item_id, lineno)
        paths: list[str] = []
        try:
            t = _event_time(event, after)
            sample = Sample(item_id=item_id, seq=seq, ts=t)
            if "image" in event:
                path = resolve_payload(self.root, event["image"])
                paths.append(str(path))
                sample.frame = Frame(item_id, t, encoded=_read_payload(path, read_media), source=str(path))
            if "audio" in event:
                path = resolve_payload(self.root, event["audio"])
                paths.append(str(path))
                sample.audio = AudioClip(item_id, t, encoded=_read_payload(path, read_media), source=str(path))
            if "record" in event:
                path = resolve_payload(self.root, event["record"])
                paths.append(str(path))
                sample.record = parse_fhir(_read_payload(path), item_id, t, source=str(path))
            if "ct" in event:
                path = resolve_payload(self.root, event["ct"])
                paths.append(str(path))
                sample.ct = CTSeries(item_id, t, _series_files(path), source=str(path))
            if event.get("note"):
                sample.note = Note(item_id, t, str(event["note"]))
        except (OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, InputError) else str(exc)
            return Quarantined(item_id, seq, f"{where}: {reason}", "source", [p for p in paths if Path(p).is_file()])
        if first != lineno:
            return Quarantined(item_id, seq, f"{where}: duplicate item_id, first seen at line {first}", "source", paths)
        if all(p is None for p in (sample.frame, sample.audio, sample.ct, sample.record, sample.note)):
            return Quarantined(item_id, seq, f"{where}: event has no payload", "source")
        return sample


def _event_time(event: dict[str, Any], after: float) -> float:
    """The event's ``t`` (required): finite seconds in ``0..MAX_RECORDING_S``, not before ``after``."""
    if "t" not in event:
        raise ValueError("event has no time t")
    value = event["t"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("timestamp t is not a number")
    try:
        t = float(value)
    except OverflowError:
        t = math.inf
    if not math.isfinite(t):
        raise ValueError(f"timestamp {t} is not finite")
    if not 0.0 <= t <= MAX_RECORDING_S:
        raise ValueError(f"timestamp {t} s outside 0..{MAX_RECORDING_S:.0f} s (a recording spans at most a year)")
    if t < after:
        raise ValueError(f"timestamp {t} s goes backwards (the previous event played at {after} s)")
    return t


def _series_files(folder: Path) -> list[str]:
    """A ``ct`` payload's files: every file in the folder but hidden ones (decoded, and checked, by the replica)."""
    if not folder.is_dir():
        raise ValueError(f"CT series folder {folder.name} is missing" if not folder.exists()
                         else f"CT series {folder.name} is not a folder")
    files = sorted(str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"CT series folder {folder.name} is empty")
    return files


def _read_payload(path: Path, read: bool = True) -> bytes:
    """The payload's bytes; its size is checked before it is read. ``read=False``: checked as a readable file, not
    read (``b""``)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ValueError(f"payload {path.name} is missing") from None
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload {path.name} of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
    if not read:
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ValueError(f"payload {path.name} is not a readable file")
        return b""
    return path.read_bytes()
