"""`sonoloop serve`: prepare the database and static files, then supervise the processes.

Three kinds of child process, each one long-running management command or server:
the web server (gunicorn), the DICOM node, and the task worker(s).  A child that dies is
restarted with back-off; one that keeps dying stops everything with a message.  SIGTERM
or Ctrl-C stops all children cleanly (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from sonoloop.config import Config

log = logging.getLogger("sonoloop.serve")

GRACE_SECONDS = 25
CRASH_WINDOW = 60.0
CRASH_LIMIT = 5


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor itself is killed (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass
    os.setpgrp()  # Ctrl-C reaches the supervisor only; it decides how children stop


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    crashes: list[float] = field(default_factory=list)
    restart_at: float = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, preexec_fn=_die_with_parent)
        log.info("started %s (pid %d)", self.name, self.process.pid)


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def children(config: Config) -> list[Child]:
    web = Child(
        "web server",
        _python(
            "-m", "gunicorn", "sonoloop.web.wsgi:application",
            "--bind", f"{config.http_host}:{config.http_port}",
            "--workers", str(config.web_workers),
            "--threads", "4",
            "--timeout", "300",
            "--graceful-timeout", "20",
            "--access-logfile", "-",
            # the path without its query string: searches carry patient names (PHI stays out of logs)
            "--access-logformat", '%(h)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms',
            "--error-logfile", "-",
            "--no-control-socket",
            *(["--certfile", config.https_cert, "--keyfile", config.https_key] if config.https_cert else []),
        ),
    )
    dicom = Child("DICOM node", _python("-m", "sonoloop.cli", "manage", "dicomnode"))
    def worker(name: str, queues: list[str], n: int) -> Child:
        return Child(name, _python("-m", "sonoloop.cli", "manage", "worker", *queues, "--interval", "0.2",
                                   "--worker-id", f"{os.uname().nodename[:20]}-{os.getpid()}-{n}"))

    # a retraining run holds its worker for hours: it gets workers of its own, so that the
    # echoes arriving meanwhile are still segmented (SONOLOOP_TRAINING_WORKERS=0: trained elsewhere)
    workers = [worker(f"task worker {n + 1}", ["--queue-name", "*", "--exclude-queues", "training"], n)
               for n in range(config.task_workers)]
    workers += [worker(f"training worker {n + 1}", ["--queue-name", "training"], config.task_workers + n)
                for n in range(config.training_workers)]
    return [web, dicom, *workers]


def prepare(config: Config) -> None:
    """Migrate, collect static files and make sure someone can log in."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sonoloop.web.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    _ensure_admin(config)
    from django.db import connections

    connections.close_all()


def _ensure_admin(config: Config) -> None:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    if User.objects.filter(is_superuser=True).exists():
        return
    given = os.environ.get("SONOLOOP_ADMIN_PASSWORD", "").strip()
    password = given or secrets.token_urlsafe(12)
    User.objects.create_superuser("admin", "", password)
    if given:  # whoever set it knows it: no copy on disk
        log.warning("created the first user 'admin' with the password from SONOLOOP_ADMIN_PASSWORD")
        return
    from sonoloop.web.accounts.initial import initial_password_file

    note = initial_password_file()
    fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    log.warning(
        "created the first user 'admin'; its password is in %s until it is changed — log in and "
        "change it (or run `sonoloop manage changepassword admin`)", note,
    )


def _stop_all(kids: list[Child]) -> None:
    running = [c for c in kids if c.process and c.process.poll() is None]
    for child in running:
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for child in running:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %d s; killing it", child.name, GRACE_SECONDS)
            child.process.kill()
            child.process.wait()
    log.info("all processes stopped")


def serve(config: Config) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # everything Sonoloop writes (database, images, previews, results) is patient data: for
    # this user only; the children inherit it
    os.umask(0o077)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sonoloop.web.settings")
    prepare(config)
    kids = children(config)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for child in kids:
        child.start()
    log.info(
        "Sonoloop is running: web http://%s:%d/  DICOM %s@%s:%d  (Ctrl-C to stop)",
        config.http_host, config.http_port, config.ae_title, config.dicom_host, config.dicom_port,
    )
    exit_code = 0
    while not stopping:
        now = time.monotonic()
        for child in kids:
            if child.process is None:
                if now >= child.restart_at:
                    child.start()
                continue
            code = child.process.poll()
            if code is None:
                continue
            child.crashes = [t for t in child.crashes if now - t < CRASH_WINDOW] + [now]
            if len(child.crashes) >= CRASH_LIMIT:
                log.error("%s exited %d times within %d s; stopping Sonoloop", child.name, CRASH_LIMIT, CRASH_WINDOW)
                stopping, exit_code = True, 1
                break
            delay = min(30.0, 2.0 ** (len(child.crashes) - 1))
            log.error("%s exited with code %s; restarting in %.0f s", child.name, code, delay)
            child.process, child.restart_at = None, now + delay
        time.sleep(0.2)
    log.info("stopping Sonoloop")
    _stop_all(kids)
    return exit_code
