"""Background tasks (Django's tasks API; django-tasks-db by default)."""

from django_tasks import task


@task(queue_name="inference")
def analyse_instance(job_id: int) -> str:
    from .services import run_job

    return run_job(job_id)


@task(queue_name="default")
def forward_result(forward_id: int) -> str:
    from .services import run_forward

    return run_forward(forward_id)
