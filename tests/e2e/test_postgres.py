"""Scale-out configuration: the same node on PostgreSQL (DATABASE_URL), with concurrent senders."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sonoloop.dicom.samples import US_RLE_PALETTE, sample_path, write_copies
from tests.conftest import ADMIN_PASSWORD, make_server, require_tools, sonoloop_bin
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


def test_two_workers_on_postgresql_run_every_job_exactly_once(tmp_path, postgres, samples):  # noqa: F811
    import time

    from tests.e2e.test_pipeline import single_frame_echo

    require_tools("storescu")
    srv = make_server(tmp_path / "srv", DATABASE_URL=postgres.new_database("sonoloop_workers"),
                      SONOLOOP_AUTO_ANALYSIS="1", SONOLOOP_TASK_WORKERS="0").start()
    workers = []
    try:
        echo = single_frame_echo(samples["cine_jpeg"], tmp_path / "echo.dcm")
        batch = write_copies(echo, tmp_path / "batch", 12, per_study=12, prefix="w-", patient_id="WORKERS")
        sent = subprocess.run(["storescu", "-R", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port),
                               *map(str, batch)], capture_output=True, text=True, timeout=300)
        assert sent.returncode == 0 and "E:" not in sent.stderr, sent.stderr
        # three workers sharing the database and the data folder: two for inference, one only for training
        for name, queues in (("inference-1", "inference"), ("inference-2", "inference"), ("training-only", "training")):
            log = (tmp_path / f"{name}.log").open("wb")
            workers.append(subprocess.Popen(
                [sonoloop_bin(), "worker", "--queues", queues, "--worker-id", name, "--interval", "0.2"],
                env=srv.env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs = requests.get(f"{srv.url}/api/jobs", params={"limit": 100}, auth=("admin", ADMIN_PASSWORD),
                                timeout=30).json()["jobs"]
            echo_jobs = [j for j in jobs if j["instance"] in {_uid(p) for p in batch}]
            if len(echo_jobs) == 12 and all(j["status"] in ("done", "failed") for j in echo_jobs):
                break
            time.sleep(1)
        assert [j["status"] for j in echo_jobs] == ["done"] * 12, echo_jobs
        assert all(j["attempt"] == 1 and j["result_version"] == 1 for j in echo_jobs)
        ran_on = {j["worker"].split(":")[1] for j in echo_jobs}  # host:pid
        assert ran_on <= {str(w.pid) for w in workers[:2]} and len(ran_on) == 2, ran_on
        segs = requests.get(f"{srv.url}/dicomweb/instances", params={"Modality": "SEG", "limit": 100},
                            auth=("admin", ADMIN_PASSWORD), timeout=30).json()
        assert len(segs) == 12  # one SEG per image: no job ran twice
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        assert srv.stop() == 0
    for name in ("inference-1", "inference-2", "training-only"):  # idle, they waited with the prepared read
        assert "the worker polls as django-tasks-db ships" not in (tmp_path / f"{name}.log").read_text(errors="replace"), name


def _uid(path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
