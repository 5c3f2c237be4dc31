"""The task backend: django-tasks-db's, writing its task row through a prepared INSERT.

Every received image enqueues a task in the archive's index transaction; the backend's
``DBTaskResult.objects.create`` compiled the same INSERT again each time (~0.3 ms of a
single-frame store). Everything else is django-tasks-db's own: validation, the
``task_enqueued`` signal, the worker, the results. Its version is pinned in pyproject.toml,
and ``tests/web/test_taskrows.py`` holds the row to the one its own backend writes.
"""

from __future__ import annotations

from django_tasks_db import DatabaseBackend as _DatabaseBackend
from django_tasks_db.compat import normalize_json

from .rows import PreparedInsert

_rows: PreparedInsert | None = None


def _task_rows() -> PreparedInsert:
    global _rows
    if _rows is None:
        from django_tasks_db.models import DBTaskResult  # the backend is built before the apps are ready

        _rows = PreparedInsert(DBTaskResult)
    return _rows


class DatabaseBackend(_DatabaseBackend):
    def _task_to_db_task(self, task, args, kwargs):
        return _task_rows().create(
            id=self._get_id(),
            args_kwargs=normalize_json({"args": args, "kwargs": kwargs}),
            priority=task.priority,
            task_path=task.module_path,
            queue_name=task.queue_name,
            run_after=task.run_after,
            backend_name=self.alias,
        )
