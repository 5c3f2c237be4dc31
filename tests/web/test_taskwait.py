"""An idle worker's wait (sonoloop.web.taskwait): it sees exactly the tasks django-tasks-db's own
claim would take, returns as soon as one is ready, and refuses a worker it does not know."""

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from sonoloop.web import taskwait
from sonoloop.web.analysis.tasks import analyse_instance, forward_result
from sonoloop.web.taskrows import DatabaseBackend

WORKERS = {  # (queues, excluded): the two kinds `sonoloop serve` starts, and one for one queue
    "task worker": (["*"], ["training"]),
    "training worker": (["training"], []),
    "inference only": (["inference"], []),
}


def _upstream_would_claim(queues, excluded, backend="default") -> bool:
    """The worker's own query (django_tasks_db db_worker.Worker.run)."""
    tasks = DBTaskResult.objects.ready().filter(backend_name=backend)
    if "*" not in queues:
        tasks = tasks.filter(queue_name__in=queues)
    if excluded:
        tasks = tasks.exclude(queue_name__in=excluded)
    return tasks.exists()


def _agree() -> dict:
    seen = {}
    for name, (queues, excluded) in WORKERS.items():
        ours = taskwait.ReadyTasks("default", queues, excluded).any()
        assert ours == _upstream_would_claim(queues, excluded), name
        seen[name] = ours
    return seen


@pytest.mark.django_db
def test_the_ready_check_sees_what_the_workers_own_claim_would_take(config):
    backend = DatabaseBackend("default", {"QUEUES": ["default", "inference", "training"]})
    assert _agree() == {"task worker": False, "training worker": False, "inference only": False}

    soon = backend.enqueue(analyse_instance.using(run_after=timezone.now() + timedelta(hours=1)), [1], {})
    assert _agree() == {"task worker": False, "training worker": False, "inference only": False}

    DBTaskResult.objects.filter(pk=soon.id).update(run_after=timezone.now() - timedelta(seconds=1))
    assert _agree() == {"task worker": True, "training worker": False, "inference only": True}

    DBTaskResult.objects.filter(pk=soon.id).update(status="RUNNING")
    assert _agree() == {"task worker": False, "training worker": False, "inference only": False}

    backend.enqueue(forward_result, [2], {})  # run_after "not set" (date max): ready at once
    assert _agree() == {"task worker": True, "training worker": False, "inference only": False}
    DBTaskResult.objects.update(status="SUCCESSFUL")

    DBTaskResult.objects.create(task_path="x.y", queue_name="training", backend_name="default",
                                args_kwargs={"args": [], "kwargs": {}}, run_after=timezone.now() - timedelta(1))
    assert _agree() == {"task worker": False, "training worker": True, "inference only": False}
    DBTaskResult.objects.filter(queue_name="training").update(backend_name="other")
    assert _agree() == {"task worker": False, "training worker": False, "inference only": False}


@pytest.mark.django_db(transaction=True)
def test_an_idle_worker_wakes_within_its_interval_of_a_task_being_queued(config):
    interval = 0.05
    clock = taskwait._IdleClock(taskwait.ReadyTasks("default", ["*"], ["training"]), interval)
    backend = DatabaseBackend("default", {"QUEUES": ["default", "inference", "training"]})
    queued = []

    def enqueue_later():
        time.sleep(0.4)
        backend.enqueue(forward_result, [3], {})
        queued.append(time.monotonic())

    woke = []

    def idle_worker():
        clock.sleep(interval)  # the worker's idle sleep: returns once a task is ready
        woke.append(time.monotonic())

    began = time.monotonic()
    threading.Thread(target=enqueue_later).start()
    sleeper = threading.Thread(target=idle_worker, daemon=True)
    sleeper.start()
    sleeper.join(timeout=15)  # a check that never saw the task would keep it sleeping: fail, not hang
    assert woke, "the idle worker did not wake for the queued task"
    assert queued, "returned before anything was queued"
    assert woke[0] - began >= 0.4 and woke[0] - queued[0] < interval + 1.0
    before = time.monotonic()
    clock.sleep(0.3)  # any other sleep (the start-up delay) is a plain sleep
    assert 0.3 <= time.monotonic() - before < 2.0


def test_a_django_tasks_db_worker_that_changed_is_reported_and_left_as_it_is(monkeypatch):
    from django_tasks_db.management.commands import db_worker

    before = db_worker.time
    monkeypatch.setattr(taskwait.inspect, "getsource", lambda obj: "def run(self):\n    self.loop()\n")
    with pytest.raises(taskwait.TaskWaitError, match="no longer does"):
        taskwait.wait_cheaply("default", ["*"], [], 0.2)
    assert db_worker.time is before
