"""The reviewer's queue: submitted annotations from others, oldest first, with the agreement;
approved or returned ones leave it, and a returned one carries its note."""

import json

import pytest
from django.test import Client
from django.utils import timezone

from sonoloop.web.annotations.models import Annotation
from tests.web.conftest import user_with_role
from tests.web.test_worklist import studies  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def test_a_reviewer_sees_others_submissions_oldest_first_and_acts_on_them(studies):  # noqa: F811
    first, second, third, *_ = studies
    anna, ben = user_with_role("anna", "annotator"), user_with_role("ben", "reviewer")
    now = timezone.now()

    def annotation(instance, author, status, minutes_ago, dice):
        return Annotation.objects.create(instance=instance, version=1, author=author, status=status, document_key="d",
                                         frames=[3, 4], agreement={"dice": dice},
                                         status_changed_at=now - timezone.timedelta(minutes=minutes_ago))

    newer = annotation(first, anna, Annotation.SUBMITTED, 5, {"LV": 0.91, "MYO": 0.74, "LA": 0.88})
    older = annotation(second, anna, Annotation.SUBMITTED, 60, {"LV": 0.95, "MYO": 0.81, "LA": 0.9})
    annotation(third, ben, Annotation.SUBMITTED, 90, {"LV": 1.0, "MYO": 1.0, "LA": 1.0})  # ben's own
    client = Client()
    client.force_login(ben)
    page = client.get("/review/").content.decode()
    assert page.count("data-annotation=") == 2  # not ben's own, not drafts
    assert page.index(f'data-annotation="{older.pk}"') < page.index(f'data-annotation="{newer.pk}"')
    assert "0.740" in page and "0.810" in page and f"?version={newer.version}&amp;compare=1" in page  # Open shows the AI beside it
    assert ">Review<" in page  # in the navigation for reviewers

    approved = client.post(f"/api/annotations/{older.pk}/status", json.dumps({"status": "approved"}),
                           content_type="application/json")
    assert approved.status_code == 200, approved.content
    returned = client.post(f"/api/annotations/{newer.pk}/status",
                           json.dumps({"status": "draft", "note": "MYO too thick at the apex"}),
                           content_type="application/json")
    assert returned.status_code == 200 and returned.json()["history"][-1]["note"] == "MYO too thick at the apex"
    assert "Nothing waits for review." in client.get("/review/").content.decode()

    annotator = Client()
    annotator.force_login(anna)
    assert annotator.get("/review/").status_code == 403
