"""Job rows that task workers run: claiming one, its heartbeat, and the rows whose worker was
lost. Shared by analysis jobs and retraining runs — any model with ``status`` ("queued",
"running", …), ``started_at``, ``heartbeat_at``, ``finished_at`` and ``worker``.

A row is claimed by one compare-and-swap update (queued → running), which holds on SQLite
and PostgreSQL alike and across worker machines. A running row's heartbeat is written every
HEARTBEAT_SECONDS; one whose heartbeat is older than SONOLOOP_JOB_STALE_SECONDS lost its
worker, and every live worker checks for those (``check_lost_workers``, the checks named in
the ``LOST_WORKER_CHECKS`` setting).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django.utils.module_loading import import_string

log = logging.getLogger("sonoloop.jobs")

QUEUED, RUNNING = "queued", "running"
HEARTBEAT_SECONDS = 2.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(model, job_id: int) -> bool:
    """Take a queued row for this worker; False when it is not queued (a duplicate delivery,
    cancelled, or already taken by another worker)."""
    now = timezone.now()
    return model.objects.filter(pk=job_id, status=QUEUED).update(
        status=RUNNING, started_at=now, heartbeat_at=now, finished_at=None, worker=worker_name()) == 1


def _beat(model, job_id: int, stop: threading.Event) -> None:
    try:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                model.objects.filter(pk=job_id, status=RUNNING).update(heartbeat_at=timezone.now())
            except Exception as exc:  # a busy database: the next beat will do
                log.warning("heartbeat of %s %s not recorded: %s", model.__name__, job_id, exc)
    finally:
        connection.close()


@contextmanager
def heartbeat(model, job_id: int):
    """While the block runs, the row says its worker is alive."""
    stop = threading.Event()
    beating = threading.Thread(target=_beat, args=(model, job_id, stop), daemon=True,
                               name=f"heartbeat-{model.__name__}-{job_id}")
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()


def stale_cutoff(stale_seconds: int | None = None):
    return timezone.now() - timedelta(seconds=stale_seconds or settings.CONFIG.job_stale_seconds)


def lost(model, cutoff):
    """Running rows of ``model`` whose last heartbeat is older than ``cutoff``."""
    return model.objects.filter(status=RUNNING, heartbeat_at__lt=cutoff)


def check_lost_workers() -> None:
    """What every worker's lost-worker thread runs: each check in ``LOST_WORKER_CHECKS``."""
    for path in settings.LOST_WORKER_CHECKS:
        import_string(path)()
