"""Analysis jobs: enqueued with the index row, run by a worker, skipped/failed with reasons,
re-queued when a worker is lost, re-run as new versions."""

import json
from datetime import timedelta

import highdicom as hd
import numpy as np
import pytest
from django.core.management import call_command
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from pydicom import dcmread

from sonoloop.dicom import sr
from sonoloop.dicom.seg import read_segmentation
from sonoloop.ml.modelfolder import DEFAULT_MODEL
from sonoloop.web.analysis import running, services
from sonoloop.web.analysis.models import AnalysisJob, AnalysisResult
from sonoloop.web.archive.models import Instance
from sonoloop.web.archive.services import instance_path, instance_store

pytestmark = pytest.mark.django_db
DEFAULT_NAME = json.loads((DEFAULT_MODEL / "model.json").read_text())["name"]


def store(path) -> Instance:
    return instance_store(path.read_bytes()).instance


@pytest.fixture(scope="module")
def small_model_folder(tmp_path_factory):
    """An untrained small network: for tests of the job's plumbing, where the shipped model's
    seconds per frame buy nothing (its masks are still real masks, written and measured)."""
    import torch

    from sonoloop.ml.modelfolder import save_model
    from sonoloop.ml.network import build_network
    from sonoloop.ml.spec import CLASSES, TINY_ARCHITECTURE, TINY_PREPROCESSING

    architecture = {**TINY_ARCHITECTURE, "filters": [8, 16, 32]}
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("models") / "small", build_network(architecture), {
        "name": "small-untrained", "architecture": architecture, "classes": CLASSES,
        "preprocessing": TINY_PREPROCESSING, "postprocessing": {"largest_component": True}})


@pytest.fixture
def small_model(config, small_model_folder):
    config(model=str(small_model_folder), inference_engine="fp32")
    yield small_model_folder
    running._model = None


def test_storing_an_echo_queues_a_job_in_the_same_transaction(config, samples):
    instance = store(samples["cine_30"])
    job = AnalysisJob.objects.get(instance=instance)
    assert job.status == AnalysisJob.QUEUED
    (task,) = services.job_tasks(job.pk)
    assert task.queue_name == "inference" and task.status == "READY"
    assert job.task_id == str(task.id)  # the job row names its task


def test_a_cine_is_segmented_stored_as_seg_and_measured(config, samples):
    instance = store(samples["cine_30"])
    job = AnalysisJob.objects.get(instance=instance)
    assert services.job_run(job.pk) == AnalysisJob.DONE
    job.refresh_from_db()
    assert job.frames_done == job.frames_total == 30 and job.duration_seconds > 0
    assert job.model_name == DEFAULT_NAME  # the shipped default model
    result = job.result
    assert result.version == 1 and result.classes == ["background", "LV", "MYO", "LA"]

    labels = services.result_labels(result)
    assert labels.shape == (30, instance.rows, instance.columns)
    assert (labels == 1).sum(axis=(1, 2)).min() > 1000  # an LV on every frame of this apical 4-chamber loop

    seg_instance = Instance.objects.get(sop_instance_uid=result.seg_sop_instance_uid)
    assert seg_instance.series.modality == "SEG" and seg_instance.series.series_number == 901
    assert seg_instance.series.study_id == instance.series.study_id
    seg = dcmread(instance_path(seg_instance))
    restored, names = read_segmentation(seg)
    by_name = {name: number for number, name in names.items()}
    for c, name in enumerate(result.classes[1:], start=1):
        np.testing.assert_array_equal(restored == by_name[name], labels == c)
    # Sonoloop's own SEG and SR make no analysis jobs at all
    assert not AnalysisJob.objects.filter(instance=seg_instance).exists()

    sr_instance = Instance.objects.get(sop_instance_uid=result.sr_sop_instance_uid)
    assert sr_instance.series.modality == "SR" and sr_instance.series.series_number == 951
    assert not AnalysisJob.objects.filter(instance=sr_instance).exists()

    m = result.measurements
    assert m["calibrated"] and m["units"]["volume"] == "mL"
    assert len(m["areas"]["LV"]) == 30 and m["ed_es_source"] == "LV area"
    assert m["frame_times_ms"][1] > 0
    # consistent masks on every frame of this real loop
    assert m["implausible_frames"] == 0 and m["quality"]["pipeline"] == {"temporal_sigma_ms": 50.0, "temporal_sigma_frames": 1.5, "repair": True}
    # this one-second cut starts after an end-systole and ends while the LV is still emptying:
    # no complete ED→ES, so no EF — the old frame-by-frame path took its last frame for ES
    lv = m["areas"]["LV"]
    assert np.argmax(lv) > 15 and lv[-1] < lv[-2] < lv[-3]  # still falling at the end
    assert m["beats"] == [] and m["ef"] is None and not m["reliable"]
    assert m["reliability_reasons"] == ["no_beat"] and "no complete heart cycle" in m["reliability"]
    report = hd.sr.srread(instance_path(sr_instance))  # the report says why there is no EF
    (ejection,) = report.content.get_image_measurement_groups()
    assert ejection.get_measurements(name=sr.EF) == []
    assert [e.value for e in ejection.get_qualitative_evaluations(name=sr.EF_QUALITY)] == [sr.UNRELIABLE["no_beat"]]


