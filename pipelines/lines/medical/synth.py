"""Labelled medical recordings: per case a chest CT series, a FHIR R4 Bundle and a free-text clinical note.

:func:`synth_medical` writes a recording in the layout of :mod:`pipelines.lines.medical` (``ct/<item_id>/``,
``records/<item_id>.json``, the note in the event, the ground truth in ``labels.jsonl``). Per case it draws:

- the patient: a fake name and id, sex, birth date, and risk factors: age 40 to 85, smoking (never / former /
  current) and pack-years, COPD, emphysema, a prior malignancy, a known nodule under follow-up; and four that only
  the note tells: a family history of lung cancer, asbestos exposure, weight loss, haemoptysis;
- the scan (:class:`~pipelines.lines.medical.phantoms.CaseSpec`): a nodule in about 60 % of cases (3 to 30 mm,
  solid / part-solid / ground-glass, intraparenchymal / juxtapleural / juxtavascular, smooth or spiculated),
  look-alikes, body size, pixel and slice spacing, kernel and noise;
- for a nodule, whether it is malignant, from the logistic model :data:`MALIGNANCY_MODEL`, in which the nodule's CT
  traits and the patient's risk factors (structured and note-only) add independent signal of similar size, so
  that a model needs both the image and the record to rank malignancy well.

The image is rendered by the phantom family (:data:`~pipelines.lines.medical.phantoms.FAMILIES`), which sees only
the CaseSpec. Every case depends only on ``(seed, index, family, size, slices)``: any worker count gives the same
bytes, and a longer recording extends a shorter one.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from connectors.ct_writer import CTPatient, CTStudy, encode_ct_series
from connectors.recording import Manifest, RecordingWriter
from pipelines.lines.medical.phantoms import DENSITIES, FAMILIES, KERNELS, SITES, CaseSpec, NoduleSpec, ScanSpec

CLASSES = {"nodule": ["absent", "present"], "malignancy": ["benign", "malignant"]}
NODULE_RATE = 0.6
REFERENCE_SIZE, REFERENCE_SLICES = 256, 64  # spacings are drawn for this grid and scaled for others

#: The malignancy model: ``P(malignant) = sigmoid(sum of coefficient x feature)``, features as named. CT traits:
#: ``log2(diameter / 10 mm)``, part-solid and ground-glass (vs solid), spiculated. Record: ``(age - 62) / 10``,
#: ``log2(1 + pack-years)``, current smoker, prior malignancy, COPD, emphysema, a known (stable) nodule. Note
#: only: family history, asbestos, weight loss, haemoptysis. CT and record+note each have a linear-predictor
#: standard deviation of about 1.2 over the drawn population, and are drawn independently of each other.
MALIGNANCY_MODEL: dict[str, float] = {
    "intercept": -2.2,
    "log2_diameter_10mm": 1.4,
    "part_solid": 1.0,
    "ground_glass": -0.5,
    "spiculated": 1.5,
    "age_decades_from_62": 0.55,
    "log2_pack_years": 0.3,
    "current_smoker": 0.4,
    "prior_malignancy": 0.9,
    "copd": 0.5,
    "emphysema": 0.6,
    "known_nodule": -0.4,
    "family_history": 0.9,
    "asbestos": 1.0,
    "weight_loss": 1.0,
    "haemoptysis": 1.1,
}

SNOMED, LOINC, UCUM = "http://snomed.info/sct", "http://loinc.org", "http://unitsofmeasure.org"
SMOKING_CODES = {"never": ("266919005", "Never smoked tobacco"), "former": ("8517006", "Ex-smoker"),
                 "current": ("77176002", "Smoker")}
CONDITION_CODES = {"copd": ("13645005", "Chronic obstructive lung disease"),
                   "emphysema": ("87433001", "Pulmonary emphysema"),
                   "prior_malignancy": ("363346000", "Malignant neoplastic disease"),
                   "known_nodule": ("427359005", "Solitary nodule of lung")}
KERNEL_NAMES = {"soft": ("B30f", "SOFT", "FC13", "Br36"), "standard": ("B45f", "STANDARD", "FC35", "Br44"),
                "sharp": ("B70f", "LUNG", "FC51", "Bl64")}
GIVEN_F = ("Anna", "Maria", "Helen", "Grace", "Ingrid", "Sofia", "Ruth", "Elena", "Joan", "Mei", "Amira", "Clara")
GIVEN_M = ("John", "Peter", "Karl", "David", "Ahmed", "Luis", "Thomas", "Jan", "Marco", "Kenji", "Omar", "Paul")
FAMILY = ("Smith", "Jensen", "Novak", "Garcia", "Rossi", "Muller", "Tanaka", "Okafor", "Larsen", "Silva",
          "Kowalski", "Dubois", "Nguyen", "Brown", "Fischer", "Moreau", "Haddad", "Berg")


@dataclass(frozen=True)
class Patient:
    """The drawn patient and risk factors (the note-only ones never reach the Bundle)."""

    name: str  # DICOM "Family^Given"
    patient_id: str
    female: bool
    birth_date: date
    age: int  # at the study date
    smoking: str  # never | former | current
    pack_years: float
    years_quit: int  # former smokers
    copd: bool
    emphysema: bool
    prior_malignancy: bool
    known_nodule: bool
    family_history: bool
    asbestos: bool
    weight_loss: bool
    haemoptysis: bool


def synth_medical(
    out: str | Path,
    cases: int,
    seed: int,
    family: str = "chest-a",
    workers: int | None = None,
    progress: bool = True,
    size: int = REFERENCE_SIZE,
    slices: int = REFERENCE_SLICES,
    fps: float = 0.5,
) -> Path:
    """Write a labelled medical recording and return its folder.

    Args:
        out: the recording folder (created if missing).
        cases: number of cases, ``case-000000`` onwards; case ``i`` is at ``t = i / fps``.
        seed: non-negative; the same seed (and family, size, slices) gives the same files, byte for byte.
        family: the phantom family that renders the CT (:data:`~pipelines.lines.medical.phantoms.FAMILIES`).
        workers: rendering processes; None: all cores up to 4 for 8 cases or more, else 1. The output does not
            depend on it.
        progress: show a progress bar.
        size: rows = columns per slice (16 to 1024); the pixel spacing scales so the chest fills the field of view.
        slices: slices per series (8 to 512); the slice spacing scales so the slab covers the same length.
        fps: cases per second on the replayed line.
    """
    if cases < 0 or seed < 0:
        raise ValueError(f"cases ({cases}) and seed ({seed}) must be non-negative")
    if family not in FAMILIES:
        raise ValueError(f"unknown phantom family {family!r} (known: {', '.join(FAMILIES)})")
    if not (16 <= size <= 1024 and 8 <= slices <= 512):
        raise ValueError(f"size {size} outside 16..1024 or slices {slices} outside 8..512")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if cases >= 8 else 1
    manifest = Manifest(
        line="medical", fps=fps, modalities=["ct", "record", "note"], classes=CLASSES,
        generator={"name": "synth.medical", "seed": seed, "family": family, "cases": cases, "size": size,
                   "slices": slices},
    )
    jobs = [(seed, i, family, size, slices) for i in range(cases)]
    root = Path(out)
    with RecordingWriter(root, manifest) as rec:
        items = tqdm(_make_all(jobs, workers), total=cases, desc="synth.medical", unit="case", disable=not progress)
        for i, (files, record, note, labels) in enumerate(items):
            rec.add(_item_id(i), t=i / fps, ct=files, record=record, note=note, labels=labels)
    return root


def _item_id(index: int) -> str:
    return f"case-{index:06d}"


_Job = tuple[int, int, str, int, int]  # seed, index, family, size, slices
_Case = tuple[list[bytes], dict[str, Any], str, dict[str, Any]]  # DICOM files, FHIR Bundle, note, labels


def _make_all(jobs: list[_Job], workers: int) -> Iterator[_Case]:
    """Each job's case, in order; made in ``workers`` processes when more than one (writing a case to disk is
    far quicker than making one, so finished cases never pile up in memory)."""
    if workers <= 1:
        yield from map(make_case, jobs)
        return
    with multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn").Pool(workers) as pool:
        yield from pool.imap(make_case, jobs)


def make_case(job: _Job) -> _Case:
    """Case ``index`` of ``seed``: its DICOM files, FHIR Bundle, note and labels."""
    seed, index, family, size, slices = job
    item_id = _item_id(index)
    rng = np.random.default_rng([seed, 1, index])
    study_time = datetime(2022, 1, 3, 8, 0) + timedelta(days=int(rng.integers(0, 900)),
                                                        minutes=int(rng.integers(0, 9 * 60)))
    patient = draw_patient(rng, study_time.date())
    case = draw_case(rng, patient, size, slices)
    malignant = None if case.nodule is None else bool(rng.random() < malignancy_probability(case.nodule, patient))
    phantom = importlib.import_module(FAMILIES[family]).render(case, np.random.default_rng([seed, 2, index]))
    study = CTStudy.from_seed(
        [seed, index], study_time, accession_number=f"A{rng.integers(10**7, 10**8)}",
        description=str(rng.choice(["CT CHEST", "CT THORAX", "LOW DOSE CT CHEST", "CT CHEST WO CONTRAST"])),
        kernel=str(rng.choice(KERNEL_NAMES[case.scan.kernel])), kvp=float(rng.choice([100.0, 120.0])),
        study_id=str(rng.integers(1000, 99999)))
    files = encode_ct_series(
        phantom.hu, case.scan.pixel_spacing_mm, case.scan.slice_spacing_mm,
        CTPatient(patient.name, patient.patient_id, patient.birth_date, "F" if patient.female else "M"), study,
        first_slice_z_mm=round(float(rng.uniform(-400, -200)), 1))
    record = fhir_bundle(patient, study_time, entropy=[seed, index])
    note = clinical_note(rng, patient)
    nodule = case.nodule
    labels = {
        "nodule": "absent" if nodule is None else "present",
        "malignancy": None if malignant is None else ("malignant" if malignant else "benign"),
        "center_vox": None if phantom.nodule_center_vox is None else list(phantom.nodule_center_vox),
        "diameter_mm": None if nodule is None else round(nodule.diameter_mm, 2),
        "density": None if nodule is None else nodule.density,
        "site": None if nodule is None else nodule.site,
        "family": family,
    }
    return files, record, note, labels


# ------------------------------------------------------------------------------------------- drawing a case


def draw_patient(rng: np.random.Generator, study_date: date) -> Patient:
    """A patient and their risk factors; the factors are mutually correlated as in a screening population
    (COPD and emphysema with smoking), but drawn independently of the nodule's CT traits."""
    female = bool(rng.random() < 0.5)
    age = int(rng.integers(40, 86))
    birth_date = study_date - timedelta(days=365 * age + int(rng.integers(1, 364)) + age // 4)
    smoking = str(rng.choice(["never", "former", "current"], p=[0.35, 0.4, 0.25]))
    pack_years = 0.0 if smoking == "never" else round(float(np.clip(rng.lognormal(np.log(22), 0.6), 1, 120)), 1)
    smoker = smoking != "never"
    copd = bool(rng.random() < (0.28 if smoker else 0.05))
    emphysema = bool(rng.random() < (0.6 if copd else 0.15 if smoker else 0.03))
    given = rng.choice(GIVEN_F if female else GIVEN_M)
    return Patient(
        name=f"{rng.choice(FAMILY)}^{given}", patient_id=f"FL{rng.integers(10**7, 10**8)}", female=female,
        birth_date=birth_date, age=age, smoking=smoking, pack_years=pack_years,
        years_quit=int(rng.integers(1, 30)) if smoking == "former" else 0, copd=copd, emphysema=emphysema,
        prior_malignancy=bool(rng.random() < 0.14), known_nodule=bool(rng.random() < 0.15),
        family_history=bool(rng.random() < 0.14), asbestos=bool(rng.random() < 0.1),
        weight_loss=bool(rng.random() < 0.12), haemoptysis=bool(rng.random() < 0.08),
    )


def draw_case(rng: np.random.Generator, patient: Patient, size: int, slices: int) -> CaseSpec:
    """The scan and the nodule (or none); independent of the risk factors but for the patient's sex."""
    nodule = None
    if rng.random() < NODULE_RATE:
        nodule = NoduleSpec(
            diameter_mm=round(float(np.clip(rng.lognormal(np.log(10), 0.5), 3, 30)), 2),
            density=str(rng.choice(DENSITIES, p=[0.6, 0.2, 0.2])),
            site=str(rng.choice(SITES, p=[0.55, 0.3, 0.15])),
            spiculated=bool(rng.random() < 0.3),
        )
    body_scale = float(np.clip(rng.normal(1.0, 0.1), 0.8, 1.2))
    pixel = float(np.clip(1.4 * body_scale * rng.uniform(0.93, 1.07), 1.2, 1.6))
    scan = ScanSpec(
        size=size, pixel_spacing_mm=round(pixel * REFERENCE_SIZE / size, 4), slices=slices,
        slice_spacing_mm=round(float(rng.choice([1.5, 2.0, 2.5, 3.0])) * REFERENCE_SLICES / slices, 4),
        kernel=str(rng.choice(KERNELS, p=[0.3, 0.4, 0.3])),
        noise_hu=round(float(np.exp(rng.uniform(np.log(8), np.log(40)))), 1),
    )
    return CaseSpec(nodule=nodule, lookalikes=int(min(rng.poisson(2.0), 6)), scan=scan, body_scale=body_scale,
                    female=patient.female)


def malignancy_features(nodule: NoduleSpec, patient: Patient) -> dict[str, float]:
    """The features of :data:`MALIGNANCY_MODEL` (``intercept`` = 1)."""
    return {
        "intercept": 1.0,
        "log2_diameter_10mm": math.log2(nodule.diameter_mm / 10),
        "part_solid": float(nodule.density == "part-solid"),
        "ground_glass": float(nodule.density == "ground-glass"),
        "spiculated": float(nodule.spiculated),
        "age_decades_from_62": (patient.age - 62) / 10,
        "log2_pack_years": math.log2(1 + patient.pack_years),
        "current_smoker": float(patient.smoking == "current"),
        "prior_malignancy": float(patient.prior_malignancy),
        "copd": float(patient.copd),
        "emphysema": float(patient.emphysema),
        "known_nodule": float(patient.known_nodule),
        "family_history": float(patient.family_history),
        "asbestos": float(patient.asbestos),
        "weight_loss": float(patient.weight_loss),
        "haemoptysis": float(patient.haemoptysis),
    }


def malignancy_probability(nodule: NoduleSpec, patient: Patient) -> float:
    """``P(malignant)`` of the nodule in this patient under :data:`MALIGNANCY_MODEL`."""
    logit = sum(MALIGNANCY_MODEL[name] * value for name, value in malignancy_features(nodule, patient).items())
    return 1 / (1 + math.exp(-logit))


# ---------------------------------------------------------------------------------------------- the record


def fhir_bundle(patient: Patient, study_time: datetime, entropy: object) -> dict[str, Any]:
    """The patient's FHIR R4 Bundle (type collection, timestamp = the study date) as JSON, validated with
    ``fhir.resources.R4B``: Patient, smoking status and pack-years Observations, a Condition per structured risk
    factor (codes in :mod:`pipelines.lines.medical`). ``entropy`` (stable ``str``) makes the entries' UUIDs."""
    from fhir.resources.R4B.bundle import Bundle

    def urn(name: str) -> str:
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'fusionline:{entropy}:{name}')}"

    patient_urn = urn("patient")
    subject = {"reference": patient_urn}
    when = study_time.replace(tzinfo=timezone.utc).isoformat()
    family, given = patient.name.split("^")
    resources: list[tuple[str, dict[str, Any]]] = [(patient_urn, {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:fusionline:synthetic:patient-id", "value": patient.patient_id}],
        "name": [{"family": family, "given": [given]}],
        "gender": "female" if patient.female else "male",
        "birthDate": patient.birth_date.isoformat(),
    })]
    smoking_code, smoking_text = SMOKING_CODES[patient.smoking]
    social = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                           "code": "social-history"}]}]
    resources.append((urn("smoking"), {
        "resourceType": "Observation", "status": "final", "category": social, "subject": subject,
        "code": {"coding": [{"system": LOINC, "code": "72166-2", "display": "Tobacco smoking status"}]},
        "effectiveDateTime": when,
        "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": smoking_code, "display": smoking_text}]},
    }))
    resources.append((urn("pack-years"), {
        "resourceType": "Observation", "status": "final", "category": social, "subject": subject,
        "code": {"coding": [{"system": LOINC, "code": "8664-5", "display": "Cigarettes smoked [pack-years]"}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": patient.pack_years, "unit": "{pack-years}", "system": UCUM,
                          "code": "{pack-years}"},
    }))
    for name, (code, display) in CONDITION_CODES.items():
        if getattr(patient, name):
            status = "remission" if name == "prior_malignancy" else "active"
            resources.append((urn(name), {
                "resourceType": "Condition", "subject": subject,
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": status}]},
                "verificationStatus": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
            }))
    bundle = {"resourceType": "Bundle", "type": "collection", "timestamp": when,
              "entry": [{"fullUrl": full_url, "resource": resource} for full_url, resource in resources]}
    Bundle.model_validate(bundle)  # raises on anything FHIR R4 does not allow
    return bundle


# ------------------------------------------------------------------------------------------------ the note

_INDICATIONS = ("lung cancer screening", "persistent cough", "follow-up imaging", "dyspnoea on exertion",
                "pre-operative assessment", "chest pain, pulmonary embolism excluded", "abnormal chest radiograph",
                "recurrent chest infections")
_MALIGNANCIES = ("breast", "colorectal", "prostate", "renal cell", "head and neck", "bladder", "lymphoma")
_RELATIVES = ("father", "mother", "brother", "sister", "first-degree relative")
_JOBS = ("shipyard worker", "insulation fitter", "construction worker", "boiler maker", "plumber", "brake mechanic")


def clinical_note(rng: np.random.Generator, patient: Patient) -> str:
    """A free-text referral note in varied wording and order; it states the risk factors (and sometimes their
    absence), never the finding."""
    def pick(*options: str) -> str:
        return str(rng.choice(options))

    woman = patient.female
    person = pick("woman", "female", "lady") if woman else pick("man", "male", "gentleman")
    opening = pick(f"{patient.age}-year-old {person} referred for chest CT ({pick(*_INDICATIONS)}).",
                   f"Referral: {pick(*_INDICATIONS)}. {patient.age} y/o {person}.",
                   f"{'Mrs' if woman else 'Mr'} is {patient.age} years old; indication: {pick(*_INDICATIONS)}.",
                   f"Pt ({patient.age}{'F' if woman else 'M'}) for CT thorax, {pick(*_INDICATIONS)}.")
    py = f"{patient.pack_years:g}"
    if patient.smoking == "current":
        smoking = pick(f"Current smoker, about {py} pack-years.", f"Smokes daily ({py} pack-years).",
                       f"Active smoker with a {py} pack-year history.", f"Still smoking, {py} PY.")
    elif patient.smoking == "former":
        quit_ = patient.years_quit
        smoking = pick(f"Ex-smoker, quit {quit_} years ago ({py} pack-years).",
                       f"Former smoker, {py} pack-years, stopped {quit_} yrs ago.",
                       f"Stopped smoking {quit_} years ago after {py} pack-years.")
    else:
        smoking = pick("Never smoker.", "Lifelong non-smoker.", "Denies any tobacco use.", "Has never smoked.")
    sentences = [smoking]
    if patient.copd:
        sentences.append(pick("Known COPD.", "History of chronic obstructive pulmonary disease.",
                              "COPD on inhalers.", "Moderate COPD, GOLD 2."))
    if patient.emphysema:
        sentences.append(pick("Emphysema on previous imaging.", "Known centrilobular emphysema.",
                              "Emphysematous changes reported before."))
    if patient.prior_malignancy:
        sentences.append(pick(f"Treated for {pick(*_MALIGNANCIES)} cancer {rng.integers(2, 15)} years ago.",
                              f"Past history of {pick(*_MALIGNANCIES)} malignancy, in remission.",
                              f"Previous {pick(*_MALIGNANCIES)} carcinoma."))
    if patient.known_nodule:
        sentences.append(pick("Pulmonary nodule seen on a prior CT, here for follow-up.",
                              "Known small lung nodule under surveillance.",
                              "Follow-up of a previously described pulmonary nodule."))
    sentences += _note_only(rng, patient, pick)
    order = rng.permutation(len(sentences))
    return " ".join([opening, *(sentences[j] for j in order)])


def _note_only(rng: np.random.Generator, patient: Patient, pick) -> list[str]:
    """The sentences for the risk factors only the note carries: stated when present, sometimes denied."""
    said = []
    if patient.family_history:
        said.append(pick(f"Her {pick(*_RELATIVES)} had lung cancer." if patient.female
                         else f"His {pick(*_RELATIVES)} had lung cancer.",
                         "Family history of lung cancer.", f"Lung cancer in a {pick(*_RELATIVES)}."))
    elif rng.random() < 0.3:
        said.append(pick("No family history of lung cancer.", "Family history unremarkable."))
    if patient.asbestos:
        said.append(pick(f"Worked as a {pick(*_JOBS)}, asbestos exposure.", "Occupational asbestos exposure.",
                         f"Former {pick(*_JOBS)} with known asbestos exposure."))
    elif rng.random() < 0.3:
        said.append(pick("No occupational exposures.", "Office worker, no asbestos exposure."))
    if patient.weight_loss:
        said.append(pick(f"Unintentional weight loss of {rng.integers(3, 12)} kg over {rng.integers(2, 7)} months.",
                         "Reports recent unexplained weight loss.", "Has lost weight without trying."))
    elif rng.random() < 0.3:
        said.append(pick("Weight stable.", "No weight loss."))
    if patient.haemoptysis:
        said.append(pick("Episodes of haemoptysis.", "Has coughed up blood on occasion.",
                         "Reports blood-streaked sputum."))
    elif rng.random() < 0.3:
        said.append(pick("No haemoptysis.", "Denies coughing up blood."))
    return said
