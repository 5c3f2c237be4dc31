"""What the worklist shows and filters of expert annotations: per study how many are in each
state, and the studies with one waiting for review (``archive.panels``)."""

from __future__ import annotations

from collections import Counter

from django.db.models import QuerySet

from .models import Annotation

_ORDER = (Annotation.SUBMITTED, Annotation.DRAFT, Annotation.APPROVED)


def study_columns(studies) -> dict[int, dict]:
    pks = [s.pk for s in studies]
    counts: dict[int, Counter] = {}
    rows = (Annotation.objects.filter(instance__series__study__in=pks, status__in=_ORDER)
            .values_list("instance__series__study", "status"))
    for study, state in rows:
        counts.setdefault(study, Counter())[state] += 1
    return {study: {"annotations": ", ".join(f"{c[s]} {s}" for s in _ORDER if c[s]), "needs_review": bool(c["submitted"])}
            for study, c in counts.items()}


def needs_review(studies: QuerySet) -> QuerySet:
    # the studies named once (pk IN …), not an EXISTS per study: submitted annotations are few
    return studies.filter(pk__in=Annotation.objects.filter(status=Annotation.SUBMITTED)
                          .values("instance__series__study"))


FILTERS = {"needs-review": ("Needs review (submitted annotations)", needs_review)}
