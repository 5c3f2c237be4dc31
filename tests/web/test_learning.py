"""The learning loop: retraining from approved annotations, the promotion gate, rollback, roles."""

import json
from pathlib import Path

import pytest
import torch
from django.test import Client

from sonoloop.ml.data import camus_frames, select
from sonoloop.ml.modelfolder import save_model
from sonoloop.ml.network import build_network
from sonoloop.ml.spec import CLASSES, TINY_ARCHITECTURE, TINY_PREPROCESSING
from sonoloop.ml.train import TrainConfig, export_best, train
from sonoloop.web.analysis import services as analysis
from sonoloop.web.analysis.models import AnalysisJob
from sonoloop.web.annotations import services as annotations
from sonoloop.web.archive.services import instance_path, instance_store
from sonoloop.web.learning import services
from sonoloop.web.learning.models import RetrainingJob
from sonoloop.web.registry import services as registry_services
from sonoloop.web.registry.models import ModelDecision, ModelVersion
from tests.web.conftest import user_with_role
from tests.web.test_annotations import ai_labels, upload

pytestmark = pytest.mark.django_db


def _train(camus_dir, out: Path, name: str, epochs: int, limit: int, init_from: Path | None = None,
           architecture: dict = TINY_ARCHITECTURE) -> Path:
    frames = camus_frames(camus_dir)
    training, validation = select(frames, "training", limit), select(frames, "training")[-4:]  # limit < 290
    config = TrainConfig(architecture=dict(architecture), preprocessing=dict(TINY_PREPROCESSING),
                         epochs=epochs, batch_size=8, learning_rate=3e-3, augment=False,
                         init_from=str(init_from) if init_from else None)
    history = train(training, validation, config, out.with_name(out.name + ".work"), progress=False)
    return export_best(out.with_name(out.name + ".work"), out, config, history, training, validation, name=name,
                       data_source="CAMUS", parent=init_from.name if init_from else None)


SMALL = {**TINY_ARCHITECTURE, "filters": [8, 16, 32]}  # the tiniest that learns the LA in seconds


@pytest.fixture(scope="module")
def tiny_models(camus_dir, tmp_path_factory):
    """Real small networks: a parent (2 short epochs), a candidate trained further from it (better on
    every structure: LV endo 0.04 → 0.88, LA 0.14 → 0.81 when measured), one never trained (worse)."""
    root = tmp_path_factory.mktemp("models")
    parent = _train(camus_dir, root / "tiny-a", "tiny-a", epochs=2, limit=48, architecture=SMALL)
    better = _train(camus_dir, root / "tiny-b", "tiny-b", epochs=15, limit=200, init_from=parent, architecture=SMALL)
    torch.manual_seed(0)
    worse = save_model(root / "tiny-c", build_network(SMALL), {
        "name": "tiny-c", "architecture": SMALL, "classes": CLASSES, "preprocessing": TINY_PREPROCESSING,
        "postprocessing": {"largest_component": True}})
    return {"parent": parent, "better": better, "worse": worse}


@pytest.fixture
def registry(config, camus_dir, tiny_models):
    config(camus_dir=str(camus_dir), auto_analysis=False)
    parent = services.version_register(tiny_models["parent"], origin=ModelVersion.IMPORTED, active=True)
    return parent


def evaluated(*versions):
    """What the evaluation task queued at registration does on a worker."""
    from sonoloop.web.registry.tasks import evaluate_task

    for version in versions:
        evaluate_task.call(version.pk)
        version.refresh_from_db()


@pytest.fixture
def approved(config, samples):
    """One cine with an approved annotation (frames 5 and 9) and a draft one (frame 12)."""
    instance = instance_store(samples["cine_30"].read_bytes()).instance
    labels = ai_labels()
    anna, rita = user_with_role("anna", "annotator"), user_with_role("rita", "reviewer")
    kept = annotations.annotation_create(instance, anna, {**upload({5: labels[4], 9: labels[8]}), "status": "submitted",
                                                         "started_from_result": None})
    annotations.annotation_status_set(kept, rita, "approved")
    annotations.annotation_create(instance, anna, {**upload({12: labels[11]}), "started_from_result": None})
    return instance, kept


def admin():
    return user_with_role("ada", "admin")


