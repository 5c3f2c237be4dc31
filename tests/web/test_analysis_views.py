"""The instance page's analysis section, the jobs page and the JSON API."""

import json

import numpy as np
import pytest

from django.contrib.auth.models import User
from django.template.defaultfilters import floatformat
from django.test import Client

from sonoloop.ml.modelfolder import DEFAULT_MODEL
from sonoloop.web.analysis import services
from sonoloop.web.analysis.models import AnalysisJob, AnalysisResult
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


def test_the_instance_page_shows_the_verdict_the_area_plot_and_jobs(logged_in, analysed):
    instance, job = analysed
    page = logged_in.get(f"/instances/{instance.sop_instance_uid}/").content.decode()
    assert "Automatic analysis" in page and '<svg class="area-plot"' in page
    assert "30/30 frames" in page and DEFAULT_NAME in page and "DICOM Segmentation" in page
    assert 'http-equiv="refresh"' not in page  # nothing in progress
    # this one-second cut holds no complete ED→ES: no EF on the page, and the reason why
    assert "EF not reported" in page and "the loop holds no complete heart cycle" in page
    assert "LV ejection fraction" not in page
    assert '<dd id="implausible-frames">0 of 30' in page


def test_a_reliable_ef_is_shown_with_its_beats_and_spread(logged_in, analysed):
    """The page as a reliable result renders it: the result row holds measurements of a
    beating phantom (three beats) in place of the real loop's."""
    from sonoloop.echo.analyse import loop_check
    from sonoloop.echo.measure import Calibration, measure_loop
    from tests.echo.test_measure import heart

    instance, job = analysed
    loop = np.stack([heart(80, 34 + 6 * np.cos(2 * np.pi * n / 20)) for n in range(70)])
    classes = ["background", "LV", "MYO", "LA"]
    m = measure_loop(loop, classes, Calibration(0.05, 0.05, "cm"), None, 33.3, loop_check(loop, classes, None))
    assert m.reliable and len(m.beats) == 3
    AnalysisResult.objects.filter(pk=job.result.pk).update(measurements=m.as_dict())
    page = logged_in.get(f"/instances/{instance.sop_instance_uid}/").content.decode()
    assert "EF reliable" in page and "LV ejection fraction" in page
    assert f"<strong>{floatformat(m.ef, 1)} %</strong> (area–length, median of 3 beats" in page
    assert f"beats {floatformat(m.ef_spread['min'], 0)}–{floatformat(m.ef_spread['max'], 0)} %" in page
    assert page.count("<tr><td>") >= 3 and 'id="beats"' in page
    beats = m.as_dict()["beats"]
    for beat in beats:  # each beat's ED and ES frame is a link the player shows in place
        for key in ("ed", "es"):
            assert f'<a href="?frame={beat[key] + 1}" data-seek-frame="{beat[key] + 1}">' in page
    assert _player_config(page)["beats"] == [{"ed": b["ed"], "es": b["es"]} for b in beats]
    api = logged_in.get(f"/api/instances/{instance.sop_instance_uid}").json()["ejection_fraction"]
    assert api["value"] == m.ef and api["reliable"] and api["spread"]["beats"] == 3
    assert api["implausible_frames"] == 0 and len(api["beats"]) == 3


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
    ef = result["ejection_fraction"]
    assert ef["value"] is None and not ef["reliable"] and ef["reasons"] == ["no_beat"]
    assert ef["implausible_frames"] == 0 and ef["frames"] == 30 and "no complete heart cycle" in ef["verdict"]
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


def _player_config(page: str) -> dict | None:
    start = page.find('<script id="player-config" type="application/json">')
    if start < 0:
        return None
    body = page[page.index(">", start) + 1:page.index("</script>", start)]
    return json.loads(body)


def test_the_image_page_plays_the_loop_with_the_ai_segmentation_and_links_frames(logged_in, analysed):
    instance, job = analysed
    uid = instance.sop_instance_uid
    page = logged_in.get(f"/instances/{uid}/?frame=12").content.decode()
    config = _player_config(page)
    assert config["frames"] == 30 and config["frame"] == 12
    assert (config["rows"], config["columns"]) == (instance.rows, instance.columns)
    assert config["result"].startswith("AI result v1: ") and [s["name"] for s in config["structures"]] == ["LV", "MYO", "LA"]
    # what the player fetches answers: the file over WADO-URI and the AI's masks of every frame
    wado = logged_in.get(config["wadouri"].removeprefix("http://testserver"))
    assert wado.status_code == 200 and wado["Content-Type"] == "application/dicom"
    masks = logged_in.get(config["masks_api"]).json()
    assert masks["result_version"] == 1 and len(masks["masks"]) == 30
    assert f'id="player-edit" href="/instances/{uid}/editor/?frame=12"' in page  # one click to the editor
    assert 'id="frame-image"' in page  # the still frame, shown until the loop is ready or without WebGL
    assert page.count('id="frame-image"') == 1 and 'name="frame"' not in page  # the player replaces the form
    for asked, shown in (("abc", 1), ("999", 30), ("0", 1)):
        assert _player_config(logged_in.get(f"/instances/{uid}/?frame={asked}").content.decode())["frame"] == shown
    editor = logged_in.get(f"/instances/{uid}/editor/?frame=12").content.decode()
    assert '"open_frame": "12"' in editor


def test_without_an_ai_result_the_page_keeps_its_still_frame(logged_in, config, samples):
    instance = instance_store(samples["cine_30"].read_bytes()).instance  # queued, not run
    page = logged_in.get(f"/instances/{instance.sop_instance_uid}/").content.decode()
    assert _player_config(page) is None and 'id="frame-image"' in page and 'name="frame"' in page
    assert 'http-equiv="refresh"' in page  # until the first result is there
