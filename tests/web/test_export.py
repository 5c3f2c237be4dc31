"""De-identified export: no identifying attribute survives, UIDs stay linked across image,
SEG and SR, burned-in text outside the ultrasound regions is blanked, and the set trains."""

import csv
import json
import subprocess
import sys

import highdicom as hd
import numpy as np
import pytest
from django.core.management import CommandError, call_command
from pydicom import dcmread
from pydicom.uid import generate_uid

from sonoloop.web.analysis import services as analysis
from sonoloop.web.analysis.models import AnalysisJob
from sonoloop.web.annotations.models import Annotation
from sonoloop.web.archive import services
from sonoloop.web.audit.models import AuditEvent
from tests.dicom.test_seg import dciodvfy_errors
from tests.web.test_annotations import ai_labels, post, upload
from tests.web.test_removal import client_for, file_bytes

pytestmark = pytest.mark.django_db
IDENTIFYING = {  # what the originals carry and no exported file may
    "PatientName", "PatientBirthDate", "InstitutionName", "InstitutionAddress", "OperatorsName",
    "ReferringPhysicianName", "StationName", "DeviceSerialNumber", "AccessionNumber", "OtherPatientIDs",
    "PerformingPhysicianName", "StudyDescription", "SeriesDescription", "PatientAddress", "PatientComments",
}


@pytest.fixture
def two_patients(config, samples):
    """Patient A: the 30-frame cine analysed (a real SEG and SR), one frame annotated and
    approved; patient B: a copy under another identity, annotated without AI. Both carry
    identifying attributes and a private one."""
    config(auto_analysis=True)
    secrets = dict(PatientBirthDate="19610203", InstitutionName="St Elsewhere Hospital", OperatorsName="Doe^Jane",
                   InstitutionAddress="1 Main Street", StationName="ECHO-ROOM-3", DeviceSerialNumber="SN123",
                   AccessionNumber="ACC999", OtherPatientIDs="MRN-77", PatientComments="allergic to latex")
    a = services.instance_store(file_bytes(samples["cine_30"], PatientName="Alpha^Ann", PatientID="PA-1",
                                           **secrets)).instance
    assert analysis.job_run(AnalysisJob.objects.get(instance=a).pk) == AnalysisJob.DONE
    config(auto_analysis=False)
    b = services.instance_store(file_bytes(samples["cine_30"], PatientName="Beta^Bob", PatientID="PB-2",
                                           StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(),
                                           SOPInstanceUID=generate_uid(), **secrets)).instance
    annotator, reviewer = client_for("anna", "annotator"), client_for("rev", "reviewer")
    labels = ai_labels()
    for instance, frames, start in ((a, {1: labels[0], 12: labels[11]}, 1), (b, {5: labels[4]}, None)):
        created = post(annotator, instance, upload(frames, status="submitted", started_from_result=start)).json()
        response = reviewer.post(f"/api/annotations/{created['id']}/status", json.dumps({"status": "approved"}),
                                 content_type="application/json")
        assert response.status_code == 200, response.content
    return a, b


