"""Scale-out configuration: the same node on PostgreSQL (DATABASE_URL), with concurrent senders."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sonoloop.dicom.samples import US_RLE_PALETTE, sample_path, write_copies
from tests.conftest import ADMIN_PASSWORD, make_server, require_tools
from tests.postgres import postgres  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_serve_on_postgresql_stores_concurrent_batches_and_answers_queries(tmp_path, postgres):  # noqa: F811
    require_tools("storescu", "findscu")
    srv = make_server(tmp_path / "srv", DATABASE_URL=postgres.url).start()
    try:
        batches = [write_copies(sample_path(US_RLE_PALETTE), tmp_path / f"b{n}", 25, per_study=5, prefix=f"b{n}-",
                                patient_id=f"PG{n}") for n in range(4)]

        def send(files):
            return subprocess.run(["storescu", "-R", "-xr", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port),
                                   *map(str, files)], capture_output=True, text=True, timeout=300)

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(send, batches))
        assert all(r.returncode == 0 and "E:" not in r.stderr for r in results), [r.stderr for r in results]

        studies = requests.get(f"{srv.url}/dicomweb/studies", auth=("admin", ADMIN_PASSWORD), timeout=30).json()
        assert len(studies) == 20
        patients = requests.get(f"{srv.url}/dicomweb/studies", params={"PatientID": "PG2*"},
                                auth=("admin", ADMIN_PASSWORD), timeout=30).json()
        assert len(patients) == 5
        srv.cli("peer", "add", "QRSCU", "--host", "127.0.0.1", "--port", "1", "--query")
        find = subprocess.run(["findscu", "-v", "-S", "-aet", "QRSCU", "-aec", srv.ae_title,
                               "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID=PG1*", "-k", "SOPInstanceUID",
                               "127.0.0.1", str(srv.dicom_port)], capture_output=True, text=True, timeout=60)
        assert find.stderr.count("Find Response:") == 25
        assert not (srv.data_dir / "sonoloop.sqlite3").exists()
    finally:
        assert srv.stop() == 0
