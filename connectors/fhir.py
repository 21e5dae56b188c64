"""FHIR R4 JSON into :class:`~connectors.records.ClinicalRecord` (a Bundle, or a single Patient, Observation or
Condition resource), validated with ``fhir.resources``; and the numbers the record encoder reads from it.

Example:
    >>> record = read_fhir("records/case-0042.json", item_id="case-0042")
    >>> clinical_features(record)      # {"age_years": 62.7, "age_known": 1.0, "female": 1.0, ...}

A document passes four gates; a refusal is an :class:`~connectors.records.InputError` naming the item and the
reason:

1. the bytes, before any model is built (they protect the parser): size, UTF-8, JSON without NaN/Infinity or
   float overflow, nesting depth, number of Bundle entries;
2. the types: the top level a Bundle, Patient, Observation or Condition, every ``resourceType`` inside a FHIR
   resource type;
3. the structure, by ``fhir.resources``' R4B models (FHIR 4.3: the package ships no 4.0 models, and Bundle,
   Patient, Observation and Condition read R4 documents unchanged): required fields, JSON types, the formats of
   dates, instants and decimals, one value of a choice type, valid Unicode (lone surrogates refused);
4. plausibility, which no schema says: one Patient per record, ``Patient.gender`` from its value set, a birth
   date neither in the future nor after the study date, an age at the study date of at most
   :data:`MAX_AGE_YEARS`, pack-years neither negative nor above :data:`MAX_PACK_YEARS`, a ``Bundle.timestamp``
   not in the future.

Reasons name JSON paths (``Bundle.entry[2].resource.valueQuantity.value``) and field names, never values: a record
carries PHI (names, birth dates, identifiers), and reasons end up in logs and the audit trail.

The codes read (the medical line's contract, :mod:`pipelines.lines.medical`): ``Patient.birthDate`` and
``gender``; ``Bundle.timestamp``, the study date, to which age is counted (today for a record without one);
Observations LOINC 72166-2 (smoking status, SNOMED :data:`SMOKING_STATUS` codes) and 8664-5 (pack-years);
Conditions by the SNOMED codes of :data:`CONDITIONS`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from connectors.records import ClinicalRecord, InputError, checked_size

MAX_BYTES = 8 * 1024 * 1024  # a large patient Bundle is a few MB
MAX_ENTRIES = 10_000
MAX_DEPTH = 64  # FHIR resources nest a dozen levels; far deeper is an attack on the parser
RESOURCE_TYPES = ("Bundle", "Patient", "Observation", "Condition")
MAX_AGE_YEARS = 120
MAX_PACK_YEARS = 200  # two packs a day for a hundred years
GENDERS = ("male", "female", "other", "unknown")  # FHIR's administrative-gender value set

LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
SMOKING_STATUS_CODE, PACK_YEARS_CODE = "72166-2", "8664-5"  # LOINC
SMOKING_STATUS = {"266919005": "never", "8517006": "former", "77176002": "current"}  # SNOMED -> status
CONDITIONS = {"13645005": "copd", "87433001": "emphysema", "363346000": "prior_malignancy",
              "427359005": "known_nodule"}  # SNOMED -> feature name
IGNORED_STATUSES = ("entered-in-error", "cancelled", "refuted")  # an Observation or Condition that says nothing

#: The record encoder's inputs, in its order. A value the record does not give is 0.0 and its ``<name>_known``
#: flag 0.0 (age, sex, smoking status, pack-years); ``age_years`` is in years, ``pack_years`` in pack-years
#: (unscaled: the encoder normalises). A never-smoker without a pack-years Observation has 0 pack-years, known.
#: Conditions are 1.0 when the record lists them (not refuted), else 0.0: a problem list cannot tell "absent"
#: from "not recorded".
RECORD_FEATURES: tuple[str, ...] = (
    "age_years", "age_known", "female", "sex_known",
    "smoking_never", "smoking_former", "smoking_current", "smoking_known",
    "pack_years", "pack_years_known", *CONDITIONS.values(),
)


class _Malformed(ValueError):
    """A reason, without the item: :func:`parse_fhir` adds the item id."""


def read_fhir(path: str | Path, item_id: str, ts: float = 0.0) -> ClinicalRecord:
    """Parse the FHIR JSON file at ``path``; its size is checked before it is read."""
    path = Path(path)
    checked_size(path, item_id, MAX_BYTES, "FHIR record")
    return parse_fhir(path.read_bytes(), item_id, ts, source=str(path))


def parse_fhir(data: bytes | str, item_id: str, ts: float = 0.0, source: str = "") -> ClinicalRecord:
    """Parse, validate and check one FHIR R4 JSON document (UTF-8 bytes or text)."""
    try:
        resource = _load(data)
        entries = _validated(resource)
        _facts(entries)  # the plausibility checks
        observations, conditions = _codes(entries)
    except _Malformed as exc:
        raise InputError(item_id, f"FHIR record: {exc}") from None
    return ClinicalRecord(item_id, ts, resource, source, observations, conditions)


def clinical_features(record: ClinicalRecord) -> dict[str, float]:
    """The record encoder's numbers by name, in :data:`RECORD_FEATURES` order (the record is validated again:
    one built by hand passes the same gates; ~2 ms for a case's Bundle)."""
    try:
        if not isinstance(record.resource, dict):
            raise _Malformed("the resource is not a JSON object")
        _check_tree(record.resource)
        facts = _facts(_validated(record.resource))
    except _Malformed as exc:
        raise InputError(record.item_id, f"FHIR record: {exc}") from None
    return facts.features()


