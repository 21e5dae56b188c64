"""An item uploaded over HTTP: its payloads as named parts, named as a recording's events name them.

``image`` (PNG or JPEG), ``audio`` (WAV), ``ct`` (a series' DICOM files, one per slice), ``record`` (FHIR R4 JSON)
and ``note`` (free text) become the :class:`~connectors.records.Sample` a replayed event would give: payloads still
encoded (the model replica decodes them), the record parsed and checked here as the replayer does. A CT series is
written to a spool folder, since a series is read from files. Uploaded payloads have no source path: the caller
keeps them, so a decision's provenance names none.

Example:
    >>> sample = upload_sample("part-7", {"image": png_bytes, "audio": wav_bytes}, spool=Path("/tmp/spool"))
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from connectors.fhir import MAX_BYTES as MAX_RECORD_BYTES
from connectors.fhir import parse_fhir
from connectors.recording import MAX_ITEM_ID_CHARS, MAX_PAYLOAD_BYTES
from connectors.records import AudioClip, CTSeries, Frame, InputError, Note, Sample

MAX_NOTE_CHARS = 64 * 1024  # a clinical note or an operator's remark, not a document


@dataclass(frozen=True)
class Part:
    """One part of an upload.

    Attributes:
        description: what it holds (the HTTP API's description of the field).
        media_types: what its files may be; empty for a text field.
        many: several files (a series' slices) rather than one.
        max_bytes: the largest file accepted (characters for a text field); a larger one is refused unread.
    """

    description: str
    media_types: tuple[str, ...] = ()
    many: bool = False
    max_bytes: int = MAX_PAYLOAD_BYTES

    @property
    def is_file(self) -> bool:
        return bool(self.media_types)


#: The parts an upload may have, by the recording format's event keys.
PARTS: dict[str, Part] = {
    "image": Part("the item's camera frame, PNG or JPEG", ("image/png", "image/jpeg")),
    "audio": Part("the item's sound, WAV (PCM)", ("audio/wav",)),
    "ct": Part("the item's CT series, one DICOM file per slice", ("application/dicom",), many=True),
    "record": Part("the item's clinical record, FHIR R4 JSON (a Bundle)", ("application/fhir+json", "application/json"),
                   max_bytes=MAX_RECORD_BYTES),
    "note": Part("a free-text note about the item", max_bytes=MAX_NOTE_CHARS),
}

@dataclass(frozen=True)
class File:
    """An uploaded file: the caller's name for it (may be empty) and its bytes."""

    name: str
    data: bytes


#: An upload's parts by name: a :class:`File`, text for a text field, or a list of them (several files only for a
#: part of many files).
Upload = Mapping[str, File | str | Sequence[File | str]]


def check_item_id(item_id: str) -> str:
    """``item_id`` when it is a printable string of 1..``MAX_ITEM_ID_CHARS`` characters, else :class:`InputError`."""
    if not item_id or len(item_id) > MAX_ITEM_ID_CHARS or not item_id.isprintable():
        raise InputError(repr(item_id[:40]), f"item_id is not a printable string of 1..{MAX_ITEM_ID_CHARS} characters")
    return item_id


def check_size(item_id: str, name: str, size: int) -> None:
    """:class:`InputError` when part ``name`` of ``size`` bytes (characters for text) is over its limit."""
    limit = PARTS[name].max_bytes
    if size > limit:
        raise InputError(item_id, f"{name}: {size} bytes exceeds the {limit}-byte limit")


def upload_sample(item_id: str, parts: Upload, spool: Path, ts: float | None = None) -> Sample:
    """The :class:`Sample` of an uploaded item (``seq`` 0: an upload is a stream of one).

    Args:
        item_id: the caller's id for the item (see :func:`check_item_id`).
        parts: the payloads by :data:`PARTS` name (:data:`Upload`): a :class:`File`, text for ``note``, the files of
            ``ct``.
        spool: an empty folder for the files of a ``ct`` part, written under the caller's file names (so a reason
            names the caller's file); the caller removes it once the item is answered.
        ts: the item's time, seconds since the epoch (None: now).

    Raises:
        InputError: naming the item and the reason: a bad item id, a part :data:`PARTS` does not know, a part of the
            wrong kind or over its limit, two files of a series with one name, a FHIR record that fails its checks.
    """
    check_item_id(item_id)
    ts = time.time() if ts is None else ts
    sample = Sample(item_id, 0, ts)
    for name, value in parts.items():
        part = PARTS.get(name)
        if part is None:
            raise InputError(item_id, f"unknown part {name!r}; an upload's parts are {', '.join(PARTS)}")
        values = [value] if isinstance(value, (File, str)) else list(value)
        if not values or (len(values) > 1 and not part.many):
            raise InputError(item_id, f"{name}: {len(values)} given, one expected")
        if not all(isinstance(v, File if part.is_file else str) for v in values):
            raise InputError(item_id, f"{name}: {'a file' if part.is_file else 'text'} expected")
        for v in values:
            check_size(item_id, name, len(v.data) if isinstance(v, File) else len(v))
        first = values[0]
        if name == "image":
            sample.frame = Frame(item_id, ts, encoded=first.data)
        elif name == "audio":
            sample.audio = AudioClip(item_id, ts, encoded=first.data)
        elif name == "record":
            sample.record = parse_fhir(first.data, item_id, ts)
        elif name == "note":
            sample.note = Note(item_id, ts, first)
        else:
            sample.ct = CTSeries(item_id, ts, _spooled(item_id, name, values, spool))
    return sample


def _spooled(item_id: str, name: str, files: Sequence[File], spool: Path) -> list[str]:
    """Write ``files`` into ``spool`` under the caller's base names (``NNNNN.dcm`` for a file without one)."""
    paths = []
    for index, file in enumerate(files):
        path = spool / (Path(file.name).name or f"{index:05d}.dcm")
        if path.exists():
            raise InputError(item_id, f"{name}: two files named {path.name}")
        path.write_bytes(file.data)
        paths.append(str(path))
    return paths
