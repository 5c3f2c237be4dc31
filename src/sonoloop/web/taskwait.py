"""An idle worker waits for a task with one prepared read instead of django-tasks-db's claim.

django-tasks-db's worker, with nothing to do, sleeps ``--interval`` (0.2 s here: an arriving
echo starts within it) and then tries to claim a task: close stale connections, an exclusive
transaction, the ready-task query built by the ORM, commit, close stale connections again.
That is ~3 ms of Python every 0.2 s: ~1.5 % of a core for each idle worker, always (the
training worker is idle nearly always). On two cores it cost more than its share: while the
inference worker runs its two threads, every wake-up of another process stops one of them
and the other waits for it at the next layer (a process taking 4 % of a core slowed the
network by 13 % here).

So between claims an idle worker asks the database only whether a task it would claim is
ready: the same conditions as the worker's own query (status, backend, queues, run_after),
compiled once by Django and executed with the current time — one indexed read, no
transaction, no ORM. When one is ready it returns and the worker claims it as before.
"""

from __future__ import annotations

import inspect
import time
from datetime import datetime, timezone as dt_timezone

from django.db import DatabaseError, connections
from django.db.models import Q
from django.utils import timezone

# what the wait relies on in django-tasks-db's worker (checked before anything is changed)
_EXPECTED = ("time.sleep(self.interval)", "tasks.get_locked()", "DBTaskResult.objects.ready()")
# a stand-in for "now" while the query is compiled, replaced by the current time at each look
_SENTINEL = datetime(1999, 12, 31, 23, 59, 58, 123457, tzinfo=dt_timezone.utc)


class TaskWaitError(RuntimeError):
    """The pinned django-tasks-db no longer looks as the wait expects."""


class ReadyTasks:
    """Whether a task that a worker with these queues would claim is ready now."""

    def __init__(self, backend_name: str, queue_names: list[str], excluded_queue_names: list[str]):
        from django_tasks_db.models import DBTaskResult, get_date_max
        from django_tasks_db.compat import TaskResultStatus

        tasks = DBTaskResult.objects.filter(status=TaskResultStatus.READY, backend_name=backend_name)
        if "*" not in queue_names:
            tasks = tasks.filter(queue_name__in=queue_names)
        if excluded_queue_names:
            tasks = tasks.exclude(queue_name__in=excluded_queue_names)
        # DBTaskResultQuerySet.ready()'s run_after condition, with the sentinel for its now()
        tasks = tasks.filter(Q(run_after=get_date_max()) | Q(run_after__lte=_SENTINEL)).values_list("pk")[:1]
        self.using = tasks.db
        connection = connections[self.using]
        self._sql, params = tasks.query.get_compiler(self.using).as_sql()
        self._params = list(params)
        self._field = DBTaskResult._meta.get_field("run_after")
        sentinel = self._field.get_db_prep_value(_SENTINEL, connection)
        positions = [i for i, p in enumerate(self._params) if p == sentinel]
        if len(positions) != 1:
            raise TaskWaitError("the ready-task query does not take the current time as one parameter "
                                "(see sonoloop.web.taskwait)")
        self._now_at = positions[0]

    def any(self) -> bool:
        """True also when the database cannot answer: the worker's own claim then runs, and
        handles the error as django-tasks-db does (a locked SQLite, a lost connection)."""
        connection = connections[self.using]
        self._params[self._now_at] = self._field.get_db_prep_value(timezone.now(), connection)
        try:
            with connection.cursor() as cursor:
                cursor.execute(self._sql, self._params)
                return cursor.fetchone() is not None
        except DatabaseError:
            return True


class _IdleClock:
    """What django-tasks-db's worker module sees as ``time``: its idle ``sleep`` goes on
    sleeping, in steps of the same length, until a task is ready; everything else passes
    through."""

    def __init__(self, ready: ReadyTasks, interval: float):
        self._ready, self._interval = ready, interval

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
        if seconds != self._interval:  # the start-up delay
            return
        while not self._ready.any():
            time.sleep(seconds)


def wait_cheaply(backend_name: str, queue_names: list[str], excluded_queue_names: list[str],
                 interval: float) -> None:
    """Make this process's django-tasks-db worker wait for work with :class:`ReadyTasks`;
    raises :class:`TaskWaitError` (changing nothing) if its worker no longer looks as expected."""
    from django_tasks_db.management.commands import db_worker

    source = inspect.getsource(db_worker.Worker.run)
    missing = [line for line in _EXPECTED if line not in source]
    current = getattr(db_worker, "time", None)
    if missing or not (current is time or isinstance(current, _IdleClock)):
        raise TaskWaitError(f"django-tasks-db's worker no longer does {missing or 'import time'}: the idle "
                            f"wait does not apply to this version (see sonoloop.web.taskwait)")
    db_worker.time = _IdleClock(ReadyTasks(backend_name, queue_names, excluded_queue_names), interval)