def test_retraining_uses_only_approved_annotations_and_records_exactly_the_data(registry, approved, settings):
    instance, kept = approved
    job = services.retrain_create(admin(), parent="tiny-a", name="tiny-r1", strategy="two-to-one", epochs=1,
                                  batch_size=4, enqueue=False)
    job = services.retrain_run(job.pk)
    assert job.status == RetrainingJob.DONE, job.reason
    version = job.result
    assert version.name == "tiny-r1" and version.parent == registry and not version.is_active
    assert set(version.heldout_dice) == {"LV endo", "LV epi", "LA", "MYO"} and version.annotated_dice
    meta = json.loads((Path(version.folder) / "model.json").read_text())
    record = meta["training"]["retraining"]
    uid = instance.sop_instance_uid
    assert record["annotations"] == [{"annotation": kept.pk, "version": kept.version, "instance": uid,
                                      "frames": [5, 9], "author": "anna", "status": "approved"}]
    assert record["annotated_frames"] == [f"{uid}#5@v1", f"{uid}#9@v1"]
    assert len(record["original_frames"]) == 4 and meta["parent"] == "tiny-a"
    assert meta["training"]["hyperparameters"]["epochs"] == 1
    assert Path(version.folder).parent == settings.CONFIG.models_dir
    assert job.progress["epoch"] == 1 and job.progress["history"]
    assert ModelVersion.objects.get(is_active=True) == registry  # a new version is only a candidate


def test_registering_queues_the_evaluation_and_promotion_waits_for_it(registry, tiny_models,
                                                                       django_capture_on_commit_callbacks):
    from django_tasks_db.models import DBTaskResult

    ada = admin()
    with django_capture_on_commit_callbacks(execute=True):
        better = services.version_register(tiny_models["better"], origin=ModelVersion.IMPORTED)
    (queued,) = DBTaskResult.objects.filter(task_path__endswith="evaluate_task", args_kwargs__args=[better.pk])
    assert queued.queue_name == "default" and queued.status == "READY"
    # the model never runs inside a request: an unevaluated version is refused, not evaluated
    with pytest.raises(services.Conflict, match="tiny-b has not been evaluated on the held-out set yet"):
        services.model_promote(better, ada)
    assert ModelVersion.objects.get(pk=better.pk).heldout_dice == {}
    evaluated(better)
    with pytest.raises(services.Conflict, match="tiny-a has not been evaluated"):  # the active one neither
        services.model_promote(better, ada)
    evaluated(registry)
    assert services.model_promote(better, ada).action == ModelDecision.PROMOTED


def test_the_gate_promotes_an_improving_candidate_and_refuses_a_regressing_one(registry, tiny_models):
    ada = admin()
    better = services.version_register(tiny_models["better"], origin=ModelVersion.IMPORTED)
    worse = services.version_register(tiny_models["worse"], origin=ModelVersion.IMPORTED)
    evaluated(registry, better, worse)

    promoted = services.model_promote(better, ada)
    assert promoted.action == ModelDecision.PROMOTED, promoted.numbers
    candidate, active = promoted.numbers["candidate"], promoted.numbers["active"]
    assert all(candidate[k] > active[k] for k in active), promoted.numbers  # better on every structure
    assert promoted.user == ada and promoted.previous == registry and promoted.margin == 0.01
    assert ModelVersion.objects.get(is_active=True) == better

    refused = services.model_promote(worse, ada)
    assert refused.action == ModelDecision.REJECTED and "dropped" in refused.reason
    assert refused.numbers["drops"] and refused.numbers["active_version"] == "tiny-b"
    assert ModelVersion.objects.get(is_active=True) == better  # unchanged

    forced = services.model_promote(worse, ada, force=True, reason="testing the forced path")
    assert forced.action == ModelDecision.FORCED and ModelVersion.objects.get(is_active=True) == worse
    assert list(ModelDecision.objects.filter(version=worse).values_list("action", flat=True)) == [
        "forced", "rejected", "registered"]


def test_rollback_puts_the_earlier_version_back_for_new_inference_jobs(registry, tiny_models, config, samples):
    ada = admin()
    better = services.version_register(tiny_models["better"], origin=ModelVersion.IMPORTED)
    evaluated(registry, better)
    services.model_promote(better, ada)
    assert registry_services.active_model_folder() == Path(better.folder)
    decision = services.model_rollback(registry, ada)
    assert decision.action == ModelDecision.ROLLED_BACK and decision.previous == better
    assert registry_services.active_model_folder() == Path(registry.folder)

    config(auto_analysis=True, inference_engine="fp32")
    instance = instance_store(samples["cine_30"].read_bytes()).instance
    job = AnalysisJob.objects.get(instance=instance)
    analysis.job_run(job.pk)
    result = AnalysisJob.objects.get(pk=job.pk).result
    assert result.model_name == "tiny-a"  # the rolled-back version made it, and says so


