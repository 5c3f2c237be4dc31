"""Annotations: versions with provenance, review by role, the schema's checks, SEG export."""

import io
import re
import json
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from django.core.management import call_command
from django.test import Client
from pydicom import dcmread

from sonoloop.dicom.seg import read_segmentation
from sonoloop.web.analysis.models import AnalysisJob, AnalysisResult
from sonoloop.web.analysis.services import results_store
from sonoloop.web.annotations import services, views
from sonoloop.web.annotations.document import CLASSES, rle_decode, rle_encode
from sonoloop.web.annotations.models import Annotation
from sonoloop.web.archive.models import Instance
from sonoloop.web.archive.services import instance_path, instance_store
from tests.conftest import require_tools
from tests.web.conftest import user_with_role

pytestmark = pytest.mark.django_db
FRAMES, ROWS, COLUMNS = 30, 240, 320


def ai_labels() -> np.ndarray:
    """An AI result as data: an LV disc, a MYO ring and an LA disc that move a little per frame."""
    yy, xx = np.mgrid[:ROWS, :COLUMNS]
    labels = np.zeros((FRAMES, ROWS, COLUMNS), np.uint8)
    for f in range(FRAMES):
        r = np.hypot(yy - 100, xx - 160)
        labels[f][r < 45 + f % 5] = 2
        labels[f][r < 35 + f % 5] = 1
        labels[f][np.hypot(yy - 165, xx - 160) < 25] = 3
    return labels


@pytest.fixture
def echo(config, samples):
    config(auto_analysis=False)
    instance = instance_store(samples["cine_30"].read_bytes()).instance
    labels = ai_labels()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=labels)
    job = AnalysisJob.objects.create(instance=instance, status=AnalysisJob.DONE, model_name="camus-unet-v2",
                                     model_version="abc123", frames_total=FRAMES, frames_done=FRAMES)
    AnalysisResult.objects.create(job=job, instance=instance, version=1, model_name="camus-unet-v2",
                                  model_version="abc123", labels_key=results_store().put(buffer.getvalue()),
                                  classes=["background", "LV", "MYO", "LA"], measurements={"beats": []})
    return instance, labels


def test_a_model_with_its_classes_in_another_order_is_compared_and_shown_by_name(echo):
    """The result's label values index its model's classes (model.json), here in another order:
    the editor gets them in the document's class map and agreement compares like with like."""
    from sonoloop.ml.metrics import remap

    instance, labels = echo
    reordered = ["background", "LA", "MYO", "LV"]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=remap(labels, ["background", "LV", "MYO", "LA"], reordered))
    AnalysisResult.objects.filter(instance=instance).update(classes=reordered,
                                                           labels_key=results_store().put(buffer.getvalue()))
    annotator = client_for("anna", "annotator")
    shown = annotator.get(f"/api/instances/{instance.sop_instance_uid}/results/1/masks").json()
    assert shown["classes"] == {"1": "LV", "2": "MYO", "3": "LA"}
    assert np.array_equal(rle_decode(shown["masks"]["7"]["counts"], ROWS, COLUMNS, {1, 2, 3}), labels[6])
    # an expert who keeps the AI's frame as it is agrees with it completely
    saved = post(annotator, instance, upload({7: labels[6]})).json()
    assert saved["agreement"]["dice"] == {"LV": 1.0, "MYO": 1.0, "LA": 1.0}
    assert saved["agreement"]["pixels_changed"] == 0


def client_for(username, role):
    client = Client()
    client.force_login(user_with_role(username, role))
    return client


def upload(masks: dict[int, np.ndarray], **extra) -> dict:
    body = {"schema_version": 1, "rows": ROWS, "columns": COLUMNS, "number_of_frames": FRAMES,
            "classes": {str(k): v for k, v in CLASSES.items()}, "frames": sorted(masks),
            "masks": {str(f): {"encoding": "rle", "counts": rle_encode(m)} for f, m in masks.items()},
            "started_from_result": 1}
    body.update(extra)
    return body


