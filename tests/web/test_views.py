import base64
import json

import pytest

from django.contrib.auth.models import User
from django.test import Client

from sonoloop.web.accounts.models import ApiToken
from sonoloop.web.archive import services
from sonoloop.web.archive.models import Instance
from tests.web.conftest import user_with_role

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(db):
    return user_with_role("cardio", "admin")


@pytest.fixture
def logged_in(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def stored(config, samples):
    return {key: services.instance_store(samples[key].read_bytes()).instance for key in ("cine_jpeg", "us_rle_palette", "sr")}


def test_pages_require_login(client, stored):
    for url in ("/studies/", f"/instances/{stored['cine_jpeg'].sop_instance_uid}/", "/upload/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_study_list_searches_by_patient_name(logged_in, stored):
    page = logged_in.get("/studies/", {"q": "PLA"}).content.decode()
    assert "PLA" in page and "OB^^^^" not in page
    assert "No study matches" in logged_in.get("/studies/", {"q": "nobody-here"}).content.decode()


def test_drill_down_from_study_to_instance(logged_in, stored):
    cine = stored["cine_jpeg"]
    study_page = logged_in.get(f"/studies/{cine.series.study.study_instance_uid}/").content.decode()
    assert f"/series/{cine.series.series_instance_uid}/" in study_page
    series_page = logged_in.get(f"/series/{cine.series.series_instance_uid}/").content.decode()
    assert f"/instances/{cine.sop_instance_uid}/" in series_page
    instance_page = logged_in.get(f"/instances/{cine.sop_instance_uid}/").content.decode()
    assert "Ultrasound Multi-frame Image Storage" in instance_page and "120" in instance_page
    assert "JPEG Baseline" in instance_page


def test_preview_renders_a_png_of_the_requested_frame(logged_in, stored):
    uid = stored["cine_jpeg"].sop_instance_uid
    response = logged_in.get(f"/instances/{uid}/preview.png", {"frame": 60, "size": 128})
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    assert logged_in.get(f"/instances/{uid}/preview.png", {"frame": 121}).status_code == 400
    palette = logged_in.get(f"/instances/{stored['us_rle_palette'].sop_instance_uid}/preview.png")
    assert palette.status_code == 200
    assert logged_in.get(f"/instances/{stored['sr'].sop_instance_uid}/preview.png").status_code == 404


def test_upload_stores_good_files_and_explains_bad_ones(logged_in, config, samples):
    raw = samples["us_j2k"].read_bytes()
    with samples["us_j2k"].open("rb") as good:
        from django.core.files.uploadedfile import SimpleUploadedFile

        bad = SimpleUploadedFile("broken.dcm", raw[: len(raw) // 3])
        response = logged_in.post("/upload/", {"files": [good, bad]})
    page = response.content.decode()
    assert response.status_code == 200
    assert "stored" in page and "not stored" in page
    assert Instance.objects.count() == 1


def test_api_accepts_basic_auth_and_tokens(client, user, stored):
    uid = stored["cine_jpeg"].sop_instance_uid
    assert client.get(f"/api/instances/{uid}").status_code == 401
    basic = "Basic " + base64.b64encode(b"cardio:s3cret-pass").decode()
    body = client.get(f"/api/instances/{uid}", HTTP_AUTHORIZATION=basic).json()
    assert body["number_of_frames"] == 120 and body["study"]["patient"]["name"] == "PLA"
    _, token = ApiToken.issue(user, "script")
    assert client.get(f"/api/instances/{uid}", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200
    wrong = client.get(f"/api/instances/{uid}", HTTP_AUTHORIZATION="Token sl_wrong")
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]


def test_errors_are_messages_not_tracebacks(logged_in, stored, settings):
    settings.DEBUG = False
    page = logged_in.get("/studies/1.2.3.4.5/")
    assert page.status_code == 404 and b"Traceback" not in page.content
    api = logged_in.get("/api/instances/1.2.3")
    assert api.status_code == 404 and "no instance" in api.json()["error"]


def test_stow_refuses_bad_requests_without_changing_anything(client, user, stored):
    basic = "Basic " + base64.b64encode(b"cardio:s3cret-pass").decode()
    before = Instance.objects.count()
    wrong_type = client.post("/dicomweb/studies", data=b"x", content_type="application/json", HTTP_AUTHORIZATION=basic)
    assert wrong_type.status_code == 415
    no_boundary = client.post("/dicomweb/studies", data=b"x", content_type='multipart/related; type="application/dicom"',
                              HTTP_AUTHORIZATION=basic)
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["error"]
    body = b'--XX\r\nContent-Type: application/dicom\r\n\r\n' + b"\x00" * 200 + b"\r\n--XX--\r\n"
    garbage = client.post("/dicomweb/studies", data=body, content_type='multipart/related; type="application/dicom"; boundary=XX',
                          HTTP_AUTHORIZATION=basic)
    assert garbage.status_code == 409
    failed = json.loads(garbage.content)["00081198"]["Value"][0]
    assert failed["00081197"]["Value"][0] >= 0xC000
    assert Instance.objects.count() == before


def test_an_unexpected_error_shows_a_message_not_a_traceback(logged_in, stored, settings, monkeypatch):
    settings.DEBUG = False

    def broken(instance):
        raise RuntimeError("secret patient detail in an exception")

    monkeypatch.setattr(services, "instance_attributes", broken)
    logged_in.raise_request_exception = False
    page = logged_in.get(f"/instances/{stored['cine_jpeg'].sop_instance_uid}/")
    assert page.status_code == 500
    body = page.content.decode()
    assert "Something went wrong" in body
    assert "secret patient detail" not in body and "Traceback" not in body


def test_stow_to_a_study_refuses_an_instance_of_another_study(client, user, config, samples):
    config(auto_analysis=False)
    basic = "Basic " + base64.b64encode(b"cardio:s3cret-pass").decode()
    part = samples["us_native"].read_bytes()
    body = b'--XX\r\nContent-Type: application/dicom\r\n\r\n' + part + b"\r\n--XX--\r\n"
    response = client.post("/dicomweb/studies/1.2.826.0.1.3680043.8.498.1", data=body, HTTP_AUTHORIZATION=basic,
                           content_type='multipart/related; type="application/dicom"; boundary=XX')
    assert response.status_code == 409
    failed = json.loads(response.content)["00081198"]["Value"][0]
    assert failed["00081197"]["Value"][0] == 0xA900
    assert Instance.objects.count() == 0


def test_names_from_any_character_set_are_stored_decoded_shown_formatted_and_searched(config):
    """pydicom's real files in Latin-1 and in Japanese (ISO 2022 IR 87, three name groups)."""
    from pydicom.data import get_charset_files

    config(auto_analysis=False)
    for name in ("chrFren.dcm", "chrH31.dcm"):
        services.instance_store(open(get_charset_files(name)[0], "rb").read())
    client = Client()
    client.force_login(user_with_role("viewer1", "viewer"))
    page = client.get("/studies/").content.decode()
    assert "Buc, Jérôme" in page and "Yamada, Tarou (山田 太郎; やまだ たろう)" in page
    assert "Buc^J" not in page
    found = client.get("/studies/", {"q": "山田"}).content.decode()
    assert "Yamada, Tarou" in found and "Buc, Jérôme" not in found
