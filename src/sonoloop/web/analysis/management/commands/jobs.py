"""`sonoloop jobs list [--status S] [--instance UID]` and `sonoloop jobs retry ID`."""

from django.core.management.base import BaseCommand, CommandError

from sonoloop.web.analysis.models import AnalysisJob
from sonoloop.web.analysis.services import RetryError, job_retry


class Command(BaseCommand):
    help = "List analysis jobs, or run a failed or finished one again."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="the most recent jobs, newest first")
        listing.add_argument("--status", choices=[s for s, _ in AnalysisJob.STATUSES])
        listing.add_argument("--instance", help="SOP Instance UID")
        listing.add_argument("--limit", type=int, default=50)
        retry = sub.add_parser("retry", help="run a job's instance through the model again (a new job)")
        retry.add_argument("id", type=int)

    def handle(self, *args, action, **options):
        if action == "list":
            jobs = AnalysisJob.objects.select_related("instance")
            if options["status"]:
                jobs = jobs.filter(status=options["status"])
            if options["instance"]:
                jobs = jobs.filter(instance__sop_instance_uid=options["instance"])
            rows = list(jobs[: options["limit"]])
            if not rows:
                self.stdout.write("no jobs")
                return
            self.stdout.write(f"{'ID':>6}  {'STATUS':8}  {'FRAMES':>9}  {'SECONDS':>7}  {'MODEL':24}  INSTANCE / REASON")
            for job in rows:
                frames = f"{job.frames_done}/{job.frames_total}" if job.frames_total else "-"
                seconds = f"{job.duration_seconds:.1f}" if job.duration_seconds is not None else "-"
                model = f"{job.model_name} {job.model_version}".strip() or "-"
                self.stdout.write(f"{job.pk:>6}  {job.status:8}  {frames:>9}  {seconds:>7}  {model[:24]:24}  "
                                  f"{job.instance.sop_instance_uid}")
                if job.reason:
                    self.stdout.write(f"{'':>6}  {job.reason}")
            return
        job = AnalysisJob.objects.filter(pk=options["id"]).first()
        if job is None:
            raise CommandError(f"there is no job {options['id']}")
        try:
            new = job_retry(job)
        except RetryError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"job {new.pk} queued for {job.instance.sop_instance_uid} (retry of job {job.pk})")