def test_only_admins_promote_roll_back_and_retrain(registry, tiny_models, approved):
    better = services.version_register(tiny_models["better"], origin=ModelVersion.IMPORTED)
    evaluated(registry)
    reviewer, boss = Client(), Client()
    reviewer.force_login(user_with_role("rob", "reviewer"))
    boss.force_login(admin())
    body = {"parent": "tiny-a", "name": "tiny-r2", "strategy": "equal", "epochs": 1}
    for url, payload in ((f"/api/models/{better.name}/promote", {}), (f"/api/models/{registry.name}/rollback", {}),
                         ("/api/retraining", body)):
        response = reviewer.post(url, json.dumps(payload), content_type="application/json")
        assert response.status_code == 403, url
    assert reviewer.get("/api/models").status_code == 200
    response = boss.post(f"/api/models/{better.name}/promote", "{}", content_type="application/json")
    assert response.status_code == 409 and "not been evaluated" in response.json()["error"]
    evaluated(better)
    response = boss.post(f"/api/models/{better.name}/promote", "{}", content_type="application/json")
    assert response.status_code == 200 and response.json()["action"] == "promoted"
    response = boss.post(f"/api/models/{better.name}/promote", "{}", content_type="application/json")
    assert response.status_code == 409
    listing = boss.get("/api/models").json()
    assert [v["name"] for v in listing["versions"] if v["active"]] == [better.name]
    assert not any(v["folder"].startswith("/") for v in listing["versions"])  # no server paths shown
    assert listing["decisions"][0]["user"] == "ada"


def test_bad_requests_get_reasons_and_leave_no_version(registry, approved, config, settings):
    ada = admin()
    with pytest.raises(services.RegistryError, match="no model version 'nothing'"):
        services.retrain_create(ada, parent="nothing", name="x1", strategy="equal", enqueue=False)
    with pytest.raises(services.LearningError, match="unknown mixing strategy"):
        services.retrain_create(ada, parent="tiny-a", name="x1", strategy="half", enqueue=False)
    with pytest.raises(services.Conflict, match="taken"):
        services.retrain_create(ada, parent="tiny-a", name="tiny-a", strategy="equal", enqueue=False)
    with pytest.raises(services.LearningError, match="letters, digits"):
        services.retrain_create(ada, parent="tiny-a", name="../evil", strategy="equal", enqueue=False)

    instance, kept = approved
    instance_path(instance).unlink()  # the annotated image is gone from the archive
    job = services.retrain_run(services.retrain_create(ada, parent="tiny-a", name="x2", strategy="equal",
                                                       epochs=1, enqueue=False).pk)
    assert job.status == RetrainingJob.FAILED and "no longer in the archive" in job.reason
    assert not (settings.CONFIG.models_dir / "x2").exists()
    assert ModelVersion.objects.filter(name="x2").count() == 0
    assert ModelVersion.objects.get(is_active=True) == registry

    config(camus_dir="")
    with pytest.raises(services.RegistryError, match="SONOLOOP_CAMUS_DIR"):
        services.heldout_frames()


def test_no_approved_annotations_is_refused(registry):
    with pytest.raises(services.LearningError, match="no approved annotations"):
        services.retrain_create(admin(), parent="tiny-a", name="x3", strategy="equal", enqueue=False)


def test_a_cancelled_run_writes_no_version(registry, approved, settings):
    ada = admin()
    queued = services.retrain_create(ada, parent="tiny-a", name="x4", strategy="equal", epochs=1, enqueue=False)
    assert services.retrain_cancel(queued, ada).status == RetrainingJob.CANCELLED
    running = services.retrain_create(ada, parent="tiny-a", name="x5", strategy="equal", epochs=3, enqueue=False)
    RetrainingJob.objects.filter(pk=running.pk).update(cancel_requested=True)  # asked while it runs
    job = services.retrain_run(running.pk)
    assert job.status == RetrainingJob.CANCELLED and job.progress["epoch"] == 1
    assert not (settings.CONFIG.models_dir / "x5").exists() and not ModelVersion.objects.filter(name="x5").exists()
    assert not list(settings.CONFIG.models_dir.glob(".x5-*")) and ModelVersion.objects.count() == 1


def test_a_run_whose_worker_died_is_failed_and_the_active_model_kept(registry, settings):
    from datetime import timedelta

    from django.utils import timezone

    job = RetrainingJob.objects.create(parent=registry, name="lost", strategy="equal", status=RetrainingJob.RUNNING,
                                       worker="gpu-1:4242", heartbeat_at=timezone.now() - timedelta(minutes=10))
    scratch = settings.CONFIG.tmp_dir / f"retrain-{job.pk}"
    scratch.mkdir(parents=True)
    staging = settings.CONFIG.models_dir / ".lost-abc12345"  # as tempfile.mkdtemp names it
    staging.mkdir(parents=True)
    other = settings.CONFIG.models_dir / ".lost-b-xyz98765"  # a live run named "lost-b"
    other.mkdir()
    alive = RetrainingJob.objects.create(parent=registry, name="alive", strategy="equal",
                                         status=RetrainingJob.RUNNING, heartbeat_at=timezone.now())
    assert services.retraining_fail_stale(stale_seconds=60) == [job.pk]
    job.refresh_from_db()
    assert job.status == RetrainingJob.FAILED and "gpu-1:4242 stopped responding" in job.reason
    assert not scratch.exists() and not staging.exists() and other.exists()
    assert RetrainingJob.objects.get(pk=alive.pk).status == RetrainingJob.RUNNING
    assert ModelVersion.objects.get(is_active=True) == registry


