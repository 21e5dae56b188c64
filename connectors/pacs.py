"""The PACS: Debian's Orthanc as a subprocess, a client (C-STORE with pynetdicom, REST with urllib), the line's
source of new CT studies and its sink for findings (DICOM SR + SEG back into the study, a FHIR report on disk).

Example:
    >>> with OrthancServer() as orthanc:
    ...     client = orthanc.client()
    ...     client.store_recording("data/medical-demo")                        # C-STORE, as a scanner would
    ...     ehr = RecordingEHR("data/medical-demo")
    ...     for sample in PacsSource(client, "runs/pacs-spool", ehr=ehr, limit=1, idle_s=5):
    ...         print(sample.item_id, len(sample.ct.files))                    # case-3f1c9a0b7d2e4c51 120
    ...     with PacsWriter(client, "runs/fhir-reports") as writer:
    ...         writer.send(decision)                                          # SR + SEG stored, FHIR written
    'ok'

Studies are named by pseudonyms (:func:`connectors.privacy.pseudonym` of the StudyInstanceUID under the site's
key), never by patient ids, accession numbers or UIDs, in logs, errors and file names. An Orthanc that cannot be
reached raises :class:`~connectors.sinks.ControllerUnavailable` naming ``host:port``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from connectors.dicom_reports import MANUFACTURER, NoduleFinding, ReportError, nodule_seg, nodule_sr, read_headers
from connectors.fhir import read_fhir
from connectors.mqtt import free_port
from connectors.privacy import load_key, pseudonym
from connectors.recording import resolve_payload
from connectors.records import ClinicalRecord, CTSeries, Decision, InputError, Note, Quarantined, Sample
from connectors.sinks import ControllerUnavailable, DecisionSink

log = logging.getLogger("fusionline.pacs")

ORTHANC_EXECUTABLE = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"  # `dpkg -L orthanc-dicomweb`
OUR_AE_TITLE = "FUSIONLINE"
UNUSED_PEER_PORT = 104  # Orthanc wants a port for our modality entry; it never connects to us (no C-MOVE)
STATUS_SUCCESS = 0x0000
CHANGES_PAGE = 100
# Orthanc's resource ids are SHA-1 hashes of patient id and UIDs, without a key: kept out of messages
ORTHANC_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")


class OrthancError(RuntimeError):
    """Orthanc answered a request with an HTTP error (e.g. 404: the study was deleted meanwhile)."""


class _Addresses:
    """``host:port`` of an Orthanc's REST API and of its DICOM port, for messages and ids."""

    host: str
    http_port: int
    dicom_port: int

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def dicom_address(self) -> str:
        return f"{self.host}:{self.dicom_port}"


