import time

import pytest
from django.db import DatabaseError
from pydicom.dataset import Dataset

from sonoloop.dicom.instance import InvalidInstance
from sonoloop.dicom.query import parse_identifier
from sonoloop.web.archive import services, store
from sonoloop.web.archive.models import Instance, Patient, Series, Study
from tests.dicom.helpers import file_bytes

pytestmark = pytest.mark.django_db


def stored_files(config_dir):
    return sorted(p for p in (config_dir / "objects").rglob("*.dcm"))


def test_store_indexes_patient_study_series_instance(config, samples, settings):
    result = services.instance_store(samples["cine_jpeg"].read_bytes(),
                                    sender=services.Sender("ECHO1", "10.0.0.7"))
    inst = result.instance
    assert result.created and not result.replaced
    assert inst.number_of_frames == 120 and inst.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    assert inst.series.modality == "US" and inst.series.study.modalities == "US"
    assert (inst.source_ae, inst.source_host) == ("ECHO1", "10.0.0.7")
    assert services.instance_path(inst).read_bytes() == samples["cine_jpeg"].read_bytes()
    assert (Patient.objects.count(), Study.objects.count(), Series.objects.count()) == (1, 1, 1)


def test_resend_replaces_by_default_without_duplicating(config, samples, settings):
    first = services.instance_store(samples["us_rle_palette"].read_bytes()).instance
    changed = file_bytes(samples["us_rle_palette"], SeriesDescription="corrected")
    second = services.instance_store(changed)
    assert second.replaced and second.instance.pk == first.pk
    assert Instance.objects.count() == 1
    assert services.instance_path(second.instance).read_bytes() == changed
    assert len(stored_files(settings.CONFIG.data_dir)) == 1, "the replaced file is deleted"


def test_resend_with_keep_policy_keeps_the_first_copy(config, samples, settings):
    config(duplicate_policy="keep")
    original = samples["us_rle_palette"].read_bytes()
    services.instance_store(original)
    result = services.instance_store(file_bytes(samples["us_rle_palette"], SeriesDescription="other"))
    assert result.kept_existing
    assert services.instance_path(result.instance).read_bytes() == original
    assert len(stored_files(settings.CONFIG.data_dir)) == 1


