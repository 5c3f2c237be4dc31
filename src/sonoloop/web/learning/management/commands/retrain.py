"""`sonoloop retrain`: fine-tune a version on the approved annotations, here with a progress bar
(or queued for a training worker with --queue)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from sonoloop.ml.retrain import STRATEGIES
from sonoloop.web.learning import services


class Command(BaseCommand):
    help = "Retrain from approved annotations mixed with original training data; the result is a candidate version."

    def add_arguments(self, parser):
        parser.add_argument("--parent", required=True, help="the version to fine-tune (see `models list`)")
        parser.add_argument("--name", required=True, help="the new version's name")
        parser.add_argument("--strategy", required=True, choices=[*STRATEGIES, "ratio"],
                            help="annotations-only (paper exp. 1), equal (exp. 2), two-to-one (exp. 3), or ratio")
        parser.add_argument("--ratio", type=float, help="original frames per annotated frame, with --strategy ratio")
        parser.add_argument("--epochs", type=int, default=10)
        parser.add_argument("--batch-size", type=int, default=4)
        parser.add_argument("--lr", type=float, default=1e-4)
        parser.add_argument("--no-augment", action="store_true")
        parser.add_argument("--as", dest="username", required=True, help="the admin starting the run")
        parser.add_argument("--queue", action="store_true", help="leave it to a training worker instead")

    def handle(self, *args, **o):
        user = get_user_model().objects.filter(username=o["username"]).first()
        if user is None:
            raise CommandError(f"there is no user {o['username']!r}")
        try:
            job = services.retrain_create(user, parent=o["parent"], name=o["name"], strategy=o["strategy"],
                                          ratio=o["ratio"], epochs=o["epochs"], batch_size=o["batch_size"],
                                          learning_rate=o["lr"], augment=not o["no_augment"], enqueue=o["queue"])
        except (services.RegistryError, services.NotAllowed) as exc:
            raise CommandError(str(exc)) from None
        if o["queue"]:
            self.stdout.write(f"retraining run {job.pk} queued for a training worker")
            return
        job = services.retrain_run(job.pk, progress_bar=True)
        if job.status != job.DONE:
            raise CommandError(f"retraining run {job.pk} {job.status}: {job.reason}")
        version = job.result
        self.stdout.write(f"{version.name}: candidate, held-out Dice {version.heldout_dice}; "
                          f"promote with `sonoloop manage models promote {version.name} --as {o['username']}`")
