"""What the worklist shows and filters of the AI: per study its state, views, EF and LA volume
(``archive.panels.STUDY_LIST_COLUMNS`` / ``STUDY_LIST_FILTERS``). Only the newest job and the
newest result of each image count: a retry that succeeded clears an earlier failure."""

from __future__ import annotations

from django.db.models import Exists, OuterRef, Q, QuerySet

from .models import AnalysisJob, AnalysisResult, StudyMeasurement

# the worst state of a study's images wins
_STATES = ("running", "queued", "failed", "unreliable", "done")


def _newest_jobs() -> QuerySet:
    newer = AnalysisJob.objects.filter(instance=OuterRef("instance"), pk__gt=OuterRef("pk"))
    return AnalysisJob.objects.filter(~Exists(newer))


def _newest_results() -> QuerySet:
    newer = AnalysisResult.objects.filter(instance=OuterRef("instance"), version__gt=OuterRef("version"))
    return AnalysisResult.objects.filter(~Exists(newer))


def study_columns(studies) -> dict[int, dict]:
    pks = [s.pk for s in studies]
    columns: dict[int, dict] = {pk: {} for pk in pks}
    states: dict[int, set] = {pk: set() for pk in pks}
    for job in _newest_jobs().filter(instance__series__study__in=pks).select_related("instance__series"):
        study = job.instance.series.study_id
        states[study].add(job.status)
        if job.status == AnalysisJob.RUNNING:
            columns[study]["ai_progress"] = round(100 * job.progress)
    results = (_newest_results().filter(instance__series__study__in=pks).select_related("instance__series")
               .order_by("instance__series__study", "-created_at"))
    reported: dict[int, dict] = {}
    for result in results:
        study, m = result.instance.series.study_id, result.measurements or {}
        if m.get("view"):
            columns[study].setdefault("views", [])
            if m["view"] not in columns[study]["views"]:
                columns[study]["views"].append(m["view"])
        if m.get("reliability") and not m.get("reliable"):
            states[study].add("unreliable")
        best = reported.get(study)
        # a reliable EF beats an unreliable one; among equals an apical 4-chamber view
        rank = (bool(m.get("reliable")), m.get("view") == "A4C")
        if best is None or rank > best["rank"]:
            reported[study] = {"rank": rank, "m": m}
    for study, chosen in reported.items():
        m = chosen["m"]
        columns[study].update(ef=m.get("ef") if m.get("reliable") else None, ef_reliable=bool(m.get("reliable")),
                              reliability=m.get("reliability", ""), la_volume=m.get("la_volume"),
                              volume_unit=(m.get("units") or {}).get("volume", ""))
    for biplane in StudyMeasurement.objects.filter(study__in=pks).order_by("study", "-created_at"):
        values = biplane.values or {}
        if values.get("ef") is not None and not columns[biplane.study_id].get("biplane"):
            columns[biplane.study_id].update(ef=values["ef"], ef_reliable=not values.get("flags"), biplane=True,
                                             reliability="biplane method of disks",
                                             volume_unit=values.get("units", ""))
    for study, seen in states.items():
        state = next((s for s in _STATES if s in seen), None)
        if state:
            columns[study]["ai_state"] = state
    return columns


# Filters name the studies once (pk IN a subquery) rather than asking per study (EXISTS): the
# matching rows are few, the studies many.

def _study_ids(rows: QuerySet) -> QuerySet:
    return rows.values("instance__series__study")


def low_ef(studies: QuerySet) -> QuerySet:
    return studies.filter(pk__in=_study_ids(_newest_results().filter(measurements__reliable=True,
                                                                     measurements__ef__lt=40)))


def ai_problem(studies: QuerySet) -> QuerySet:
    failed = _newest_jobs().filter(status=AnalysisJob.FAILED)
    unreliable = _newest_results().filter(measurements__reliable=False)
    return studies.filter(Q(pk__in=_study_ids(failed)) | Q(pk__in=_study_ids(unreliable)))


def in_progress(studies: QuerySet) -> QuerySet:
    return studies.filter(pk__in=_study_ids(AnalysisJob.objects.filter(
        status__in=(AnalysisJob.QUEUED, AnalysisJob.RUNNING))))


FILTERS = {
    "ef-below-40": ("EF below 40 %", low_ef),
    "ai-problem": ("AI failed or unreliable", ai_problem),
    "ai-running": ("AI queued or running", in_progress),
}