def test_broken_resend_neither_duplicates_nor_loses_the_original(config, samples, settings):
    original = samples["us_native"].read_bytes()
    inst = services.instance_store(original).instance
    with pytest.raises(InvalidInstance):
        services.instance_store(original[: len(original) // 2])
    inst.refresh_from_db()
    assert services.instance_path(inst).read_bytes() == original
    assert Instance.objects.count() == 1
    assert len(stored_files(settings.CONFIG.data_dir)) == 1


def test_database_failure_leaves_no_orphan_file(config, samples, settings, monkeypatch):
    def broken(*args, **kwargs):
        raise DatabaseError("database is locked")

    monkeypatch.setattr(store, "_index", broken)
    with pytest.raises(DatabaseError):
        services.instance_store(samples["us_rle_palette"].read_bytes())
    assert stored_files(settings.CONFIG.data_dir) == []
    assert Instance.objects.count() == 0


def _store_all(samples, *keys):
    for key in keys:
        services.instance_store(samples[key].read_bytes())


def _find(level, root="STUDY", **keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return list(services.query_records(parse_identifier(ds, root)))


def test_cfind_matching_on_the_index(config, samples):
    _store_all(samples, "cine_jpeg", "us_j2k", "us_rle_palette", "sc_rle", "seg")
    assert len(_find("STUDY")) == 5
    assert {r["ModalitiesInStudy"] for r in _find("STUDY", ModalitiesInStudy="US")} == {"US"}
    assert len(_find("STUDY", StudyDate="20040101-20111231")) == 2  # US1 2004, OBXXXX1A 2011
    assert len(_find("STUDY", StudyDate="20160503")) == 1
    assert len(_find("STUDY", StudyDate="-20040826")) == 2  # and the 2003 SEG
    assert len(_find("STUDY", StudyDate="20170101-")) == 1
    pla = _find("PATIENT", root="PATIENT", PatientName="pl*")
    assert [r["PatientName"] for r in pla] == ["PLA"]
    assert pla[0]["NumberOfPatientRelatedInstances"] == 1
    cine = _find("IMAGE", NumberOfFrames="120")
    assert len(cine) == 1 and cine[0]["AvailableTransferSyntaxUID"] == "1.2.840.10008.1.2.4.50"
    uids = [r["StudyInstanceUID"] for r in _find("STUDY")][:2]
    assert {r["StudyInstanceUID"] for r in _find("STUDY", StudyInstanceUID="\\".join(uids))} == set(uids)
    assert _find("SERIES", Modality="S?G")[0]["Modality"] == "SEG"



def test_a_full_disk_indexes_nothing(config, samples, settings, monkeypatch):
    from django_tasks_db.models import DBTaskResult

    from sonoloop.web.analysis.models import AnalysisJob

    config(auto_analysis=True)
    wrote_rows = []

    def full(self, data, key=None):
        # the disk fills after the index rows were written (they are written while the file's
        # fsync runs): they must all roll back
        wrote_rows.append(AnalysisJob.objects.exists() and DBTaskResult.objects.exists())
        raise services.StorageFull(28, "no space left for the instance")

    monkeypatch.setattr(services.FileStore, "put", full)
    monkeypatch.setattr(store, "_file_writer", lambda: _SameThread())
    with pytest.raises(services.StorageFull):
        services.instance_store(samples["us_rle_palette"].read_bytes())
    assert wrote_rows == [True]
    assert (Instance.every.count(), AnalysisJob.objects.count(), DBTaskResult.objects.count()) == (0, 0, 0)


class _SameThread:
    """A file writer that runs the write when its result is asked for, in the caller's thread
    (and connection): the write then fails only after the rows were written."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        class Deferred(Future):
            def result(self, timeout=None):
                if not self.done():
                    try:
                        self.set_result(fn(*args))
                    except BaseException as exc:
                        self.set_exception(exc)
                return super().result(timeout)

        return Deferred()


def _store_recording_the_order(samples, monkeypatch, file_seconds: float) -> tuple[Instance, list[str]]:
    """Store one image whose file takes ``file_seconds`` to write; returns it and the order in
    which its rows were written, its file became durable and its transaction committed."""
    from django.db import transaction

    from sonoloop.web.archive.signals import instance_indexed

    order = []
    put = services.FileStore.put

    def slow_put(self, data, key=None):
        time.sleep(file_seconds)
        key = put(self, data, key)
        order.append("file durable")
        return key

    def indexed(sender, instance, **kwargs):
        order.append("rows written")
        transaction.on_commit(lambda: order.append("committed"))

    monkeypatch.setattr(services.FileStore, "put", slow_put)
    instance_indexed.connect(indexed)
    try:
        stored = services.instance_store(samples["us_rle_palette"].read_bytes()).instance
    finally:
        instance_indexed.disconnect(indexed)
    assert services.instance_path(stored).read_bytes() == samples["us_rle_palette"].read_bytes()
    return stored, order


@pytest.mark.django_db(transaction=True)
def test_the_index_commits_only_once_the_file_is_durable(config, samples, monkeypatch):
    config(auto_analysis=True)
    monkeypatch.setattr(store, "FILE_WAIT_IN_TRANSACTION_SECONDS", 30)
    _, order = _store_recording_the_order(samples, monkeypatch, 0.2)  # the rows are written meanwhile
    assert order == ["rows written", "file durable", "committed"]


def test_a_storage_quota_and_a_free_space_floor_refuse_with_a_message_and_keep_what_is_stored(
        config, samples, monkeypatch):
    import collections
    import shutil

    first = services.instance_store(samples["us_native"].read_bytes()).instance
    room = first.file_size + samples["us_j2k"].stat().st_size
    config(storage_quota_mb=2, auto_analysis=False)
    assert room < 2 * 2**20 < room + samples["cine_jpeg"].stat().st_size  # both fit in 2 MB; the cine does not
    services.instance_store(samples["us_j2k"].read_bytes())
    with pytest.raises(store.QuotaExceeded, match="SONOLOOP_STORAGE_QUOTA_MB=2") as refused:
        services.instance_store(samples["cine_jpeg"].read_bytes())
    assert refused.value.status == 0xA700
    config(storage_quota_mb=0, min_free_mb=100)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 50 * 2**20, 50 * 2**20))
    with pytest.raises(services.StorageFull, match="SONOLOOP_MIN_FREE_MB=100") as full:
        services.instance_store(samples["us_rle_palette"].read_bytes())
    assert full.value.status == 0xA701
    assert Instance.objects.count() == 2 and all(services.instance_path(i).exists() for i in Instance.objects.all())
    assert sum(1 for _ in services.filestore().root.rglob("*.dcm")) == 2  # nothing half-written left


def test_archive_check_indexes_lost_rows_again_and_never_deletes_a_file(config, samples, settings):
    kept = services.instance_store(samples["us_j2k"].read_bytes()).instance
    lost = services.instance_store(samples["us_rle_palette"].read_bytes()).instance
    services.instance_path(lost).unlink()
    unindexed = services.instance_store(samples["us_native"].read_bytes()).instance
    unindexed_key, unindexed_uid = unindexed.file_key, unindexed.sop_instance_uid
    Instance.objects.filter(pk=unindexed.pk).delete()  # its row lost in a crash: an acknowledged file
    junk = services.filestore().put(b"a file written just before a crash")
    fresh = services.archive_check(min_age_seconds=600)
    assert fresh.orphan_keys == []  # too young: may be a store in progress
    report = services.archive_check(repair=True, min_age_seconds=0)
    assert report.indexed == 2
    assert report.missing_files == [lost.sop_instance_uid]
    assert sorted(report.orphan_keys) == sorted([unindexed_key, junk])
    assert report.reindexed == [unindexed_key] and report.quarantined == [junk]
    again = Instance.objects.get(sop_instance_uid=unindexed_uid)
    assert again.file_key == unindexed_key and again.series.study.patient.patient_id
    assert (settings.CONFIG.data_dir / "quarantine" / services.filestore().path(junk).name).read_bytes() \
        == b"a file written just before a crash"
    assert services.instance_path(kept).exists()
    assert services.archive_check(repair=True, min_age_seconds=0).orphan_keys == []


def _previews(settings):
    return sorted((settings.CONFIG.cache_dir / "previews").rglob("*.png"))


def test_previews_come_in_a_few_sizes_and_go_with_their_file(config, samples, settings):
    from sonoloop.web.archive import previews

    first = services.instance_store(samples["us_rle_palette"].read_bytes()).instance
    for size in (1, 100, 128, 129, 5000):
        services.instance_preview_png(first, 1, size)
    assert sorted(int(p.stem.rsplit("-", 1)[1]) for p in _previews(settings)) == [128, 160, 2048]
    old_key = first.file_key
    # a replaced file takes its previews with it: the next preview shows the new pixels
    replaced = services.instance_store(file_bytes(samples["us_rle_palette"], SeriesDescription="corrected"))
    assert replaced.replaced and replaced.instance.file_key != old_key
    assert _previews(settings) == []
    services.instance_preview_png(replaced.instance, 1, 128)
    assert [p.name.split("-")[0] for p in _previews(settings)] == [replaced.instance.file_key]
    assert previews.forget(replaced.instance.file_key) == 1 and _previews(settings) == []


def test_the_preview_cache_stays_under_its_limit_dropping_the_oldest_first(config, samples, settings):
    import os

    from sonoloop.web.archive import previews

    cine = services.instance_store(samples["cine_jpeg"].read_bytes()).instance
    for n, frame in enumerate((1, 2, 3, 4)):
        services.instance_preview_png(cine, frame, 128)
        made = next(p for p in _previews(settings) if p.name.endswith(f"-{frame}-128.png"))
        os.utime(made, (1000 + n, 1000 + n))  # written in this order
    sizes = {p.name: p.stat().st_size for p in _previews(settings)}
    keep = sum(sorted(sizes.values())[-2:]) + 1  # room for the two newest whatever their sizes
    newest = sorted(sizes, key=lambda name: name.split("-")[1])[-2:]
    assert previews.prune(sum(sizes.values())) == 0  # within the limit: nothing goes
    assert previews.prune(keep) >= 2
    left = [p.name for p in _previews(settings)]
    assert set(left) <= set(newest) and left and newest[-1] in left


def test_the_index_models_have_every_field_of_the_attribute_table():
    from sonoloop.dicom.attributes import INDEXED
    from sonoloop.web.archive.querying import MODELS

    for attribute in INDEXED:
        names = {f.name for f in MODELS[attribute.level]._meta.get_fields()}
        assert attribute.field in names, f"{attribute.keyword}: {MODELS[attribute.level].__name__}.{attribute.field}"
        field = MODELS[attribute.level]._meta.get_field(attribute.field)
        if not attribute.number and attribute.keyword not in ("StudyInstanceUID", "SeriesInstanceUID",
                                                              "SOPInstanceUID", "SOPClassUID"):
            assert field.max_length == attribute.length, attribute.keyword  # what parsing keeps fits the column


def test_keys_outside_the_index_are_matched_and_answered_from_the_stored_files(config, samples):
    from django.test import Client

    from tests.web.conftest import user_with_role

    config(auto_analysis=False)
    for key in ("us_native", "us_rle_palette", "cine_30"):
        services.instance_store(samples[key].read_bytes())
    query = parse_identifier(_identifier("STUDY", ManufacturerModelName="CX*", InstitutionName="", StudyInstanceUID=""),
                             "STUDY")
    (found,) = services.query_records(query)
    assert found["InstitutionName"] == "Philips Healthcare"
    query = parse_identifier(_identifier("IMAGE", Manufacturer="*Systems", SOPInstanceUID=""), "STUDY")
    assert len(list(services.query_records(query))) == 2  # GE and Philips, not SonoSite
    assert len(list(services.query_records(query, limit=1, offset=1))) == 1  # paging after the file match
    client = Client()
    client.force_login(user_with_role("v", "viewer"))
    qido = client.get("/dicomweb/studies", {"ManufacturerModelName": "Turbo", "includefield": "InstitutionName"}).json()
    assert len(qido) == 1 and qido[0]["00080080"] == {"vr": "LO"}  # present in the request, empty in that file


def _identifier(level, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.django_db(transaction=True)
def test_a_file_slower_than_the_lock_allows_rolls_its_rows_back_and_writes_them_once_it_is_durable(
        config, samples, monkeypatch):
    from django_tasks_db.models import DBTaskResult

    from sonoloop.web.analysis.models import AnalysisJob

    config(auto_analysis=True)
    monkeypatch.setattr(store, "FILE_WAIT_IN_TRANSACTION_SECONDS", 0.01)
    _, order = _store_recording_the_order(samples, monkeypatch, 0.3)  # a loop on a busy disk
    # the first rows were rolled back while the file was still being written; no lock was held meanwhile
    assert order == ["rows written", "file durable", "rows written", "committed"]
    assert (Instance.every.count(), AnalysisJob.objects.count(), DBTaskResult.objects.count()) == (1, 1, 1)


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_series_is_not_remembered_for_the_next_images_of_that_series(config, samples, monkeypatch):
    # SQLite gives a rolled-back row's id to the next row: a series remembered from a store that
    # rolled back would file later images of it under whichever series took that id
    config(auto_analysis=False)
    source = samples["us_rle_palette"]
    image = lambda series, sop: file_bytes(source, SeriesInstanceUID=series, SOPInstanceUID=sop)  # noqa: E731
    put = services.FileStore.put

    def full(self, data, key=None):
        raise services.StorageFull(28, "no space left for the instance")

    monkeypatch.setattr(services.FileStore, "put", full)
    with pytest.raises(services.StorageFull):
        services.instance_store(image("1.2.826.0.1.3680043.9.7.1", "1.2.826.0.1.3680043.9.7.1.1"))
    monkeypatch.setattr(services.FileStore, "put", put)
    other = services.instance_store(image("1.2.826.0.1.3680043.9.7.2", "1.2.826.0.1.3680043.9.7.2.1")).instance
    first = services.instance_store(image("1.2.826.0.1.3680043.9.7.1", "1.2.826.0.1.3680043.9.7.1.2")).instance
    assert other.series.series_instance_uid == "1.2.826.0.1.3680043.9.7.2"
    assert first.series.series_instance_uid == "1.2.826.0.1.3680043.9.7.1"
    assert Series.objects.count() == 2
