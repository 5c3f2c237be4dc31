"""`sonoloop manage archive_check`: does every indexed instance have its file, and every file an index row?"""

from django.core.management.base import BaseCommand

from sonoloop.web.archive import services


class Command(BaseCommand):
    help = ("Check the archive's files against its index; optionally index unindexed files left by a crash "
            "again (files that cannot be indexed are moved to quarantine, never deleted).")

    def add_arguments(self, parser):
        parser.add_argument("--repair", action="store_true",
                            help="index unindexed files again from their own header; quarantine the others")
        parser.add_argument("--min-age", type=float, default=600, help="ignore files younger than this (seconds)")

    def handle(self, *args, repair, min_age, **options):
        report = services.archive_check(repair=repair, min_age_seconds=min_age)
        self.stdout.write(f"{report.indexed} indexed instances")
        for uid in report.missing_files:
            self.stdout.write(f"MISSING FILE for SOP Instance {uid}")
        if report.orphan_keys:
            action = (f"indexed again: {len(report.reindexed)}, moved to quarantine: {len(report.quarantined)}"
                      if repair else "run with --repair to index them again")
            self.stdout.write(f"{len(report.orphan_keys)} unindexed files ({action})")
        if report.missing_files:
            self.stderr.write(f"{len(report.missing_files)} indexed instances have no file")
            raise SystemExit(1)
