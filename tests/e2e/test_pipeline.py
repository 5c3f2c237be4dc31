"""The pipeline end to end: storescu sends echoes to `sonoloop serve`; the worker segments
every frame with the shipped model; the SEG is found by QIDO-RS, retrieved by WADO-RS,
valid (dciodvfy), mapped frame by frame; the measurements are in the API. A worker killed
mid-job is replaced and the job runs again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import requests
from requests.auth import HTTPBasicAuth
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_auth
from pydicom import dcmread

from sonoloop.dicom.seg import read_segmentation
from tests.conftest import ADMIN_PASSWORD, _descendants, make_server, require_tools

pytestmark = pytest.mark.e2e
AUTH = ("admin", ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_tools("storescu", "dciodvfy")
    srv = make_server(tmp_path_factory.mktemp("pipeline"), SONOLOOP_AUTO_ANALYSIS="1",
                      SONOLOOP_JOB_STALE_SECONDS="10").start()
    yield srv
    code = srv.stop()
    assert code == 0, srv.log()[-3000:]


def send(server, path, flag=None):
    result = subprocess.run(["storescu", "-R", *([flag] if flag else []), "-aec", server.ae_title, "127.0.0.1",
                             str(server.dicom_port), str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "E:" not in result.stderr, result.stderr


def wait_for_job(server, sop_uid, done_statuses=("done", "failed"), timeout=300, predicate=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        analysis = requests.get(f"{server.url}/api/instances/{sop_uid}/analysis", auth=AUTH, timeout=30).json()
        jobs = analysis.get("jobs", [])
        if predicate is not None:
            if predicate(analysis):
                return analysis
        elif jobs and jobs[0]["status"] in done_statuses:
            return analysis
        time.sleep(1)
    raise AssertionError(f"no finished job for {sop_uid} after {timeout} s:\n{server.log()[-3000:]}")


def check_seg(server, source_path, tmp_path, analysis) -> None:
    source = dcmread(source_path, stop_before_pixels=True)
    frames = int(source.get("NumberOfFrames", 1) or 1)
    client = DICOMwebClient(url=f"{server.url}/dicomweb", session=create_session_from_auth(HTTPBasicAuth(*AUTH)))
    found = client.search_for_series(study_instance_uid=source.StudyInstanceUID, search_filters={"Modality": "SEG"})
    assert len(found) == 1, found  # QIDO-RS finds the SEG series in the echo's study
    series_uid = found[0]["0020000E"]["Value"][0]
    instances = client.search_for_instances(study_instance_uid=source.StudyInstanceUID, series_instance_uid=series_uid)
    seg_uid = instances[0]["00080018"]["Value"][0]
    result = analysis["results"][0]
    assert result["segmentation"] == seg_uid
    seg = client.retrieve_instance(source.StudyInstanceUID, series_uid, seg_uid)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    errors = [line for line in subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True).stderr.splitlines()
              if line.startswith("Error")]
    assert errors == []
    segments = len(seg.SegmentSequence)
    assert segments >= 1 and seg.NumberOfFrames == segments * frames
    assert seg.SegmentSequence[0].SegmentAlgorithmName == result["model"]["name"]
    for k, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        if frames > 1:
            assert reference.ReferencedFrameNumber == k % frames + 1
        assert item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == k // frames + 1
    labels, names = read_segmentation(seg, frames)
    areas = result["measurements"]["areas"]
    lv = {v: k for k, v in names.items()}["LV"]
    pixel = result["measurements"]["areas"]["LV"][0] / max((labels[0] == lv).sum(), 1)
    np.testing.assert_allclose([(f == lv).sum() * pixel for f in labels], areas["LV"], rtol=1e-3)


def test_a_cine_sent_by_storescu_is_segmented_into_a_valid_seg_with_measurements(server, samples, tmp_path):
    send(server, samples["cine_jpeg"], "-xy")
    uid = dcmread(samples["cine_jpeg"], stop_before_pixels=True).SOPInstanceUID
    analysis = wait_for_job(server, uid)
    job = analysis["jobs"][0]
    assert job["status"] == "done", job
    assert job["frames_done"] == job["frames_total"] == 120
    check_seg(server, samples["cine_jpeg"], tmp_path, analysis)
    m = analysis["results"][0]["measurements"]
    source = dcmread(samples["cine_jpeg"], stop_before_pixels=True)
    reports = requests.get(f"{server.url}/dicomweb/studies/{source.StudyInstanceUID}/instances",
                           params={"Modality": "SR"}, auth=AUTH, timeout=30).json()
    assert [r["00080018"]["Value"][0] for r in reports] == [analysis["results"][0]["structured_report"]]
    assert m["calibrated"] and len(m["beats"]) >= 3  # four heart cycles in this four-second loop
    assert 25 < m["ef"] < 80 and m["edv"] > m["esv"] > 0 and m["la_volume"] > 0
    listing = server.cli("jobs", "list", "--status", "done").stdout
    assert uid in listing


def single_frame_echo(cine_path, out_path):
    """Frame 1 of the real cine as an uncompressed single-frame Ultrasound Image in a new study."""
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    from sonoloop.dicom.pixels import all_frames

    frames, _, _ = all_frames(cine_path)
    ds = dcmread(cine_path)
    for keyword in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "PixelData", "CineRate"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    ds.PixelData = frames[0].tobytes()
    ds["PixelData"].VR = "OB"
    ds.save_as(out_path, enforce_file_format=True)
    return out_path


def test_a_single_frame_echo_gets_its_seg_and_areas(server, samples, tmp_path):
    path = single_frame_echo(samples["cine_jpeg"], tmp_path / "single.dcm")
    send(server, path)
    uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
    analysis = wait_for_job(server, uid)
    assert analysis["jobs"][0]["status"] == "done", analysis["jobs"][0]
    check_seg(server, path, tmp_path, analysis)
    result = analysis["results"][0]
    assert result["measurements"]["areas"]["LV"][0] > 5  # cm² of an adult LV
    assert result["measurements"]["ef"] is None
    assert any("single frame" in f for f in result["measurements"]["flags"])


def test_a_killed_worker_is_replaced_and_its_job_runs_again(server, samples, tmp_path):
    from sonoloop.dicom.samples import write_copies

    (path,) = write_copies(samples["cine_30"], tmp_path / "copy", 1)  # 30 frames: seconds of model time
    send(server, path, "-xy")
    uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
    wait_for_job(server, uid, predicate=lambda a: a["jobs"] and a["jobs"][0]["status"] == "running"
                 and 0 < a["jobs"][0]["frames_done"] < 30, timeout=120)
    workers = [pid for pid in _descendants(server.process.pid)
               if b"worker" in open(f"/proc/{pid}/cmdline", "rb").read() and
               b"manage" in open(f"/proc/{pid}/cmdline", "rb").read()]
    assert workers, "no worker process found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    analysis = wait_for_job(server, uid, timeout=300)
    job = analysis["jobs"][0]
    assert job["status"] == "done" and job["attempt"] == 2, job
    assert len(analysis["results"]) == 1
    # each worker process loaded (and compiled) the model when it started, not inside a job
    assert len(re.findall(r"model \S+ \S+ ready \(engine [\w-]+\) in", server.log())) >= 2, server.log()[-3000:]


@pytest.mark.browser
def test_a_cardiologist_sees_the_measurements_and_the_area_plot(server, samples, tmp_path):
    require_tools("chromium")
    from playwright.sync_api import sync_playwright

    from tests.e2e.test_browser import CHROMIUM_ARGS

    uid = dcmread(samples["cine_jpeg"], stop_before_pixels=True).SOPInstanceUID
    wait_for_job(server, uid)  # sent by the first test of this module
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{server.url}/instances/{uid}/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", ADMIN_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#analysis")
        assert "LV ejection fraction" in page.inner_text("#measurements")
        plot = page.locator("svg.area-plot")
        assert plot.is_visible() and plot.locator("line.ed").count() >= 3 and plot.locator("line.es").count() >= 3
        assert "done" in page.inner_text("#jobs")
        page.click("#analysis a:has-text('DICOM Segmentation')")
        page.wait_for_selector("h1")
        assert "Segmentation Storage" in page.inner_text("h1")
        page.screenshot(path=str(tmp_path / "analysis.png"))
        browser.close()