def test_the_models_pages_show_versions_curves_and_let_only_admins_act(registry, tiny_models, approved):
    better = services.version_register(tiny_models["better"], origin=ModelVersion.IMPORTED, parent=registry)
    evaluated(registry, better)
    viewer, boss = Client(), Client()
    viewer.force_login(user_with_role("vic", "viewer"))
    boss.force_login(admin())
    page = viewer.get("/models/").content.decode()
    assert "tiny-a" in page and "tiny-b" in page and "★" in page and ">Promote<" not in page
    detail = viewer.get("/models/tiny-b/").content.decode()
    assert '<svg class="curves"' in detail and 'class="dice"' in detail and "learning_rate" in detail
    assert viewer.post("/models/tiny-b/promote").status_code == 403

    assert ">Promote<" in boss.get("/models/").content.decode()
    response = boss.post("/models/tiny-b/promote", follow=True)
    assert "tiny-b: promoted." in response.content.decode()
    assert ModelVersion.objects.get(is_active=True) == better
    response = boss.post("/models/retrain", {"parent": "tiny-b", "name": "tiny-r9", "strategy": "equal",
                                             "epochs": "1", "batch_size": "4", "learning_rate": "0.001"}, follow=True)
    assert "queued for a training worker" in response.content.decode()
    job = RetrainingJob.objects.get(name="tiny-r9")
    assert job.parent == better and job.status == RetrainingJob.QUEUED
    response = boss.post("/models/retrain", {"parent": "tiny-b", "name": "tiny-r9", "strategy": "equal"}, follow=True)
    assert "is taken" in response.content.decode()
    response = boss.post(f"/models/retraining/{job.pk}/cancel", follow=True)
    assert "cancelled" in response.content.decode()


def test_the_commands_retrain_list_and_promote(registry, approved, capsys):
    from django.core.management import CommandError, call_command

    admin()
    call_command("retrain", "--parent", "tiny-a", "--name", "tiny-cli", "--strategy", "ratio", "--ratio", "0.5",
                 "--epochs", "1", "--no-augment", "--as", "ada")
    out = capsys.readouterr().out
    assert "tiny-cli: candidate, held-out Dice" in out
    meta = json.loads((Path(ModelVersion.objects.get(name="tiny-cli").folder) / "model.json").read_text())
    assert meta["training"]["retraining"]["originals_per_annotated_frame"] == 0.5
    assert len(meta["training"]["retraining"]["original_frames"]) == 1  # round(0.5 × 2 annotated frames)
    call_command("models", "list")
    listing = capsys.readouterr().out
    assert "* tiny-a" in listing and "  tiny-cli  parent tiny-a  retrained  held-out: LV endo" in listing
    with pytest.raises(CommandError, match="only an admin"):
        user_with_role("vic", "viewer")
        call_command("models", "promote", "tiny-cli", "--as", "vic")
    with pytest.raises(CommandError, match="no model version 'nope'"):
        call_command("retrain", "--parent", "nope", "--name", "x", "--strategy", "equal", "--as", "ada")


def test_the_shipped_model_shows_the_numbers_it_was_published_with_when_nothing_is_held_out_here(config):
    from sonoloop.ml.modelfolder import DEFAULT_MODEL

    config(camus_dir="", auto_analysis=False)
    shipped = services.version_register(DEFAULT_MODEL, origin=ModelVersion.SHIPPED, active=True)
    published = json.loads((DEFAULT_MODEL / "model.json").read_text())["metrics"]
    (source, dice), = [(k, v) for k, v in published.items() if "dice" in k]
    viewer = Client()
    viewer.force_login(user_with_role("val", "viewer"))
    listed = viewer.get("/models/").content.decode()
    shown = " / ".join(f"{k} {v:.3f}" for k, v in dice.items())
    assert f"{shown} (published)" in listed and "not evaluated" not in listed
    detail = viewer.get(f"/models/{shipped.name}/").content.decode()
    assert "Published Dice" in detail and source in detail
    assert services.version_summary(shipped)["published_dice"] == {"source": source, "dice": dice}
