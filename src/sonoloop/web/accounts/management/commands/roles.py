"""`sonoloop manage roles`: list users' roles, grant or revoke one."""

import sys

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from sonoloop.web.accounts.roles import DESCRIPTIONS, ROLES, UnknownRole, role_grant, role_revoke, user_roles


class Command(BaseCommand):
    help = "List users and their roles, or grant/revoke a role (viewer, annotator, reviewer, admin)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="every user and their roles")
        grant = sub.add_parser("grant", help="give USER the ROLE (and so every role below it)")
        grant.add_argument("username")
        grant.add_argument("role", choices=ROLES)
        grant.add_argument("--create", action="store_true",
                           help="create the user if missing, reading the password from standard input")
        revoke = sub.add_parser("revoke", help="take the ROLE group away from USER")
        revoke.add_argument("username")
        revoke.add_argument("role", choices=ROLES)

    def handle(self, *args, action, **options):
        User = get_user_model()
        if action == "list":
            for role in ROLES:
                self.stdout.write(f"# {role}: {DESCRIPTIONS[role]}")
            for user in User.objects.order_by("username"):
                roles = ", ".join(r for r in ROLES if r in user_roles(user)) or "(none: cannot see anything)"
                self.stdout.write(f"{user.username}\t{roles}{'  [superuser]' if user.is_superuser else ''}")
            return
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            if not (action == "grant" and options["create"]):
                raise CommandError(f"there is no user {options['username']!r} (add --create to make one)")
            password = sys.stdin.readline().rstrip("\n")
            if len(password) < 8:
                raise CommandError("give a password of at least 8 characters on standard input")
            user = User.objects.create_user(options["username"], password=password)
        try:
            (role_grant if action == "grant" else role_revoke)(user, options["role"])
        except UnknownRole as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{user.username}: {', '.join(r for r in ROLES if r in user_roles(user)) or 'no role'}")
