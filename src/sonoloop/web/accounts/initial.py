"""The first admin's generated password, kept in ``<data>/initial-admin-password`` only until
it is changed: whoever can read the data folder should not find a working password there."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings

log = logging.getLogger("sonoloop.accounts")

INITIAL_ADMIN = "admin"


def initial_password_file() -> Path:
    return Path(settings.CONFIG.data_dir) / "initial-admin-password"


def forget_initial_password(sender, instance, **kwargs) -> None:
    """post_save of a user: once the first admin's password no longer is the one on disk (changed
    on the web, with `changepassword`, or in the admin), remove the file."""
    if instance.username != INITIAL_ADMIN:
        return
    note = initial_password_file()
    try:
        written = note.read_text().strip()
    except FileNotFoundError:
        return
    if written and instance.check_password(written):
        return
    note.unlink(missing_ok=True)
    log.info("the first admin's password was changed: removed %s", note)