def test_the_worker_and_sonoloop_predict_run_the_same_pipeline(config, small_model, samples, tmp_path):
    from PIL import Image

    from sonoloop.cli import main

    instance = store(samples["cine_30"])
    job = AnalysisJob.objects.get(instance=instance)
    assert services.job_run(job.pk) == AnalysisJob.DONE
    result = AnalysisResult.objects.get(job=job)
    engine = services.active_model().segmenter.engine.name
    assert main(["predict", str(samples["cine_30"]), "--out", str(tmp_path), "--engine", engine,
                 "--model", str(small_model)]) == 0

    cli = json.loads((tmp_path / "measurements.json").read_text())
    worker = result.measurements
    for timing in ("inference_seconds",):
        cli.pop(timing), worker.pop(timing)
    assert cli == worker
    labels = services.result_labels(result)
    masks = np.stack([np.asarray(Image.open(tmp_path / f"mask-{n:04d}.png")) for n in range(1, 31)])
    np.testing.assert_array_equal(masks, labels)
    cli_seg, _ = read_segmentation(dcmread(tmp_path / "seg.dcm"))
    worker_seg, _ = read_segmentation(dcmread(instance_path(Instance.objects.get(sop_instance_uid=result.seg_sop_instance_uid))))
    np.testing.assert_array_equal(cli_seg, worker_seg)
    assert dcmread(tmp_path / "sr.dcm").SOPClassUID == dcmread(
        instance_path(Instance.objects.get(sop_instance_uid=result.sr_sop_instance_uid))).SOPClassUID


def test_non_echo_instances_are_skipped_with_a_reason(config, samples):
    for key in ("sr", "seg"):
        instance = store(samples[key])
        job = AnalysisJob.objects.get(instance=instance)
        assert job.status == AnalysisJob.SKIPPED and "not an echo image" in job.reason
        assert not services.job_tasks(job.pk).exists()
    with pytest.raises(services.RetryError, match="skipped"):
        services.job_retry(job)


def test_broken_pixel_data_fails_with_a_reason_and_can_be_retried_as_a_new_job(config, samples):
    instance = store(samples["us_native"])
    instance_path(instance).write_bytes(samples["us_native"].read_bytes()[:6000])  # the stored file damaged on disk
    job = AnalysisJob.objects.get(instance=instance)
    assert services.job_run(job.pk) == AnalysisJob.FAILED
    job.refresh_from_db()
    assert "cannot be decoded" in job.reason or "no image" in job.reason
    again = services.job_retry(job)
    assert again.pk != job.pk and again.retry_of == job and again.status == AnalysisJob.QUEUED
    job.refresh_from_db()
    assert job.status == AnalysisJob.FAILED  # the failed run stays on record


def test_a_job_whose_worker_was_lost_is_requeued_then_failed_after_three_losses(config, samples):
    instance = store(samples["cine_30"])
    job = AnalysisJob.objects.get(instance=instance)
    (first_task,) = services.job_tasks(job.pk)
    long_ago = timezone.now() - timedelta(hours=1)
    for attempt in (1, 2, 3):
        services.job_tasks(job.pk).filter(status="READY").update(status="RUNNING")  # a worker took it
        AnalysisJob.objects.filter(pk=job.pk).update(status=AnalysisJob.RUNNING, heartbeat_at=long_ago,
                                                     worker="gone:1")
        assert [j.pk for j in services.jobs_requeue_stale(60)] == [job.pk]
        job.refresh_from_db()
        if attempt < 3:
            assert job.status == AnalysisJob.QUEUED and job.attempt == attempt + 1
            assert "worker gone:1 stopped responding" in job.reason
            assert services.job_tasks(job.pk).filter(status="READY").count() == 1  # the next attempt's task
    assert job.status == AnalysisJob.FAILED and "lost 3 times" in job.reason
    assert DBTaskResult.objects.get(id=first_task.id).status == "FAILED"
    assert services.job_tasks(job.pk).count() == 3 and not services.job_tasks(job.pk).filter(status="RUNNING")
    fresh = AnalysisJob.objects.create(instance=instance, status=AnalysisJob.RUNNING, heartbeat_at=timezone.now())
    assert services.jobs_requeue_stale(60) == []  # a job with a recent heartbeat is left alone
    fresh.refresh_from_db()
    assert fresh.status == AnalysisJob.RUNNING


