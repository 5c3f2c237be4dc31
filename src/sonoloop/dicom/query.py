"""C-FIND / C-GET / C-MOVE identifiers as plain queries, and responses built from records.

PS3.4 C.2.2.2 matching: single value, universal (empty), wildcard (``*`` and ``?``),
list of UIDs (backslash-separated) and range (``A-B``, ``A-``, ``-B`` for DA/TM/DT).
The archive turns a :class:`Query` into a database query; this module knows DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword

from .attributes import LEVELS, matchable_fields

# Keys the archive can match on, by level (from the one table, ``dicom.attributes``).
# Anything else requested is returned empty.
MATCHABLE = {level: tuple(fields) for level, fields in matchable_fields().items()}
UNIQUE_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_RANGE_VRS = {"DA", "TM", "DT"}
# Bounds on a wildcard value (PN values are at most 64 characters a component group).
MAX_WILDCARD_LENGTH = 200
MAX_STARS = 16
_META_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC"}


class QueryError(ValueError):
    """The identifier cannot be processed; the message says why."""


@dataclass(frozen=True)
class Match:
    keyword: str
    kind: str  # "single" | "wildcard" | "list" | "range"
    value: str = ""
    values: tuple[str, ...] = ()
    low: str = ""
    high: str = ""


@dataclass
class Query:
    level: str
    root: str  # "PATIENT" or "STUDY"
    matches: list[Match] = field(default_factory=list)
    return_keys: list[str] = field(default_factory=list)


def match_for(keyword: str, raw: str) -> Match | None:
    value = raw.strip()
    if value in ("", "*"):
        return None  # universal matching
    vr = dictionary_VR(tag_for_keyword(keyword))
    if vr in _RANGE_VRS and "-" in value:
        low, _, high = value.partition("-")
        return Match(keyword, "range", low=low.strip(), high=high.strip())
    if vr == "UI" and "\\" in value:
        return Match(keyword, "list", values=tuple(v.strip() for v in value.split("\\") if v.strip()))
    if vr not in ("UI", "DA", "TM", "DT", "IS", "US") and ("*" in value or "?" in value):
        if len(value) > MAX_WILDCARD_LENGTH or value.count("*") > MAX_STARS:
            raise QueryError(f"{keyword}: a wildcard value has at most {MAX_WILDCARD_LENGTH} characters "
                             f"and {MAX_STARS} '*'")
        return Match(keyword, "wildcard", value=value)
    return Match(keyword, "single", value=value)


def _element_text(element) -> str:
    value = element.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def parse_identifier(identifier: Dataset, root: str) -> Query:
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in LEVELS:
        raise QueryError(f"Query/Retrieve Level {level!r} is not one of {', '.join(LEVELS)}")
    if root == "STUDY" and level == "PATIENT":
        raise QueryError("the Study Root model has no PATIENT level")
    allowed_levels = LEVELS[: LEVELS.index(level) + 1]
    query = Query(level=level, root=root)
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _META_KEYS:
            continue
        query.return_keys.append(keyword)
        if element.VR == "SQ":
            continue
        home = next((lvl for lvl in allowed_levels if keyword in MATCHABLE[lvl]), None)
        if home is None:
            continue
        match = match_for(keyword, _element_text(element))
        if match is not None:
            query.matches.append(match)
    unique = UNIQUE_KEY[level]
    if unique not in query.return_keys:
        query.return_keys.append(unique)
    return query


def check_retrieve_keys(query: Query) -> None:
    """C-GET and C-MOVE name what they retrieve (PS3.4 C.4.2.2.1): a single value of the unique
    key of every level above the retrieve level, and a single value or a UID list at that level
    — never "everything", a wildcard or a range."""
    top = LEVELS.index(query.root)
    named = {m.keyword: m for m in query.matches}
    for level in LEVELS[top: LEVELS.index(query.level) + 1]:
        key = UNIQUE_KEY[level]
        match = named.get(key)
        allowed = ("single", "list") if level == query.level else ("single",)
        if match is None or match.kind not in allowed:
            raise QueryError(f"a retrieve at the {query.level} level must name {key} "
                             f"({'one value or a list' if level == query.level else 'one value'})")


def build_response(query: Query, record: dict, charset: str = "ISO_IR 192") -> Dataset:
    """The response identifier: every requested key, with a value where the record has one."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = query.level
    for keyword in query.return_keys:
        value = record.get(keyword)
        vr = dictionary_VR(tag_for_keyword(keyword))
        if vr == "SQ":
            setattr(ds, keyword, [])
            continue
        if value is None:
            value = ""
        if vr in ("IS", "US", "UL", "SS", "SL") and value == "":
            value = None
        setattr(ds, keyword, value)
    return ds