class OrthancServer(_Addresses):
    """A real Orthanc (Debian's ``/usr/sbin/Orthanc``) on loopback, as a subprocess, for tests and the demo.

    Its JSON configuration (``orthanc.json`` in ``folder``; storage in ``folder/storage``) sets the DICOM port and
    AE title, the HTTP port (``0``: free ones are picked), the DICOMweb plugin at ``/dicom-web/`` when it is
    installed, a modality entry for ``peer_ae_title`` on ``host`` and C-STOREs only from it, REST without
    authentication and from loopback only (``RemoteAccessAllowed`` false), no overwriting of stored instances, and
    ``StableAge`` (seconds without new instances before a study is stable: Orthanc's default is 60).
    ``start`` returns once ``/system`` answers. Without ``folder`` a temporary one is used and removed by
    ``stop``; with one, the stored studies stay there for the next start.

    Example:
        >>> with OrthancServer() as orthanc:
        ...     print(orthanc.http_address, orthanc.dicom_address)
        127.0.0.1:41237 127.0.0.1:40811
    """

    def __init__(self, folder: str | Path | None = None, http_port: int = 0, dicom_port: int = 0,
                 ae_title: str = "ORTHANC", peer_ae_title: str = OUR_AE_TITLE, host: str = "127.0.0.1",
                 stable_age_s: int = 2, executable: str = ORTHANC_EXECUTABLE):
        self.folder = Path(folder) if folder is not None else None
        self.http_port, self.dicom_port = http_port, dicom_port
        self.ae_title, self.peer_ae_title = ae_title, peer_ae_title
        self.host = host
        self.stable_age_s = stable_age_s
        self.executable = executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def client(self, timeout_s: float = 10.0) -> PacsClient:
        """A client for this server, calling it from ``peer_ae_title``."""
        return PacsClient(self.host, self.dicom_port, self.http_port, self.peer_ae_title, self.ae_title, timeout_s)

    def config(self, storage: Path) -> dict[str, Any]:
        """The Orthanc configuration this server runs with."""
        cfg: dict[str, Any] = {
            "Name": "fusionline",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"fusionline": [self.peer_ae_title, self.host, UNUSED_PEER_PORT]},
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "OverwriteInstances": False,
            "StableAge": self.stable_age_s,
            "SaveJobs": False,
            "HttpDescribeErrors": True,
        }
        if Path(DICOMWEB_PLUGIN).exists():
            cfg["Plugins"] = [DICOMWEB_PLUGIN]
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"}
        return cfg

    def start(self, timeout_s: float = 10.0, attempts: int = 3) -> OrthancServer:
        """Start Orthanc; retries on other free ports when the picked ones were taken meanwhile."""
        if self._proc is not None:
            raise RuntimeError(f"Orthanc on {self.http_address} is already running")
        if not os.access(self.executable, os.X_OK):
            raise FileNotFoundError(f"Orthanc not found ({self.executable}); install it: apt-get install orthanc "
                                    "orthanc-dicomweb")
        if self.folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fusionline-orthanc-")
        folder = self.folder or Path(self._tmp.name)  # type: ignore[union-attr]
        (folder / "storage").mkdir(parents=True, exist_ok=True)
        fixed = self.http_port != 0 and self.dicom_port != 0
        wanted = (self.http_port, self.dicom_port)
        for attempt in range(1, attempts + 1):
            self.http_port, self.dicom_port = (wanted[0] or free_port(self.host), wanted[1] or free_port(self.host))
            try:
                self._launch(folder, timeout_s)
                break
            except OSError as exc:
                if fixed or attempt == attempts:
                    self.stop()
                    raise
                log.warning("orthanc start failed attempt=%d reason=%s", attempt, exc)
        log.info("orthanc listening http=%s dicom=%s aet=%s", self.http_address, self.dicom_address, self.ae_title)
        return self

    def _launch(self, folder: Path, timeout_s: float) -> None:
        conf = folder / "orthanc.json"
        conf.write_text(json.dumps(self.config(folder / "storage"), indent=2) + "\n")
        log_path = folder / "orthanc.log"
        env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK's switch for Nagle's algorithm: off, as on our side
        with log_path.open("wb") as log_file:
            self._proc = subprocess.Popen([self.executable, str(conf)], stdout=log_file, stderr=subprocess.STDOUT,
                                          env=env)
        probe = PacsClient(self.host, self.dicom_port, self.http_port, timeout_s=0.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (rc := self._proc.poll()) is not None:
                self._proc = None
                errors = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.startswith("E")]
                raise OSError(f"Orthanc on {self.http_address} exited with code {rc}: {' | '.join(errors[-3:])}")
            try:
                probe.system()
                socket.create_connection((self.host, self.dicom_port), timeout=0.2).close()
                return
            except (ControllerUnavailable, OrthancError, OSError):
                time.sleep(0.05)
        self._kill()
        raise TimeoutError(f"Orthanc on {self.http_address} did not answer within {timeout_s} s")

    def stop(self) -> None:
        """Stop Orthanc: a clean shutdown (2-4 s) when its storage stays in ``folder``, killed at once when its
        temporary folder goes with it; the temporary folder is removed."""
        if self._proc is not None:
            self._kill()
            log.info("orthanc stopped http=%s", self.http_address)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _kill(self) -> None:
        assert self._proc is not None
        if self._tmp is not None:
            self._proc.kill()
        else:
            self._proc.terminate()
        try:
            self._proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PacsClient(_Addresses):
    """Talks to one Orthanc: C-STORE over DICOM (pynetdicom), everything else over its REST API (urllib).

    Args:
        host, dicom_port, http_port: where Orthanc listens (DICOM, REST).
        ae_title: our calling AE title (Orthanc must know it as a modality to accept C-STOREs).
        called_ae_title: Orthanc's AE title.
        timeout_s: connect, association and request timeout.

    A refused connection or a timeout raises :class:`ControllerUnavailable` naming ``host:port``; an HTTP error
    answer raises :class:`OrthancError` naming the request.
    """

    def __init__(self, host: str = "127.0.0.1", dicom_port: int = 4242, http_port: int = 8042,
                 ae_title: str = OUR_AE_TITLE, called_ae_title: str = "ORTHANC", timeout_s: float = 10.0):
        self.host, self.http_port, self.dicom_port = host, http_port, dicom_port
        self.ae_title, self.called_ae_title = ae_title, called_ae_title
        self.timeout_s = timeout_s

    def request(self, path: str, data: bytes | None = None) -> bytes:
        """GET ``path`` (POST ``data`` when given) and return the body."""
        method = "GET" if data is None else "POST"
        req = urllib.request.Request(f"http://{self.http_address}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as answer:
                return answer.read()
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"Orthanc at {self.http_address} answered {exc.code} to {method} "
                               f"{ORTHANC_ID.sub('<id>', path.split('?')[0])}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ControllerUnavailable(f"Orthanc at {self.http_address} is unreachable: {reason}") from None

    def get(self, path: str) -> Any:
        """GET ``path``, parsed as JSON."""
        return json.loads(self.request(path))

    def system(self) -> dict[str, Any]:
        """Orthanc's ``/system`` (name, version, AE title, ports): a cheap check that it answers."""
        return self.get("/system")

    def changes(self, since: int = 0, limit: int = CHANGES_PAGE) -> dict[str, Any]:
        """``/changes``: ``{"Changes": [{"Seq", "ChangeType", "ResourceType", "ID", ...}], "Done", "Last"}``."""
        return self.get(f"/changes?since={int(since)}&limit={int(limit)}")

    def last_change(self) -> int:
        """The sequence number of Orthanc's latest change: a checkpoint from which only what comes next is read."""
        return int(self.get("/changes?last")["Last"])

    def lookup(self, uid: str) -> list[dict[str, Any]]:
        """Orthanc resources (``{"ID", "Type", "Path"}``) whose DICOM UID is ``uid``; empty when none."""
        return json.loads(self.request("/tools/lookup", uid.encode()))

    def has_instance(self, sop_instance_uid: str) -> bool:
        return any(found["Type"] == "Instance" for found in self.lookup(sop_instance_uid))

    def download_series(self, series_id: str, folder: str | Path) -> list[Path]:
        """The series' instances (Orthanc id ``series_id``) as ``folder/NNNN.dcm``, the folder emptied first."""
        folder = Path(folder)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        paths = []
        for k, instance_id in enumerate(self.get(f"/series/{series_id}")["Instances"]):
            path = folder / f"{k:04d}.dcm"
            path.write_bytes(self.request(f"/instances/{instance_id}/file"))
            paths.append(path)
        return paths

    def store(self, items: Iterable[Dataset | bytes | str | Path]) -> list[int]:
        """C-STORE each dataset (or DICOM file, or file bytes) in one association; their statuses, in order
        (``0x0000`` success, ``0xB...`` stored with a warning, anything else refused).

        Presentation contexts are proposed per SOP class found (CT Image, Comprehensive 3D SR, Segmentation, ...),
        each with the dataset's own transfer syntax and the uncompressed little-endian ones.
        """
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, build_context

        datasets = [_as_dataset(item) for item in items]
        if not datasets:
            return []
        syntaxes: dict[str, list[str]] = {}
        for ds in datasets:
            meta = getattr(ds, "file_meta", None)
            own = meta.get("TransferSyntaxUID") if meta is not None else None
            wanted = syntaxes.setdefault(ds.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            if own and own not in wanted:
                wanted.insert(0, own)
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = self.timeout_s
        contexts = [build_context(sop_class, ts) for sop_class, ts in syntaxes.items()]
        assoc = ae.associate(self.host, self.dicom_port, contexts=contexts, ae_title=self.called_ae_title)
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "is unreachable (no association)"
            raise ControllerUnavailable(f"Orthanc DICOM at {self.dicom_address} {why} (calling AE {self.ae_title})")
        # pynetdicom writes a C-STORE's command and dataset separately: with Nagle's algorithm on, the dataset
        # waits for the peer's delayed ACK of the command (~40 ms an instance), so switch it off
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        statuses = []
        try:
            for ds in datasets:
                answer = assoc.send_c_store(ds)
                if "Status" not in answer:
                    raise ControllerUnavailable(f"Orthanc DICOM at {self.dicom_address} gave no C-STORE answer")
                statuses.append(int(answer.Status))
        finally:
            assoc.release()
        return statuses

    def store_recording(self, recording_dir: str | Path) -> int:
        """C-STORE every CT file of a recording (``ct/<case>/*``), one association per case, as a scanner sends its
        studies; the number of instances stored. :class:`OrthancError` naming the case when one is refused."""
        root = Path(recording_dir)
        stored = 0
        for case in sorted(p for p in (root / "ct").iterdir() if p.is_dir()):
            files = sorted(p for p in case.iterdir() if p.is_file() and not p.name.startswith("."))
            refused = [status for status in self.store(files) if not stored_ok(status)]
            if refused:
                raise OrthancError(f"Orthanc DICOM at {self.dicom_address} refused {len(refused)} of {len(files)} "
                                   f"files of {case.name} (status 0x{refused[0]:04X})")
            stored += len(files)
        return stored


def stored_ok(status: int) -> bool:
    """Whether a C-STORE status means stored: success (0x0000) or a warning (0xB000..0xBFFF)."""
    return status == STATUS_SUCCESS or 0xB000 <= status <= 0xBFFF


def _as_dataset(item: Dataset | bytes | str | Path) -> Dataset:
    if isinstance(item, Dataset):
        return item
    return pydicom.dcmread(io.BytesIO(item) if isinstance(item, bytes) else item)


class EHR(Protocol):
    """Where a study's clinical record and note come from (an EHR interface, or a recording standing in)."""

    def lookup(self, study_uid: str, item_id: str) -> tuple[ClinicalRecord | None, Note | None]:
        """The record and note of the study (None for what is not known), named ``item_id``; :class:`InputError`
        when they are unusable."""
        ...


class RecordingEHR:
    """A recording's records and notes (``records/<case>.json``, the event's ``note``) by StudyInstanceUID, read
    from the first file of each case's ``ct/<case>/`` folder: stands in for the hospital's EHR. Events without a
    usable ``ct`` folder are left out (the recording's replayer quarantines them)."""

    def __init__(self, recording_dir: str | Path):
        self.root = Path(recording_dir)
        self._cases: dict[str, _Case] = {}
        for lineno, line in enumerate((self.root / "events.jsonl").read_text().splitlines(), start=1):
            try:
                event = json.loads(line)
                study_uid = _first_study_uid(resolve_payload(self.root, event["ct"]))
                record = resolve_payload(self.root, event["record"]) if event.get("record") else None
                self._cases[study_uid] = _Case(str(event["item_id"]), record, event.get("note"))
            except (ValueError, KeyError, TypeError, OSError, InvalidDicomError) as exc:
                log.warning("ehr recording=%s events.jsonl line %d left out: %s", self.root.name, lineno,
                            type(exc).__name__)

    def __len__(self) -> int:
        return len(self._cases)

    def lookup(self, study_uid: str, item_id: str) -> tuple[ClinicalRecord | None, Note | None]:
        case = self._cases.get(study_uid)
        if case is None:
            return None, None
        ts = time.time()
        record = read_fhir(case.record, item_id, ts) if case.record is not None else None
        return record, Note(item_id, ts, case.note) if case.note else None

    def item_ids(self, key: bytes) -> dict[str, str]:
        """The recording's case id of each item id :class:`PacsSource` gives its studies under ``key``."""
        return {pseudonym(study_uid, key): case.case_id for study_uid, case in self._cases.items()}


@dataclass(frozen=True)
class _Case:
    case_id: str
    record: Path | None
    note: str | None


def _first_study_uid(folder: Path) -> str:
    """The StudyInstanceUID in the header of the folder's first file; ValueError when there is none."""
    first = min((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), default=None)
    if first is None:
        raise ValueError(f"CT folder {folder.name} is empty")
    uid = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).get("StudyInstanceUID")
    if not uid:
        raise ValueError(f"{first.name} has no StudyInstanceUID")
    return str(uid)


class PacsSource:
    """Yields one :class:`Sample` per new CT study in Orthanc: its CT series' files spooled to
    ``spool_dir/<item_id>/`` (a :class:`CTSeries`, decoded in the replica), with its record and note from ``ehr``.

    New studies are found by polling ``/changes`` for ``StableStudy`` events (no instance reached the study for
    Orthanc's ``StableAge``, so its series are complete), from change ``since`` on; :attr:`checkpoint` is the last
    change read, to resume from. A study is one item, named ``pseudonym(StudyInstanceUID, key)`` (key: ``key``, or
    :func:`connectors.privacy.load_key`); its CT series with the most instances is the one read (a localizer or
    a thick-slice reconstruction beside it is passed over). A study is decided once: one without CT, one yielded
    already in this run, and one that holds an SR of ours (:class:`PacsWriter`'s: our SR and SEG make the study
    stable again, and a restart reads the change log from ``since``) are passed over. A study that cannot be
    downloaded, or whose record is unusable, comes out as :class:`Quarantined` with the reason. Iteration ends
    after ``limit`` studies, or once no new study came for ``idle_s`` seconds (``None``: never). An Orthanc that
    does not answer at the start raises :class:`ControllerUnavailable` naming host:port.
    """

    def __init__(self, client: PacsClient, spool_dir: str | Path = "runs/pacs-spool", key: bytes | None = None,
                 ehr: EHR | None = None, limit: int | None = None, idle_s: float | None = 10.0,
                 poll_s: float = 0.5, since: int = 0):
        self.client = client
        self.spool_dir = Path(spool_dir)
        self.key = key if key is not None else load_key()
        self.ehr = ehr
        self.limit, self.idle_s, self.poll_s = limit, idle_s, poll_s
        self.checkpoint = since
        self._yielded: set[str] = set()

    @property
    def source_id(self) -> str:
        return f"pacs:{self.client.http_address}"

    def __iter__(self) -> Iterator[Sample | Quarantined]:
        self.client.system()
        log.info("pacs source polling orthanc=%s since=%d", self.client.http_address, self.checkpoint)
        seq = 0
        last_new = time.monotonic()
        while self.limit is None or seq < self.limit:
            page = self.client.changes(self.checkpoint)
            for change in page["Changes"]:
                self.checkpoint = change["Seq"]
                item = self._study(change["ID"], seq) if change["ChangeType"] == "StableStudy" else None
                if item is None:
                    continue
                yield item
                seq += 1
                last_new = time.monotonic()
                if self.limit is not None and seq >= self.limit:
                    return
            self.checkpoint = max(self.checkpoint, page["Last"])
            if page["Done"]:
                if self.idle_s is not None and time.monotonic() - last_new > self.idle_s:
                    log.info("pacs source idle for %.0f s: stopping after %d studies", self.idle_s, seq)
                    return
                time.sleep(self.poll_s)

    def _study(self, study_id: str, seq: int) -> Sample | Quarantined | None:
        """The study's item, or None when it has no CT series, was yielded already or is gone."""
        try:
            study = self.client.get(f"/studies/{study_id}")
            series = [self.client.get(f"/series/{series_id}") for series_id in study["Series"]]
        except OrthancError as exc:
            log.warning("pacs study gone before it was read: %s", exc)
            return None
        study_uid = study["MainDicomTags"].get("StudyInstanceUID", "")
        ct_series = [one for one in series if one["MainDicomTags"].get("Modality") == "CT"]
        if not ct_series or not study_uid:
            return None
        item_id = pseudonym(study_uid, self.key)
        if item_id in self._yielded or any(_is_our_report(one) for one in series):
            log.info("pacs item=%s decided already: passed over", item_id)
            return None
        self._yielded.add(item_id)
        chosen = max(ct_series, key=lambda one: (len(one["Instances"]), one["MainDicomTags"].get("SeriesInstanceUID")))
        if len(ct_series) > 1:
            log.info("pacs item=%s: %d CT series, reading the one of %d instances", item_id, len(ct_series),
                     len(chosen["Instances"]))
        return self._sample(item_id, seq, chosen, study_uid)

    def _sample(self, item_id: str, seq: int, series: dict[str, Any], study_uid: str) -> Sample | Quarantined:
        folder = self.spool_dir / item_id
        ts = time.time()
        try:
            files = self.client.download_series(series["ID"], folder)
            if not files:
                raise InputError(item_id, "CT series has no instances in Orthanc")
            record, note = self.ehr.lookup(study_uid, item_id) if self.ehr is not None else (None, None)
        except ControllerUnavailable:
            raise
        except (InputError, OrthancError, OSError) as exc:
            reason = exc.reason if isinstance(exc, InputError) else str(exc)
            log.warning("pacs quarantined item=%s reason=%s", item_id, reason)
            paths = [str(p) for p in sorted(folder.glob("*.dcm"))] if folder.is_dir() else []
            return Quarantined(item_id, seq, f"PACS study: {reason}", "source", paths)
        ct = CTSeries(item_id, ts, [str(p) for p in files], study_uid=study_uid,
                      series_uid=series["MainDicomTags"].get("SeriesInstanceUID", ""), source=str(folder))
        log.info("pacs picked up item=%s slices=%d record=%s note=%s", item_id, len(files), record is not None,
                 note is not None)
        return Sample(item_id=item_id, seq=seq, ts=ts, ct=ct, record=record, note=note)


def _is_our_report(series: dict[str, Any]) -> bool:
    """Whether an Orthanc series is an SR this line wrote (:class:`PacsWriter`)."""
    tags = series["MainDicomTags"]
    return tags.get("Modality") == "SR" and tags.get("Manufacturer") == MANUFACTURER


class PacsWriter(DecisionSink):
    """Writes a medical decision back: a DICOM SR (TID 1500) and, for a located nodule, a SEG into the source
    study in Orthanc (C-STORE), and the FHIR DiagnosticReport Bundle to ``reports_dir/<item_id>.json``.

    The decision's ``extra`` holds the finding (:meth:`connectors.dicom_reports.NoduleFinding.from_extra`) and
    ``ct_path``, the folder of the source series' files. SR and SEG UIDs derive from the ``decision_id``: an
    instance Orthanc already holds is not sent again, so a resent decision stores nothing new. ``send`` answers
    ``"ok"``, or ``"error: ..."`` for a decision that cannot be written (no finding, source files gone, Orthanc
    refused the instance), and raises :class:`ControllerUnavailable` when Orthanc cannot be reached. The FHIR
    subject is ``Patient/<pseudonym of PatientID under key>`` (key: ``key``, or :func:`connectors.privacy.load_key`).
    """

    name = "pacs"

    def __init__(self, client: PacsClient, reports_dir: str | Path = "runs/fhir-reports", key: bytes | None = None):
        self.client = client
        self.reports_dir = Path(reports_dir)
        self.key = key if key is not None else load_key()

    @property
    def address(self) -> str:
        return self.client.dicom_address

    def open(self) -> None:
        """Check that Orthanc answers; :class:`ControllerUnavailable` naming host:port when not."""
        self.client.system()

    def send(self, decision: Decision) -> str:
        try:
            reports, bundle = self._reports(decision)
        except Exception as exc:  # pydicom and highdicom raise many types on headers they cannot use
            reason = str(exc) if isinstance(exc, ReportError) else (
                f"cannot read the source series ({exc.strerror or type(exc).__name__})" if isinstance(exc, OSError)
                else f"cannot make SR/SEG of the source series ({type(exc).__name__})")
            log.warning("pacs writer refused item=%s reason=%s", decision.item_id, reason)
            return f"error: {decision.item_id}: {reason}"
        missing = [ds for ds in reports if not self.client.has_instance(ds.SOPInstanceUID)]
        refused = [f"{ds.Modality} status 0x{status:04X}" for ds, status in zip(missing, self.client.store(missing))
                   if not stored_ok(status)]
        if refused:
            return f"error: Orthanc at {self.client.dicom_address} refused {', '.join(refused)}"
        self._write_report(decision.item_id, bundle)
        log.info("pacs wrote item=%s stored=%s already=%d", decision.item_id,
                 "+".join(ds.Modality for ds in missing) or "-", len(reports) - len(missing))
        return "ok"

    def _reports(self, decision: Decision) -> tuple[list[Dataset], dict[str, Any]]:
        """The SR (and SEG, for a located nodule) of the decision, and its FHIR Bundle."""
        from connectors.fhir_reports import nodule_report  # fhir.resources: imported where reports are made

        finding = NoduleFinding.from_extra(decision.extra)
        sources = read_headers(_series_paths(decision))
        issued = datetime.fromtimestamp(decision.ts, timezone.utc)
        version = decision.model_version or "unknown"
        seed = decision.decision_id or decision.item_id
        reports = [nodule_sr(sources, finding, seed, version, issued)]
        if finding.located:
            reports.append(nodule_seg(sources, finding, seed, algorithm_version=version, content_datetime=issued))
        patient = str(sources[0].get("PatientID") or sources[0].get("StudyInstanceUID") or decision.item_id)
        subject = f"Patient/{pseudonym(patient, self.key, 'patient')}"
        return reports, nodule_report(finding, subject, seed, issued, version, sources[0].get("StudyInstanceUID"))

    def _write_report(self, item_id: str, bundle: dict[str, Any]) -> None:
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        path = self.reports_dir / f"{item_id}.json"
        draft = path.with_name(f".{path.name}.tmp")
        draft.write_text(json.dumps(bundle, indent=2) + "\n")
        draft.replace(path)

    def close(self) -> None:
        """Nothing held: each ``send`` opens and releases its own association."""


def _series_paths(decision: Decision) -> Sequence[Path]:
    folder = decision.extra.get("ct_path")
    if not folder or not Path(folder).is_dir():
        raise ReportError("decision has no ct_path folder of the source series" if not folder
                          else f"CT series folder {Path(folder).name} is missing")
    paths = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    if not paths:
        raise ReportError(f"CT series folder {Path(folder).name} is empty")
    return paths