def post(client, instance, body, **kwargs):
    return client.post(f"/api/instances/{instance.sop_instance_uid}/annotations", json.dumps(body),
                       content_type="application/json", **kwargs)


def corrected(labels, frame):
    mask = labels[frame - 1].copy()
    mask[50:70, 100:130] = 1  # LV painted over background and MYO
    mask[mask == 3] = 0  # LA removed
    return mask


def test_rle_round_trips_label_maps_exactly():
    rng = np.random.default_rng(3)
    for mask in (ai_labels()[4], rng.integers(0, 4, (37, 53), dtype=np.uint8), np.zeros((5, 7), np.uint8)):
        counts = rle_encode(mask)
        assert sum(counts[1::2]) == mask.size
        assert np.array_equal(rle_decode(counts, *mask.shape, allowed={1, 2, 3}), mask)


def test_an_annotator_saves_versions_that_never_change(echo):
    instance, labels = echo
    annotator = client_for("anna", "annotator")
    mask = corrected(labels, 5)
    response = post(annotator, instance, upload({5: mask}, comment="LA leaked"))
    assert response.status_code == 201, response.content
    first = response.json()
    assert first["version"] == 1 and first["status"] == "draft" and first["author"] == "anna"
    assert first["frames"] == [5] and first["started_from"] == {"result_version": 1, "model": "camus-unet-v2",
                                                                "model_version": "abc123"}
    ai = labels[4]
    expected = {}
    for value, name in CLASSES.items():
        x, y = ai == value, mask == value
        expected[name] = None if not (x.sum() + y.sum()) else round(2 * (x & y).sum() / (x.sum() + y.sum()), 4)
    assert first["agreement"]["dice"] == expected and expected["LA"] == 0.0 and 0.8 < expected["LV"] < 1
    assert first["agreement"]["pixels_changed"] == int((ai != mask).sum())

    detail = annotator.get(first["url"]).json()
    document = detail["document"]
    assert document["schema"] == "sonoloop-annotation" and document["author"] == "anna"
    assert np.array_equal(rle_decode(document["masks"]["5"]["counts"], ROWS, COLUMNS, {1, 2, 3}), mask)

    second_mask = mask.copy()
    second_mask[200:210, 20:30] = 2
    second = post(annotator, instance, upload({5: second_mask, 6: labels[5]}, parent_version=1)).json()
    assert second["version"] == 2 and second["parent_version"] == 1 and second["frames"] == [5, 6]
    again = annotator.get(first["url"]).json()["document"]
    assert again == document  # version 1 is untouched by version 2
    assert annotator.put(first["url"]).status_code == 405


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 2}, "schema_version must be 1"),
    ({"frames": [31], "masks": {"31": {"encoding": "rle", "counts": [0, ROWS * COLUMNS]}}}, "from 1 to 30"),
    ({"frames": [0], "masks": {"0": {"encoding": "rle", "counts": [0, ROWS * COLUMNS]}}}, "from 1 to 30"),
    ({"masks": {"5": {"encoding": "rle", "counts": [0, ROWS * COLUMNS - 1]}}}, "the frame has 240×320"),
    ({"masks": {"5": {"encoding": "rle", "counts": [7, ROWS * COLUMNS]}}}, r"label value\(s\) \[7\]"),
    ({"masks": {"5": {"encoding": "rle", "counts": [1.5, ROWS * COLUMNS]}}}, "whole numbers"),
    # run lengths whose int64 sum wraps around to rows × columns (a heap overflow in np.repeat)
    ({"masks": {"5": {"encoding": "rle", "counts": [1, 2**62, 1, 2**62, 1, 2**62, 1, 2**62 + ROWS * COLUMNS]}}},
     "every run length must be from 1 to"),
    ({"masks": {"5": {"encoding": "rle", "counts": [1, 2**64, 0, ROWS * COLUMNS]}}}, "every run length"),
    ({"masks": {"5": {"encoding": "rle", "counts": [0, 1] * (ROWS * COLUMNS + 1)}}}, "runs for a frame of"),
    ({"masks": {"5": {"encoding": "png", "counts": [0, ROWS * COLUMNS]}}}, "encoding 'rle'"),
    ({"masks": {"6": {"encoding": "rle", "counts": [0, ROWS * COLUMNS]}}}, "one entry per frame"),
    ({"classes": {"1": "LV", "2": "MYO", "3": "RV"}}, "classes must be the class map"),
    ({"rows": 100}, "rows is 100 but the image has 240"),
    ({"sop_instance_uid": "1.2.3"}, "does not match"),
    ({"started_from_result": 9}, "no AI result version 9"),
    ({"parent_version": 4}, "parent_version 4 is not an annotation"),
    ({"status": "approved"}, "saved as draft or submitted"),
    ({"frames": []}, "non-empty list"),
])
def test_a_bad_upload_gets_a_400_with_the_reason_and_nothing_is_stored(echo, change, message):
    instance, labels = echo
    annotator = client_for("anna", "annotator")
    assert post(annotator, instance, upload({5: labels[4]})).status_code == 201
    stored = sorted(p.name for p in (services.annotations_store().root).rglob("*.json.gz"))
    response = post(annotator, instance, {**upload({5: labels[4]}), **change})
    assert response.status_code == 400, response.content
    assert re.search(message, response.json()["error"]), response.json()["error"]
    assert Annotation.objects.count() == 1
    assert sorted(p.name for p in services.annotations_store().root.rglob("*.json.gz")) == stored


