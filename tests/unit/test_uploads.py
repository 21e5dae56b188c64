"""Uploaded parts become the Sample a replayed event gives; a bad upload is refused naming the item and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.recording import MAX_PAYLOAD_BYTES, Replayer
from connectors.records import InputError, Sample
from connectors.uploads import PARTS, File, check_size, upload_sample

FACTORY_MINI = Path(__file__).resolve().parents[1] / "data" / "recordings" / "factory-mini"


@pytest.fixture(scope="module")
def replayed() -> Sample:
    return next(iter(Replayer(FACTORY_MINI)))  # type: ignore[return-value]


def test_an_upload_gives_the_replayed_events_sample(replayed: Sample, tmp_path: Path) -> None:
    sample = upload_sample(replayed.item_id, {"image": File("a.jpg", replayed.frame.encoded),
                                              "audio": [File("a.wav", replayed.audio.encoded)],
                                              "note": "operator: scuff on the left edge"}, tmp_path)
    assert sample.digest() != replayed.digest()  # the note is part of the input's identity
    sample.note = None
    assert sample.digest() == replayed.digest() and sample.item_id == replayed.item_id and sample.seq == 0
    assert sample.frame.source == sample.audio.source == ""  # the caller keeps the payloads, none is on our disk
    assert list(tmp_path.iterdir()) == []


def test_a_series_is_spooled_under_the_callers_file_names(tmp_path: Path) -> None:
    sample = upload_sample("case-1", {"ct": [File("dir/IM-0001.dcm", b"one"), File("", b"two")]}, tmp_path)
    assert sample.ct.files == [str(tmp_path / "IM-0001.dcm"), str(tmp_path / "00001.dcm")]
    assert (tmp_path / "00001.dcm").read_bytes() == b"two"
    (spool := tmp_path / "second").mkdir()
    with pytest.raises(InputError, match="^case-2: ct: two files named IM-0001.dcm$"):
        upload_sample("case-2", {"ct": [File("a/IM-0001.dcm", b"1"), File("b/IM-0001.dcm", b"2")]}, spool)


@pytest.mark.parametrize(("item_id", "parts", "reason"), [
    ("p-1", {"sound": File("a.wav", b"RIFF")},
     "unknown part 'sound'; an upload's parts are image, audio, ct, record, note"),
    ("p-1", {"image": [File("a.png", b"1"), File("b.png", b"2")]}, "image: 2 given, one expected"),
    ("p-1", {"image": "a file name, not a file"}, "image: a file expected"),
    ("p-1", {"note": File("note.txt", b"hello")}, "note: text expected"),
    ("p-1", {"note": "x" * (PARTS["note"].max_bytes + 1)}, "note: 65537 bytes exceeds the 65536-byte limit"),
    ("p-1", {"record": File("r.json", b"[1, 2]")}, "FHIR record: top level is a JSON array, not an object"),
    ("bad\nid", {"image": File("a.png", b"1")}, "item_id is not a printable string of 1..256 characters"),
])
def test_a_bad_upload_is_refused_naming_the_item_and_the_reason(item_id: str, parts: dict, reason: str,
                                                               tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        upload_sample(item_id, parts, tmp_path)
    assert exc.value.reason == reason
    assert exc.value.item_id == (item_id if item_id.isprintable() else repr(item_id))


def test_a_file_over_its_limit_is_refused_before_it_is_read() -> None:
    check_size("p-1", "image", MAX_PAYLOAD_BYTES)
    with pytest.raises(InputError, match=f"^p-1: image: {MAX_PAYLOAD_BYTES + 1} bytes exceeds the "):
        check_size("p-1", "image", MAX_PAYLOAD_BYTES + 1)