def test_running_again_makes_a_new_version_and_keeps_the_old(config, small_model, samples):
    instance = store(samples["cine_30"])
    job = AnalysisJob.objects.get(instance=instance)
    services.job_run(job.pk)
    again = services.job_retry(job)
    assert services.job_run(again.pk) == AnalysisJob.DONE
    results = list(AnalysisResult.objects.filter(instance=instance).order_by("version"))
    assert [r.version for r in results] == [1, 2]
    assert results[0].seg_sop_instance_uid != results[1].seg_sop_instance_uid
    assert Instance.objects.filter(sop_instance_uid=results[0].seg_sop_instance_uid).exists()
    assert services.job_run(job.pk) == AnalysisJob.DONE  # a duplicate delivery does nothing
    assert AnalysisResult.objects.filter(instance=instance).count() == 2


def test_a_job_run_again_after_a_crash_replaces_its_seg_and_sr_instead_of_orphaning_them(config, small_model, samples,
                                                                                      monkeypatch):
    """The SEG and SR are stored before the result row commits; a worker killed in between is
    re-queued, and the second run writes objects with the same UIDs (derived from the job)."""
    instance = store(samples["cine_30"])
    job = AnalysisJob.objects.get(instance=instance)

    def killed(result):
        raise RuntimeError("the worker died here")

    monkeypatch.setattr(running, "forwards_queue", killed)
    assert services.job_run(job.pk) == AnalysisJob.FAILED
    assert not AnalysisResult.objects.exists()
    stored = {m: Instance.objects.filter(series__modality=m).count() for m in ("SEG", "SR")}
    assert stored == {"SEG": 1, "SR": 1}
    monkeypatch.undo()
    AnalysisJob.objects.filter(pk=job.pk).update(status=AnalysisJob.QUEUED)  # as jobs_requeue_stale does
    assert services.job_run(job.pk) == AnalysisJob.DONE
    result = AnalysisResult.objects.get(instance=instance)
    for modality, uid in (("SEG", result.seg_sop_instance_uid), ("SR", result.sr_sop_instance_uid)):
        (only,) = Instance.objects.filter(series__modality=modality)
        assert only.sop_instance_uid == uid


def test_jobs_command_lists_and_retries(config, samples, capsys):
    from django.core.management.base import CommandError

    instance = store(samples["sr"])
    call_command("jobs", "list")
    out = capsys.readouterr().out
    assert "skipped" in out and instance.sop_instance_uid in out and "not an echo image" in out
    with pytest.raises(CommandError, match="there is no job 999"):
        call_command("jobs", "retry", "999")
    job = AnalysisJob.objects.get(instance=instance)
    with pytest.raises(CommandError, match="skipped"):
        call_command("jobs", "retry", str(job.pk))


def test_a_measurement_that_breaks_keeps_the_segmentation_and_says_so(config, small_model, samples, monkeypatch):
    def broken(*args, **kwargs):
        raise FloatingPointError("division by zero in the long axis")

    monkeypatch.setattr("sonoloop.echo.analyse.measure", broken)
    instance = store(samples["cine_30"])
    job = AnalysisJob.objects.get(instance=instance)
    assert services.job_run(job.pk) == AnalysisJob.DONE
    result = AnalysisResult.objects.get(job=job)
    assert result.seg_sop_instance_uid and not result.sr_sop_instance_uid  # no numbers, no report
    assert any("could not be made (FloatingPointError" in f for f in result.measurements["flags"])
    assert result.measurements["ef"] is None


