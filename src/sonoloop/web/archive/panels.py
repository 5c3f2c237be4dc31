"""Sections other apps add to the instance page, without the archive knowing them.

An app appends a function ``(request, instance) -> Panel | None`` to ``INSTANCE_PANELS``
in its ``AppConfig.ready``; the page renders each panel's template with its context.
"""

from dataclasses import dataclass, field


@dataclass
class Panel:
    template: str
    context: dict = field(default_factory=dict)
    refresh_seconds: int | None = None  # the page reloads itself while something is in progress
    draws_image: bool = False  # shown in place of the page's still frame (a player of the loop)


INSTANCE_PANELS: list = []
STUDY_PANELS: list = []  # the same for the study page: (request, study) -> Panel | None


def instance_panels(request, instance) -> list[Panel]:
    panels = [provider(request, instance) for provider in INSTANCE_PANELS]
    return [p for p in panels if p is not None]


def study_panels(request, study) -> list[Panel]:
    panels = [provider(request, study) for provider in STUDY_PANELS]
    return [p for p in panels if p is not None]

# Keys other apps add to GET /api/instances/<uid>: (request, instance) -> dict merged into the answer.
INSTANCE_API_SECTIONS: list = []


def instance_api_sections(request, instance) -> dict:
    extra = {}
    for provider in INSTANCE_API_SECTIONS:
        extra.update(provider(request, instance))
    return extra


# -- the worklist (the study list) ---------------------------------------------------------
# Columns other apps fill for one page of studies: ``(studies) -> {study pk: {key: value}}``,
# one query per app and page; the template shows the keys it knows.
STUDY_LIST_COLUMNS: list = []
# Filters other apps offer: name → (label, ``(queryset) -> queryset``), applied before paging.
STUDY_LIST_FILTERS: dict = {}


def study_list_columns(studies) -> dict[int, dict]:
    columns: dict[int, dict] = {study.pk: {} for study in studies}
    for provider in STUDY_LIST_COLUMNS:
        for pk, values in provider(studies).items():
            columns.setdefault(pk, {}).update(values)
    return columns
