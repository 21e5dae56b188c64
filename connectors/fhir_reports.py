"""A lung-nodule finding as a FHIR R4 DiagnosticReport with its Observations, validated with ``fhir.resources``.

Example:
    >>> bundle = nodule_report(finding, subject="Patient/case-3f1c9a0b7d2e4c51", report_id=decision.decision_id,
    ...                        issued=datetime.now(timezone.utc), algorithm_version="0.3.1")
    >>> Path(f"reports/{item_id}.json").write_text(json.dumps(bundle, indent=2))

The result is a ``collection`` Bundle: the DiagnosticReport (status ``preliminary``: no radiologist has signed
it; its ``conclusion`` begins "Decision support, not a diagnosis") and one Observation each for the nodule's
presence (with its probability), diameter (UCUM mm), malignancy risk and location, those the finding has. The
subject is a pseudonymous reference (:func:`connectors.privacy.pseudonym`), never a patient id or name. Ids and
``urn:uuid`` full URLs derive from ``report_id``: the same decision gives the same Bundle.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from connectors.dicom_reports import ALGORITHM_NAME, DISCLAIMER, NoduleFinding, ReportError

SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"
DICOM_UID = "urn:dicom:uid"
DECISION_SYSTEM = "urn:fusionline:decision"
SUBJECT_PATTERN = re.compile(r"Patient/[A-Za-z0-9\-.]{1,64}")

LUNG = {"coding": [{"system": SCT, "code": "39607008", "display": "Lung"}]}
NODULE = {"coding": [{"system": SCT, "code": "27925004", "display": "Nodule"}], "text": "Lung nodule"}
PRESENT = {"coding": [{"system": SCT, "code": "52101004", "display": "Present"}]}
ABSENT = {"coding": [{"system": SCT, "code": "272519000", "display": "Absent"}]}
IMAGING = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
                       "display": "Imaging"}]}
RADIOLOGY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                         "display": "Radiology"}]}


def nodule_report(
    finding: NoduleFinding,
    subject: str,
    report_id: str,
    issued: datetime,
    algorithm_version: str = "unknown",
    study_uid: str | None = None,
) -> dict[str, Any]:
    """The Bundle as JSON-ready data, validated: :class:`~connectors.dicom_reports.ReportError` naming the fields
    when it is not valid FHIR R4.

    Args:
        finding: what the model found.
        subject: ``Patient/<pseudonym>``; anything else (a reference that is not a Patient id) is refused.
        report_id: the decision's id: resource ids, full URLs and the report's identifier derive from it.
        issued: when the finding was made (timezone-aware).
        algorithm_version: the model's version, named with the performer.
        study_uid: the imaging study's StudyInstanceUID, referenced logically (``urn:dicom:uid``) when given.
    """
    if not SUBJECT_PATTERN.fullmatch(subject):
        raise ReportError("FHIR report: subject must be a pseudonymous reference Patient/<id>")
    if issued.tzinfo is None:
        raise ReportError("FHIR report: issued must be timezone-aware")
    when = issued.isoformat(timespec="seconds")
    device = {"display": f"{ALGORITHM_NAME} {algorithm_version} (automated, {DISCLAIMER})"}
    common = {"status": "preliminary", "category": [IMAGING], "subject": {"reference": subject},
              "effectiveDateTime": when, "issued": when, "device": device}
    observations = [_observation(report_id, name, fields, common) for name, fields in _findings(finding)]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "identifier": [{"system": DECISION_SYSTEM, "value": report_id}],
        "status": "preliminary",
        "category": [RADIOLOGY],
        "code": {"coding": [{"system": LOINC, "code": "24627-2", "display": "CT Chest"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": when,
        "issued": when,
        "performer": [device],
        "result": [{"reference": _full_url(report_id, obs["id"])} for obs in observations],
        "conclusion": conclusion(finding),
    }
    if finding.present:
        report["conclusionCode"] = [NODULE]
    if study_uid:
        report["imagingStudy"] = [{"type": "ImagingStudy",
                                   "identifier": {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"}}]
    bundle = {
        "resourceType": "Bundle",
        "id": report_id,
        "type": "collection",
        "timestamp": when,
        "entry": [{"fullUrl": _full_url(report_id, res["id"]), "resource": res} for res in (report, *observations)],
    }
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:  # its fields and reasons; never the values
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ReportError(f"FHIR report {report_id}: not valid FHIR R4: {problems}") from None
    return bundle


def conclusion(finding: NoduleFinding) -> str:
    """The report's plain-language conclusion, beginning "Decision support, not a diagnosis"."""
    lead = f"{DISCLAIMER[0].upper()}{DISCLAIMER[1:]}: automated reading by {ALGORITHM_NAME}, to be reviewed by a " \
           "radiologist."
    if not finding.present:
        return f"{lead} No lung nodule found (probability of a nodule {finding.probability:.2f})."
    parts = [f"Lung nodule suspected (probability {finding.probability:.2f})"]
    if finding.diameter_mm is not None:
        parts.append(f"diameter {finding.diameter_mm:.1f} mm")
    if finding.center_vox is not None:
        parts.append("centred at slice {}, row {}, column {}".format(*finding.center_vox))
    if finding.malignancy_risk is not None:
        parts.append(f"estimated malignancy risk {finding.malignancy_risk:.2f}")
    return f"{lead} {', '.join(parts)}."


def _findings(finding: NoduleFinding) -> list[tuple[str, dict[str, Any]]]:
    """``(name, Observation fields)`` for each thing the finding says."""
    found = [("presence", {
        "code": NODULE, "bodySite": LUNG, "valueCodeableConcept": PRESENT if finding.present else ABSENT,
        "component": [{"code": {"coding": [{"system": DCM, "code": "122157", "display": "Probability"}]},
                       "valueQuantity": _quantity(finding.probability, "1")}],
    })]
    if finding.diameter_mm is not None:
        found.append(("diameter", {
            "code": {"coding": [{"system": SCT, "code": "81827009", "display": "Diameter"}], "text": "Nodule diameter"},
            "bodySite": LUNG, "valueQuantity": _quantity(finding.diameter_mm, "mm"),
        }))
    if finding.malignancy_risk is not None:
        found.append(("malignancy-risk", {
            "code": {"coding": [{"system": DCM, "code": "111047", "display": "Probability of cancer"}],
                     "text": "Nodule malignancy risk"},
            "valueQuantity": _quantity(finding.malignancy_risk, "1"),
        }))
    if finding.center_vox is not None:
        axes = ("slice index along the slice normal", "row", "column")
        found.append(("location", {
            "code": {"coding": [{"system": DCM, "code": "111010", "display": "Center"}],
                     "text": "Nodule centre in the CT series (voxel indices)"},
            "bodySite": LUNG,
            "component": [{"code": {"text": axis}, "valueInteger": int(index)}
                          for axis, index in zip(axes, finding.center_vox)],
        }))
    return found


def _observation(report_id: str, name: str, fields: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"{report_id}-{name}", **common, **fields}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": round(float(value), 4), "unit": unit, "system": UCUM, "code": unit}


def _full_url(report_id: str, resource_id: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{DECISION_SYSTEM}:{report_id}:{resource_id}')}"
