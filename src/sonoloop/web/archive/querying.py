"""Querying the index for C-FIND, C-GET, C-MOVE and QIDO-RS: a DICOM query (``dicom.query``)
compiled to ORM filters at its level, with wildcards through index-friendly lookups."""

from __future__ import annotations

import re

from django.conf import settings
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from sonoloop.dicom.attributes import NUMBER_FIELDS, matchable_fields
from sonoloop.dicom.query import LEVELS, Match, Query, value_matches

from . import lookups  # noqa: F401 - registers the wildcard lookups
from .models import Instance, Patient, Series, Study
from .store import instance_path


FIELDS = matchable_fields()  # per level, keyword → index field (dicom.attributes)
MODELS = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance}
_PARENT_PATH = {"STUDY": "patient", "SERIES": "study", "IMAGE": "series"}
_INT_FIELDS = NUMBER_FIELDS
_CASE_INSENSITIVE = {"patient_name", "referring_physician_name"}


def _path_to(base: str, target: str) -> str:
    """ORM path from the ``base`` level's model up to ``target``'s (empty if the same)."""
    parts = []
    level = base
    while level != target:
        parts.append(_PARENT_PATH[level])
        level = LEVELS[LEVELS.index(level) - 1]
    return "__".join(parts)


def _level_of(keyword: str) -> str | None:
    return next((level for level, fields in FIELDS.items() if keyword in fields), None)


def _condition(match: Match, lookup: str, field: str) -> Q:
    if field in _INT_FIELDS:
        try:
            if match.kind == "list":
                return Q(**{f"{lookup}__in": [int(v) for v in match.values]})
            return Q(**{lookup: int(match.value)})
        except ValueError:
            return Q(pk__in=[])
    if match.kind == "single":
        if field == "modalities":
            return Q(**{f"{lookup}__regex": rf"(^|\\){re.escape(match.value)}(\\|$)"})
        if field in _CASE_INSENSITIVE:  # Unicode case folding (lookups), a value without wildcards
            return Q(**{f"{lookup}__dicom_iwildcard": match.value})
        return Q(**{lookup: match.value})
    if match.kind == "wildcard":
        suffix = "__dicom_iwildcard" if field in _CASE_INSENSITIVE else "__dicom_wildcard"
        return Q(**{f"{lookup}{suffix}": match.value})
    if match.kind == "list":
        return Q(**{f"{lookup}__in": list(match.values)})
    condition = Q()
    if match.low:
        condition &= Q(**{f"{lookup}__gte": match.low})
    if match.high:
        # "-20240131" includes the whole of that day/time prefix.
        condition &= Q(**{f"{lookup}__lte": match.high + "\uffff"})
    return condition & ~Q(**{lookup: ""})


def apply_matches(qs: QuerySet, base: str, matches: list[Match]) -> QuerySet:
    for match in matches:
        level = _level_of(match.keyword)
        if level is None or LEVELS.index(level) > LEVELS.index(base):
            continue
        field = FIELDS[level][match.keyword]
        path = _path_to(base, level)
        lookup = f"{path}__{field}" if path else field
        qs = qs.filter(_condition(match, lookup, field))
    return qs


_INSIDE = {"PATIENT": "series__study__patient", "STUDY": "series__study", "SERIES": "series"}  # instance → level


def present_only(qs: QuerySet, level: str) -> QuerySet:
    """Patients, studies and series with at least one instance not rejected."""
    if level == "IMAGE":
        return qs  # Instance.objects leaves the rejected out already
    return qs.filter(Exists(Instance.objects.filter(**{_INSIDE[level]: OuterRef("pk")})))


def with_counts(qs: QuerySet, level: str) -> QuerySet:
    """The Number of … Related … attributes, as correlated subqueries over the instances present:
    evaluated for the rows a page returns only. (A JOIN with GROUP BY counted every match before
    LIMIT: 0.9 s for a `Smi*` study search on 10,000 instances.)"""
    if level == "PATIENT":
        return qs.annotate(n_studies=_present_count(level, "series__study"),
                           n_series=_present_count(level, "series"), n_instances=_present_count(level))
    if level == "STUDY":
        return qs.annotate(n_series=_present_count(level, "series"), n_instances=_present_count(level))
    if level == "SERIES":
        return qs.annotate(n_instances=_present_count(level))
    return qs


