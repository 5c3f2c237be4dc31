"""The parent cache of instance_store, with real commits (foreign keys are checked at commit)."""

import pytest

from sonoloop.web.archive import services
from sonoloop.web.archive.models import Series


@pytest.mark.django_db(transaction=True)
def test_a_series_deleted_behind_the_cache_is_recreated(config, samples):
    first = services.instance_store(samples["us_j2k"].read_bytes()).instance
    series_uid = first.series.series_instance_uid
    Series.objects.filter(pk=first.series_id).delete()  # e.g. from the admin, in another process
    again = services.instance_store(samples["us_native"].read_bytes()).instance  # same series UID
    assert Series.objects.filter(pk=again.series_id).exists()
    assert again.series.series_instance_uid == series_uid