def test_every_approved_annotation_exports_deidentified_linked_and_trainable(two_patients, tmp_path, capsys):
    a, b = two_patients
    out = tmp_path / "export"
    call_command("export", approved=True, out=str(out))
    assert "exported 4 DICOM file(s) of 2 patient(s) and 3 annotated frame(s)" in capsys.readouterr().out
    files = {p: dcmread(p) for p in (out / "dicom").rglob("*.dcm")}
    originals = {a.sop_instance_uid, b.sop_instance_uid, a.series.study.study_instance_uid,
                 b.series.study.study_instance_uid, a.series.series_instance_uid}
    for path, ds in files.items():
        present = {e.keyword for e in ds.iterall()}
        assert not (IDENTIFYING & present - {"PatientName", "ReferringPhysicianName", "AccessionNumber",
                                             "PatientBirthDate", "DeviceSerialNumber"}), (path, IDENTIFYING & present)
        assert ds.get("DeviceSerialNumber", "0") == "0"  # a dummy where the IOD needs one
        assert str(ds.PatientName).startswith("ANON-") and ds.PatientID == ds.PatientName
        assert ds.PatientBirthDate == "" and ds.AccessionNumber == "" and ds.StudyDate == ""
        assert not any(e.tag.is_private for e in ds.iterall())
        assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "REMOVED"
        assert "113100" in {c.CodeValue for c in ds.DeidentificationMethodCodeSequence}
        uids = {str(e.value) for e in ds.iterall() if e.VR == "UI" and e.VM == 1}
        assert not uids & originals, path
        assert dciodvfy_errors(path) == [], path  # still a valid object of its IOD
        text = path.read_bytes()
        for secret in (b"Alpha", b"Beta", b"Elsewhere", b"Doe^Jane", b"SN123", b"MRN-77", b"19610203", b"latex"):
            assert secret not in text, (path, secret)
    by_modality = {}
    for ds in files.values():
        by_modality.setdefault(ds.Modality, []).append(ds)
    assert sorted(by_modality) == ["SEG", "SR", "US"] and len(by_modality["US"]) == 2
    # the SEG and the SR still reference their image, under its new UIDs
    seg, = by_modality["SEG"]
    image = next(ds for ds in by_modality["US"] if ds.StudyInstanceUID == seg.StudyInstanceUID)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == image.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    sr = hd.sr.srread(next(p for p, ds in files.items() if ds.Modality == "SR"))
    assert sr.StudyInstanceUID == image.StudyInstanceUID
    evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert image.SOPInstanceUID in evidence
    # burned-in text: outside the ultrasound region (x ≥ 84, y ≥ 31 here) every pixel is 0
    assert image.BurnedInAnnotation == "NO" and image.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    pixels = image.pixel_array
    assert pixels[:, :31].max() == 0 and pixels[:, :, :84].max() == 0 and pixels[:, 31:, 84:].max() > 0
    # CAMUS layout, split by patient, and it trains
    rows = list(csv.DictReader((out / "frames.csv").open()))
    assert len(rows) == 3 and {r["patient"] for r in rows} == {"ANON-0001", "ANON-0002"}
    assert {r["split"] for r in rows} == {"training", "validation"}
    assert len({(r["patient"], r["split"]) for r in rows}) == 2  # a patient is in one split only
    label = np.asarray(__import__("PIL.Image").Image.open(out / "labels" / f"{rows[0]['frame']}.png"))
    assert set(np.unique(label)) <= {0, 1, 2, 3} and (label == 1).sum() > 1000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["patients"] == 2 and len(manifest["files"]) == 4 and manifest["skipped"] == []
    assert "PA-1" not in (out / "manifest.json").read_text()
    assert AuditEvent.objects.filter(event_id="110106", detail__contains=str(out)).count() == 2
    trained = subprocess.run([sys.executable, "-m", "sonoloop.cli", "train", "--data", str(out), "--out",
                              str(tmp_path / "model"), "--tiny", "--epochs", "1", "--batch-size", "2", "--quiet"],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "model" / "model.json").exists()


def test_a_study_export_leaves_out_images_without_ultrasound_regions_and_says_why(config, samples, tmp_path):
    config(auto_analysis=False)
    kept = services.instance_store(samples["us_rle_palette"].read_bytes()).instance  # has regions
    bare = services.instance_store(samples["us_native"].read_bytes()).instance  # has none
    out = tmp_path / "export"
    with pytest.raises(CommandError, match="there is no study"):
        call_command("export", study=["1.2.3"], out=str(out))
    call_command("export", study=[kept.series.study.study_instance_uid, bare.series.study.study_instance_uid],
                 out=str(out), keep_dates=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["files"]) == 1 and manifest["skipped"][0]["why"].startswith("an image without ultrasound")
    (path,) = (out / "dicom").rglob("*.dcm")
    ds = dcmread(path)
    assert ds.StudyDate == dcmread(services.instance_path(kept)).StudyDate  # --keep-dates
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    with pytest.raises(CommandError, match="exists"):
        call_command("export", approved=True, out=str(out))
    assert not Annotation.objects.exists()