# --- gate 1: the bytes -------------------------------------------------------------------------------------


def _load(data: bytes | str) -> dict[str, Any]:
    if len(data) > MAX_BYTES:
        raise _Malformed(f"{len(data)} bytes exceeds the {MAX_BYTES}-byte limit")
    if not data or not data.strip():
        raise _Malformed("empty")
    try:
        resource = json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise _Malformed(f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError:
        raise _Malformed("not UTF-8 text") from None
    except RecursionError:
        raise _Malformed("JSON nested too deeply") from None
    except ValueError as exc:  # from the hooks below, or an integer with thousands of digits
        raise _Malformed(str(exc).split(";")[0]) from None
    if not isinstance(resource, dict):
        raise _Malformed(f"top level is a JSON {_json_type(resource)}, not an object")
    _check_tree(resource)
    return resource


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number of {len(text)} characters overflows a float")
    return value


# --- gate 2: the types -------------------------------------------------------------------------------------


def _check_tree(root: dict[str, Any]) -> None:
    """The top-level type, the nesting depth, the number of entries and every nested ``resourceType``."""
    kind = root.get("resourceType")
    if kind not in RESOURCE_TYPES:
        raise _Malformed(f"resourceType {_describe(kind)} is not one of {', '.join(RESOURCE_TYPES)}")
    entries = root.get("entry")
    if kind == "Bundle" and isinstance(entries, list) and len(entries) > MAX_ENTRIES:
        raise _Malformed(f"Bundle has {len(entries)} entries, more than {MAX_ENTRIES}")
    stack: list[tuple[Any, int, str]] = [(root, 1, kind)]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise _Malformed(f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            if node is not root and "resourceType" in node and not _is_resource_type(node["resourceType"]):
                raise _Malformed(f"{path}.resourceType is not a FHIR R4 resource type")
            stack.extend((child, depth + 1, f"{path}.{_key(key)}") for key, child in node.items()
                         if isinstance(child, (dict, list)))
        else:
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(node)
                         if isinstance(child, (dict, list)))


def _is_resource_type(kind: Any) -> bool:
    from fhir.resources.R4B import get_fhir_model_class

    if not (isinstance(kind, str) and kind.isascii() and kind.isalpha()):
        return False
    try:
        return get_fhir_model_class(kind).has_resource_base()
    except ValueError:
        return False


# --- gate 3: the structure ---------------------------------------------------------------------------------


def _validated(resource: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(JSON path, fhir.resources model)`` of the resource, then of every Bundle entry's resource (the Bundle
    first, at path ``Bundle``)."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    kind = resource["resourceType"]
    try:
        model = get_fhir_model_class(kind).model_validate(resource)
    except ValidationError as exc:
        raise _Malformed(_validation_reason(kind, exc)) from None
    except (KeyError, TypeError, AttributeError, RecursionError) as exc:  # fhir.resources on shapes it missed
        raise _Malformed(f"not valid FHIR R4 ({type(exc).__name__} in fhir.resources)") from None
    found = [(kind, model)]
    if kind == "Bundle":
        found += [(f"Bundle.entry[{i}].resource", entry.resource) for i, entry in enumerate(model.entry or ())
                  if entry.resource is not None]
    return found


ERROR_PHRASES = {  # pydantic / fhir.resources error types -> what is wrong, said without the value
    "missing": "is required",
    "model_field_validation.missing": "is required",
    "string_unicode": "is not valid Unicode (a lone surrogate)",
    "string_too_short": "is empty",
    "string_type": "should be a string",
    "list_type": "should be an array",
    "dict_type": "should be an object",
    "model_type": "should be an object",
    "model_attributes_type": "should be an object",
    "model_validation_format": "should be an object",
    "bool_type": "should be true or false",
    "bool_parsing": "should be true or false",
    "int_type": "should be an integer",
    "int_parsing": "should be an integer",
    "int_from_float": "should be an integer",
    "float_type": "should be a number",
    "float_parsing": "should be a number",
    "decimal_type": "should be a number",
    "decimal_parsing": "should be a number",
}


def _validation_reason(kind: str, exc: Any) -> str:
    """``not valid FHIR R4: <path> <what is wrong>; ...`` for the first three distinct errors."""
    said = list(dict.fromkeys(_error(kind, e) for e in exc.errors(include_url=False, include_input=False,
                                                                   include_context=False)))
    more = f" (and {len(said) - 3} more)" if len(said) > 3 else ""
    return "not valid FHIR R4: " + "; ".join(said[:3]) + more


def _error(kind: str, error: dict[str, Any]) -> str:
    """One error in words. A key FHIR does not define is not named (it is the document's text, not a field
    name); messages of ``fhir.resources``' own checks are read only for the type or choice element they name
    (class and field names), never passed on: some quote the value."""
    loc, message = error["loc"], error["msg"]
    if error["type"] == "extra_forbidden":
        return f"{_json_path(kind, loc[:-1])} has a key FHIR R4 does not define there"
    return f"{_json_path(kind, loc)} {_what_is_wrong(error['type'], message)}"


def _what_is_wrong(kind: str, message: str) -> str:
    if kind in ERROR_PHRASES:
        return ERROR_PHRASES[kind]
    if kind == "value_error":
        if match := re.search(r"(\w+) value string does not match spec regex", message):
            return f"is not a valid FHIR {match[1]}"
        if "timezone aware" in message:
            return "has a time without a time zone"
        if match := re.search(r"\['([a-z]+)[A-Z]", message):
            return f"has {'more than one' if 'got multiple' in message else 'no'} {match[1]}[x]"
    return f"is invalid ({kind})"


def _json_path(kind: str, loc: tuple[Any, ...]) -> str:
    path = kind
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "root":
            path += f".{_key(part)}"
    return path


def _key(key: Any) -> str:
    """A JSON key for a path: itself when it is shaped like a FHIR element name (lowerCamelCase, ``_`` before a
    primitive's extension), never free text."""
    return key if isinstance(key, str) and re.fullmatch(r"_?[a-z][A-Za-z0-9]{0,63}", key) else "(a key)"


# --- gate 4: plausibility, and what the record says --------------------------------------------------------


@dataclass
class _Facts:
    """What a record says about its patient (None: it does not say)."""

    age_years: float | None = None
    female: bool | None = None
    smoking: str | None = None  # a value of SMOKING_STATUS
    pack_years: float | None = None
    conditions: set[str] = field(default_factory=set)  # values of CONDITIONS

    def features(self) -> dict[str, float]:
        """The facts as :data:`RECORD_FEATURES`, with its missing-value convention."""
        pack_years = 0.0 if self.pack_years is None and self.smoking == "never" else self.pack_years
        values = {
            "age_years": self.age_years or 0.0, "age_known": float(self.age_years is not None),
            "female": float(self.female is True), "sex_known": float(self.female is not None),
            **{f"smoking_{s}": float(self.smoking == s) for s in SMOKING_STATUS.values()},
            "smoking_known": float(self.smoking is not None),
            "pack_years": pack_years or 0.0, "pack_years_known": float(pack_years is not None),
            **{name: float(name in self.conditions) for name in CONDITIONS.values()},
        }
        return {name: values[name] for name in RECORD_FEATURES}


def _facts(entries: list[tuple[str, Any]]) -> _Facts:
    """The patient's facts from the validated resources; :class:`_Malformed` for an implausible record."""
    facts = _Facts()
    today = datetime.now(timezone.utc).date()
    root_path, root = entries[0]
    study_date = root.timestamp.astimezone(timezone.utc).date() if root_path == "Bundle" and root.timestamp else None
    if study_date is not None and study_date > today + timedelta(days=1):
        raise _Malformed("Bundle.timestamp (the study date) is in the future")
    patients = [(path, res) for path, res in entries if res.__resource_type__ == "Patient"]
    if len(patients) > 1:
        raise _Malformed(f"{len(patients)} Patient resources ({patients[1][0]} is the second): a record is one "
                         "patient's")
    for path, patient in patients:
        if patient.gender is not None and patient.gender not in GENDERS:
            raise _Malformed(f"{path}.gender is not one of {', '.join(GENDERS)}")
        facts.female = {"female": True, "male": False}.get(patient.gender)
        if patient.birthDate is not None:
            facts.age_years = _age_years(f"{path}.birthDate", _as_date(patient.birthDate), today, study_date)
    for path, res in entries:
        kind = res.__resource_type__
        if kind == "Observation" and res.status not in IGNORED_STATUSES:
            if _coded(res.code, LOINC, SMOKING_STATUS_CODE) and res.valueCodeableConcept is not None:
                facts.smoking = next((SMOKING_STATUS[c.code] for c in res.valueCodeableConcept.coding or ()
                                      if c.system == SNOMED and c.code in SMOKING_STATUS), facts.smoking)
            elif _coded(res.code, LOINC, PACK_YEARS_CODE) and res.valueQuantity is not None:
                facts.pack_years = _pack_years(f"{path}.valueQuantity.value", res.valueQuantity.value)
        elif kind == "Condition" and res.code is not None and not _refuted(res):
            facts.conditions |= {CONDITIONS[c.code] for c in res.code.coding or ()
                                 if c.system == SNOMED and c.code in CONDITIONS}
    return facts


def _as_date(value: date | str) -> date:
    """A FHIR date; a partial one (``YYYY`` or ``YYYY-MM``, which the model keeps as text) at its middle."""
    if isinstance(value, date):
        return value
    parts = [int(p) for p in value.split("-")]
    return date(parts[0], 7, 1) if len(parts) == 1 else date(parts[0], parts[1], 15)


def _age_years(path: str, birth: date, today: date, study_date: date | None) -> float:
    if birth > today:
        raise _Malformed(f"{path} is in the future")
    if study_date is not None and birth > study_date:
        raise _Malformed(f"{path} is after the study date (Bundle.timestamp)")
    age = ((study_date or today) - birth).days / 365.25
    if age > MAX_AGE_YEARS:
        raise _Malformed(f"{path} gives an age over {MAX_AGE_YEARS} years at the study date")
    return age


def _pack_years(path: str, value: Any) -> float | None:
    if value is None:
        return None
    pack_years = float(value)
    if not math.isfinite(pack_years):
        raise _Malformed(f"{path} overflows a float")
    if pack_years < 0:
        raise _Malformed(f"{path}: negative pack-years (LOINC {PACK_YEARS_CODE})")
    if pack_years > MAX_PACK_YEARS:
        raise _Malformed(f"{path}: more than {MAX_PACK_YEARS} pack-years (LOINC {PACK_YEARS_CODE}), implausible")
    return pack_years


def _coded(concept: Any, system: str, code: str) -> bool:
    return concept is not None and any(c.system == system and c.code == code for c in concept.coding or ())


def _refuted(condition: Any) -> bool:
    status = condition.verificationStatus
    return status is not None and any(c.code in IGNORED_STATUSES for c in status.coding or ())


def _codes(entries: list[tuple[str, Any]]) -> tuple[dict[str, float], list[str]]:
    """Numeric Observation values by ``system|code`` (every coding of the code) and the codes of the Conditions
    (or their ``code.text``), for :class:`ClinicalRecord`."""
    observations: dict[str, float] = {}
    conditions: list[str] = []
    for path, res in entries:
        kind = res.__resource_type__
        if kind == "Observation" and res.code is None:
            raise _Malformed(f"{path}.code is missing: an Observation must say what it measures (FHIR R4: 1..1)")
        if kind == "Observation" and res.valueQuantity is not None and res.valueQuantity.value is not None:
            value = float(res.valueQuantity.value)
            if not math.isfinite(value):
                raise _Malformed(f"{path}.valueQuantity.value overflows a float")
            observations.update((key, value) for key in _keys(res.code))
        elif kind == "Condition" and res.code is not None and not _refuted(res):
            conditions += _keys(res.code)
    return observations, conditions


def _keys(concept: Any) -> list[str]:
    """``system|code`` of every coding of a CodeableConcept, or its text when it has no coding."""
    keys = [f"{c.system or ''}|{c.code}" for c in concept.coding or () if c.code]
    return keys or ([concept.text] if concept.text else [])


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _describe(kind: Any) -> str:
    """A resourceType for a message: named only when it is a FHIR resource type (never free text)."""
    if _is_resource_type(kind):
        return repr(kind)
    if isinstance(kind, str):
        return "(a text that is no FHIR resource type)"
    return "missing" if kind is None else f"(a JSON {_json_type(kind)})"
