"""Deleting and rejecting stored images: one meaning from the DICOMweb API, the CLI, the study
page and IOCM rejection notes; files, results and derived objects go, annotations stay as records."""

import io
import json

import highdicom as hd
import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from pydicom import dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from sonoloop.dicom.query import Query, match_for
from sonoloop.web.analysis import services as analysis
from sonoloop.web.analysis.models import AnalysisJob, AnalysisResult
from sonoloop.web.annotations import services as annotations
from sonoloop.web.annotations.models import Annotation
from sonoloop.web.archive import services
from sonoloop.web.archive.models import Instance, Patient, Study
from sonoloop.web.archive.ownership import Sender, StoreRefused
from sonoloop.web.audit.models import AuditEvent
from tests.web.conftest import user_with_role
from tests.web.test_annotations import ai_labels, post, upload

pytestmark = pytest.mark.django_db
MODALITY = Sender("ECHO1", "10.0.0.5")


def client_for(username, role):
    client = Client()
    client.force_login(user_with_role(username, role))
    return client


def file_bytes(path, **changes) -> bytes:
    ds = dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "SOPInstanceUID" in changes:
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def analysed(config, samples, django_capture_on_commit_callbacks):
    """The 30-frame cine analysed by the shipped model (a real SEG and SR in the archive), an
    approved annotation of it exported as SEG, and another patient's image beside it."""
    config(auto_analysis=True)
    cine = services.instance_store(samples["cine_30"].read_bytes(), sender=MODALITY).instance
    job = AnalysisJob.objects.get(instance=cine)
    assert analysis.job_run(job.pk) == AnalysisJob.DONE
    result = AnalysisResult.objects.get(instance=cine)
    annotator, reviewer = client_for("anna", "annotator"), client_for("rev", "reviewer")
    labels = ai_labels()
    created = post(annotator, cine, upload({1: labels[0]}, status="submitted")).json()
    assert "id" in created, created
    url = f"/api/annotations/{created['id']}"
    assert reviewer.post(f"{url}/status", json.dumps({"status": "approved"}),
                         content_type="application/json").status_code == 200
    assert reviewer.post(f"{url}/export").status_code in (200, 201)
    other = services.instance_store(samples["us_native"].read_bytes(), sender=MODALITY).instance
    return cine, result, Annotation.objects.get(pk=created["id"]), other


def test_deleting_a_study_takes_its_files_results_and_seg_sr_and_keeps_annotations_as_records(
        analysed, django_capture_on_commit_callbacks):
    cine, result, annotation, other = analysed
    study_uid = cine.series.study.study_instance_uid
    derived = [result.seg_sop_instance_uid, result.sr_sop_instance_uid, annotation.seg_sop_instance_uid]
    assert all(derived)
    in_study = list(Instance.every.filter(series__study__study_instance_uid=study_uid))
    assert {i.sop_instance_uid for i in in_study} == {cine.sop_instance_uid, *derived}
    files = [services.instance_path(i) for i in in_study]
    labels = analysis.results_store().path(result.labels_key)
    document = annotations.annotations_store().path(annotation.document_key)
    assert all(p.exists() for p in [*files, labels, document])

    # who may: a reviewer may not, an unknown study is a 404; neither changes anything
    url = f"/dicomweb/studies/{study_uid}?reason=patient%20asked"
    assert client_for("rev2", "reviewer").delete(url).status_code == 403
    admin = client_for("boss", "admin")
    missing = admin.delete("/dicomweb/studies/1.2.3.4.5.6")
    assert missing.status_code == 404 and "no study" in missing.json()["error"]
    assert Instance.every.filter(series__study__study_instance_uid=study_uid).count() == 4

    with django_capture_on_commit_callbacks(execute=True):
        response = admin.delete(url)
    assert response.status_code == 200, response.content
    assert response.json() == {"deleted": 4, "derived_deleted": 0, "studies": [study_uid], "studies_removed": 1}
    assert not Instance.every.filter(series__study__study_instance_uid=study_uid).exists()
    assert not Study.objects.filter(study_instance_uid=study_uid).exists()
    assert not AnalysisResult.objects.exists() and not AnalysisJob.objects.filter(instance_id=cine.pk).exists()
    assert not any(p.exists() for p in [*files, labels])
    # the annotation is kept, with its masks, marked as referring to a deleted image, and trains no more
    kept = Annotation.objects.get(pk=annotation.pk)
    assert kept.instance is None and kept.source_deleted_at is not None
    assert kept.sop_instance_uid == cine.sop_instance_uid and kept.study_instance_uid == study_uid
    assert kept.seg_sop_instance_uid == "" and document.exists()
    assert annotation not in annotations.approved_annotations()
    summary = client_for("anna2", "annotator").get(f"/api/annotations/{annotation.pk}").json()
    assert summary["instance"] == cine.sop_instance_uid and summary["image_deleted_at"]
    # the other patient's image is untouched, and the archive is consistent
    assert services.instance_path(Instance.objects.get(pk=other.pk)).exists()
    assert Patient.objects.count() == 1
    check = services.archive_check(min_age_seconds=0)
    assert check.indexed == 1 and not check.missing_files and not check.orphan_keys, check
    (event,) = AuditEvent.objects.filter(event_id="110105")
    assert event.action == "D" and event.who == "boss" and event.instances == 4
    assert event.study_instance_uid == study_uid and "patient asked" in event.detail


