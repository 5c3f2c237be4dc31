"""`sonoloop manage archive_check`: does every indexed instance have its file, and every file an index row?"""

from django.core.management.base import BaseCommand

from sonoloop.web.archive import services


class Command(BaseCommand):
    help = "Check the archive's files against its index; optionally remove unindexed files left by a crash."

    def add_arguments(self, parser):
        parser.add_argument("--remove-orphans", action="store_true", help="delete files no index row points to")
        parser.add_argument("--min-age", type=float, default=600, help="ignore files younger than this (seconds)")

    def handle(self, *args, remove_orphans, min_age, **options):
        report = services.archive_check(remove_orphans=remove_orphans, min_age_seconds=min_age)
        self.stdout.write(f"{report.indexed} indexed instances")
        for uid in report.missing_files:
            self.stdout.write(f"MISSING FILE for SOP Instance {uid}")
        if report.orphan_keys:
            action = f"removed {report.removed_orphans}" if remove_orphans else "run with --remove-orphans to delete them"
            self.stdout.write(f"{len(report.orphan_keys)} unindexed files ({action})")
        if report.missing_files:
            self.stderr.write(f"{len(report.missing_files)} indexed instances have no file")
            raise SystemExit(1)
