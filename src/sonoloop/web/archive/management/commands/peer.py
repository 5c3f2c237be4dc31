"""`sonoloop peer add|list|remove`: the DICOM peers this node trusts and sends to."""

from django.core.management.base import BaseCommand, CommandError

from sonoloop.web.archive import services
from sonoloop.web.archive.models import DicomPeer


class Command(BaseCommand):
    help = "Manage DICOM peers."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add or update a peer")
        add.add_argument("ae_title")
        add.add_argument("--host", required=True)
        add.add_argument("--port", type=int, required=True)
        add.add_argument("--store", action="store_true", help="may send images here (C-STORE)")
        add.add_argument("--query", action="store_true", help="may query and retrieve (C-FIND/C-GET/C-MOVE)")
        add.add_argument("--corrections", action="store_true",
                         help="trusted for corrections: may replace instances and change patient and study "
                              "details another sender stored (from its host only)")
        add.add_argument("--move-destination", action="store_true", help="C-MOVE may send images to it")
        add.add_argument("--results", action="store_true",
                         help="send it every segmentation (SEG) and measurement report (SR) Sonoloop makes")
        add.add_argument("--tls", action="store_true",
                         help="connect to it over TLS (results, C-MOVE), verifying its certificate against "
                              "SONOLOOP_DICOM_TLS_CA")
        add.add_argument("--tls-identity", default="",
                         help="with client certificates required, the name its certificate must carry "
                              "(CN or subjectAltName; default: its AE title or host)")
        add.add_argument("--description", default="")
        sub.add_parser("list", help="list peers")
        remove = sub.add_parser("remove", help="remove a peer")
        remove.add_argument("ae_title")

    def handle(self, *args, action, **options):
        try:
            if action == "add":
                peer = services.peer_add(
                    options["ae_title"], options["host"], options["port"],
                    may_store=options["store"], may_query=options["query"],
                    is_move_destination=options["move_destination"], receives_results=options["results"],
                    may_correct=options["corrections"], description=options["description"],
                    use_tls=options["tls"], tls_identity=options["tls_identity"],
                )
                self.stdout.write(f"saved peer {peer}")
            elif action == "remove":
                services.peer_remove(options["ae_title"])
                self.stdout.write(f"removed peer {options['ae_title']}")
            else:
                self._list()
        except services.PeerError as exc:
            raise CommandError(str(exc)) from None

    def _list(self):
        peers = DicomPeer.objects.all()
        if not peers:
            self.stdout.write("no peers configured (unknown AEs may C-ECHO; C-STORE only with SONOLOOP_DICOM_OPEN_STORE on; "
                              "nothing with SONOLOOP_DICOM_STRICT on)")
            return
        self.stdout.write(f"{'AE title':16}  {'host':24} {'port':>5}  store query move-dest results corrections tls")
        for p in peers:
            flags = "  ".join("yes  " if f else "no   " for f in (p.may_store, p.may_query, p.is_move_destination,
                                                                   p.receives_results, p.may_correct, p.use_tls))
            self.stdout.write(f"{p.ae_title:16}  {p.host:24} {p.port:>5}  {flags}")
