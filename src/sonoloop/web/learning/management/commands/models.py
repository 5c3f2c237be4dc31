"""`sonoloop manage models`: list versions and decisions, promote through the gate, roll back, register."""

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from sonoloop.web.learning import services
from sonoloop.web.registry.models import ModelDecision, ModelVersion


class Command(BaseCommand):
    help = "The model registry: list, evaluate, promote (through the held-out gate), rollback, register."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="every version with parent, origin, held-out Dice; the decisions")
        for name, text in (("promote", "make a candidate active if it passes the gate"),
                           ("rollback", "make an earlier version active again"),
                           ("evaluate", "measure a version on the held-out set and the approved annotations")):
            command = sub.add_parser(name, help=text)
            command.add_argument("version")
            if name != "evaluate":
                command.add_argument("--as", dest="username", required=True, help="the admin who decides")
                command.add_argument("--reason", default="")
            if name == "promote":
                command.add_argument("--force", action="store_true", help="activate even if the gate refuses")
        register = sub.add_parser("register", help="add an existing model folder as a candidate")
        register.add_argument("folder")

    def handle(self, *args, action, **options):
        try:
            self._handle(action, options)
        except services.NotAllowed as exc:
            raise CommandError(str(exc)) from None
        except services.RegistryError as exc:
            raise CommandError(str(exc)) from None

    def _handle(self, action, options):
        if action == "list":
            services.registry_ensure()
            trend = services.agreement_trend()
            for version in ModelVersion.objects.select_related("parent"):
                s = services.version_summary(version, trend)
                dice = ", ".join(f"{k} {v:.3f}" for k, v in s["heldout_dice"].items()) or "not evaluated"
                if s["published_dice"]:
                    dice += " (published: " + ", ".join(f"{k} {v:.3f}" for k, v in s["published_dice"]["dice"].items()) + ")"
                agreement = s["annotation_agreement"]
                self.stdout.write(f"{'*' if s['active'] else ' '} {s['name']}  parent {s['parent'] or '—'}  "
                                  f"{s['origin']}  held-out: {dice}"
                                  + (f"  annotations: {agreement['annotations']}, AI-vs-expert Dice "
                                     f"{agreement['mean_dice']}" if agreement else ""))
            for decision in ModelDecision.objects.select_related("version", "user")[:20]:
                d = services.decision_summary(decision)
                self.stdout.write(f"  {d['at'][:19]}  {d['version']} {d['action']} by {d['user'] or '—'}: {d['reason']}")
            return
        if action == "register":
            version = services.version_register(Path(options["folder"]), origin=ModelVersion.IMPORTED)
            self.stdout.write(f"registered {version.name} as a candidate")
            return
        version = services.version_get(options["version"])
        if action == "evaluate":
            version = services.version_evaluate(version)
            self.stdout.write(f"{version.name}: held-out {version.heldout_dice}; annotations {version.annotated_dice}")
            return
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"there is no user {options['username']!r}")
        if action == "promote":
            decision = services.model_promote(version, user, force=options["force"], reason=options["reason"])
        else:
            decision = services.model_rollback(version, user, reason=options["reason"])
        self.stdout.write(f"{decision.version.name}: {decision.action} ({decision.reason})")
        if decision.action == ModelDecision.REJECTED:
            raise CommandError("the candidate did not pass the gate; the active version is unchanged")
