"""The searches C-FIND and QIDO-RS run use the indexes that make them fast on a large archive
(SQLite's plan, read with EXPLAIN QUERY PLAN)."""

import pytest
from django.db import connection

from sonoloop.dicom.query import Query, match_for
from sonoloop.web.archive import querying
from sonoloop.web.archive.models import Study

pytestmark = pytest.mark.django_db


def plan_of(queryset) -> str:
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


@pytest.mark.skipif(connection.vendor != "sqlite", reason="the plan read is SQLite's")
def test_a_study_search_counts_and_checks_present_instances_through_the_series_index_only():
    # an index over rejected_for = '' (every present row) made SQLite scan the whole instance
    # table per study: 150 ms instead of 7 ms for a page of studies at 10,000 instances
    query = Query(level="STUDY", root="STUDY", return_keys=["PatientName"])
    query.add(match_for("PatientName", "Smi*"))
    qs = Study.objects.select_related("patient")
    qs = querying.with_counts(querying.present_only(querying.apply_matches(qs, "STUDY", query.matches), "STUDY"), "STUDY")
    plan = plan_of(qs.order_by("pk")[:26])
    assert "rejected" not in plan, plan
    assert plan.count("archive_instance_series_id") == 3, plan  # the EXISTS and both counts
    assert "GROUP BY" not in plan.split("CORRELATED")[0], plan  # no aggregate over every match before LIMIT
