"""`sonoloop serve` as an administrator meets it: start, supervise, stop, refuse bad settings."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest
import requests

from tests.conftest import ADMIN_PASSWORD, make_server, sonoloop_bin, wait_for_port

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def test_serve_runs_web_dicom_and_worker_and_stops_them_all_on_sigterm(tmp_path):
    srv = make_server(tmp_path, SONOLOOP_TRAINING_WORKERS="1").start()
    try:
        kids = _children(srv.process.pid)
        commands = [_cmdline(k) for k in kids]
        assert any("gunicorn" in c for c in commands) and any("dicomnode" in c for c in commands)
        # one worker for everything but training, one for training only
        assert any("manage worker --queue-name * --exclude-queues training" in c for c in commands)
        assert any("manage worker --queue-name training" in c for c in commands)
        login = requests.get(f"{srv.url}/login/", timeout=10)
        assert login.status_code == 200 and "Log in" in login.text
        css = requests.get(f"{srv.url}/static/archive/sonoloop.css", timeout=10)
        assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]
        # the password came from the environment: no copy of it on disk
        assert not (srv.data_dir / "initial-admin-password").exists()
        # patient data for this user only: the database, the folders, what the node writes
        assert (srv.data_dir / "sonoloop.sqlite3").stat().st_mode & 0o077 == 0
        assert all(p.stat().st_mode & 0o077 == 0 for p in (srv.data_dir, srv.data_dir / "objects"))
        assert "'self'" in login.headers["Content-Security-Policy"]
    finally:
        code = srv.stop()
    assert code == 0
    for pid in kids:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    assert "all processes stopped" in srv.log()


def test_a_crashed_dicom_node_is_restarted(tmp_path):
    srv = make_server(tmp_path).start()
    try:
        node = next(k for k in _children(srv.process.pid) if "dicomnode" in _cmdline(k))
        os.kill(node, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fresh = [k for k in _children(srv.process.pid) if "dicomnode" in _cmdline(k) and k != node]
            if fresh:
                break
            time.sleep(0.1)
        assert fresh, "the DICOM node was not restarted"
        wait_for_port(srv.dicom_port, 30)
        assert "DICOM node exited" in srv.log()
    finally:
        assert srv.stop() == 0


def test_serve_refuses_a_busy_port_with_a_message(tmp_path):
    srv = make_server(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", srv.dicom_port))
        busy.listen()
        result = subprocess.run([sonoloop_bin(), "serve"], env=srv.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"DICOM port {srv.dicom_port}" in result.stderr and "SONOLOOP_DICOM_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_bad_ae_title(tmp_path):
    srv = make_server(tmp_path, SONOLOOP_AE_TITLE="THIS_AE_TITLE_IS_TOO_LONG")
    result = subprocess.run([sonoloop_bin(), "serve"], env=srv.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "at most 16" in result.stderr


def test_manage_runs_django_commands(tmp_path):
    srv = make_server(tmp_path)
    result = srv.cli("manage", "check")
    assert "no issues" in result.stdout
