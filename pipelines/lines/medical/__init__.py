"""The medical fusion line: each case's chest CT series and clinical record (FHIR Bundle and free-text note) ->
lung-nodule finding (presence, place, diameter, malignancy risk), written back to the PACS as DICOM SR and SEG and
as a FHIR DiagnosticReport. Decision support for a radiologist, not a diagnosis.

- :mod:`~pipelines.lines.medical.synth` -- labelled synthetic recordings: cases drawn (:class:`CaseSpec`), rendered
  by a phantom family (:mod:`~pipelines.lines.medical.phantoms`), written as DICOM + FHIR + note
- :mod:`~pipelines.lines.medical.compose` -- the line's graph (recording or PACS -> replicas -> PACS, audit)
- :mod:`~pipelines.lines.medical.handler` -- what a model replica hosts: decode the series and the record, then
  the nodule model
- :mod:`~pipelines.lines.medical.train` / :mod:`~pipelines.lines.medical.evaluate` -- training and held-out
  metrics
- :mod:`~pipelines.lines.medical.cli` -- ``fusionline synth|train|eval|run|demo medical``

A medical recording (``docs/recording-format.md``)::

    ct/<item_id>/NNNN.dcm      one CT Image Storage file per slice (one series per case)
    records/<item_id>.json     FHIR R4 Bundle: Patient, Observations (smoking status, pack-years), Conditions
    events.jsonl               {"t", "item_id", "ct": "ct/<item_id>", "record": "records/<item_id>.json",
                                "note": free-text clinical note}
    labels.jsonl               {"item_id", "nodule": "present" | "absent", "malignancy": "benign" | "malignant"
                                | null, "center_vox": [slice, row, column] | null (slice index in the series
                                ordered along the slice normal, i.e. by ImagePositionPatient), "diameter_mm":
                                float | null, "density": "solid" | "part-solid" | "ground-glass" | null,
                                "site": "intraparenchymal" | "juxtapleural" | "juxtavascular" | null,
                                "family": the phantom family}

The record's codes (written by the synthesiser, read by :func:`connectors.fhir.clinical_features`, which turns
a Bundle into the record encoder's numbers, by name)::

    Patient.birthDate, Patient.gender; Bundle.timestamp = the study date (age is counted to it)
    Observation LOINC 72166-2 (tobacco smoking status), valueCodeableConcept SNOMED 266919005 never,
        8517006 former, 77176002 current smoker
    Observation LOINC 8664-5 (cigarettes smoked, pack-years), valueQuantity {value, unit "{pack-years}"}
    Condition SNOMED 13645005 COPD, 87433001 emphysema, 363346000 a prior malignancy, 427359005 a known lung
        nodule
    note only (never in the Bundle): family history of lung cancer, asbestos / occupational exposure, weight loss,
        haemoptysis -- so the note carries risk the structured record lacks

The manifest's ``classes`` are ``{"nodule": ["absent", "present"], "malignancy": ["benign", "malignant"]}``.
"""
