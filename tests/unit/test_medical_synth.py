"""Synthetic medical recordings: the DICOM writer (dciodvfy, read back to the same HU), the FHIR Bundle, labels
that match the rendered volume, determinism."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest

from connectors.ct_writer import CTPatient, CTStudy, encode_ct_series
from connectors.dicom import read_ct_series
from connectors.recording import Manifest, Replayer, read_labels
from connectors.records import Sample
from pipelines.lines.medical.synth import synth_medical

PATIENT = CTPatient("Doe^Jane", "FL00000042", date(1961, 7, 1), "F")
SIZE, SLICES = 96, 24


def _study(seed: int = 42) -> CTStudy:
    return CTStudy.from_seed([seed, "case"], datetime(2024, 3, 5, 9, 30), accession_number="A1234567",
                             kernel="B45f")


def _write(tmp: Path, hu: np.ndarray, **kwargs) -> list[Path]:
    paths = []
    for k, data in enumerate(encode_ct_series(hu, 0.7, 2.5, PATIENT, _study(), **kwargs)):
        paths.append(tmp / f"{k:04d}.dcm")
        paths[-1].write_bytes(data)
    return paths


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_ct_slice_passes_dciodvfy(tmp_path: Path) -> None:
    hu = np.random.default_rng(0).integers(-1000, 1500, (3, 32, 40)).astype(np.int16)
    path = _write(tmp_path, hu)[1]
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (report.stdout + report.stderr).splitlines()
    assert "CTImage" in report.stdout + report.stderr  # it recognised the IOD it checked
    assert not [line for line in lines if line.startswith("Error")], lines


def test_ct_series_reads_back_to_the_same_hu(tmp_path: Path) -> None:
    hu = np.random.default_rng(1).integers(-1024, 3000, (5, 20, 24)).astype(np.int16)
    paths = _write(tmp_path, hu, first_slice_z_mm=-120.0)
    series = read_ct_series(list(reversed(paths)), "case-x")  # order comes from the positions, not the list
    assert np.array_equal(series.volume, hu.astype(np.float32))
    assert series.spacing_mm == pytest.approx((2.5, 0.7, 0.7))
    assert series.study_uid == _study().study_uid and series.series_uid == _study().series_uid
    again = encode_ct_series(hu, 0.7, 2.5, PATIENT, _study())
    assert [p.read_bytes() for p in paths][0] != again[0]  # first_slice_z_mm is in the header
    assert encode_ct_series(hu, 0.7, 2.5, PATIENT, _study()) == again
    assert _study(43).series_uid != _study().series_uid
    with pytest.raises(ValueError, match="outside the storable"):
        encode_ct_series(np.full((1, 4, 4), -2000, np.int16), 0.7, 2.5, PATIENT, _study())


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_medical(tmp_path_factory.mktemp("medical") / "rec", 3, seed=5, size=SIZE, slices=SLICES,
                         progress=False)


def test_recording_replays_with_consistent_labels(recording: Path) -> None:
    manifest = Manifest.read(recording)
    assert (manifest.line, manifest.count, manifest.modalities) == ("medical", 3, ["ct", "record", "note"])
    assert manifest.classes == {"nodule": ["absent", "present"], "malignancy": ["benign", "malignant"]}
    labels = read_labels(recording)
    samples = list(Replayer(recording))
    assert all(isinstance(s, Sample) for s in samples) and len(samples) == 3
    assert {row["nodule"] for row in labels.values()} == {"absent", "present"}  # seed 5 draws both
    for sample in samples:
        label = labels[sample.item_id]
        ct = sample.ct.decode()
        assert ct.volume.shape == (SLICES, SIZE, SIZE)
        assert sample.note and sample.record.resource["resourceType"] == "Bundle"
        assert label["family"] == "chest-a"
        if label["nodule"] == "absent":
            assert all(label[key] is None for key in ("malignancy", "center_vox", "diameter_mm", "density", "site"))
            continue
        k, r, c = label["center_vox"]
        centre = float(np.median(ct.volume[k, r - 1: r + 2, c - 1: c + 2]))
        in_lung = ct.volume[k][(ct.volume[k] > -950) & (ct.volume[k] < -650)]
        assert centre > float(np.median(in_lung)) + 60, (label, centre)  # brighter than the lung around it
        if label["diameter_mm"] >= 2.5 * max(ct.spacing_mm):  # larger than partial volume can wash out
            floor = {"solid": -150, "part-solid": -450, "ground-glass": -700}[label["density"]]
            assert centre > floor, (label, centre)
        assert label["malignancy"] in ("benign", "malignant") and 3 <= label["diameter_mm"] <= 30


def test_bundle_validates_and_never_holds_note_only_factors(recording: Path) -> None:
    from fhir.resources.R4B.bundle import Bundle

    for path in sorted((recording / "records").glob("*.json")):
        data = json.loads(path.read_text())
        bundle = Bundle.model_validate(data)
        assert bundle.type == "collection" and bundle.timestamp is not None
        codes = {c.code for e in bundle.entry for res in [e.resource] if res.get_resource_type() != "Patient"
                 for c in res.code.coding}
        assert {"72166-2", "8664-5"} <= codes
        assert codes <= {"72166-2", "8664-5", "13645005", "87433001", "363346000", "427359005"}


def test_same_seed_same_bytes(recording: Path, tmp_path: Path) -> None:
    again = synth_medical(tmp_path / "again", 3, seed=5, size=SIZE, slices=SLICES, progress=False, workers=2)
    for name in ("events.jsonl", "labels.jsonl", "records/case-000001.json", "ct/case-000002/0010.dcm"):
        assert (again / name).read_bytes() == (recording / name).read_bytes(), name
    other = synth_medical(tmp_path / "other", 1, seed=6, size=SIZE, slices=SLICES, progress=False)
    assert (other / "ct/case-000000/0010.dcm").read_bytes() != (recording / "ct/case-000000/0010.dcm").read_bytes()


@pytest.mark.parametrize("density", ["solid", "part-solid", "ground-glass"])
def test_phantom_mask_and_centre_match_what_is_drawn(density: str) -> None:
    from pipelines.lines.medical.phantoms import CaseSpec, NoduleSpec, ScanSpec, chest_a

    scan = ScanSpec(size=128, pixel_spacing_mm=2.8, slices=32, slice_spacing_mm=4.0, kernel="standard", noise_hu=10)
    nodule = NoduleSpec(diameter_mm=20.0, density=density, site="intraparenchymal", spiculated=False)
    case = CaseSpec(nodule=nodule, lookalikes=2, scan=scan, body_scale=1.0, female=False)
    phantom = chest_a.render(case, np.random.default_rng(3))
    assert phantom.hu.shape == (32, 128, 128) and phantom.hu.dtype == np.int16
    assert phantom.nodule_mask[phantom.nodule_center_vox]
    voxel_mm3 = 2.8 * 2.8 * 4.0
    sphere_mm3 = np.pi / 6 * 20.0 ** 3
    assert 0.6 < phantom.nodule_mask.sum() * voxel_mm3 / sphere_mm3 < 1.5
    from scipy.ndimage import binary_erosion

    inside = float(np.median(phantom.hu[binary_erosion(phantom.nodule_mask)]))  # clear of partial volume
    low, high = {"solid": (-150, 120), "part-solid": (-700, 60), "ground-glass": (-720, -200)}[density]
    assert low < inside < high, inside
    empty = chest_a.render(CaseSpec(None, 0, scan, 1.0, True), np.random.default_rng(3))
    assert empty.nodule_mask is None and empty.nodule_center_vox is None


def test_malignancy_needs_both_image_and_record() -> None:
    """By design: the nodule's CT traits and the patient's risk factors each rank malignancy clearly worse than
    both together (oracle linear predictors of MALIGNANCY_MODEL over drawn cases, no rendering)."""
    from datetime import date

    from scipy.stats import mannwhitneyu

    from pipelines.lines.medical.synth import (
        MALIGNANCY_MODEL, draw_case, draw_patient, malignancy_features, malignancy_probability)

    ct_traits = {"log2_diameter_10mm", "part_solid", "ground_glass", "spiculated"}
    ct, record, malignant = [], [], []
    for i in range(1500):
        rng = np.random.default_rng([9, i])
        patient = draw_patient(rng, date(2024, 1, 1))
        case = draw_case(rng, patient, 64, 16)
        if case.nodule is None:
            continue
        features = malignancy_features(case.nodule, patient)
        ct.append(sum(MALIGNANCY_MODEL[k] * v for k, v in features.items() if k in ct_traits))
        record.append(sum(MALIGNANCY_MODEL[k] * v for k, v in features.items() if k not in ct_traits))
        malignant.append(rng.random() < malignancy_probability(case.nodule, patient))
    y = np.array(malignant)
    assert 0.3 < y.mean() < 0.7

    def auc(score: np.ndarray) -> float:
        return mannwhitneyu(score[y], score[~y]).statistic / (y.sum() * (~y).sum())

    ct_auc, record_auc, fused_auc = auc(np.array(ct)), auc(np.array(record)), auc(np.array(ct) + np.array(record))
    assert 0.65 < ct_auc < fused_auc - 0.05 and 0.65 < record_auc < fused_auc - 0.05, (ct_auc, record_auc, fused_auc)
