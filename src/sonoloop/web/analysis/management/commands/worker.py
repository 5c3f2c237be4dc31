"""`sonoloop worker`: run background tasks and look after jobs whose worker was lost.

django-tasks-db's worker claims one task at a time with a row lock, so any number of
these, on this or other machines sharing the database and the data folder, each run
distinct tasks. Beside it a thread re-queues analysis jobs whose worker stopped sending
heartbeats (killed, machine lost), and fails retraining runs that lost theirs — any live
worker does it for all.
"""

import logging
import threading

from django.conf import settings
from django.db import close_old_connections, connection
from django_tasks_db.management.commands.db_worker import Command as DbWorkerCommand

from sonoloop.web.jobs import check_lost_workers
from sonoloop.web.taskwait import TaskWaitError, wait_cheaply

log = logging.getLogger("sonoloop.analysis")


def _watch_lost_workers(stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            close_old_connections()
            check_lost_workers()
        except Exception:
            log.exception("checking for lost workers failed; trying again in %.0f s", every)
        finally:
            connection.close()


class Command(DbWorkerCommand):
    help = "Run background tasks (queues: inference, training, default) and re-queue jobs of lost workers."

    def handle(self, *args, **options):
        queues = str(options.get("queue_name") or "").split(",")
        excluded = str(options.get("exclude_queues") or "").split(",")
        if settings.CONFIG.auto_analysis and ("*" in queues or "inference" in queues) and "inference" not in excluded:
            from sonoloop.web.analysis.running import warm_up

            threading.Thread(target=warm_up, name="warm-model", daemon=True).start()
        if not options.get("batch"):
            try:  # between claims, one prepared read instead of django-tasks-db's claim (see taskwait)
                wait_cheaply(options.get("backend_name") or "default", queues, [q for q in excluded if q],
                             float(options["interval"]))
            except TaskWaitError as exc:
                log.warning("%s; the worker polls as django-tasks-db ships", exc)
        stop = threading.Event()
        every = max(2.0, min(30.0, settings.CONFIG.job_stale_seconds / 3))
        watcher = threading.Thread(target=_watch_lost_workers, args=(stop, every), name="lost-workers", daemon=True)
        watcher.start()
        try:
            return super().handle(*args, **options)
        finally:
            stop.set()