def test_the_seg_is_stored_before_the_measurements_and_the_sr_are_made(config, small_model, samples, monkeypatch):
    """Viewers and QIDO-RS find the segmentation while the numbers are still being made."""
    from sonoloop.echo import analyse

    seen = []
    original = analyse.measure

    def measure(*args, **kwargs):
        seen.append(sorted(Instance.every.values_list("series__modality", flat=True)))
        return original(*args, **kwargs)

    monkeypatch.setattr(analyse, "measure", measure)
    instance = store(samples["cine_30"])
    job = AnalysisJob.objects.get(instance=instance)
    assert services.job_run(job.pk) == AnalysisJob.DONE
    assert seen == [["SEG", "US"]]  # the SEG already indexed, the SR not yet
    result = AnalysisResult.objects.get(job=job)
    assert {i.series.modality: i.sop_instance_uid for i in Instance.every.exclude(pk=instance.pk)} == {
        "SEG": result.seg_sop_instance_uid, "SR": result.sr_sop_instance_uid}


def _deleting_the_image(original, instance_pk, after: bool = False):
    """``original`` that deletes the image before it runs (or ``after`` it)."""
    from sonoloop.web.archive.removal import remove_instances
    from sonoloop.web.audit.services import Actor

    def delete():
        remove_instances(Instance.objects.filter(pk=instance_pk), actor=Actor("someone", "", "cli"))

    def deleting(*args, **kwargs):
        if not after:
            delete()
        outcome = original(*args, **kwargs)
        if after:
            delete()
        return outcome

    return deleting


@pytest.mark.parametrize("when", ["before its SEG is stored", "after its SEG is stored", "after its SR is stored"])
def test_an_image_deleted_while_it_is_analysed_gets_no_seg_or_sr(config, small_model, samples, monkeypatch, caplog,
                                                                 when):
    """Its SEG would bring the deleted patient back: the job ends (its row went with the image),
    and a SEG or SR stored before the deletion (which no result row names yet) is removed by
    the worker, with a row in the access trail, and so are the label maps."""
    from sonoloop.dicom import seg
    from sonoloop.echo import analyse
    from sonoloop.web.analysis.labels import results_store
    from sonoloop.web.archive.models import Patient
    from sonoloop.web.audit.models import AuditEvent

    instance = store(samples["cine_30"])
    job = AnalysisJob.objects.get(instance=instance)
    if when == "after its SR is stored":  # the last window: the SR and the label maps stored, no result row yet
        monkeypatch.setattr(running, "_store_outputs",
                            _deleting_the_image(running._store_outputs, instance.pk, after=True))
    else:
        module, name = (seg, "build_segmentation") if when.startswith("before") else (analyse, "measure")
        monkeypatch.setattr(module, name, _deleting_the_image(getattr(module, name), instance.pk))
    assert services.job_run(job.pk) == "missing"
    assert not AnalysisJob.objects.exists()  # deleted with its image
    assert "the image was deleted or rejected while it was analysed; nothing is stored" in caplog.text
    assert not Instance.every.exists() and not Patient.objects.exists() and not AnalysisResult.objects.exists()
    assert not list(results_store().root.rglob("*.npz"))
    by_worker = AuditEvent.objects.filter(source="worker", action="D")
    if when.startswith("after"):
        (event,) = by_worker
        assert event.instances == (2 if "SR" in when else 1) and "deleted while it was analysed" in event.detail
    else:
        assert not by_worker.exists()


def test_a_model_that_cannot_be_loaded_fails_the_job_with_the_reason(config, samples, tmp_path):
    config(model=str(tmp_path / "no-such-model"))
    running._model = None
    instance = store(samples["cine_30"])
    job = AnalysisJob.objects.get(instance=instance)
    assert services.job_run(job.pk) == AnalysisJob.FAILED
    job.refresh_from_db()
    assert job.reason.startswith("the model cannot be loaded:") and "model.json is missing" in job.reason
    assert instance.analysis_results.count() == 0 and Instance.objects.filter(pk=instance.pk).exists()


def test_a_worker_warms_the_model_up_before_its_first_job(config, small_model, samples, caplog, tmp_path):
    config(model=str(tmp_path / "no-such-model"))  # a model that cannot load: the worker still starts
    running._model = None
    with caplog.at_level("WARNING", logger="sonoloop.analysis"):
        running.warm_up()
    assert running._model is None and "could not be loaded ahead of the first job" in caplog.text

    config(model=str(small_model))
    caplog.clear()
    with caplog.at_level("INFO", logger="sonoloop.analysis"):
        running.warm_up()  # it also builds a SEG and an SR once: highdicom's INFO chatter stays out of the log
    assert running._model is not None and running._model.folder == small_model
    assert "model small-untrained" in caplog.text and "ready (engine fp32)" in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("highdicom")]
    warmed = running._model
    instance = store(samples["cine_30"])
    assert services.job_run(AnalysisJob.objects.get(instance=instance).pk) == AnalysisJob.DONE
    assert running._model is warmed  # the job used it, it did not load another