def test_deleting_one_instance_from_the_cli_takes_what_was_made_from_it_only(analysed, capsys,
                                                                             django_capture_on_commit_callbacks):
    cine, result, annotation, other = analysed
    study = cine.series.study_id
    with pytest.raises(CommandError, match="there is no instance"):
        call_command("delete", instance="1.2.3.4", reason="test")
    with django_capture_on_commit_callbacks(execute=True):
        call_command("delete", instance=result.seg_sop_instance_uid, reason="wrong SEG")  # a derived object alone
    assert "deleted 1 instance(s) and 0 object(s)" in capsys.readouterr().out
    result.refresh_from_db()
    assert result.seg_sop_instance_uid == "" and result.sr_sop_instance_uid  # the result forgets its SEG only
    assert Instance.objects.filter(pk=cine.pk).exists()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("delete", instance=cine.sop_instance_uid, reason="wrong patient")
    assert "deleted 1 instance(s) and 2 object(s)" in capsys.readouterr().out  # its SR and the annotation's SEG
    assert Instance.every.filter(series__study=study).count() == 0
    assert Instance.objects.filter(pk=other.pk).exists()


def test_the_study_page_offers_deletion_to_admins_only_and_asks_why(config, samples,
                                                                    django_capture_on_commit_callbacks):
    config(auto_analysis=False)
    image = services.instance_store(samples["us_native"].read_bytes(), sender=MODALITY).instance
    study_uid = image.series.study.study_instance_uid
    page = f"/studies/{study_uid}/"
    assert "Delete this study" not in client_for("v", "viewer").get(page).content.decode()
    admin = client_for("boss", "admin")
    assert "Delete this study" in admin.get(page).content.decode()
    assert client_for("r", "reviewer").post(f"{page}delete", {"reason": "x"}).status_code == 403
    assert admin.post(f"{page}delete", {"reason": " "}).status_code == 302  # back, with the question
    assert Study.objects.filter(study_instance_uid=study_uid).exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert admin.post(f"{page}delete", {"reason": "duplicate"}).status_code == 302
    assert not Study.objects.filter(study_instance_uid=study_uid).exists()


# -- IOCM rejection notes ----------------------------------------------------------------------


def rejection_note(images, title, study_uid=None) -> bytes:
    """A Key Object Selection document written by highdicom (a third-party writer)."""
    datasets = [dcmread(services.instance_path(i), stop_before_pixels=True) for i in images]
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=datasets, content=hd.ko.KeyObjectSelection(document_title=title, referenced_objects=datasets),
        series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="Test modality")
    if study_uid:
        kos.StudyInstanceUID = study_uid
    buffer = io.BytesIO()
    kos.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def found(level: str, **keys) -> list[str]:
    query = Query(level, "STUDY", [match_for(k, v) for k, v in keys.items()])
    return [r.get("SOPInstanceUID") or r.get("StudyInstanceUID") for r in services.query_records(query)]


