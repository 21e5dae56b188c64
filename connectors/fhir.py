"""FHIR R4 JSON into :class:`~connectors.records.ClinicalRecord`: a Bundle, or a single Patient, Observation or
Condition resource.

Example:
    >>> record = read_fhir("case-0042/record.json", item_id="case-0042")
    >>> record.observations          # {"http://loinc.org|8867-4": 72.0, ...}

Anything unusable raises :class:`~connectors.records.InputError` naming the item and the reason: not JSON,
not an object, a resourceType this parser does not take, a missing required field, NaN/Infinity or a number
out of range, nesting or size beyond the limits. Reasons name JSON paths and field names, never values: a
record carries PHI (names, birth dates, identifiers), and reasons end up in logs and the audit trail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from connectors.records import ClinicalRecord, InputError, checked_size

MAX_BYTES = 8 * 1024 * 1024  # a large patient Bundle is a few MB
MAX_ENTRIES = 10_000
MAX_DEPTH = 64  # FHIR resources nest a dozen levels; far deeper is an attack on the parser
RESOURCE_TYPES = ("Bundle", "Patient", "Observation", "Condition")


class _Malformed(ValueError):
    """A reason, without the item: :func:`parse_fhir` adds the item id."""


def read_fhir(path: str | Path, item_id: str, ts: float = 0.0) -> ClinicalRecord:
    """Parse the FHIR JSON file at ``path``; its size is checked before it is read."""
    path = Path(path)
    checked_size(path, item_id, MAX_BYTES, "FHIR record")
    return parse_fhir(path.read_bytes(), item_id, ts, source=str(path))


def parse_fhir(data: bytes | str, item_id: str, ts: float = 0.0, source: str = "") -> ClinicalRecord:
    """Parse and check one FHIR R4 JSON document (UTF-8 bytes or text)."""
    try:
        resource = _load(data)
        observations: dict[str, float] = {}
        conditions: list[str] = []
        for path, res in _resources(resource):
            if res["resourceType"] == "Observation":
                _check_observation(path, res, observations)
            elif res["resourceType"] == "Condition":
                conditions.append(_code(path, res))
    except _Malformed as exc:
        raise InputError(item_id, f"FHIR record: {exc}") from None
    return ClinicalRecord(item_id, ts, resource, source, observations, conditions)


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
    _check_depth(resource)
    kind = resource.get("resourceType")
    if kind not in RESOURCE_TYPES:
        raise _Malformed(f"resourceType {_describe(kind)} is not one of {', '.join(RESOURCE_TYPES)}")
    return resource


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number of {len(text)} characters overflows a float")
    return value


def _check_depth(root: Any) -> None:
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _Malformed(f"JSON nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _resources(resource: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(JSON path, resource)`` for the resource, or every resource in a Bundle's entries."""
    if resource["resourceType"] != "Bundle":
        return [(resource["resourceType"], resource)]
    if not isinstance(resource.get("type"), str):
        raise _Malformed("Bundle has no type")
    entries = resource.get("entry", [])
    if not isinstance(entries, list):
        raise _Malformed(f"Bundle.entry is a JSON {_json_type(entries)}, not an array")
    if len(entries) > MAX_ENTRIES:
        raise _Malformed(f"Bundle has {len(entries)} entries, more than {MAX_ENTRIES}")
    found = []
    for i, entry in enumerate(entries):
        path = f"Bundle.entry[{i}]"
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            raise _Malformed(f"{path} has no resource with a resourceType")
        found.append((f"{path}.resource", res))  # other resource types (Encounter, ...) are kept, not checked
    return found


def _check_observation(path: str, obs: dict[str, Any], values: dict[str, float]) -> None:
    if not isinstance(obs.get("status"), str):
        raise _Malformed(f"{path} (Observation) has no status")
    code = _code(path, obs)
    if "valueQuantity" in obs:
        quantity = obs["valueQuantity"]
        value = quantity.get("value") if isinstance(quantity, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Malformed(f"{path}.valueQuantity.value is not a number")
        values[code] = float(value)


def _code(path: str, res: dict[str, Any]) -> str:
    """``system|code`` of the resource's first coding (or its ``code.text``)."""
    concept = res.get("code")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if isinstance(codings, list) and codings and isinstance(codings[0], dict):
        system, code = codings[0].get("system", ""), codings[0].get("code")
        if isinstance(code, str) and code and isinstance(system, str):
            return f"{system}|{code}"
    if isinstance(concept, dict) and isinstance(concept.get("text"), str) and concept["text"]:
        return concept["text"]
    raise _Malformed(f"{path} ({res['resourceType']}) has no code")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _describe(kind: Any) -> str:
    """A resourceType for a message: short, and only when it looks like a type name (never free text)."""
    if isinstance(kind, str) and kind.isascii() and kind.isalpha() and len(kind) <= 40:
        return repr(kind)
    return "missing" if kind is None else f"(a JSON {_json_type(kind)})"
