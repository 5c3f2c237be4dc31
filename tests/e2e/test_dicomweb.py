"""DICOMweb against a running `sonoloop serve`, with dicomweb-client as the real client."""

from __future__ import annotations

import uuid

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_auth
from pydicom import dcmread
from requests.auth import HTTPBasicAuth

from tests.conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(server):
    session = create_session_from_auth(HTTPBasicAuth("admin", ADMIN_PASSWORD))
    return DICOMwebClient(url=f"{server.url}/dicomweb", session=session)


@pytest.fixture(scope="module")
def stowed(client, samples):
    datasets = [dcmread(samples[k]) for k in ("cine_jpeg", "us_rle_palette", "us_j2k", "sr")]
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 4
    return {k: ds for k, ds in zip(("cine_jpeg", "us_rle_palette", "us_j2k", "sr"), datasets)}


def test_qido_searches_studies_series_and_instances(client, stowed):
    cine = stowed["cine_jpeg"]
    studies = client.search_for_studies(search_filters={"PatientName": "PLA"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [cine.StudyInstanceUID]
    assert studies[0]["00201208"]["Value"][0] == 1  # NumberOfStudyRelatedInstances
    series = client.search_for_series(study_instance_uid=cine.StudyInstanceUID)
    assert series[0]["00080060"]["Value"] == ["US"]
    instances = client.search_for_instances(study_instance_uid=cine.StudyInstanceUID,
                                            series_instance_uid=cine.SeriesInstanceUID)
    assert instances[0]["00280008"]["Value"] == [120]
    dated = client.search_for_studies(search_filters={"StudyDate": "20040101-20111231"})
    assert len(dated) == 2
    assert len(client.search_for_studies(limit=1)) == 1
    assert client.search_for_studies(search_filters={"PatientName": "Nobody"}) == []


def test_wado_rs_returns_the_stored_instance_and_its_metadata(client, stowed):
    cine = stowed["cine_jpeg"]
    got = client.retrieve_instance(cine.StudyInstanceUID, cine.SeriesInstanceUID, cine.SOPInstanceUID)
    assert got.SOPInstanceUID == cine.SOPInstanceUID and got.PixelData == cine.PixelData
    meta = client.retrieve_instance_metadata(cine.StudyInstanceUID, cine.SeriesInstanceUID, cine.SOPInstanceUID)
    assert meta["00280008"]["Value"] == [120]
    series = client.retrieve_series(cine.StudyInstanceUID, cine.SeriesInstanceUID)
    assert [ds.SOPInstanceUID for ds in series] == [cine.SOPInstanceUID]


def test_wado_rs_frames_are_decoded_pixels(client, stowed):
    cine = stowed["cine_jpeg"]
    frames = client.retrieve_instance_frames(cine.StudyInstanceUID, cine.SeriesInstanceUID, cine.SOPInstanceUID,
                                             frame_numbers=[1, 60], media_types=("application/octet-stream",))
    expected = cine.pixel_array
    assert len(frames) == 2
    assert frames[0] == expected[0].tobytes() and frames[1] == expected[59].tobytes()


def test_wado_uri_serves_the_file_for_cornerstone(server, stowed):
    us = stowed["us_rle_palette"]
    url = (f"{server.url}/dicomweb/wado?requestType=WADO&studyUID={us.StudyInstanceUID}"
           f"&seriesUID={us.SeriesInstanceUID}&objectUID={us.SOPInstanceUID}&contentType=application/dicom")
    response = requests.get(url, auth=("admin", ADMIN_PASSWORD), timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/dicom"
    from io import BytesIO

    assert dcmread(BytesIO(response.content)).SOPInstanceUID == us.SOPInstanceUID
    assert requests.get(url, timeout=30).status_code == 401
    missing = requests.get(url.replace(us.SOPInstanceUID, "1.2.3"), auth=("admin", ADMIN_PASSWORD), timeout=30)
    assert missing.status_code == 404 and "no instance" in missing.json()["error"]


def test_qido_rejects_unknown_attributes_with_a_message(server, stowed):
    response = requests.get(f"{server.url}/dicomweb/studies?NotAnAttribute=1", auth=("admin", ADMIN_PASSWORD), timeout=30)
    assert response.status_code == 400 and "NotAnAttribute" in response.json()["error"]


def test_stow_reports_partial_failure_and_keeps_what_was_stored(client, server, stowed, samples):
    good = dcmread(samples["jpeg_ls"])
    broken = dcmread(samples["us_native"])
    del broken.SeriesInstanceUID
    body_parts = []
    from io import BytesIO

    for ds in (good, broken):
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        body_parts.append(buffer.getvalue())
    boundary = uuid.uuid4().hex.encode()
    body = b"".join(b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in body_parts)
    body += b"--" + boundary + b"--\r\n"
    response = requests.post(f"{server.url}/dicomweb/studies", data=body, auth=("admin", ADMIN_PASSWORD), timeout=60,
                             headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary.decode()}'})
    assert response.status_code == 202
    result = response.json()
    assert result["00081199"]["Value"][0]["00081155"]["Value"] == [good.SOPInstanceUID]
    assert result["00081198"]["Value"][0]["00081197"]["Value"] == [0xC001]
    cine = stowed["cine_jpeg"]
    still = client.retrieve_instance(cine.StudyInstanceUID, cine.SeriesInstanceUID, cine.SOPInstanceUID)
    assert still.PixelData == cine.PixelData
