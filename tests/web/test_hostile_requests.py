"""The web server against a hostile network: bodies limited before they are read, no browser
Basic prompt, no cross-site forms through cached credentials, slow guessing, cheap honest
Basic clients, a query cap, the production settings that `check --deploy` wants."""

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.test import Client

from sonoloop.web import bodies
from sonoloop.web.accounts import auth
from sonoloop.web.archive import dicomweb, services
from sonoloop.web.archive.models import Instance
from tests.dicom.helpers import file_bytes
from tests.web.conftest import user_with_role

pytestmark = pytest.mark.django_db
BASIC = "Basic " + base64.b64encode(b"cardio:s3cret-pass").decode()


@pytest.fixture(autouse=True)
def _fresh_credential_cache():
    auth._verified.clear()
    yield
    auth._verified.clear()


@pytest.fixture
def admin(db):
    return user_with_role("cardio", "admin")


def test_a_large_body_from_someone_not_logged_in_is_refused_before_it_is_read(client, settings):
    big = b"x" * (bodies.SMALL_BODY_BYTES + 1)
    login = client.post("/login/", data=big, content_type="application/x-www-form-urlencoded")
    assert login.status_code == 413 and "at most" in login.json()["error"]
    client.cookies["csrftoken"] = "a" * 32
    upload = client.post("/upload/", data=big, content_type="multipart/form-data; boundary=XX")
    assert upload.status_code == 413
    assert list(Path(settings.FILE_UPLOAD_TEMP_DIR).glob("*.upload*")) == []


def test_read_body_stops_at_its_limit_also_for_a_chunked_body(rf):
    request = rf.post("/dicomweb/studies", data=b"", content_type="application/dicom")
    request.META.pop("CONTENT_LENGTH", None)
    request.META.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True,
                         "wsgi.input": io.BytesIO(b"y" * 101)})
    with pytest.raises(bodies.BodyTooLarge):
        bodies.read_body(request, 100)
    request.META["wsgi.input"] = io.BytesIO(b"y" * 100)
    assert bodies.read_body(request, 100) == b"y" * 100


def test_browsers_never_get_a_basic_password_prompt(client):
    program = client.get("/api/studies")
    assert program.status_code == 401 and program["WWW-Authenticate"].startswith("Basic")
    for headers in ({"HTTP_ACCEPT": "text/html,application/xhtml+xml"}, {"HTTP_SEC_FETCH_MODE": "cors"}):
        browser = client.get("/api/studies", **headers)
        assert browser.status_code == 401 and "WWW-Authenticate" not in browser


def test_basic_credentials_cannot_carry_a_cross_site_form(client, admin):
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        forged = client.post("/api/models/anything/rollback", data='{"force": true}', content_type=content_type,
                             HTTP_AUTHORIZATION=BASIC)
        assert forged.status_code == 415, content_type
    real = client.post("/api/models/anything/rollback", data="{}", content_type="application/json",
                       HTTP_AUTHORIZATION=BASIC)
    assert real.status_code != 415


def test_an_honest_basic_client_pays_one_password_hash_per_minute(client, admin, monkeypatch):
    hashes = []
    original = PBKDF2PasswordHasher.verify

    def counted(self, password, encoded):
        hashes.append(1)
        return original(self, password, encoded)

    monkeypatch.setattr(PBKDF2PasswordHasher, "verify", counted)
    for _ in range(5):
        assert client.get("/api/studies", HTTP_AUTHORIZATION=BASIC).status_code == 200
    assert len(hashes) == 1
    admin.is_active = False
    admin.save()
    assert client.get("/api/studies", HTTP_AUTHORIZATION=BASIC).status_code == 401  # not kept by the cache


def test_guessing_is_throttled_per_user_before_any_hash_and_the_login_page_says_so(client, admin, monkeypatch):
    wrong = "Basic " + base64.b64encode(b"cardio:guess").decode()
    for _ in range(10):
        assert client.get("/api/studies", HTTP_AUTHORIZATION=wrong).status_code == 401
    throttled = client.get("/api/studies", HTTP_AUTHORIZATION=BASIC)  # even the right password waits
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) > 0
    page = Client().post("/login/", {"username": "cardio", "password": "s3cret-pass"})
    assert page.status_code == 200 and "Too many failed sign-ins" in page.content.decode()
    user_with_role("other", "viewer")
    other = Client().post("/login/", {"username": "other", "password": "s3cret-pass"})
    assert other.status_code == 302  # another user from the same address is not locked out


def test_qido_answers_at_most_its_maximum_and_says_how_to_get_more(client, admin, config, samples, monkeypatch):
    config(auto_analysis=False)
    for n in range(3):
        services.instance_store(file_bytes(samples["us_native"], StudyInstanceUID=f"1.2.826.0.1.3680043.8.498.61{n}",
                                           SeriesInstanceUID=f"1.2.826.0.1.3680043.8.498.62{n}",
                                           SOPInstanceUID=f"1.2.826.0.1.3680043.8.498.63{n}"))
    monkeypatch.setattr(dicomweb, "QIDO_MAX_RESULTS", 2)
    answer = client.get("/dicomweb/studies", {"limit": "1000"}, HTTP_AUTHORIZATION=BASIC)
    assert len(json.loads(answer.content)) == 2 and "offset=2" in answer["Warning"]
    rest = client.get("/dicomweb/studies", {"offset": "2"}, HTTP_AUTHORIZATION=BASIC)
    assert len(json.loads(rest.content)) == 1 and "Warning" not in rest
    bad = client.get("/dicomweb/studies", {"PatientName": "*" * 20}, HTTP_AUTHORIZATION=BASIC)
    assert bad.status_code == 400 and "at most" in bad.json()["error"]
    assert Instance.objects.count() == 3


def test_the_production_settings_pass_check_deploy(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SONOLOOP_", "DJANGO_"))}
    env.update(SONOLOOP_DATA_DIR=str(tmp_path / "data"), SONOLOOP_PUBLIC_URL="https://echo.hospital.example")
    sonoloop = str(Path(sys.executable).with_name("sonoloop"))
    result = subprocess.run([sonoloop, "manage", "check", "--deploy", "--fail-level", "WARNING"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    plain = subprocess.run([sonoloop, "manage", "check", "--deploy", "--fail-level", "WARNING"],
                           env={**env, "SONOLOOP_PUBLIC_URL": ""}, capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0 and "W012" in plain.stdout + plain.stderr  # plain HTTP: cookies not secure
    assert oct((tmp_path / "data").stat().st_mode & 0o777) == "0o700"


def test_every_page_carries_a_content_security_policy_without_inline_scripts(client, admin):
    client.force_login(admin)
    page = client.get("/studies/")
    policy = page["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in policy and "unsafe-inline" not in policy.split("style-src")[0]
    assert "frame-ancestors 'none'" in policy