def _present_count(level: str, distinct: str | None = None):
    inside = _INSIDE[level]
    instances = Instance.objects.filter(**{inside: OuterRef("pk")}).order_by().values(inside)
    counted = instances.annotate(n=Count(distinct, distinct=True) if distinct else Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


_COUNT_KEYWORDS = {
    "PATIENT": {
        "n_studies": "NumberOfPatientRelatedStudies",
        "n_series": "NumberOfPatientRelatedSeries",
        "n_instances": "NumberOfPatientRelatedInstances",
    },
    "STUDY": {"n_series": "NumberOfStudyRelatedSeries", "n_instances": "NumberOfStudyRelatedInstances"},
    "SERIES": {"n_instances": "NumberOfSeriesRelatedInstances"},
    "IMAGE": {},
}

_SELECT_RELATED = {
    "PATIENT": (),
    "STUDY": ("patient",),
    "SERIES": ("study__patient",),
    "IMAGE": ("series__study__patient",),
}


def _header(obj, level: str) -> Dataset | None:
    """The header of the entity's first instance (itself at the IMAGE level), for the keys the
    index lacks; None when its file cannot be read."""
    instance = obj if level == "IMAGE" else Instance.objects.filter(**{_INSIDE[level]: obj.pk}).order_by("pk").first()
    if instance is None:
        return None
    try:
        return dcmread(instance_path(instance), stop_before_pixels=True)
    except (OSError, ValueError, InvalidDicomError):
        return None


def _from_file(query: Query, level: str, obj, record: dict) -> bool:
    """Match and fill the keys that the index lacks from a stored file (one header read per
    entity, ~1 ms): False when the entity does not match."""
    header = _header(obj, level)

    def element(keyword: str):
        return header[keyword] if header is not None and keyword in header else None

    for match in query.file_matches:
        found = element(match.keyword)
        value = found.value if found is not None and found.value is not None else ""
        text = "\\".join(map(str, value)) if found is not None and found.VM > 1 else str(value)
        if not value_matches(match, text):
            return False
    for keyword in query.file_keys:
        found = element(keyword)
        record[keyword] = found.value if found is not None else None
    return True


def query_records(query: Query, limit: int | None = None, offset: int = 0):
    """Yield one dict per matching entity at the query's level: DICOM keyword → value. Keys the
    index lacks are matched and answered from each candidate's first stored file."""
    level = query.level
    qs = MODELS[level].objects.select_related(*_SELECT_RELATED[level])
    qs = present_only(apply_matches(qs, level, query.matches), level)
    qs = with_counts(qs, level).order_by("pk")
    by_file = bool(query.file_matches or query.file_keys)
    paged = limit is not None and not query.file_matches
    if paged:
        qs = qs[offset: offset + limit]
        offset, limit = 0, None  # the database paged already
    passed = 0
    for obj in qs if paged else qs.iterator(chunk_size=500):
        record = {}
        current, current_level = obj, level
        while True:
            for keyword, field in FIELDS[current_level].items():
                record[keyword] = getattr(current, field)
            if current_level == "PATIENT":
                break
            current = getattr(current, _PARENT_PATH[current_level])
            current_level = LEVELS[LEVELS.index(current_level) - 1]
        for attr, keyword in _COUNT_KEYWORDS[level].items():
            record[keyword] = getattr(obj, attr)
        if level == "IMAGE":
            record["AvailableTransferSyntaxUID"] = obj.transfer_syntax_uid
        record["RetrieveAETitle"] = settings.CONFIG.ae_title
        record["_pk"] = obj.pk
        if by_file and not _from_file(query, level, obj, record):
            continue
        passed += 1
        if passed <= offset:
            continue
        if limit is not None and passed > offset + limit:
            return
        yield record


def instances_for(query: Query) -> QuerySet:
    """Every instance at or below the entities the query names (C-GET, C-MOVE)."""
    return apply_matches(Instance.objects.all(), "IMAGE", query.matches).order_by("pk")
