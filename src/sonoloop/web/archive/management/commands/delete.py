"""`sonoloop delete --study UID | --series UID | --instance UID --reason TEXT`: delete stored
images with their files, the AI's results and the SEG/SR made from them (archive.removal)."""

import getpass

from django.core.management.base import BaseCommand, CommandError

from sonoloop.web.archive import services
from sonoloop.web.audit.services import Actor


class Command(BaseCommand):
    help = "Delete a study, series or instance with everything made from it; annotations stay as records."

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--study", help="Study Instance UID")
        which.add_argument("--series", help="Series Instance UID")
        which.add_argument("--instance", help="SOP Instance UID")
        parser.add_argument("--reason", required=True, help="why (written to the access trail)")

    def handle(self, *args, study=None, series=None, instance=None, reason="", **options):
        if not reason.strip():
            raise CommandError("say why (--reason): it goes to the access trail")
        actor = Actor(getpass.getuser(), "", "cli")
        try:
            if study:
                removed = services.study_remove(study, actor=actor, reason=reason.strip())
            elif series:
                removed = services.series_remove(series, actor=actor, reason=reason.strip())
            else:
                removed = services.instance_remove(instance, actor=actor, reason=reason.strip())
        except services.RemovalError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"deleted {removed.instances} instance(s) and {removed.derived} object(s) made from them "
                          f"(SEG, SR) in {len(removed.studies)} study(ies); {removed.studies_gone} study(ies) left empty "
                          f"and removed")
