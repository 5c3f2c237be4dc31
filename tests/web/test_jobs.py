"""The job plumbing analysis jobs and retraining runs share (web/jobs.py)."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from sonoloop.web import jobs
from sonoloop.web.analysis.models import AnalysisJob
from sonoloop.web.archive.services import instance_store
from sonoloop.web.learning.models import RetrainingJob
from sonoloop.web.registry.models import ModelVersion

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queued(config, samples):
    config(auto_analysis=True)
    instance = instance_store(samples["us_rle_palette"].read_bytes()).instance
    return AnalysisJob.objects.get(instance=instance)


def test_a_row_is_claimed_once_and_then_beats_while_it_runs(queued, monkeypatch):
    assert jobs.claim(AnalysisJob, queued.pk)
    assert not jobs.claim(AnalysisJob, queued.pk)  # a second worker (or delivery) gets nothing
    claimed = AnalysisJob.objects.get(pk=queued.pk)
    assert claimed.status == "running" and claimed.worker == jobs.worker_name() and claimed.finished_at is None
    long_ago = timezone.now() - timedelta(hours=1)
    AnalysisJob.objects.filter(pk=queued.pk).update(heartbeat_at=long_ago)
    monkeypatch.setattr(jobs, "HEARTBEAT_SECONDS", 0.05)
    with jobs.heartbeat(AnalysisJob, queued.pk):
        deadline = time.monotonic() + 5
        while AnalysisJob.objects.get(pk=queued.pk).heartbeat_at == long_ago and time.monotonic() < deadline:
            time.sleep(0.02)
    assert AnalysisJob.objects.get(pk=queued.pk).heartbeat_at > long_ago


def test_every_worker_checks_both_kinds_of_job_for_lost_workers(queued, settings):
    silent = timezone.now() - timedelta(seconds=settings.CONFIG.job_stale_seconds + 60)
    AnalysisJob.objects.filter(pk=queued.pk).update(status="running", heartbeat_at=silent, worker="gone:1")
    parent = ModelVersion.objects.create(name="p", folder="/nowhere", origin=ModelVersion.IMPORTED)
    run = RetrainingJob.objects.create(parent=parent, name="r", strategy="equal", status="running",
                                       heartbeat_at=silent, worker="gpu:2")
    jobs.check_lost_workers()
    assert AnalysisJob.objects.get(pk=queued.pk).status == "queued"  # a new attempt
    assert RetrainingJob.objects.get(pk=run.pk).status == "failed"
