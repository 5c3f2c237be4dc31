"""The access trail: who read, received, sent or changed whose data, from where, when — one
row per event, written by the services, listed for admins, exported as RFC 5424 syslog lines
carrying DICOM audit messages (PS3.15 A.5)."""

import base64
import re
import xml.etree.ElementTree as ET

import pytest
from django.core.management import call_command
from django.test import Client

from sonoloop.supervisor import children
from sonoloop.web.audit import services as audit_services
from sonoloop.web.audit.models import AuditEvent
from sonoloop.web.archive import services
from tests.web.conftest import user_with_role

pytestmark = pytest.mark.django_db
BASIC = "Basic " + base64.b64encode(b"reader:s3cret-pass").decode()
SYSLOG = re.compile(r"^<85>1 \S+ \S+ sonoloop - DICOM\+RFC3881 - \ufeff(<\?xml .*</AuditMessage>)$")


@pytest.fixture(autouse=True)
def _fresh_repeat_memory():
    audit_services._recent.clear()  # the once-a-minute memory outlives each test's database


@pytest.fixture
def echo(config, samples):
    config(auto_analysis=False)
    return services.instance_store(samples["cine_30"].read_bytes()).instance


@pytest.fixture
def reader(db):
    return user_with_role("reader", "viewer")


def test_a_search_records_who_asked_what_from_where(client, reader, echo):
    client.get("/dicomweb/studies", {"PatientName": "Anon*"}, HTTP_AUTHORIZATION=BASIC, REMOTE_ADDR="10.1.2.3")
    (event,) = AuditEvent.objects.filter(event_id="110112")
    assert (event.who, event.address, event.user_id) == ("reader", "10.1.2.3", reader.pk)
    assert "PatientName=Anon*" in event.detail and event.source == "web"


def test_viewing_a_cine_frame_by_frame_is_one_row_and_a_download_another(client, reader, echo):
    study = echo.series.study
    client.force_login(reader)
    client.get(f"/instances/{echo.sop_instance_uid}/")
    for frame in range(1, 6):
        client.get(f"/dicomweb/studies/{study.study_instance_uid}/series/{echo.series.series_instance_uid}"
                   f"/instances/{echo.sop_instance_uid}/frames/{frame}")
    reads = AuditEvent.objects.filter(event_id="110103", action="R", who="reader")
    assert reads.count() == 1 and reads[0].patient_id == study.patient.patient_id
    client.get(f"/instances/{echo.sop_instance_uid}/file.dcm")
    (sent,) = AuditEvent.objects.filter(event_id="110104", action="R")
    assert (sent.study_instance_uid, sent.instances, sent.detail) == (study.study_instance_uid, 1, "download")


def test_stored_images_and_failed_sign_ins_are_recorded(client, config, samples):
    config(auto_analysis=False)
    admin = user_with_role("boss", "admin")
    client.force_login(admin)
    with samples["us_native"].open("rb") as fh:
        client.post("/upload/", {"files": [fh]})
    (received,) = AuditEvent.objects.filter(event_id="110104", action="C")
    assert (received.who, received.instances, received.detail) == ("boss", 1, "upload")
    Client().post("/login/", {"username": "boss", "password": "wrong"})
    (failed,) = AuditEvent.objects.filter(event_id="110114", outcome=4)
    assert failed.who == "boss"


def test_the_trail_exports_as_rfc5424_lines_of_dicom_audit_messages(client, reader, echo, capsys):
    client.get("/dicomweb/studies", {"PatientID": "X1"}, HTTP_AUTHORIZATION=BASIC)
    call_command("audit_export")
    lines = capsys.readouterr().out.splitlines()
    assert lines
    for line in lines:
        message = ET.fromstring(SYSLOG.match(line).group(1).encode())
        assert message.tag == "AuditMessage"
        assert message.find("EventIdentification/EventID").get("codeSystemName") == "DCM"
    query = [ET.fromstring(SYSLOG.match(line).group(1).encode()) for line in lines if 'csd-code="110112"' in line][0]
    assert query.find("ActiveParticipant").get("UserID") == "reader"
    asked = base64.b64decode(query.find(".//ParticipantObjectQuery").text).decode()
    assert "PatientID=X1" in asked


def test_admins_see_the_trail_and_nobody_else_does(client, reader, echo):
    client.force_login(reader)
    client.get(f"/instances/{echo.sop_instance_uid}/")
    assert client.get("/audit/").status_code == 403
    client.force_login(user_with_role("boss", "admin"))
    page = client.get("/audit/", {"who": "reader"})
    assert page.status_code == 200 and "image page" in page.content.decode()


def test_the_access_log_leaves_query_strings_out(settings):
    web = children(settings.CONFIG)[0]
    access_format = web.argv[web.argv.index("--access-logformat") + 1]
    assert "%(U)s" in access_format and "%(r)s" not in access_format and "%(q)s" not in access_format


def test_an_annotation_saved_from_the_editor_is_recorded_with_its_address(client, echo):
    import json

    import numpy as np

    from sonoloop.web.annotations.document import rle_encode

    client.force_login(user_with_role("anna", "annotator"))
    mask = np.zeros((echo.rows, echo.columns), np.uint8)
    mask[10:30, 10:30] = 1
    body = {"schema_version": 1, "rows": echo.rows, "columns": echo.columns, "number_of_frames": 30,
            "frames": [3], "masks": {"3": {"encoding": "rle", "counts": rle_encode(mask)}}}
    response = client.post(f"/api/instances/{echo.sop_instance_uid}/annotations", json.dumps(body),
                           content_type="application/json", REMOTE_ADDR="10.9.8.7")
    assert response.status_code == 201, response.content
    (event,) = AuditEvent.objects.filter(who="anna", detail__startswith="annotation v1 saved")
    assert event.address == "10.9.8.7" and event.action == "C"
