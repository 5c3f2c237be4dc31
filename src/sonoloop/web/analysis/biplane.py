"""Biplane volumes of a study: from its latest apical 4- and 2-chamber results together."""

from __future__ import annotations

from .labels import result_labels
from .models import AnalysisResult, StudyMeasurement


def biplane_update(result: AnalysisResult) -> StudyMeasurement | None:
    """When the study has a result for the other apical view too, the biplane volumes from the
    latest result of each (different instances); None when it has not, or a value is missing."""
    from sonoloop.echo.measure import Calibration, biplane_volumes

    view = result.measurements.get("view")
    other_view = {"A4C": "A2C", "A2C": "A4C"}.get(view)
    study = result.instance.series.study
    other = (AnalysisResult.objects.filter(instance__series__study=study, measurements__view=other_view)
             .exclude(instance=result.instance).order_by("-created_at", "-id").first())
    if other is None:
        return None
    four, two = (result, other) if view == "A4C" else (other, result)
    unreliable = [name for name, r in (("apical 4-chamber", four), ("apical 2-chamber", two))
                  if not r.measurements.get("reliable", True)]
    if unreliable:  # biplane volumes from an unreliable beat would mislead as much as its EF
        return StudyMeasurement.objects.create(study=study, four_chamber=four, two_chamber=two, values={
            "flags": [f"no biplane volumes: the {' and '.join(unreliable)} loop's EF is unreliable"]})
    phases = []
    for r in (four, two):
        m = r.measurements
        if m.get("ed_frame") is None:
            return None
        labels = result_labels(r)
        phases.append(((labels[m["ed_frame"]], labels[m["es_frame"]]), Calibration(**m["calibration"])))
    try:
        values = biplane_volumes(phases[0][0], phases[1][0], four.classes, phases[0][1], phases[1][1])
    except ValueError as exc:
        values = {"flags": [f"no biplane volumes: {exc}"]}
    return StudyMeasurement.objects.create(study=study, four_chamber=four, two_chamber=two, values=values)
