import dataclasses

import pytest

from sonoloop.web.analysis import services as analysis_services
from sonoloop.web.archive import services


@pytest.fixture
def config(settings, tmp_path):
    """A fresh data folder per test; returns a setter for other config fields."""
    settings.CONFIG = dataclasses.replace(settings.CONFIG, data_dir=tmp_path / "data")
    services.filestore.cache_clear()
    analysis_services.results_store.cache_clear()
    services.forget_cached_parents()  # each test's database is rolled back

    def set_config(**changes):
        settings.CONFIG = dataclasses.replace(settings.CONFIG, **changes)
        services.filestore.cache_clear()
        analysis_services.results_store.cache_clear()

    yield set_config
    services.filestore.cache_clear()
    analysis_services.results_store.cache_clear()
