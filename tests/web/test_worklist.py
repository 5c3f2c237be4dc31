"""The worklist (study list): per study the AI state, views, EF with its reliability, LA volume
and annotation states; the reader's filters; the rows refresh while a job runs."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from sonoloop.dicom.samples import write_copies
from sonoloop.web.analysis.models import AnalysisJob, AnalysisResult
from sonoloop.web.annotations.models import Annotation
from sonoloop.web.archive.store import instance_store
from tests.web.conftest import user_with_role

pytestmark = pytest.mark.django_db


def measurements(ef, reliable=True, view="A4C"):
    return {"view": view, "ef": ef if reliable else None, "reliable": reliable, "la_volume": 48.2,
            "units": {"volume": "mL"},
            "reliability": f"reliable: EF {ef} %" if reliable else "unreliable, no EF reported: the loop is too short"}


def result(instance, version, **kwargs):
    job = AnalysisJob.objects.create(instance=instance, status=AnalysisJob.DONE, frames_total=1, frames_done=1)
    AnalysisResult.objects.create(job=job, instance=instance, version=version, model_name="m", model_version="1",
                                  labels_key="x", measurements=measurements(**kwargs))
    return job


@pytest.fixture
def studies(config, samples, tmp_path):
    config(auto_analysis=False)
    paths = write_copies(samples["us_native"], tmp_path / "copies", 5, prefix="w")
    return [instance_store(p.read_bytes()).instance for p in paths]


@pytest.fixture
def reader(db):
    client = Client()
    client.force_login(user_with_role("reader", "reviewer"))
    return client


def listed(client, **params) -> str:
    response = client.get("/studies/", params)
    assert response.status_code == 200
    return response.content.decode()


def test_each_study_shows_its_ai_state_ef_views_and_annotations_and_the_filters_find_them(studies, reader):
    low, normal, failed, unreliable, running = studies
    result(low, 1, ef=34.6)
    result(normal, 1, ef=61.0)
    AnalysisJob.objects.create(instance=failed, status=AnalysisJob.FAILED, reason="no pixel data")
    result(unreliable, 1, ef=0, reliable=False)
    AnalysisJob.objects.create(instance=running, status=AnalysisJob.RUNNING, frames_total=120, frames_done=30)
    author = user_with_role("anna", "annotator")
    Annotation.objects.create(instance=normal, version=1, author=author, status=Annotation.SUBMITTED, document_key="d")
    Annotation.objects.create(instance=low, version=1, author=author, status=Annotation.DRAFT, document_key="d")

    page = listed(reader)
    assert page.count("<tr") == 6  # header + 5 studies
    assert "35 %" in page and "61 %" in page and "A4C" in page and "48 mL" in page
    assert 'ai-done' in page and 'ai-failed' in page and 'ai-unreliable' in page and "running 25 %" in page
    assert "1 submitted" in page and "1 draft" in page
    assert 'data-refresh="/studies/?rows=1"' in page  # a job runs: the rows refresh themselves

    def uids(html):
        return {s.series.study.patient.patient_id for s in studies if s.series.study.patient.patient_id in html}

    assert uids(listed(reader, show="ef-below-40")) == {low.series.study.patient.patient_id}
    assert uids(listed(reader, show="needs-review")) == {normal.series.study.patient.patient_id}
    problems = {failed.series.study.patient.patient_id, unreliable.series.study.patient.patient_id}
    assert uids(listed(reader, show="ai-problem")) == problems
    # a retry that succeeded clears the failure; a newer reliable result replaces an unreliable one
    result(failed, 1, ef=55.0)
    result(unreliable, 2, ef=38.0)
    assert uids(listed(reader, show="ai-problem")) == set()
    assert unreliable.series.study.patient.patient_id in listed(reader, show="ef-below-40")
    # the refresh asks for the rows only
    rows = reader.get("/studies/", {"rows": "1"}).content.decode()
    assert "<tr" in rows and "<form" not in rows and "running 25 %" in rows


def test_a_page_costs_the_same_queries_however_many_studies_it_shows(studies, reader):
    for n, instance in enumerate(studies):
        result(instance, 1, ef=40.0 + n)
    counts = []
    for size in (2, 5):
        from sonoloop.web.archive import views

        original = views.PAGE_SIZE
        views.PAGE_SIZE = size
        try:
            with CaptureQueriesContext(connection) as queries:
                listed(reader)
        finally:
            views.PAGE_SIZE = original
        counts.append(len(queries))
    assert counts[0] == counts[1], counts
