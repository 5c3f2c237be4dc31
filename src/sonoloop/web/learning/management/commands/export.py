"""`sonoloop export (--study UID … | --approved) --out DIR [--keep-dates]`: a de-identified dataset."""

import getpass

from django.core.management.base import BaseCommand, CommandError

from sonoloop.web.audit.services import Actor
from sonoloop.web.learning.export import ExportError, dataset_export


class Command(BaseCommand):
    help = "Export studies or every approved annotation de-identified (PS3.15 E), with CAMUS-layout frames."

    def add_arguments(self, parser):
        parser.add_argument("--study", action="append", default=[], help="Study Instance UID (repeat for more)")
        parser.add_argument("--approved", action="store_true", help="every approved annotation, with its image")
        parser.add_argument("--out", required=True, help="a new folder")
        parser.add_argument("--keep-dates", action="store_true",
                            help="retain longitudinal temporal information (dates and times); off by default")

    def handle(self, *args, study, approved, out, keep_dates, **options):
        try:
            report = dataset_export(out, study_uids=study, approved=approved, keep_dates=keep_dates,
                                    actor=Actor(getpass.getuser(), "", "cli"))
        except ExportError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"exported {len(report.files)} DICOM file(s) of {report.patients} patient(s) and "
                          f"{len(report.frames)} annotated frame(s) to {out}; {len(report.skipped)} left out "
                          f"(see manifest.json)")
