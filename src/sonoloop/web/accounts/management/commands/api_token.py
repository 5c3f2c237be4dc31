from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from sonoloop.web.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Issue an API token for a user (printed once; only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("name", help="what the token is for, e.g. 'research export script'")

    def handle(self, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"there is no user called {username!r}")
        _, token = ApiToken.issue(user, name)
        self.stdout.write(token)
