"""IOCM rejection notes (IHE Imaging Object Change Management; PS3.16 CID 7011): a Key
Object Selection document whose title says that the instances it references are rejected."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"

TITLES = {  # (DCM) code → meaning; what the archive does with the referenced instances
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}
DELETES = {"113039"}  # expired data are deleted; the other reasons hide the instances


class NotARejection(ValueError):
    """A rejection-titled KOS that cannot be followed (what it references is malformed)."""


@dataclass(frozen=True)
class RejectionNote:
    code: str
    meaning: str
    study_uid: str  # the note's own study
    references: tuple[tuple[str, str, str, str], ...]  # (study, series, SOP class, SOP instance)

    @property
    def deletes(self) -> bool:
        return self.code in DELETES


def rejection_note(ds: Dataset) -> RejectionNote | None:
    """The rejection a Key Object Selection document carries, or None for any other object
    (including a KOS with another title, such as "Of Interest")."""
    if str(ds.get("SOPClassUID", "")) != KEY_OBJECT_SELECTION:
        return None
    title = (ds.get("ConceptNameCodeSequence") or [None])[0]
    if title is None or title.get("CodingSchemeDesignator") != "DCM" or title.get("CodeValue") not in TITLES:
        return None
    references = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            for item in series.get("ReferencedSOPSequence") or []:
                parts = (str(study.get("StudyInstanceUID", "")), str(series.get("SeriesInstanceUID", "")),
                         str(item.get("ReferencedSOPClassUID", "")), str(item.get("ReferencedSOPInstanceUID", "")))
                if not all(parts):
                    raise NotARejection("a reference in the rejection note lacks a study, series, SOP class or "
                                        "SOP instance UID")
                references.append(parts)
    if not references:
        raise NotARejection("the rejection note references no instances (Current Requested Procedure Evidence "
                            "Sequence)")
    return RejectionNote(title.CodeValue, TITLES[title.CodeValue], str(ds.StudyInstanceUID), tuple(references))
