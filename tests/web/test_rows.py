"""Rows written through prepared statements are the rows the ORM (and django-tasks-db's own
backend) would write: every column, defaults, automatic dates and save signals included."""

import pytest
from django.db.models.signals import post_save
from django.forms.models import model_to_dict
from django_tasks_db import DatabaseBackend as UpstreamBackend
from django_tasks_db.models import DBTaskResult, get_date_max

from sonoloop.web.analysis.models import AnalysisJob
from sonoloop.web.analysis.tasks import analyse_instance
from sonoloop.web.archive import services
from sonoloop.web.rows import PreparedInsert, PreparedUpdate
from sonoloop.web.taskrows import DatabaseBackend


def _columns(obj, *skip):
    obj.refresh_from_db()
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields if f.attname not in skip}


@pytest.mark.django_db
def test_a_prepared_insert_writes_the_row_the_orm_writes(config, samples):
    instance = services.instance_store(samples["us_native"].read_bytes()).instance
    rows = PreparedInsert(AnalysisJob)
    prepared = rows.create(instance=instance, status=AnalysisJob.QUEUED, reason="why", frames_total=7)
    plain = AnalysisJob.objects.create(instance=instance, status=AnalysisJob.QUEUED, reason="why", frames_total=7)
    assert prepared.pk and prepared.pk != plain.pk and not prepared._state.adding
    assert prepared.created_at is not None  # auto_now_add, from the field itself
    assert _columns(prepared, "id", "created_at") == _columns(plain, "id", "created_at")
    again = rows.create(instance=instance, status=AnalysisJob.SKIPPED)  # the compiled statement, reused
    assert again.pk > prepared.pk
    assert AnalysisJob.objects.get(pk=again.pk).status == AnalysisJob.SKIPPED


@pytest.mark.django_db
def test_a_prepared_insert_sends_the_save_signals(config, samples):
    instance = services.instance_store(samples["us_native"].read_bytes()).instance
    seen = []

    def receiver(sender, instance, created, **kwargs):
        seen.append((instance.pk, created))

    post_save.connect(receiver, sender=AnalysisJob)
    try:
        job = PreparedInsert(AnalysisJob).create(instance=instance)
    finally:
        post_save.disconnect(receiver, sender=AnalysisJob)
    assert seen == [(job.pk, True)]


@pytest.mark.django_db
def test_a_prepared_update_sets_one_field_of_one_row(config, samples):
    instance = services.instance_store(samples["us_native"].read_bytes()).instance
    job = AnalysisJob.objects.create(instance=instance)
    other = AnalysisJob.objects.create(instance=instance)
    update = PreparedUpdate(AnalysisJob, "task_id")
    assert update.set(job.pk, "abc") == 1
    assert update.set(10**9, "nobody") == 0
    assert AnalysisJob.objects.get(pk=job.pk).task_id == "abc"
    assert AnalysisJob.objects.get(pk=other.pk).task_id == ""


@pytest.mark.django_db
def test_the_task_row_is_the_row_django_tasks_db_writes(config):
    ours = DatabaseBackend("default", {"QUEUES": ["default", "inference", "training"]})
    upstream = UpstreamBackend("default", {"QUEUES": ["default", "inference", "training"]})
    task = analyse_instance.using(priority=3)
    mine = ours.enqueue(task, [41], {})
    theirs = upstream.enqueue(task, [41], {})
    assert mine.id != theirs.id
    row, reference = DBTaskResult.objects.get(pk=mine.id), DBTaskResult.objects.get(pk=theirs.id)
    assert row.run_after == get_date_max()  # django-tasks-db's pre_save receiver ran
    assert _columns(row, "id", "enqueued_at") == _columns(reference, "id", "enqueued_at")
    assert model_to_dict(row)["args_kwargs"] == {"args": [41], "kwargs": {}}
    assert DBTaskResult.objects.ready().filter(pk=mine.id).exists()  # a worker would claim it


@pytest.mark.django_db
def test_a_stored_image_gets_its_job_and_the_task_the_job_names(config, samples):
    instance = services.instance_store(samples["us_native"].read_bytes()).instance
    job = AnalysisJob.objects.get(instance=instance)
    task = DBTaskResult.objects.get(pk=job.task_id)
    assert job.status == AnalysisJob.QUEUED
    assert task.args_kwargs == {"args": [job.pk], "kwargs": {}}
    assert task.task_path == analyse_instance.module_path and task.queue_name == analyse_instance.queue_name


@pytest.mark.django_db
def test_a_uid_stored_meanwhile_by_another_association_is_a_resend_not_an_error(config, samples, monkeypatch, settings):
    """The UNIQUE constraint refuses the prepared INSERT (as the ORM's) when another
    association committed the same new SOP Instance UID after this store looked it up: the
    store retries once and finds the stored copy; nothing is stored twice or lost."""
    from sonoloop.web.archive import store
    from sonoloop.web.archive.models import Instance

    raw = samples["us_native"].read_bytes()
    first = services.instance_store(raw).instance
    lookups = []
    real = store._stored_copy

    def late(uid):  # the first lookup ran before the other association's commit
        lookups.append(uid)
        return None if len(lookups) == 1 else real(uid)

    monkeypatch.setattr(store, "_stored_copy", late)
    again = services.instance_store(raw)
    assert len(lookups) == 2  # refused by the constraint, then looked up again
    assert again.kept_existing and not again.created and again.instance.pk == first.pk
    assert Instance.every.count() == 1 and AnalysisJob.objects.count() == 1
    assert services.instance_path(first).read_bytes() == raw
    assert len(list(settings.CONFIG.objects_dir.rglob("*.dcm"))) == 1  # the second copy's file was removed
