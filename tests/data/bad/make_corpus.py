"""Write the bad-input corpus: small files every modality's parser must refuse with a clear reason.

Run from the repository root (deterministic: the same bytes every time)::

    .venv/bin/python tests/data/bad/make_corpus.py

The folder is itself a recording (``manifest.json`` + ``events.jsonl``): one event per image, audio and FHIR
file, plus events that are bad in themselves (malformed lines, missing payloads, paths escaping the folder).
DICOM files and series folders, and video files, are read by their own parsers. ``expected.json`` lists every
case with the item id its quarantine (or error) must carry and words its reason must contain; ``README.md`` is the
same table in prose.
Cases too large for a repository (payloads over the size limits) are made at test time as sparse files.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent
GENERATED = ("images", "audio", "fhir", "dicom", "video", "events.jsonl", "manifest.json", "expected.json",
             "README.md")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def wav_bytes(fmt: int, channels: int, rate: int, bits: int, data: bytes, announced: int | None = None) -> bytes:
    """A RIFF/WAVE file with any header values, true or not (``announced``: the data size the header claims)."""
    block = channels * bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, rate * block, block, bits)
    size = len(data) if announced is None else announced
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + b"data" + struct.pack("<I", size)
    return b"RIFF" + struct.pack("<I", len(body) + len(data)) + body + data


def texture(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def image_files() -> dict[str, bytes]:
    png = cv2.imencode(".png", texture(0))[1].tobytes()
    jpg = cv2.imencode(".jpg", texture(1), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    huge_png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
                + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
    sof = jpg.index(b"\xff\xc0")
    huge_jpg = jpg[: sof + 5] + struct.pack(">HH", 65_000, 65_000) + jpg[sof + 9 :]
    return {
        "good.png": png,
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(np.random.default_rng(2).integers(0, 256, 200, dtype=np.uint8)),
        "corrupt.jpg": jpg[:20] + bytes(np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8)),
        "truncated.png": png[: len(png) // 2],
        "zero-bytes.png": b"",
        "text.png": b"this is a text file, not an image\n" * 4,
        "huge-dims.png": huge_png,
        "huge-dims.jpg": huge_jpg,
        "tiny.png": cv2.imencode(".png", texture(4, 8, 8))[1].tobytes(),
    }


def audio_files() -> dict[str, bytes]:
    t = np.arange(8000) / 16000
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()
    floats = np.array([0.1, np.nan, np.inf, -0.2] * 200, dtype="<f4").tobytes()
    return {
        "good.wav": wav_bytes(1, 1, 16000, 16, pcm),
        "empty.wav": b"",
        "text.wav": b"operator remark: belt squeaks\n" * 10,
        "truncated.wav": wav_bytes(1, 1, 16000, 16, pcm)[: 44 + len(pcm) // 3],
        "float-nan.wav": wav_bytes(3, 1, 16000, 32, floats),
        "absurd-header.wav": wav_bytes(1, 60_000, 16000, 8, b"\0" * 64),
        "claims-2gib.wav": wav_bytes(1, 1, 16000, 16, b"\0" * 64, announced=2**31),
        "5hz.wav": wav_bytes(1, 1, 5, 16, pcm),
        "384khz.wav": wav_bytes(1, 1, 384_000, 16, pcm),
    }


def observation(value: str) -> str:
    return ('{"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": '
            f'"http://loinc.org", "code": "8867-4"}}]}}, "valueQuantity": {{"value": {value}, "unit": "/min"}}}}')


def record_bundle(birth_date: str = "1961-07-01", pack_years: str = "30", family: str = "Doe",
                  extra: str = "") -> bytes:
    """A case's FHIR Bundle as the medical line's contract writes it (pipelines/lines/medical), with the given
    JSON literals: a Patient, smoking status (former), pack-years and COPD; ``extra``: more entries."""
    subject = '"subject": {"reference": "urn:uuid:p1"}'
    return ('{"resourceType": "Bundle", "type": "collection", "timestamp": "2024-03-05T09:30:00Z", "entry": ['
            '{"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "gender": "female", '
            f'"birthDate": "{birth_date}", "name": [{{"family": "{family}", "given": ["Jane"]}}]}}}}, '
            '{"resource": {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": '
            '"http://loinc.org", "code": "72166-2"}]}, "valueCodeableConcept": {"coding": [{"system": '
            f'"http://snomed.info/sct", "code": "8517006"}}]}}, {subject}}}}}, '
            '{"resource": {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": '
            f'"http://loinc.org", "code": "8664-5"}}]}}, "valueQuantity": {{"value": {pack_years}, "unit": '
            f'"{{pack-years}}"}}, {subject}}}}}, '
            '{"resource": {"resourceType": "Condition", "code": {"coding": [{"system": "http://snomed.info/sct", '
            f'"code": "13645005"}}]}}, {subject}}}}}{extra}]}}').encode()


def fhir_files() -> dict[str, bytes]:
    return {
        "good.json": observation("72").encode(),
        "good-bundle.json": record_bundle(),
        "malformed.json": b'{"resourceType": "Patient", "id": ',
        "not-object.json": b'[{"resourceType": "Patient"}]',
        "wrong-type.json": b'{"resourceType": "Medication", "id": "m1"}',
        "nan.json": observation("NaN").encode(),
        "infinite.json": observation("1e999").encode(),
        "missing-status.json": b'{"resourceType": "Observation", "code": {"text": "heart rate"}}',
        "bad-bundle-entry.json": b'{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": '
                                 b'{"resourceType": "Patient", "name": "Doe"}}]}',
        "deep.json": b'{"resourceType": "Patient", "extension": ' + b"[" * 200 + b"]" * 200 + b"}",
        "not-utf8.json": b'{"resourceType": "Patient", "id": "\xff\xfe"}',
        "unknown-entry-type.json": b'{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": '
                                   b'{"resourceType": "Medicament"}}]}',
        "condition-without-subject.json": record_bundle(extra=', {"resource": {"resourceType": "Condition", '
                                                              '"code": {"text": "emphysema"}}}'),
        "bad-date.json": record_bundle(birth_date="1961-13-45"),
        "future-birth-date.json": record_bundle(birth_date="2999-01-01"),
        "born-after-study.json": record_bundle(birth_date="2024-06-01"),
        "age-over-120.json": record_bundle(birth_date="1890-01-01"),
        "negative-pack-years.json": record_bundle(pack_years="-5"),
        "absurd-pack-years.json": record_bundle(pack_years="5000"),
        "lone-surrogate.json": record_bundle(family="Do\\ud83de"),
        "two-patients.json": record_bundle(extra=', {"resource": {"resourceType": "Patient", "gender": "male"}}'),
    }


def dicom_files() -> dict[str, bytes]:
    src = Path(get_testdata_file("CT_small.dcm"))
    ct = src.read_bytes()

    def saved(ds) -> bytes:
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    def edited(edit) -> bytes:
        ds = pydicom.dcmread(src)
        edit(ds)
        return saved(ds)

    def small(ds) -> None:
        ds.PixelData = ds.pixel_array[::2, ::2].copy().tobytes()
        ds.Rows, ds.Columns = 64, 64
        ds.ImagePositionPatient = [-158.135803, -179.035797, -70.699997]

    def series(name: str, z_mm: list[float], edits: dict | None = None) -> dict[str, bytes]:
        """``name/NNNN.dcm``: 16x16 slices of CT_small.dcm at ``z_mm`` (one series), slice ``k`` changed by
        ``edits[k]``."""
        files = {}
        for k, z in enumerate(z_mm):
            ds = pydicom.dcmread(src)
            ds.PixelData = ds.pixel_array[::8, ::8].copy().tobytes()
            ds.Rows, ds.Columns, ds.PixelSpacing = 16, 16, [5.0, 5.0]
            ds.ImagePositionPatient = [-158.135803, -179.035797, z]
            ds.InstanceNumber = k + 1
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[name, str(k)])
            (edits or {}).get(k, lambda ds: None)(ds)
            files[f"{name}/{k:04d}.dcm"] = saved(ds)
        return files

    def other_study(ds) -> None:
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["another study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["another study", "series"])

    cut_pixels = lambda ds: setattr(ds, "PixelData", ds.PixelData[:256])  # noqa: E731
    damaged = bytearray(ct)
    damaged[400:700] = np.random.default_rng(5).integers(0, 256, 300, dtype=np.uint8).tobytes()
    return {
        "truncated.dcm": ct[: len(ct) * 6 // 10],
        "header-only.dcm": ct[:700],
        "not-dicom.dcm": b"DICM? no: a plain text file\n" * 8,
        "no-pixels.dcm": edited(lambda ds: ds.__delattr__("PixelData")),
        "huge-dims.dcm": edited(lambda ds: (setattr(ds, "Rows", 60000), setattr(ds, "Columns", 60000))),
        "mr.dcm": edited(lambda ds: setattr(ds, "Modality", "MR")),
        "damaged-header.dcm": bytes(damaged),
        "mismatched-series/slice-1.dcm": ct,
        "mismatched-series/slice-2.dcm": edited(small),
        **series("good-series", [-80.0, -75.0, -70.0]),
        **series("mixed-studies", [-80.0, -75.0, -70.0], {2: other_study}),
        **series("duplicate-positions", [-80.0, -75.0, -75.0]),
        **series("missing-slice", [-80.0, -75.0, -65.0, -60.0]),
        **series("mr-in-series", [-80.0, -75.0, -70.0], {1: lambda ds: setattr(ds, "Modality", "MR")}),
        **series("short-pixels-in-series", [-80.0, -75.0, -70.0], {1: cut_pixels}),
    }


def video_bytes(name: str, fourcc: str) -> bytes:
    """12 frames of 64x48 texture, as OpenCV's writer encodes them."""
    path = ROOT / "video" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (64, 48))
    for i in range(12):
        writer.write(texture(10 + i))
    writer.release()
    data = path.read_bytes()
    path.unlink()
    return data


