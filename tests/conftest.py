"""Shared fixtures: sample files, and real `sonoloop serve` processes on loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sonoloop.dicom.samples import sample_path, write_cut

ADMIN_PASSWORD = "admin-test-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def sonoloop_bin() -> str:
    return str(Path(sys.executable).with_name("sonoloop"))


@dataclass
class Server:
    data_dir: Path
    http_port: int
    dicom_port: int
    env: dict
    log_path: Path
    ae_title: str = "SONOLOOP"
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait: bool = True) -> "Server":
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sonoloop_bin(), "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if wait:
            wait_for_port(self.dicom_port, process=self.process)
            wait_for_port(self.http_port, process=self.process)
        return self

    def stop(self, timeout: float = 40) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def kill_everything(self) -> None:
        """SIGKILL every process of the tree, children first (a power cut, for the processes)."""
        tree = _descendants(self.process.pid)
        for pid in [*reversed(tree), self.process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        for port in (self.dicom_port, self.http_port):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        time.sleep(0.05)
                except OSError:
                    break

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sonoloop_bin(), *args], env=self.env, capture_output=True, text=True, check=check)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def make_server(tmp_path: Path, **extra_env: str) -> Server:
    data_dir = tmp_path / "data"
    http_port, dicom_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SONOLOOP_", "DJANGO_")) and k != "DATABASE_URL"}
    env.update(
        SONOLOOP_DATA_DIR=str(data_dir),
        SONOLOOP_HTTP_HOST="127.0.0.1",
        SONOLOOP_HTTP_PORT=str(http_port),
        SONOLOOP_DICOM_HOST="127.0.0.1",
        SONOLOOP_DICOM_PORT=str(dicom_port),
        SONOLOOP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        SONOLOOP_WEB_WORKERS="1",
        # the model would segment every image these tests send; the tests of the analysis
        # pipeline turn it back on
        SONOLOOP_AUTO_ANALYSIS="0",
        # most tests send with storescu under made-up AE titles: an open node, as documented;
        # the tests of who may store turn it off
        SONOLOOP_DICOM_OPEN_STORE="1",
        # no test retrains through serve's own training worker; test_serve checks it starts
        SONOLOOP_TRAINING_WORKERS="0",
    )
    env.update(extra_env)
    tmp_path.mkdir(parents=True, exist_ok=True)
    return Server(data_dir, http_port, dicom_port, env, tmp_path / "serve.log")


@pytest.fixture(autouse=True)
def _plain_static_storage(settings):
    """In-process tests render templates without a collectstatic manifest."""
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One running `sonoloop serve` per test module."""
    srv = make_server(tmp_path_factory.mktemp("serve")).start()
    yield srv
    code = srv.stop()
    assert code == 0, f"`sonoloop serve` did not stop cleanly (exit {code}):\n{srv.log()[-3000:]}"


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> dict[str, Path]:
    names = {
        "cine_jpeg": "color3d_jpeg_baseline.dcm",
        "cine_30": "examples_ybr_color.dcm",  # the same kind of echo, 30 frames, shipped by pydicom itself
        "us_rle_palette": "OBXXXX1A_rle.dcm",
        "us_j2k": "US1_J2KR.dcm",
        "us_native": "US1_UNCR.dcm",
        "us_implicit_palette": "gdcm-US-ALOKA-16.dcm",
        "sc_rle": "SC_rgb_rle.dcm",
        "jpeg_ls": "emri_small_jpeg_ls_lossless.dcm",
        "jpeg_extended": "JPGExtended.dcm",
        "deflated": "image_dfl.dcm",
        "seg": "liver.dcm",
        "sr": "test-SR.dcm",
    }
    found = {key: sample_path(name) for key, name in names.items()}
    # two seconds of the 120-frame cine (frames 11–70: two complete heart cycles), its JPEG
    # frames copied as they are — a real loop with beats, at half the cost of the whole one
    found["cine_60"] = write_cut(found["cine_jpeg"], tmp_path_factory.mktemp("samples") / "cine_60.dcm", 10, 60)
    return found


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if not have(t)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing tools in CI: {', '.join(missing)} (.ci/run installs them)")
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(scope="session")
def camus_dir() -> Path:
    """../shared/data/camus (or SONOLOOP_CAMUS_DIR); the data never enter the repository."""
    shared = Path(__file__).resolve().parents[1].parent / "shared"
    path = Path(os.environ.get("SONOLOOP_CAMUS_DIR", shared / "data" / "camus"))
    if not (path / "frames.csv").exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI has ../shared/data/camus, but {path} is missing")
        pytest.skip(f"the CAMUS frames are not at {path} (set SONOLOOP_CAMUS_DIR)")
    return path
