"""Retraining runs on the training queue (`sonoloop worker --queues training` on a GPU machine)."""

from django_tasks import task


@task(queue_name="training")
def retrain_task(job_id: int) -> str:
    from .services import retrain_run

    return retrain_run(job_id).status