def test_bodies_that_are_not_json_too_big_or_for_a_missing_instance_are_refused(echo, monkeypatch):
    instance, labels = echo
    annotator = client_for("anna", "annotator")
    url = f"/api/instances/{instance.sop_instance_uid}/annotations"
    response = annotator.post(url, "{not json", content_type="application/json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    response = annotator.post(url, "frames=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    monkeypatch.setattr(views, "MAX_BODY_BYTES", 1000)
    response = post(annotator, instance, upload({5: labels[4]}))
    assert response.status_code == 413 and "at most 1000" in response.json()["error"]
    assert annotator.get("/api/instances/1.2.3/annotations").status_code == 404
    assert Annotation.objects.count() == 0


def test_roles_are_enforced_on_every_call(echo):
    instance, labels = echo
    uid = instance.sop_instance_uid
    annotator, viewer, nobody = client_for("anna", "annotator"), client_for("vic", "viewer"), client_for("noah", None)
    reviewer, other_reviewer = client_for("rita", "reviewer"), client_for("rob", "reviewer")

    assert Client().get(f"/api/instances/{uid}/annotations").status_code == 401
    assert nobody.get(f"/api/instances/{uid}/annotations").status_code == 403
    assert nobody.get(f"/instances/{uid}/editor/").status_code == 403
    assert nobody.get(f"/instances/{uid}/").status_code == 403
    assert viewer.get(f"/api/instances/{uid}/annotations").status_code == 200
    assert viewer.get("/upload/").status_code == 403 and b">Upload</a>" not in viewer.get("/studies/").content
    assert viewer.post(f"/api/jobs/{instance.analysis_jobs.first().pk}/retry").status_code == 403
    denied = post(viewer, instance, upload({5: labels[4]}))
    assert denied.status_code == 403 and "annotator role" in denied.json()["error"]

    created = post(annotator, instance, upload({5: labels[4]})).json()
    status_url = f"/api/annotations/{created['id']}/status"

    def move(client, status):
        return client.post(status_url, json.dumps({"status": status, "note": "checked"}), content_type="application/json")

    assert move(reviewer, "approved").status_code == 409  # a draft is submitted first
    assert move(viewer, "submitted").status_code == 403
    assert move(annotator, "submitted").status_code == 200
    assert move(annotator, "approved").status_code == 403  # annotators do not approve
    assert move(reviewer, "draft").json()["status"] == "draft"  # returned for changes
    assert move(annotator, "submitted").status_code == 200
    approved = move(reviewer, "approved")
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert [h["action"] for h in approved.json()["history"]] == ["created", "submitted", "returned", "submitted",
                                                                  "approved"]
    assert move(reviewer, "draft").status_code == 409  # approval is final
    assert list(services.approved_annotations()) == [Annotation.objects.get(pk=created["id"])]

    own = post(reviewer, instance, upload({6: labels[5]}, status="submitted")).json()
    own_status = f"/api/annotations/{own['id']}/status"
    response = reviewer.post(own_status, json.dumps({"status": "approved"}), content_type="application/json")
    assert response.status_code == 403 and "own" in response.json()["error"]
    response = other_reviewer.post(own_status, json.dumps({"status": "approved"}), content_type="application/json")
    assert response.status_code == 200

    # a wrong approval is withdrawn with its reason, and no longer trains
    withdraw = {"status": "withdrawn"}
    assert reviewer.post(own_status, json.dumps(withdraw), content_type="application/json").status_code == 409
    withdrawn = reviewer.post(own_status, json.dumps({**withdraw, "note": "LA traced on the wrong frame"}),
                              content_type="application/json")
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
    assert own["id"] not in [a.pk for a in services.approved_annotations()]


def test_an_admin_approving_their_own_annotation_must_say_why_and_it_is_recorded(echo):
    instance, labels = echo
    boss = client_for("boss", "admin")
    own = post(boss, instance, upload({5: labels[4]}, status="submitted")).json()
    status_url = f"/api/annotations/{own['id']}/status"
    silent = boss.post(status_url, json.dumps({"status": "approved"}), content_type="application/json")
    assert silent.status_code == 403 and "say why" in silent.json()["error"]
    reasoned = boss.post(status_url, json.dumps({"status": "approved", "note": "the only cardiologist on call"}),
                         content_type="application/json")
    assert reasoned.status_code == 200
    assert reasoned.json()["history"][-1]["note"] == "self-approved by an admin: the only cardiologist on call"


def test_an_approved_annotation_exports_as_a_manual_seg_with_exact_frame_mapping(echo):
    instance, labels = echo
    annotator, reviewer = client_for("anna", "annotator"), client_for("rita", "reviewer")
    masks = {5: corrected(labels, 5), 17: labels[16]}
    created = post(annotator, instance, upload(masks, status="submitted")).json()
    export = f"/api/annotations/{created['id']}/export"
    assert reviewer.post(export).status_code == 409  # not approved yet
    reviewer.post(f"/api/annotations/{created['id']}/status", json.dumps({"status": "approved"}),
                  content_type="application/json")
    assert annotator.post(export).status_code == 403
    response = reviewer.post(export)
    assert response.status_code == 201, response.content
    seg_uid = response.json()["segmentation"]
    seg_instance = Instance.objects.get(sop_instance_uid=seg_uid)
    seg = dcmread(instance_path(seg_instance))
    assert seg.ContentCreatorName == "anna" and {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"MANUAL"}
    referenced = {int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                  for f in seg.PerFrameFunctionalGroupsSequence}
    assert referenced == {5, 17}
    read, names = read_segmentation(seg, source_frames=FRAMES)
    by_name = {v: k for k, v in names.items()}
    for frame, mask in masks.items():
        for value, name in CLASSES.items():
            if name in by_name:
                assert np.array_equal(read[frame - 1] == by_name[name], mask == value)
    assert not read[[i for i in range(FRAMES) if i + 1 not in masks]].any()
    assert reviewer.post(export).json()["segmentation"] == seg_uid  # exported once
    # an export whose row never committed (a crash after storing) is written again under the
    # same UIDs: it replaces the first object instead of leaving an orphan beside it
    Annotation.objects.filter(pk=created["id"]).update(seg_sop_instance_uid="")
    assert reviewer.post(export).json()["segmentation"] == seg_uid
    assert Instance.objects.filter(series__modality="SEG").count() == 1
    require_tools("dciodvfy")  # a failure under CI, not a skip that reads as passing
    out = subprocess.run(["dciodvfy", str(instance_path(seg_instance))], capture_output=True, text=True)
    assert "Error" not in out.stderr, out.stderr


def test_the_instance_api_lists_attributes_jobs_results_measurements_annotations_and_the_editor(echo):
    instance, labels = echo
    annotator = client_for("anna", "annotator")
    post(annotator, instance, upload({5: labels[4]}))
    data = annotator.get(f"/api/instances/{instance.sop_instance_uid}").json()
    assert data["number_of_frames"] == FRAMES and data["study"]["patient"]["id"]
    assert {"name": "Number of Frames", "value": str(FRAMES)} in data["attributes"]
    assert data["editor_url"].endswith(f"/instances/{instance.sop_instance_uid}/editor/")
    assert data["jobs"][0]["status"] == "done" and data["results"][0]["version"] == 1
    assert data["measurements"] == {"beats": []}
    assert [a["version"] for a in data["annotations"]] == [1]
    masks = annotator.get(f"/api/instances/{instance.sop_instance_uid}/results/1/masks").json()
    assert np.array_equal(rle_decode(masks["masks"]["3"]["counts"], ROWS, COLUMNS, {1, 2, 3}), labels[2])
    assert annotator.get(f"/api/instances/{instance.sop_instance_uid}/results/2/masks").status_code == 404


def test_the_editor_page_carries_the_patient_and_what_the_user_may_do(echo):
    instance, _ = echo
    page = client_for("vic", "viewer").get(f"/instances/{instance.sop_instance_uid}/editor/").content.decode()
    assert 'data-viewer-state="loading"' in page and "annotations/viewer/editor.js" in page
    assert instance.series.study.patient.patient_name in page
    config = json.loads(page.split('id="editor-config" type="application/json">')[1].split("</script>")[0])
    assert config["can_save"] is False and config["can_review"] is False
    config_page = client_for("rita", "reviewer").get(f"/instances/{instance.sop_instance_uid}/editor/").content
    assert b'"can_review": true' in config_page


def test_roles_command_grants_and_lists(db):
    user = user_with_role("zoe", None)
    out = io.StringIO()
    call_command("roles", "grant", "zoe", "reviewer", stdout=out)
    assert "zoe: viewer, annotator, reviewer" in out.getvalue()
    out = io.StringIO()
    call_command("roles", "list", stdout=out)
    assert "zoe\tviewer, annotator, reviewer" in out.getvalue()
    call_command("roles", "revoke", "zoe", "reviewer", stdout=io.StringIO())
    user.refresh_from_db()
    assert not user.groups.exists()


def test_stored_documents_follow_the_published_schema(echo):
    schema = json.loads((Path(__file__).parents[2] / "docs" / "annotation-schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    instance, labels = echo
    annotator = client_for("anna", "annotator")
    created = post(annotator, instance, upload({5: corrected(labels, 5), 9: labels[8]})).json()
    document = annotator.get(created["url"]).json()["document"]
    validator.validate(document)
    broken = {**document, "classes": {"1": "LV"}, "masks": {"5": {"encoding": "png", "counts": []}}}
    assert len(list(validator.iter_errors(broken))) >= 2


def test_the_editor_draws_the_structures_and_colours_the_server_names(echo):
    """One class map: the editor page carries the document's structures with the colours the
    SEG recommends; the bundle has none of its own."""
    from sonoloop.dicom.seg import DISPLAY_RGB
    from sonoloop.web.annotations.document import CLASSES

    instance, _ = echo
    page = client_for("vera", "viewer").get(f"/instances/{instance.sop_instance_uid}/editor/").content.decode()
    config = json.loads(page.split('id="editor-config" type="application/json">')[1].split("</script>")[0])
    assert config["structures"] == [{"value": v, "name": n, "color": list(DISPLAY_RGB[n])} for v, n in CLASSES.items()]
    assert "rgb(255,64,64)" in page  # the LV swatch, drawn from that map
    bundle = (Path(views.__file__).parent / "static/annotations/viewer/editor.js").read_text()
    assert "[255,64,64]" not in bundle.replace(" ", "")