def test_a_rejection_note_for_quality_hides_the_images_from_queries_retrieval_and_training(config, samples):
    config(auto_analysis=False)
    study = generate_uid()
    first, second = (services.instance_store(file_bytes(samples["us_native"], StudyInstanceUID=study,
                                                        SOPInstanceUID=generate_uid()), sender=MODALITY).instance
                     for _ in range(2))
    Annotation.objects.create(instance=first, version=1, author=user_with_role("anna", "annotator"),
                              status=Annotation.APPROVED, frames=[1], document_key="k",
                              sop_instance_uid=first.sop_instance_uid, study_instance_uid=study)

    # another device may not reject these images, nor a note of another study
    note = rejection_note([first], codes.DCM.RejectedForQualityReasons)
    with pytest.raises(StoreRefused, match="sent by another device"):
        services.instance_store(note, sender=Sender("INTRUDER", "10.0.0.66"))
    with pytest.raises(StoreRefused, match="its own study only"):
        services.instance_store(rejection_note([first], codes.DCM.RejectedForQualityReasons, study_uid=generate_uid()),
                                sender=MODALITY)
    assert found("IMAGE", StudyInstanceUID=study) != []
    assert Instance.objects.filter(pk=first.pk).exists()

    stored = services.instance_store(note, sender=MODALITY).instance  # the sender itself rejects it
    assert stored.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.59"
    hidden = Instance.every.get(pk=first.pk)
    assert hidden.rejected_for == "113001" and hidden.rejected_by == stored.sop_instance_uid
    assert services.instance_path(hidden).exists()  # hidden, not deleted
    assert sorted(found("IMAGE", StudyInstanceUID=study)) == sorted(
        [second.sop_instance_uid, stored.sop_instance_uid])
    retrieve = Query("STUDY", "STUDY", [match_for("StudyInstanceUID", study)])
    assert first.pk not in {i.pk for i in services.instances_for(retrieve)}
    qido = client_for("v", "viewer").get(f"/dicomweb/studies/{study}/instances").json()
    assert first.sop_instance_uid not in {item["00080018"]["Value"][0] for item in qido}
    counted = next(services.query_records(Query("STUDY", "STUDY", [match_for("StudyInstanceUID", study)])))
    assert counted["NumberOfStudyRelatedInstances"] == 2
    assert client_for("v2", "viewer").get(f"/instances/{first.sop_instance_uid}/").status_code == 404
    assert list(annotations.approved_annotations()) == []  # not trained on
    assert "rejected" in analysis.skip_reason(hidden)  # nor analysed
    # the same image sent again is refused, with the reason
    with pytest.raises(StoreRefused, match="was rejected"):
        services.instance_store(services.instance_path(hidden).read_bytes(), sender=MODALITY)
    assert AuditEvent.objects.filter(detail__contains="Rejected for Quality Reasons").exists()


def test_a_rejection_note_for_expired_data_deletes_the_images(config, samples, django_capture_on_commit_callbacks):
    config(auto_analysis=False)
    image = services.instance_store(samples["us_native"].read_bytes(), sender=MODALITY).instance
    path = services.instance_path(image)
    with django_capture_on_commit_callbacks(execute=True):
        services.instance_store(rejection_note([image], codes.DCM.DataRetentionPolicyExpired), sender=MODALITY)
    assert not Instance.every.filter(pk=image.pk).exists() and not path.exists()
    assert AuditEvent.objects.filter(event_id="110105", detail__contains="Data Retention Policy Expired").exists()
    # a Key Object Selection with another title ("Of Interest") changes nothing
    kept = services.instance_store(file_bytes(samples["us_native"], SOPInstanceUID=generate_uid()),
                                   sender=MODALITY).instance
    services.instance_store(rejection_note([kept], codes.DCM.OfInterest), sender=MODALITY)
    assert Instance.objects.filter(pk=kept.pk).exists()


def test_the_sonoloop_command_hands_option_first_arguments_to_the_django_command(config, capsys):
    """`sonoloop delete --study …` (and `retrain --parent …`): argparse's REMAINDER used to
    refuse a first argument that looks like an option."""
    from sonoloop.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["delete", "--study", "1.2.3", "--reason", "test"])
    assert exited.value.code == 1 and "there is no study 1.2.3" in capsys.readouterr().err


def test_a_rejection_note_that_names_nothing_is_refused_and_changes_nothing(config, samples):
    from pydicom.filebase import DicomBytesIO

    from sonoloop.dicom.instance import InvalidInstance

    config(auto_analysis=False)
    image = services.instance_store(samples["us_native"].read_bytes(), sender=MODALITY).instance
    note = dcmread(DicomBytesIO(rejection_note([image], codes.DCM.RejectedForQualityReasons)))
    del note.CurrentRequestedProcedureEvidenceSequence
    buffer = io.BytesIO()
    note.save_as(buffer, enforce_file_format=True)
    with pytest.raises(InvalidInstance, match="references no instances") as refused:
        services.instance_store(buffer.getvalue(), sender=MODALITY)
    assert refused.value.status == 0xC000
    assert Instance.objects.filter(pk=image.pk).exists()
    assert not Instance.every.filter(sop_instance_uid=note.SOPInstanceUID).exists()
