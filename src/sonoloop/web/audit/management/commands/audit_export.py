"""`sonoloop manage audit_export [--since ISO-TIME]`: the access trail as RFC 5424 syslog lines
carrying DICOM audit messages (PS3.15 A.5), for a hospital's audit record repository."""

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from sonoloop.web.audit.models import AuditEvent
from sonoloop.web.audit.services import syslog_line


class Command(BaseCommand):
    help = "Write the access trail as RFC 5424 syslog lines (DICOM audit messages)."

    def add_arguments(self, parser):
        parser.add_argument("--since", help="only events at or after this time (ISO 8601, e.g. 2026-12-01T00:00Z)")

    def handle(self, *args, since=None, **options):
        events = AuditEvent.objects.order_by("at", "id")
        if since:
            moment = parse_datetime(since.replace("Z", "+00:00"))
            if moment is None:
                raise CommandError(f"--since {since!r} is not an ISO 8601 date and time")
            events = events.filter(at__gte=moment)
        for event in events.iterator(chunk_size=1000):
            self.stdout.write(syslog_line(event))
