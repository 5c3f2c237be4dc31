"""The archive's background tasks (Django's tasks API)."""

from django_tasks import task


@task(queue_name="default")
def commitment_report(request_id: int) -> str:
    from .commitment import commitment_report_run

    return commitment_report_run(request_id)
