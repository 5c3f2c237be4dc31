"""What is stored keeps its owner: no sender moves a study, series or instance to another
patient, replaces another sender's copy, or slips new pixels under AI results or annotations."""

import time

import pytest
from django.contrib.auth.models import User

from sonoloop.dicom import status
from sonoloop.dicom.query import Match, Query, QueryError, match_for
from sonoloop.web.analysis.models import AnalysisJob, AnalysisResult
from sonoloop.web.annotations.models import Annotation
from sonoloop.web.archive import services
from sonoloop.web.archive.models import Instance, Patient, Series, Study
from tests.dicom.helpers import file_bytes

pytestmark = pytest.mark.django_db

MODALITY = services.Sender("ECHO1", "10.0.0.7")
ROGUE = services.Sender("ROGUE", "10.0.0.66")
TRUSTED = services.Sender("PACS", "10.0.0.2", may_correct=True)
NEW_UID = "1.2.826.0.1.3680043.8.498.424242"


def stored_files(settings):
    return sorted((settings.CONFIG.data_dir / "objects").rglob("*.dcm"))


@pytest.fixture
def stored(config, samples):
    config(auto_analysis=False)
    raw = samples["us_native"].read_bytes()
    return raw, services.instance_store(raw, sender=MODALITY).instance


def test_a_known_study_under_another_patient_is_refused_and_nothing_changes(stored, samples, settings):
    raw, instance = stored
    other = file_bytes(samples["us_native"], PatientID="EVIL-1", PatientName="Other^Person", SOPInstanceUID=NEW_UID)
    with pytest.raises(services.StoreRefused, match="belongs to another patient") as refused:
        services.instance_store(other, sender=TRUSTED)  # not even a peer trusted for corrections
    assert refused.value.status == status.NOT_AUTHORIZED
    assert list(Patient.objects.values_list("patient_id", flat=True)) == [instance.series.study.patient.patient_id]
    assert Instance.objects.count() == 1 and len(stored_files(settings)) == 1


def test_a_known_series_under_another_study_and_an_instance_in_another_series_are_refused(stored, samples):
    raw, instance = stored
    moved_series = file_bytes(samples["us_native"], StudyInstanceUID="1.2.826.0.1.3680043.8.498.5",
                              SOPInstanceUID=NEW_UID)
    with pytest.raises(services.StoreRefused, match="a series never changes study"):
        services.instance_store(moved_series, sender=MODALITY)
    moved_instance = file_bytes(samples["us_native"], SeriesInstanceUID="1.2.826.0.1.3680043.8.498.6")
    with pytest.raises(services.StoreRefused, match="an instance never changes series"):
        services.instance_store(moved_instance, sender=MODALITY)
    assert (Study.objects.count(), Series.objects.count(), Instance.objects.count()) == (1, 1, 1)


def test_only_the_first_sender_or_a_trusted_peer_replaces_an_instance(stored, samples, settings):
    raw, instance = stored
    changed = file_bytes(samples["us_native"], SeriesDescription="re-sent")
    kept = services.instance_store(changed, sender=ROGUE)
    assert kept.kept_existing and not kept.replaced
    assert services.instance_path(kept.instance).read_bytes() == raw
    same_host_other_ae = services.Sender("ECHO2", MODALITY.host)
    assert services.instance_store(changed, sender=same_host_other_ae).kept_existing
    again = services.instance_store(changed, sender=MODALITY)
    assert again.replaced and services.instance_path(again.instance).read_bytes() == changed
    corrected = file_bytes(samples["us_native"], SeriesDescription="corrected by the PACS")
    assert services.instance_store(corrected, sender=TRUSTED).replaced
    assert len(stored_files(settings)) == 1


def test_the_same_bytes_again_change_nothing(stored, settings):
    raw, instance = stored
    result = services.instance_store(raw, sender=ROGUE)
    assert result.kept_existing and result.instance.file_key == instance.file_key
    assert len(stored_files(settings)) == 1


def test_stored_details_change_only_for_a_sender_trusted_for_corrections(stored, samples):
    raw, instance = stored
    patient = instance.series.study.patient
    renamed = file_bytes(samples["us_native"], PatientName="Renamed^Victim", SOPInstanceUID=NEW_UID)
    services.instance_store(renamed, sender=ROGUE)
    patient.refresh_from_db()
    assert patient.patient_name != "Renamed^Victim" and Instance.objects.count() == 2
    services.forget_cached_parents()
    corrected = file_bytes(samples["us_native"], PatientName="Corrected^Name",
                           SOPInstanceUID="1.2.826.0.1.3680043.8.498.424243")
    services.instance_store(corrected, sender=TRUSTED)
    patient.refresh_from_db()
    assert patient.patient_name == "Corrected^Name"


