"""Which echo view an instance shows, from its DICOM View Code Sequence (0054,0220)."""

from __future__ import annotations

APICAL_VIEWS = {
    "399214001": "A4C",  # SCT Apical four chamber
    "399232001": "A2C",  # SCT Apical two chamber
    "399339008": "A3C",  # SCT Apical long axis (three chamber)
}
_BY_MEANING = (("four chamber", "A4C"), ("4 chamber", "A4C"), ("a4c", "A4C"),
               ("two chamber", "A2C"), ("2 chamber", "A2C"), ("a2c", "A2C"))


def apical_view(header) -> str | None:
    """"A4C", "A2C", "A3C" or None (no view code, or another view)."""
    for item in header.get("ViewCodeSequence", None) or []:
        value = str(item.get("CodeValue", "") or "")
        if value in APICAL_VIEWS:
            return APICAL_VIEWS[value]
        meaning = str(item.get("CodeMeaning", "") or "").lower()
        if "apical" in meaning or "a4c" in meaning or "a2c" in meaning:
            for words, view in _BY_MEANING:
                if words in meaning:
                    return view
    return None
