"""The attributes the archive indexes, written down once: keyword, level, the index field
(the same name in ``instance.InstanceRecord`` and the archive's models), whether C-FIND and
QIDO can match on it, and whether it is a number. Query matching (``dicom.query``), the
archive's query compiler and the tests that hold parsing and models to it derive from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Indexed:
    keyword: str
    level: str  # PATIENT, STUDY, SERIES or IMAGE
    field: str
    matchable: bool = True  # a C-FIND/QIDO key (else only stored)
    number: bool = False  # IS/US values kept as integers
    length: int = 64  # characters kept (the index field's max_length); UIDs are validated instead
    computed: bool = False  # not read from the instance (kept up to date by the archive)


INDEXED = (
    Indexed("PatientID", "PATIENT", "patient_id"),
    Indexed("IssuerOfPatientID", "PATIENT", "issuer_of_patient_id", matchable=False),
    Indexed("PatientName", "PATIENT", "patient_name", length=324),
    Indexed("PatientBirthDate", "PATIENT", "patient_birth_date", length=8),
    Indexed("PatientSex", "PATIENT", "patient_sex", length=16),
    Indexed("StudyInstanceUID", "STUDY", "study_instance_uid"),
    Indexed("StudyDate", "STUDY", "study_date", length=8),
    Indexed("StudyTime", "STUDY", "study_time", length=16),
    Indexed("StudyID", "STUDY", "study_id", length=16),
    Indexed("AccessionNumber", "STUDY", "accession_number", length=16),
    Indexed("StudyDescription", "STUDY", "study_description"),
    Indexed("ReferringPhysicianName", "STUDY", "referring_physician_name", length=324),
    Indexed("ModalitiesInStudy", "STUDY", "modalities", computed=True),  # kept up to date from the series
    Indexed("SeriesInstanceUID", "SERIES", "series_instance_uid"),
    Indexed("Modality", "SERIES", "modality", length=16),
    Indexed("SeriesNumber", "SERIES", "series_number", number=True),
    Indexed("SeriesDescription", "SERIES", "series_description"),
    Indexed("SeriesDate", "SERIES", "series_date", length=8),
    Indexed("BodyPartExamined", "SERIES", "body_part_examined", length=16),
    Indexed("SOPInstanceUID", "IMAGE", "sop_instance_uid"),
    Indexed("SOPClassUID", "IMAGE", "sop_class_uid"),
    Indexed("InstanceNumber", "IMAGE", "instance_number", number=True),
    Indexed("NumberOfFrames", "IMAGE", "number_of_frames", number=True),
    Indexed("ContentDate", "IMAGE", "content_date", length=8),
    Indexed("ContentTime", "IMAGE", "content_time", length=16),
    Indexed("Rows", "IMAGE", "rows", number=True),
    Indexed("Columns", "IMAGE", "columns", number=True),
    Indexed("PhotometricInterpretation", "IMAGE", "photometric_interpretation", matchable=False, length=16),
)

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def matchable_fields() -> dict[str, dict[str, str]]:
    """Per level, keyword → index field of the keys a query can match on."""
    return {level: {a.keyword: a.field for a in INDEXED if a.level == level and a.matchable} for level in LEVELS}


NUMBER_FIELDS = frozenset(a.field for a in INDEXED if a.number)
