"""The instance page's analysis section, the jobs page and the JSON API."""

import json

import pytest

from django.contrib.auth.models import User
from django.template.defaultfilters import floatformat
from django.test import Client

from sonoloop.ml.commands import DEFAULT_MODEL
from sonoloop.web.analysis import services
from sonoloop.web.analysis.models import AnalysisJob
from sonoloop.web.archive.services import instance_store
from tests.web.conftest import user_with_role

pytestmark = pytest.mark.django_db
DEFAULT_NAME = json.loads((DEFAULT_MODEL / "model.json").read_text())["name"]


@pytest.fixture
def logged_in(db):
    client = Client()
    client.force_login(user_with_role("cardio", "admin"))
    return client


@pytest.fixture
def analysed(config, samples):
    instance = instance_store(samples["cine_30"].read_bytes()).instance
    job = AnalysisJob.objects.get(instance=instance)
    services.job_run(job.pk)
    return instance, job


def test_the_instance_page_shows_measurements_the_area_plot_and_jobs(logged_in, analysed):
    instance, job = analysed
    page = logged_in.get(f"/instances/{instance.sop_instance_uid}/").content.decode()
    assert "Automatic analysis" in page and "LV ejection fraction" in page
    assert '<svg class="area-plot"' in page and 'class="ed"' in page and 'class="es"' in page
    assert "30/30 frames" in page and DEFAULT_NAME in page and "DICOM Segmentation" in page
    assert 'http-equiv="refresh"' not in page  # nothing in progress
    result = job.result
    assert f"{floatformat(result.measurements['ef'], 1)} %" in page  # as the template rounds


def test_a_queued_job_refreshes_the_page_and_a_finished_one_can_be_run_again(logged_in, config, samples):
    instance = instance_store(samples["cine_30"].read_bytes()).instance
    page = logged_in.get(f"/instances/{instance.sop_instance_uid}/").content.decode()
    assert 'http-equiv="refresh"' in page and "queued" in page
    job = AnalysisJob.objects.get(instance=instance)
    AnalysisJob.objects.filter(pk=job.pk).update(status=AnalysisJob.FAILED, reason="the pixel data cannot be decoded: x")
    page = logged_in.get(f"/instances/{instance.sop_instance_uid}/").content.decode()
    assert "the pixel data cannot be decoded" in page and ">Retry<" in page
    response = logged_in.post(f"/jobs/{job.pk}/retry", follow=True)
    assert response.status_code == 200 and "queued (a new run of job" in response.content.decode()
    assert AnalysisJob.objects.filter(instance=instance, retry_of=job, status=AnalysisJob.QUEUED).exists()


def test_the_jobs_page_filters_by_status(logged_in, config, samples):
    instance_store(samples["sr"].read_bytes())
    page = logged_in.get("/jobs/?status=skipped").content.decode()
    assert "not an echo image" in page and "skipped (1)" in page
    assert "No jobs with status failed" in logged_in.get("/jobs/?status=failed").content.decode()
    assert Client().get("/jobs/").status_code == 302  # login required


def test_json_api_for_jobs_and_results(logged_in, analysed, samples):
    instance, job = analysed
    data = logged_in.get(f"/api/instances/{instance.sop_instance_uid}/analysis").json()
    assert data["jobs"][0]["status"] == "done" and data["jobs"][0]["frames_total"] == 30
    result = data["results"][0]
    assert result["version"] == 1 and result["model"]["name"] == DEFAULT_NAME
    assert result["segmentation"] and result["measurements"]["units"]["volume"] == "mL"
    assert logged_in.get(f"/api/jobs/{job.pk}").json()["result"]["version"] == 1
    assert logged_in.get("/api/jobs?status=done").json()["jobs"][0]["id"] == job.pk
    assert logged_in.get("/api/jobs?status=bogus").status_code == 400
    assert logged_in.get("/api/jobs/99999").status_code == 404
    assert logged_in.get("/api/instances/1.2.3/analysis").status_code == 404
    assert logged_in.get(f"/api/jobs/{job.pk}/retry").status_code == 405
    created = logged_in.post(f"/api/jobs/{job.pk}/retry")
    assert created.status_code == 201 and created.json()["retry_of"] == job.pk
    again = logged_in.post(f"/api/jobs/{created.json()['id']}/retry")
    assert again.status_code == 409 and "wait for it to finish" in again.json()["error"]
    assert Client().get("/api/jobs").status_code == 401
