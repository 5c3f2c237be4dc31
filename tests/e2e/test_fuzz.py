"""A fuzz corpus over real associations and real HTTP: the node and the web server stay up,
every broken dataset and malformed body gets a refusal, nothing is indexed, nothing is lost.

The default run sends the 564-case corpus of tests/dicom/fuzz.py; `-m slow` sends it five
times over with other random draws.
"""

from __future__ import annotations

import base64
import itertools
import json

import pytest
import requests
from pydicom import dcmread
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification

from sonoloop.dicom.samples import sample_path
from sonoloop.dicom.reactor import keep_responses
from tests.conftest import ADMIN_PASSWORD, make_server
from tests.dicom.fuzz import SOURCES, corpus

pytestmark = pytest.mark.e2e
REFUSALS = (0x0124, 0xA700, 0xA702, 0xA900, 0xC000, 0xC001, 0xC002, 0xC003)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    srv = make_server(tmp_path_factory.mktemp("fuzz")).start()
    yield srv
    assert srv.stop() == 0


def _contexts(cases):
    wanted = set()
    for name in SOURCES:
        meta = dcmread(sample_path(name), stop_before_pixels=True).file_meta
        wanted.add((meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID))
    return [build_context(sop, syntax) for sop, syntax in sorted(wanted)] + [build_context(Verification)]


def _send_all(server, cases, tmp_path, monkeypatch) -> list[tuple[str, int | None]]:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as they are
    answers = []
    ae = AE(ae_title="FUZZER")
    assoc = None
    for n, case in enumerate(cases):
        if assoc is None or not assoc.is_established:
            assoc = ae.associate("127.0.0.1", server.dicom_port, contexts=_contexts(cases), ae_title=server.ae_title)
            assert assoc.is_established, f"the node stopped accepting associations at case {n}"
            keep_responses(assoc)  # many messages on one association (see sonoloop.dicom.reactor)
        path = tmp_path / "case.dcm"
        path.write_bytes(case.data)
        answer = assoc.send_c_store(path)
        answers.append((f"{case.source}:{case.name}", answer.Status if "Status" in answer else None))
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    return answers


def _assert_all_refused_and_nothing_kept(server, answers, tmp_path):
    accepted = [(name, status) for name, status in answers if status not in REFUSALS]
    assert accepted == [], f"{len(accepted)} broken datasets were not refused: {accepted[:10]}"
    assert list((server.data_dir / "objects").rglob("*.dcm")) == []
    assert [p for p in (server.data_dir / "tmp").rglob("*") if p.is_file()] == []
    found = requests.get(f"{server.url}/dicomweb/instances", auth=("admin", ADMIN_PASSWORD), timeout=30)
    assert found.status_code == 200 and found.json() == []


def test_five_hundred_broken_datasets_are_each_refused_over_real_associations(fuzzed, tmp_path, monkeypatch):
    data_dir = sample_path(SOURCES[0]).parent
    cases = corpus(data_dir)
    assert len(cases) >= 500
    answers = _send_all(fuzzed, cases, tmp_path, monkeypatch)
    _assert_all_refused_and_nothing_kept(fuzzed, answers, tmp_path)


@pytest.mark.slow
def test_the_long_fuzz_run(fuzzed, tmp_path, monkeypatch):
    cases = corpus(sample_path(SOURCES[0]).parent, seed=99, repeats=5)
    _assert_all_refused_and_nothing_kept(fuzzed, _send_all(fuzzed, cases, tmp_path, monkeypatch), tmp_path)


# -- HTTP: malformed bodies for every POST endpoint ------------------------------------------

POST_ENDPOINTS = [
    "/login/", "/logout/", "/upload/", "/dicomweb/studies", "/dicomweb/studies/1.2.3",
    "/api/instances/1.2.3/annotations", "/api/annotations/1/status", "/api/annotations/1/export",
    "/api/jobs/1/retry", "/api/retraining", "/api/retraining/1/cancel", "/api/models",
    "/api/models/default/promote", "/api/models/default/rollback", "/jobs/1/retry", "/models/retrain",
    "/models/retraining/1/cancel", "/models/default/promote", "/models/default/rollback",
]
BODIES = [
    ("application/json", b"{"),
    ("application/json", b"[1, 2, 3]"),
    ("application/json", b'{"status": {"$gt": ""}, "force": "yes", "strategy": null}'),
    ("application/json", b"[" * 5000 + b"]" * 5000),
    ("application/json", json.dumps({"schema_version": 1, "frames": [1], "masks": {"1": {
        "encoding": "rle", "counts": [1, 2**62, 1, 2**62, 1, 2**62, 1, 2**62 + 4]}}}).encode()),
    ("application/json", b"\xff\xfe\x00garbage"),
    ("text/plain", b'{"force": true}'),
    ("application/x-www-form-urlencoded", b"a=%ZZ&&=&" * 100),
    ("multipart/form-data; boundary=XX", b"--XX\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a\"\r\n\r\n"),
    ('multipart/related; type="application/dicom"; boundary=B', b"--B\r\n\r\n" + b"\x00" * 300 + b"\r\n--B--"),
    ('multipart/related; type="application/dicom"', b"no boundary at all"),
    ("application/dicom", b"DICM" * 100),
]


def test_malformed_bodies_to_every_post_endpoint_get_a_4xx_and_the_server_stays_up(fuzzed):
    admin = requests.Session()
    admin.headers["Authorization"] = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    anonymous = requests.Session()
    failures = []
    for (path, (content_type, body)), client in itertools.product(itertools.product(POST_ENDPOINTS, BODIES),
                                                                  (admin, anonymous)):
        response = client.post(f"{fuzzed.url}{path}", data=body, headers={"Content-Type": content_type},
                               timeout=60, allow_redirects=False)
        if not (400 <= response.status_code < 500 or response.status_code in (302, 303)):
            failures.append((path, content_type, body[:30], response.status_code))
    assert failures == [], failures[:10]
    assert requests.get(f"{fuzzed.url}/login/", timeout=10).status_code == 200
    assert list((fuzzed.data_dir / "objects").rglob("*.dcm")) == []
