"""FHIR records (connectors.fhir): the record encoder's numbers from a case's Bundle (the medical line's codes),
the missing-value convention, statuses that withdraw a fact, and reasons that name paths but never values. The
refusals of the bad-input corpus (malformed, invalid, implausible) are in test_bad_inputs.py."""

from __future__ import annotations

import copy
import json
from datetime import date, datetime, timezone

import pytest

from connectors.fhir import MAX_ENTRIES, RECORD_FEATURES, clinical_features, parse_fhir
from connectors.records import ClinicalRecord, InputError

LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1961-07-01",
           "name": [{"family": "Quixote", "given": ["Zebulon"]}],
           "identifier": [{"system": "urn:mrn", "value": "MRN-55512345"}]}
PHI = ("Quixote", "Zebulon", "1961-07-01", "MRN-55512345")


def observation(code: str, **value: object) -> dict:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": code}]}, **value}


def smoking(snomed: str) -> dict:
    return observation("72166-2", valueCodeableConcept={"coding": [{"system": SNOMED, "code": snomed}]})


def pack_years(value: float) -> dict:
    return observation("8664-5", valueQuantity={"value": value, "unit": "{pack-years}"})


def condition(snomed: str, **more: object) -> dict:
    return {"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "J44.9"},
                                {"system": SNOMED, "code": snomed}]}, **more}


def bundle(*resources: dict, timestamp: str | None = "2024-03-05T09:30:00Z") -> bytes:
    doc = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    if timestamp is not None:
        doc["timestamp"] = timestamp
    return json.dumps(doc).encode()


def features(data: bytes) -> dict[str, float]:
    return clinical_features(parse_fhir(data, "case-1"))


def test_a_case_bundle_gives_the_encoders_numbers_by_name() -> None:
    got = features(bundle(PATIENT, smoking("8517006"), pack_years(32.5), condition("13645005"),
                          condition("427359005")))
    assert tuple(got) == RECORD_FEATURES
    assert got == {
        "age_years": pytest.approx((date(2024, 3, 5) - date(1961, 7, 1)).days / 365.25), "age_known": 1.0,
        "female": 1.0, "sex_known": 1.0,
        "smoking_never": 0.0, "smoking_former": 1.0, "smoking_current": 0.0, "smoking_known": 1.0,
        "pack_years": 32.5, "pack_years_known": 1.0,
        "copd": 1.0, "emphysema": 0.0, "prior_malignancy": 0.0, "known_nodule": 1.0,
    }
    record = parse_fhir(bundle(PATIENT, pack_years(32.5), condition("13645005")), "case-1")
    assert record.observations == {f"{LOINC}|8664-5": 32.5}
    assert record.conditions == ["http://hl7.org/fhir/sid/icd-10|J44.9", f"{SNOMED}|13645005"]


def test_what_the_record_does_not_say_is_zero_and_flagged_unknown() -> None:
    anonymous = {"resourceType": "Patient", "id": "p1"}
    got = features(bundle(anonymous))
    assert got == {name: 0.0 for name in RECORD_FEATURES}
    never = features(bundle({**PATIENT, "gender": "male"}, smoking("266919005")))  # a never-smoker: 0 pack-years
    assert (never["female"], never["sex_known"], never["smoking_never"]) == (0.0, 1.0, 1.0)
    assert (never["pack_years"], never["pack_years_known"]) == (0.0, 1.0)
    assert features(bundle({**PATIENT, "gender": "other"}))["sex_known"] == 0.0


def test_withdrawn_facts_do_not_count() -> None:
    refuted = condition("87433001", verificationStatus={"coding": [{"code": "refuted"}]})
    erroneous = {**smoking("77176002"), "status": "entered-in-error"}
    got = features(bundle(PATIENT, refuted, erroneous, condition("363346000")))
    assert (got["emphysema"], got["prior_malignancy"], got["smoking_known"]) == (0.0, 1.0, 0.0)


def test_age_is_counted_to_the_study_date_or_today_and_partial_birth_dates_read() -> None:
    assert features(bundle({**PATIENT, "birthDate": "1961"}))["age_years"] == pytest.approx(
        (date(2024, 3, 5) - date(1961, 7, 1)).days / 365.25)
    today = datetime.now(timezone.utc).date()
    age = features(bundle({**PATIENT, "birthDate": "2000-05"}, timestamp=None))["age_years"]
    assert age == pytest.approx((today - date(2000, 5, 15)).days / 365.25)
    single = clinical_features(parse_fhir(json.dumps(PATIENT), "case-1"))  # a bare Patient: no study date
    assert single["age_years"] == pytest.approx((today - date(1961, 7, 1)).days / 365.25)


@pytest.mark.parametrize("edit, reason", [
    (lambda b: b["entry"][0]["resource"].update(birthDate="Quixote"), "entry[0].resource.birthDate is not a valid"),
    (lambda b: b["entry"][0]["resource"].update(gender="Zebulon"), "entry[0].resource.gender is not one of"),
    (lambda b: b["entry"][0]["resource"].update(Zebulon="Quixote"), "entry[0].resource has a key FHIR R4 does not"),
    (lambda b: b["entry"][0]["resource"]["name"][0].update(family=["Quixote"]), "name[0].family should be a string"),
    (lambda b: b["entry"][0]["resource"].update(contained=[{"Zebulon": {"resourceType": "Quixote"}}]),
     "Bundle.entry[0].resource.contained[0].(a key).resourceType is not a FHIR R4 resource type"),
    (lambda b: b["entry"][1]["resource"].update(valueString="Quixote"), "entry[1].resource has more than one value"),
    (lambda b: b["entry"][1]["resource"].update(status=None), "entry[1].resource.status is required"),
    (lambda b: b["entry"][1]["resource"].update(code=None), "entry[1].resource.code is missing"),
    (lambda b: b["entry"][1]["resource"].update(resourceType="Quixote"), "entry[1].resource.resourceType is not a"),
    (lambda b: b.update(timestamp="2024-03-05T09:30:00"), "Bundle.timestamp is not a valid FHIR Instant"),
    (lambda b: b.update(timestamp="2999-03-05T09:30:00Z"), "Bundle.timestamp (the study date) is in the future"),
    (lambda b: b.update(entry=[{"resource": PATIENT}] * (MAX_ENTRIES + 1)), "Bundle has 10001 entries, more than"),
])
def test_refusals_name_the_path_never_the_value(edit, reason: str) -> None:
    doc = json.loads(bundle(PATIENT, pack_years(10)))
    edit(doc)
    with pytest.raises(InputError) as err:
        parse_fhir(json.dumps(doc), "case-3")
    assert err.value.item_id == "case-3" and reason in err.value.reason, err.value.reason
    assert not [secret for secret in PHI if secret in str(err.value)]


def test_a_record_built_by_hand_passes_the_same_gates() -> None:
    doc = json.loads(bundle(PATIENT, pack_years(-1)))
    with pytest.raises(InputError, match="case-4: FHIR record: Bundle.entry\\[1\\].resource.valueQuantity.value: "
                                         "negative pack-years"):
        clinical_features(ClinicalRecord("case-4", 0.0, doc))
    with pytest.raises(InputError, match="case-4: FHIR record: resourceType 'Medication' is not one of"):
        clinical_features(ClinicalRecord("case-4", 0.0, {"resourceType": "Medication"}))
    good = json.loads(bundle(PATIENT))
    record = ClinicalRecord("case-4", 0.0, copy.deepcopy(good))
    assert clinical_features(record)["age_known"] == 1.0 and record.resource == good  # read, never changed
