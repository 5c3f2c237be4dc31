"""The held-out evaluation of a registered version, on the default queue (minutes, not hours)."""

from django_tasks import task


@task(queue_name="default")
def evaluate_task(version_id: int) -> str:
    from .evaluation import version_evaluate
    from .models import ModelVersion

    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        return "missing"
    return ", ".join(f"{k} {v:.4f}" for k, v in version_evaluate(version).heldout_dice.items())
