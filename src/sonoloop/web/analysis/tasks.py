"""Background tasks (Django's tasks API; django-tasks-db by default)."""

from django_tasks import task


@task(queue_name="inference")
def analyse_instance(job_id: int) -> str:
    from .services import job_run

    return job_run(job_id)


@task(queue_name="default")
def forward_result(forward_id: int) -> str:
    from .services import forward_run

    return forward_run(forward_id)
