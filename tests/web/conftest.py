import dataclasses

import pytest

from sonoloop.web.accounts.roles import role_grant
from sonoloop.web.analysis import services as analysis_services
from sonoloop.web.annotations import services as annotation_services
from sonoloop.web.archive import services


def user_with_role(username: str, role: str | None, password: str = "s3cret-pass"):
    from django.contrib.auth.models import User

    user = User.objects.create_user(username, password=password)
    if role:
        role_grant(user, role)
    return user


@pytest.fixture
def config(settings, tmp_path):
    """A fresh data folder per test; returns a setter for other config fields."""
    settings.CONFIG = dataclasses.replace(settings.CONFIG, data_dir=tmp_path / "data")
    services.filestore.cache_clear()
    analysis_services.results_store.cache_clear()
    annotation_services.annotations_store.cache_clear()
    services.forget_cached_parents()  # each test's database is rolled back

    def set_config(**changes):
        settings.CONFIG = dataclasses.replace(settings.CONFIG, **changes)
        services.filestore.cache_clear()
        analysis_services.results_store.cache_clear()

    yield set_config
    services.filestore.cache_clear()
    analysis_services.results_store.cache_clear()
    annotation_services.annotations_store.cache_clear()
