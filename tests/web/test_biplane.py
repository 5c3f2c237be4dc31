"""Biplane LV volumes when a study has an apical 4-chamber and an apical 2-chamber loop."""

import io

import pytest

from django.contrib.auth.models import User
from django.template.defaultfilters import floatformat
from django.test import Client
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from sonoloop.dicom.views import apical_view
from sonoloop.web.analysis import services
from sonoloop.web.analysis.models import AnalysisJob, StudyMeasurement
from sonoloop.web.archive.services import instance_store
from tests.web.conftest import user_with_role

pytestmark = pytest.mark.django_db


def labelled_copy(path, view_code: str, meaning: str) -> bytes:
    ds = dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = view_code, "SCT", meaning
    ds.ViewCodeSequence = [code]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_view_codes_are_read_by_code_or_meaning():
    ds = Dataset()
    assert apical_view(ds) is None
    code = Dataset()
    code.CodeValue, code.CodeMeaning = "399232001", "Apical two chamber"
    ds.ViewCodeSequence = [code]
    assert apical_view(ds) == "A2C"
    code.CodeValue, code.CodeMeaning = "G-A19C", "Apical four chamber"  # a legacy SRT code
    assert apical_view(ds) == "A4C"


def test_both_apical_views_give_biplane_volumes_on_the_study(config, samples):
    four = instance_store(labelled_copy(samples["cine_60"], "399214001", "Apical four chamber")).instance
    services.job_run(AnalysisJob.objects.get(instance=four).pk)
    assert not StudyMeasurement.objects.exists()  # one view alone: no biplane
    two = instance_store(labelled_copy(samples["cine_60"], "399232001", "Apical two chamber")).instance
    services.job_run(AnalysisJob.objects.get(instance=two).pk)
    (measurement,) = StudyMeasurement.objects.all()
    assert measurement.four_chamber.instance == four and measurement.two_chamber.instance == two
    single = four.analysis_results.get().measurements
    assert single["view"] == "A4C" and single["reliable"], single["reliability"]
    # the same loop in both "views": the biplane disks are the single-plane disks of the beat
    # the results point to (the one nearest the median EF)
    (beat,) = [b for b in single["beats"] if b["ed"] == single["ed_frame"]]
    assert measurement.values["edv"] == pytest.approx(beat["edv_disks"], rel=1e-3)
    assert measurement.values["esv"] == pytest.approx(beat["esv_disks"], rel=1e-3)
    assert measurement.values["units"] == "mL" and measurement.values["flags"] == []

    client = Client()
    client.force_login(user_with_role("cardio", "viewer"))
    study_uid = four.series.study.study_instance_uid
    page = client.get(f"/studies/{study_uid}/").content.decode()
    assert "biplane method of disks" in page and f"{floatformat(measurement.values['ef'], 1)} %" in page
    data = client.get(f"/api/studies/{study_uid}/measurements").json()
    assert data["measurements"][0]["values"]["edv"] == measurement.values["edv"]
    assert client.get("/api/studies/1.2.3/measurements").status_code == 404