def test_an_instance_with_ai_results_or_annotations_is_never_replaced(stored, samples):
    raw, instance = stored
    job = AnalysisJob.objects.create(instance=instance, status=AnalysisJob.DONE)
    AnalysisResult.objects.create(job=job, instance=instance, version=1, model_name="m", model_version="1",
                                  labels_key="0" * 32, classes=["background", "LV", "MYO", "LA"], measurements={})
    changed = file_bytes(samples["us_native"], SeriesDescription="re-sent")
    with pytest.raises(services.StoreRefused, match="has AI results"):
        services.instance_store(changed, sender=TRUSTED)
    AnalysisResult.objects.all().delete()
    author = User.objects.create_user("anna")
    Annotation.objects.create(instance=instance, version=1, author=author, document_key="0" * 32, frames=[1])
    with pytest.raises(services.StoreRefused, match="has expert annotations"):
        services.instance_store(changed, sender=MODALITY)
    instance.refresh_from_db()
    assert services.instance_path(instance).read_bytes() == raw


def test_patients_are_their_id_and_issuer_and_blank_ids_never_merge(config, samples):
    config(auto_analysis=False)
    study = iter(f"1.2.826.0.1.3680043.8.498.77{n}" for n in range(10))
    uid = iter(f"1.2.826.0.1.3680043.8.498.88{n}" for n in range(10))

    def store(**changes):
        raw = file_bytes(samples["us_native"], StudyInstanceUID=next(study), SeriesInstanceUID=next(study),
                         SOPInstanceUID=next(uid), **changes)
        return services.instance_store(raw, sender=MODALITY).instance.series.study.patient

    a = store(PatientID="12345", IssuerOfPatientID="HOSPITAL-A")
    b = store(PatientID="12345", IssuerOfPatientID="HOSPITAL-B")
    a_again = store(PatientID="12345", IssuerOfPatientID="HOSPITAL-A")
    blank_1, blank_2 = store(PatientID=""), store(PatientID="")
    assert a.pk == a_again.pk and len({a.pk, b.pk, blank_1.pk, blank_2.pk}) == 4


def test_dicom_wildcards_match_like_ps34_without_a_regular_expression(config, samples):
    config(auto_analysis=False)
    services.instance_store(samples["us_rle_palette"].read_bytes())  # a US series
    for n, name in enumerate(["A_B^C", "AXB^C", "100%^Sure", "Smith^[J]"]):  # patients are listed with images
        services.instance_store(file_bytes(samples["us_native"], PatientID=f"W{n}", PatientName=name,
                                           StudyInstanceUID=f"1.2.826.0.1.3680043.8.498.77{n}",
                                           SeriesInstanceUID=f"1.2.826.0.1.3680043.8.498.78{n}",
                                           SOPInstanceUID=f"1.2.826.0.1.3680043.8.498.79{n}"))

    def names(pattern):
        query = Query("PATIENT", "PATIENT", [match_for("PatientName", pattern)])
        return sorted(r["PatientName"] for r in services.query_records(query))

    assert names("a_b*") == ["A_B^C"]  # "_" is a literal, the case of a name does not matter
    assert names("A?B*") == ["AXB^C", "A_B^C"]
    assert names("100%*") == ["100%^Sure"]
    assert names("*[J]") == ["Smith^[J]"]
    query = Query("SERIES", "STUDY", [Match("Modality", "wildcard", value="u?")])
    assert [r["Modality"] for r in services.query_records(query)] == []  # case matters outside names
    with pytest.raises(QueryError, match="at most"):
        match_for("PatientName", "*?" * 40)


def test_a_pathological_wildcard_answers_quickly_on_ten_thousand_patients(config):
    Patient.objects.bulk_create([Patient(patient_id=f"P{n:05d}", patient_name=f"Patient{n:05d}^Given^Middle^X^Y")
                                 for n in range(10_000)])
    query = Query("PATIENT", "PATIENT", [match_for("PatientName", "*?" * 16 + "#")])
    started = time.perf_counter()
    assert list(services.query_records(query)) == []
    assert time.perf_counter() - started < 1.0


def test_the_django_admin_cannot_delete_stored_images_behind_the_archives_back(stored, client, django_user_model):
    """Its cascade would drop index rows and annotations and leave files and SEG/SR behind."""
    boss = django_user_model.objects.create_superuser("root", "", "a long enough password")
    client.force_login(boss)
    instance = Instance.objects.first()
    study = instance.series.study
    for url in (f"/admin/archive/instance/{instance.pk}/delete/", f"/admin/archive/study/{study.pk}/delete/",
                f"/admin/archive/patient/{study.patient.pk}/delete/"):
        assert client.post(url, {"post": "yes"}).status_code == 403, url
    assert Instance.objects.filter(pk=instance.pk).exists() and services.instance_path(instance).exists()
    changelist = client.post("/admin/archive/instance/", {"action": "delete_selected", "_selected_action": [instance.pk]})
    assert Instance.objects.filter(pk=instance.pk).exists() and changelist.status_code in (200, 302)