def video_files() -> dict[str, bytes]:
    mp4, avi = video_bytes("full.mp4", "mp4v"), video_bytes("full.avi", "MJPG")
    return {
        "truncated.mp4": mp4[: len(mp4) // 2],  # the index (moov) is at the end: cut off
        "torn-last-frame.avi": avi[: avi.index(b"idx1") - 16],  # the index (idx1) follows the last frame
    }


# (event line, item id of the quarantined item, words the reason must contain, note for the README)
RAW_EVENTS = [
    ('{"t": 0.0, "item_id": "good-part", "image": "images/good.png", "audio": "audio/good.wav", '
     '"record": "fhir/good.json"}', "good-part", None, "control: a good frame, clip and Observation, decided"),
    ('{"t": 1.0, "item_id": "rec-malformed", "image": ', None, "malformed JSON", "event line cut off"),
    (b'{"t": 1.0, "item_id": "rec-\xff"}', None, "not UTF-8", "event line is not UTF-8"),
    ('{"t": 1.0, "image": "images/good.png"}', None, "has no item_id", "no item_id"),
    ('{"t": 1.0, "item_id": "rec-bell\\u0007", "image": "images/good.png"}', None, "not a printable string",
     "item_id with a control character"),
    ('{"t": 1.0, "item_id": "rec-no-payload"}', "rec-no-payload", "no payload", "no payload key"),
    ('{"t": "soon", "item_id": "rec-bad-time", "image": "images/good.png"}', "rec-bad-time", "not a number",
     "timestamp is a string"),
    ('{"t": NaN, "item_id": "rec-nan-time", "image": "images/good.png"}', "rec-nan-time", "not finite",
     "timestamp NaN"),
    ('{"t": 1.0, "item_id": "rec-missing", "image": "images/nowhere.png"}', "rec-missing", "missing",
     "payload file does not exist"),
    ('{"t": 1.0, "item_id": "rec-escape", "image": "../../etc/passwd"}', "rec-escape", "escapes the recording",
     "relative path escaping the folder"),
    ('{"t": 1.0, "item_id": "rec-absolute", "audio": "/etc/passwd"}', "rec-absolute", "not a relative path",
     "absolute path"),
    ('{"t": 1.0, "item_id": "rec-symlink", "image": "images/escape-link.png"}', "rec-symlink",
     "escapes the recording", "symlink inside the folder pointing outside it"),
    ('{"t": 1.0, "item_id": "..", "image": "images/corrupt.png"}', "..", "not a decodable image",
     "item_id `..` (must not steer the quarantine folder)"),
    ('{"item_id": "rec-no-time", "image": "images/good.png"}', "rec-no-time", "has no time", "no timestamp"),
    ('{"t": -1.5, "item_id": "rec-negative-time", "image": "images/good.png"}', "rec-negative-time",
     "outside 0..31536000 s", "timestamp negative"),
    ('{"t": 1e300, "item_id": "rec-huge-time", "image": "images/good.png"}', "rec-huge-time",
     "outside 0..31536000 s", "timestamp 1e300 (a replay at recorded speed ended in OverflowError)"),
    ('{"t": 0.5, "item_id": "rec-backwards-time", "image": "images/good.png"}', "rec-backwards-time",
     "goes backwards", "timestamp 0.5 after an event played at 1.0"),
    ('{"t": 1.0, "item_id": "good-part", "image": "images/good.png"}', "good-part",
     "duplicate item_id, first seen at line 1", "a second event under line 1's item_id"),
]

PAYLOAD_REASONS = {  # file: (words the reason must contain, what is wrong with it)
    "images/corrupt.png": ("not a decodable image", "PNG signature, then random bytes"),
    "images/corrupt.jpg": ("not a decodable image", "JPEG header, then random bytes"),
    "images/truncated.png": ("not a decodable image", "a PNG cut in half"),
    "images/zero-bytes.png": ("no image data", "0 bytes"),
    "images/text.png": ("neither PNG nor JPEG", "a text file named .png"),
    "images/huge-dims.png": ("frame size 100000x100000 outside", "IHDR claims 100000x100000 (refused before "
                                                                 "decoding)"),
    "images/huge-dims.jpg": ("frame size 65000x65000 outside", "SOF claims 65000x65000 (refused before decoding)"),
    "images/tiny.png": ("frame size 8x8 outside", "a valid 8x8 PNG, below the 16-pixel minimum"),
    "audio/empty.wav": ("empty (0 bytes)", "0 bytes"),
    "audio/text.wav": ("not decodable", "a text file named .wav"),
    "audio/truncated.wav": ("WAV truncated", "a PCM WAV cut inside its samples"),
    "audio/float-nan.wav": ("NaN or Inf", "IEEE-float WAV holding NaN and Inf samples"),
    "audio/absurd-header.wav": ("60000 channels", "header claims 60000 channels"),
    "audio/claims-2gib.wav": ("WAV truncated", "header claims a 2 GiB data chunk, holds 64 bytes"),
    "audio/5hz.wav": ("sample rate 5 Hz outside 4000..192000 Hz", "header claims 5 samples a second"),
    "audio/384khz.wav": ("sample rate 384000 Hz outside 4000..192000 Hz", "header claims 384 kHz"),
    "fhir/malformed.json": ("malformed JSON", "JSON cut off"),
    "fhir/not-object.json": ("not an object", "a JSON array"),
    "fhir/wrong-type.json": ("resourceType 'Medication' is not one of", "a Medication resource"),
    "fhir/nan.json": ("NaN is not a valid JSON number", "Observation value NaN"),
    "fhir/infinite.json": ("overflows a float", "Observation value 1e999"),
    "fhir/missing-status.json": ("not valid FHIR R4: Observation.status is required", "Observation without status"),
    "fhir/bad-bundle-entry.json": ("Bundle.entry[0].resource.name should be an array",
                                   "a Bundle entry's Patient with a name that is a string"),
    "fhir/deep.json": ("nested deeper than 64", "arrays nested 200 deep"),
    "fhir/not-utf8.json": ("not UTF-8", "invalid UTF-8 bytes"),
    "fhir/unknown-entry-type.json": ("Bundle.entry[0].resource.resourceType is not a FHIR R4 resource type",
                                     "a Bundle entry of a type FHIR does not have"),
    "fhir/condition-without-subject.json": ("Bundle.entry[4].resource.subject is required",
                                            "a case's Bundle with a Condition that names no patient"),
    "fhir/bad-date.json": ("Bundle.entry[0].resource.birthDate is not a valid FHIR Date", "birth date 1961-13-45"),
    "fhir/future-birth-date.json": ("Bundle.entry[0].resource.birthDate is in the future", "born in 2999"),
    "fhir/born-after-study.json": ("Bundle.entry[0].resource.birthDate is after the study date",
                                   "born three months after the study (Bundle.timestamp)"),
    "fhir/age-over-120.json": ("birthDate gives an age over 120 years", "born in 1890, scanned in 2024"),
    "fhir/negative-pack-years.json": ("Bundle.entry[2].resource.valueQuantity.value: negative pack-years",
                                      "-5 pack-years"),
    "fhir/absurd-pack-years.json": ("more than 200 pack-years", "5000 pack-years"),
    "fhir/lone-surrogate.json": ("Bundle.entry[0].resource.name[0].family is not valid Unicode",
                                 "a family name holding a lone UTF-16 surrogate (escaped \\ud83d)"),
    "fhir/two-patients.json": ("2 Patient resources", "a Bundle with a second Patient"),
}

PARSER_REASONS = {  # files read by their own parser, not replayed: (words the reason must contain, what)
    "dicom/truncated.dcm": ("pixel data truncated", "CT_small.dcm cut at 60 %"),
    "dicom/header-only.dcm": ("no pixel data", "CT_small.dcm cut inside its header: the elements before the cut read"),
    "dicom/not-dicom.dcm": ("not a DICOM file", "a text file named .dcm"),
    "dicom/no-pixels.dcm": ("no pixel data", "CT_small.dcm without PixelData"),
    "dicom/huge-dims.dcm": ("slice size 60000x60000 outside", "header claims 60000x60000 (refused before "
                                                             "decoding)"),
    "dicom/mr.dcm": ("not a CT image (Modality MR)", "Modality MR"),
    "dicom/damaged-header.dcm": ("damaged or truncated DICOM", "CT_small.dcm with 300 random bytes in its header"),
    "dicom/mismatched-series": ("slice-2.dcm is 64x64, slice-1.dcm is 128x128", "two slices of different sizes"),
    "dicom/mixed-studies": ("the series mixes studies: 0002.dcm belongs to another study",
                            "three slices, the third from another study (and series)"),
    "dicom/duplicate-positions": ("0001.dcm and 0002.dcm are at the same position",
                                  "two of three slices at one position"),
    "dicom/missing-slice": ("1 slice(s) missing between 0001.dcm and 0002.dcm",
                            "four slices 5 mm apart, one 10 mm gap"),
    "dicom/mr-in-series": ("0001.dcm: not a CT image (Modality MR)", "an MR slice among CT slices"),
    "dicom/short-pixels-in-series": ("0001.dcm: pixel data truncated (256 of 512 bytes)",
                                     "a slice whose Pixel Data holds half its pixels"),
    "video/truncated.mp4": ("not a readable video", "an MP4 cut in half (its index is gone)"),
    "video/torn-last-frame.avi": ("reading failed at frame 11 of 12 announced", "an AVI cut 16 bytes before the end "
                                  "of its last frame: the 11 whole frames are read, the torn one is not"),
}


def item_id_for(rel: str) -> str:
    return rel.replace("/", "-").replace(".", "-")


def main() -> None:
    for name in GENERATED:
        target = ROOT / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    files = {f"images/{k}": v for k, v in image_files().items()}
    files |= {f"audio/{k}": v for k, v in audio_files().items()}
    files |= {f"fhir/{k}": v for k, v in fhir_files().items()}
    files |= {f"dicom/{k}": v for k, v in dicom_files().items()}
    files |= {f"video/{k}": v for k, v in video_files().items()}
    for rel, data in files.items():
        (ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / rel).write_bytes(data)
    os.symlink("../" * 12 + "etc/passwd", ROOT / "images" / "escape-link.png")

    key = {"images": "image", "audio": "audio", "fhir": "record"}
    lines: list[bytes] = []
    expected = []
    for raw, item_id, words, what in RAW_EVENTS:
        lines.append(raw if isinstance(raw, bytes) else raw.encode())
        expected.append({"case": f"events.jsonl line {len(lines)}", "item_id": item_id or f"line-{len(lines)}",
                         "reason": words, "what": what, "via": "replay"})
    for rel, (words, what) in PAYLOAD_REASONS.items():
        item_id = item_id_for(rel)
        event = {"t": 1.0, "item_id": item_id, key[rel.split("/")[0]]: rel}
        lines.append(json.dumps(event).encode())
        expected.append({"case": rel, "item_id": item_id, "reason": words, "what": what, "via": "replay"})
    for rel, (words, what) in PARSER_REASONS.items():
        expected.append({"case": rel, "item_id": item_id_for(rel), "reason": words, "what": what,
                         "via": rel.split("/")[0]})
    (ROOT / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    manifest = {"format": "fusionline.recording", "version": 1, "line": "factory", "count": len(lines),
                "fps": 10.0, "modalities": ["image", "audio", "record"], "classes": {},
                "generator": {"name": "tests/data/bad/make_corpus.py"}, "created": "2025-01-01T00:00:00Z"}
    (ROOT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (ROOT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    write_readme(expected)


def write_readme(expected: list[dict]) -> None:
    rows = "\n".join(f"| `{e['case']}` | {e['what']} | `{e['item_id']}` | "
                     f"{'decided (control case)' if e['reason'] is None else '`' + e['reason'] + '`'} |"
                     for e in expected)
    (ROOT / "README.md").write_text(f"""# Bad-input corpus

Inputs every parser must refuse with an error naming the item and the reason (`InputError`, or a `Quarantined`
item in the audit store with its payload copied aside), while the process goes on. Generated by
`make_corpus.py` (deterministic; run it from the repository root to rewrite every file below), checked by
`tests/unit/test_bad_inputs.py`. `expected.json` holds this table for the tests.

The folder is itself a recording: `manifest.json` and `events.jsonl` replay the event lines that are bad in
themselves (after a good control line), then one event per image, audio and FHIR file (FHIR is parsed, and
refused, by the replayer). DICOM files and series folders (one file per slice) go through
`connectors.dicom.read_ct_series`, the videos through `connectors.camera.CameraSource`. The tests also replay a
medical recording they assemble from these files (`ct/<item_id>/` folders and `records/`): the bad FHIR records
are quarantined by the replayer, the bad series by `CTSeries.decode()`, and the controls `dicom/good-series/` and
`fhir/good-bundle.json` decode. Files over the size limits (a 300 MB frame, a 9 MB FHIR record) are made by the
tests as sparse files, not stored here.

| case | what is wrong | item id | reason contains |
|---|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
