"""A real PostgreSQL server for the tests, started in a temporary folder and stopped after."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    if shutil.which("pg_config"):
        candidate = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres_user(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; CI runs as root, so drop to the `postgres` user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


class PostgresServer:
    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.bindir = _bindir()
        self.data = root / "pgdata"

    def start(self) -> "PostgresServer":
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        run = lambda *a: subprocess.run(_as_postgres_user([str(self.bindir / a[0]), *a[1:]]), check=True,  # noqa: E731
                                        capture_output=True, text=True)
        run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--encoding=UTF8", "--no-sync")
        run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on", "start")
        run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "sonoloop")
        return self

    def stop(self) -> None:
        subprocess.run(_as_postgres_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/sonoloop"

    def new_database(self, name: str) -> str:
        """Another empty database on this server, for a test that needs its own; its URL."""
        subprocess.run(_as_postgres_user([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                                          "-U", "postgres", name]), check=True, capture_output=True, text=True)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres():
    from tests.conftest import free_port

    if _bindir() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (scripts/system-deps installs it)")
        pytest.skip("needs PostgreSQL (apt-get install postgresql)")
    # Not under pytest's tmp folder: that one is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="sonoloop-pg-"))
    server = PostgresServer(root, free_port())
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
