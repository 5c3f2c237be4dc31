"""The analysis services, by concern — jobs and their queue (``queue``), running a job
(``running``), biplane volumes (``biplane``), sending results to peers (``forwarding``) and
what pages show (``presenting``) — gathered here for the views, commands and other apps."""

from .biplane import biplane_update  # noqa: F401
from .forwarding import FORWARD_ATTEMPTS, FORWARD_FIRST_DELAY, forward_run, forwards_queue  # noqa: F401
from .presenting import ejection_fraction_summary, forward_summary, job_summary, result_summary  # noqa: F401
from .queue import (  # noqa: F401
    MAX_ATTEMPTS, ULTRASOUND_IMAGES, RetryError, job_create, job_retry, job_tasks, jobs_requeue_stale,
    on_instance_indexed, on_instance_replacing, on_instances_removing, skip_reason,
)
from .labels import result_labels, results_store  # noqa: F401
from .running import ActiveModel, AnalysisError, active_model, job_run  # noqa: F401
