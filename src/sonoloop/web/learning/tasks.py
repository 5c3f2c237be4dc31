"""Retraining runs on the training queue (`sonoloop worker --queues training` on a GPU machine);
the held-out evaluation of a registered version on the default queue (minutes, not hours)."""

from django_tasks import task


@task(queue_name="training")
def retrain_task(job_id: int) -> str:
    from .services import retrain_run

    return retrain_run(job_id).status


@task(queue_name="default")
def evaluate_task(version_id: int) -> str:
    from .models import ModelVersion
    from .services import version_evaluate

    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        return "missing"
    return ", ".join(f"{k} {v:.4f}" for k, v in version_evaluate(version).heldout_dice.items())
